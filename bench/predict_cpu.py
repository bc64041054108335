"""Predictor on a full-size phantom DICOM series (512 x 512 x ~320): load, resample,
inference, decode, with the breakdown and the ratio to the 15 s goal.

    python -m bench.predict_cpu [--model models/phantom-glip] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from glipcore import phantom
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors
from glipcore.predict import Predictor
from glipcore.volume import load_volume

GOAL_S = 15.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/phantom-glip"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=990_002)
    args = ap.parse_args()

    vol, truth = phantom.generate(args.seed, 0, "full", workers=2)
    with tempfile.TemporaryDirectory() as tmp:
        write_ct_series(vol, Path(tmp), SeriesMeta.synthetic(args.seed, "bench-0"))
        predictor = Predictor(args.model, threads=args.threads)
        rows = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loaded = load_volume(Path(tmp))
            t_load = time.perf_counter() - t0
            pred = predictor.predict(loaded)
            rows.append({"load": t_load, **pred.timings_s})
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    total = sum(med.values())
    err = euclidean_errors(pred.landmarks_lps, truth.landmarks_lps)
    print(
        f"model {predictor.model_version}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, series {loaded.shape_zyx[::-1]} (X, Y, Z)"
    )
    for k, v in med.items():
        print(f"  {k:<10} {v:7.2f} s")
    print(f"  {'total':<10} {total:7.2f} s   goal {GOAL_S:.0f} s   total/goal {total / GOAL_S:.2f}")
    print(f"  errors (mm) RCC/LCC/NCC: {' / '.join(f'{e:.2f}' for e in err)}")


if __name__ == "__main__":
    main()
