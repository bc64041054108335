"""The pieces of ``glip experiment`` that need no training: run normalisation and keys,
the pilot's choice, the stratified test set, the statistics and the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glipcore.experiment.budget import Budget, HeldOutSpec
from glipcore.experiment.keys import code_hash, run_key
from glipcore.experiment.plan import pilot_choice
from glipcore.experiment.spec import ResolvedRun, RunSpec
from glipcore.experiment.stats import bootstrap_median, paired_difference, share_better
from glipcore.experiment.store import Store


def test_equal_runs_resolve_to_one_name_and_key() -> None:
    ot = RunSpec(loss="ot", lam=3, variant="paper").resolve(None)
    glip0 = RunSpec(loss="glip", lam=0).resolve(None)
    assert ot == glip0 and ot is not None and ot.name == "ot-s1-seed0"
    wce = RunSpec(loss="wce", lam=10).resolve(None)
    assert wce is not None and wce.lam == 0 and wce.name == "wce-s1-seed0"
    gp = RunSpec(loss="WCE+GP", lam=10).resolve(None)
    assert gp is not None and gp.name == "wce-gp-s1-l10-seed0" and gp.label == "WCE+GP"
    assert RunSpec(loss="best-baseline").resolve(None) is None
    best = RunSpec(loss="best-baseline").resolve("mse")
    assert best is not None and best.loss == "mse"
    with pytest.raises(ValueError, match="unknown loss"):
        RunSpec(loss="glip+gp")


def test_keys_change_with_config_generator_and_code(tmp_path: Path) -> None:
    cfg = {"a": 1, "b": [1, 2]}
    k = run_key(cfg, "gen/1", "code")
    assert k == run_key({"b": [1, 2], "a": 1}, "gen/1", "code") and len(k) == 12
    assert (
        len(
            {
                k,
                run_key({**cfg, "a": 2}, "gen/1", "code"),
                run_key(cfg, "gen/2", "code"),
                run_key(cfg, "gen/1", "other"),
            }
        )
        == 4
    )
    src = tmp_path / "pkg"
    (src / "phantom").mkdir(parents=True)
    (src / "losses.py").write_text("x = 1\n")
    (src / "phantom" / "anatomy.py").write_text("y = 1\n")
    (src / "report_only.py").write_text("z = 1\n")
    h = code_hash(src)
    (src / "report_only.py").write_text("z = 2\n")  # not a file that affects results
    assert code_hash(src) == h
    (src / "phantom" / "anatomy.py").write_text("y = 2\n")
    assert code_hash(src) != h


class _Curve:
    def __init__(self, steps: list[int], med: list[float]) -> None:
        self.steps, self.med = np.array(steps, float), np.array(med)

    def curve_column(self, name: str) -> np.ndarray:
        return self.steps if name == "step" else self.med


def test_pilot_picks_the_first_step_every_seed_reaches() -> None:
    a = _Curve([200, 400, 600], [3.0, 1.4, 1.0])
    b = _Curve([200, 400, 600], [2.0, 1.6, 1.2])
    steps, note = pilot_choice([a, b], 1.5, 600)  # type: ignore[list-item]
    assert steps == 600 and "step 600" in note
    steps, note = pilot_choice([a, b], 1.0, 600)  # type: ignore[list-item]
    assert steps == 600 and "no step" in note and "1.20" in note
    steps, _ = pilot_choice([a], 1.5, 600)  # type: ignore[list-item]
    assert steps == 400


def test_test_set_is_stratified_and_disjoint_from_training() -> None:
    from glipcore.experiment.testset import stratified_indices
    from glipcore.phantom import random_case

    spec = HeldOutSpec(seed=515151, per_grade=3)
    idx = stratified_indices(spec)
    grades = [random_case(spec.seed, i).quality for i in idx]
    assert sorted(set(grades)) == ["1", "2", "3+", "3-", "4"]
    assert all(grades.count(g) == 3 for g in set(grades)) and len(idx) == 15
    assert Budget(name="x").train.seed != Budget(name="x").test.seed


def test_bootstrap_intervals_and_paired_differences() -> None:
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 0.5, size=(40, 3))
    b = a + 0.8  # worse by 0.8 mm everywhere
    m = bootstrap_median(a)
    assert m.low <= m.value <= m.high and m.value == pytest.approx(np.median(a))
    d = paired_difference(a, b)
    assert d.value == pytest.approx(-0.8) and d.high < 0
    assert share_better(a, b) == 1.0
    noisy = paired_difference(a, a[::-1])
    assert noisy.low < 0 < noisy.high
    with pytest.raises(ValueError, match="shape"):
        paired_difference(a, a[:10])


def test_store_writes_atomically_and_finds_by_key(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.find("abc") is None and store.keys() == set()
    rows = [{"case_id": "c1", "RCC_mm": 1.5, "plane_mm": float("nan"), "failed": True}]
    folder = store.write("glip-s1", "abc", {"key": "abc", "test": {}}, rows, [{"step": 2}])
    assert folder.name == "glip-s1-abc" and store.find("abc") == folder
    res = store.load("abc")
    assert res is not None and res.cases[0]["failed"] == "1"
    assert np.isnan(res.column("plane_mm")[0]) and res.column("RCC_mm")[0] == 1.5
    assert store.keys() == {"abc"} and not list(tmp_path.rglob("*.tmp"))


def test_second_stage_patch_targets_sit_on_the_truth(tmp_path: Path) -> None:
    """A disturbed training patch's heatmap peaks where the truth is, and a network whose
    output is that heatmap is decoded back onto the truth (the patch geometry is right)."""
    import torch

    from glipcore.geometry import ijk_to_lps
    from glipcore.second_stage import Patch, StageTwoConfig, _sample, predict_patches

    cfg = StageTwoConfig(patch_vox=16, disturbance_vox=3, spacing_mm=0.5, sigma_mm=1.0)
    truth = np.array([10.3, -4.1, 20.7])
    centre = truth + np.array([1.2, -0.9, 0.4])  # a first-stage miss within reach
    region = np.zeros((cfg.region_vox,) * 3, dtype=np.float32)
    patch = Patch("phantom-1-0001", 1, centre, truth, region, cfg.spacing_mm)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, heat, known = _sample(patch, cfg, rng)
        assert known.tolist() == [False, True, False] and float(heat[0].abs().max()) == 0
        assert float(heat[1].max()) > 0.5  # the truth is inside every disturbed crop

    class Oracle(torch.nn.Module):
        """Outputs the truth's heatmap on the central patch (what a perfect net would)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from glipcore.heatmap import gaussian_heatmaps

            off = (cfg.region_vox - cfg.patch_vox) // 2
            a = np.array(patch.affine(), dtype=np.float64)
            a[:3, 3] += a[:3, :3] @ np.full(3, float(off))
            h = gaussian_heatmaps((cfg.patch_vox,) * 3, a, truth[None], cfg.sigma_mm)
            return h.repeat(3, 1, 1, 1)[None]

    pred = predict_patches(Oracle(), [patch], cfg, torch.device("cpu"))
    assert np.linalg.norm(pred[0] - truth) < 0.1
    assert ijk_to_lps(patch.affine(), np.zeros(3)).shape == (3,)


def test_remaining_counts_each_run_once_and_times_it_by_finished_runs(tmp_path: Path) -> None:
    from glipcore.experiment.budget import load_budget
    from glipcore.experiment.eta import Remaining, describe, pace, remaining
    from glipcore.experiment.plan import make_plan
    from glipcore.experiment.spec import load_experiments

    budget = load_budget("cpu").model_copy(update={"runs_dir": tmp_path / "runs"})
    plan = make_plan(budget, load_experiments(), Store(tmp_path / "report"), "c0de")
    left = remaining(plan, Store(tmp_path / "report"))
    names = {p.name for p in plan.runs}
    assert left.runs == len(names) < len(plan.runs)  # the best baseline's s1 run serves two
    assert left.seconds is None and left.provisional  # nothing finished, pilot unknown
    stage2 = sum(p.stage == "second" for p in {p.name: p for p in plan.runs}.values())
    assert left.steps == (left.runs - stage2) * budget.max_steps + stage2 * budget.stage2.steps
    assert "no finished run yet" in describe(left)
    # the pace: wall seconds (training + test) per step, by stage
    store = Store(tmp_path / "timed")
    store.write("a", "k1", {"key": "k1", "steps": 400, "train_s": 300.0, "test_s": 100.0}, [], [])
    store.write(
        "b", "k2", {"key": "k2", "kind": "second-stage", "steps": 100, "train_s": 50.0}, [], []
    )
    rates = pace(r for k in ("k1", "k2") if (r := store.load(k)) is not None)
    assert rates == {"first": 1.0, "second": 0.5}
    line = describe(Remaining(3, 3000, 5400.0, rates, False))
    assert "3 runs, 3000 training steps; about 1.5 h" in line and "max_steps" not in line
    assert describe(Remaining(0, 0, 0.0, {}, False)) == "nothing left to run"


def test_store_keeps_small_losses_readable(tmp_path: Path) -> None:
    """A WCE loss near 1e-5 must not be written as 0.0000 in curve.csv."""
    store = Store(tmp_path)
    store.write("wce-s1", "k1", {"key": "k1"}, [{"case_id": "c1"}], [{"step": 2, "loss": 1.234e-5}])
    res = store.load("k1")
    assert res is not None and float(res.curve[0]["loss"]) == pytest.approx(1.234e-5, rel=1e-4)


def test_grid_edges_counts_axis_aligned_neighbour_pairs() -> None:
    from glipcore.experiment.report import grid_edges

    assert grid_edges((2, 2, 2)) == 12  # a cube's edges
    assert grid_edges((1, 1, 5)) == 4 and grid_edges((1, 1, 1)) == 0


def test_grade_trend_is_negative_when_better_grades_have_smaller_errors() -> None:
    from glipcore.experiment.report import grade_trend

    order = ["1", "2", "3-", "3+", "4"]
    quality = np.repeat(order, 6)
    errors = np.repeat([5.0, 4.0, 3.0, 2.0, 1.0], 6)[:, None] + np.zeros((30, 3))
    rho = grade_trend(quality, errors, order, n_boot=200)
    assert rho.value == pytest.approx(-1.0) and rho.high < 0
    flat = grade_trend(quality, np.random.default_rng(1).random((30, 3)), order, n_boot=200)
    assert flat.low < 0 < flat.high


def test_shipped_settings_come_from_the_shipped_bundle(tmp_path: Path) -> None:
    import json

    from glipcore.experiment.plan import PlannedRun
    from glipcore.experiment.report import SHIPPED_BUNDLE, ShippedSettings

    shipped = ShippedSettings.read(SHIPPED_BUNDLE)
    meta = json.loads(SHIPPED_BUNDLE.read_text())
    assert (shipped.loss, shipped.sigma_mm) == (meta["loss"], meta["sigma_mm"])
    assert (shipped.variant, shipped.lam) == (
        meta["metadata"]["loss_variant"],
        meta["metadata"]["lambda"],
    )
    run = RunSpec(
        loss=shipped.loss, sigma_mm=shipped.sigma_mm, lam=shipped.lam, variant=shipped.variant
    ).resolve(None)
    other = RunSpec(loss=shipped.loss, sigma_mm=2 * shipped.sigma_mm, lam=shipped.lam).resolve(None)
    assert run is not None and other is not None

    def planned(r: ResolvedRun) -> PlannedRun:
        return PlannedRun(("x",), "first", RunSpec(), r, r.name, None, None, None, "pending")

    assert shipped.matches(planned(run)) and not shipped.matches(planned(other))
    broken = tmp_path / "bundle.json"
    broken.write_text('{"loss": "glip"}')
    with pytest.raises(ValueError, match="cannot read the shipped model's loss settings"):
        ShippedSettings.read(broken)
