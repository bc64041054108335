"""``glip experiment``: the paper's experiments regenerated on phantoms, and their report.

- :mod:`.budget`: the budget presets (``cpu``: 2 cores, steps from the pilot; ``paper``: the
  paper's sizes on a GPU) from ``configs/experiments/budgets.yaml``;
- :mod:`.spec`: one YAML per experiment under ``configs/experiments/`` and its runs;
- :mod:`.keys`: each run's key, a hash of its resolved configuration, the phantom generator
  version and the glipcore source that affects training and evaluation;
- :mod:`.testset`: the one held-out phantom test set, stratified by quality grade;
- :mod:`.runner`: one first-stage run (train, learning curve, per-case test errors);
- :mod:`.store`: the committed results under ``reports/paper-on-phantoms/runs/``;
- :mod:`.plan`: every experiment's runs resolved against the budget and the results so far
  (the pilot's step count, the best baseline);
- :mod:`.stats`: bootstrap medians and paired differences;
- :mod:`.report`: ``reports/paper-on-phantoms/README.md`` and its figures;
- :mod:`.cli`: the typer sub-app.

The second stage (a local network on 0.4 mm patches) lives in :mod:`glipcore.second_stage`.
"""
