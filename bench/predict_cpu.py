"""Predictor on a full-size phantom DICOM series (512 x 512 x ~320): load, resample,
inference, decode, with the breakdown, the ratio to the 15 s goal, and the memory layouts
side by side (contiguous is the peer of the default channels_last_3d on CPU).

    python -m bench.predict_cpu [--model models/phantom-glip] [--threads 2] [--repeats 3]
                                [--layout both|channels_last|contiguous]
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
from glipcore.volume_io import load_volume

GOAL_S = 15.0
LAYOUTS = {"channels_last": True, "contiguous": False}


def measure(
    model: Path, folder: Path, threads: int, repeats: int, channels_last: bool
) -> tuple[dict[str, float], np.ndarray, str]:
    """Median seconds per stage, the last prediction's landmarks, the model version."""
    predictor = Predictor(model, threads=threads, channels_last=channels_last, tta_passes=0)
    rows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loaded = load_volume(folder)
        t_load = time.perf_counter() - t0
        pred = predictor.predict(loaded)
        rows.append({"load": t_load, **pred.timings_s})
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    return med, pred.landmarks_lps, predictor.model_version


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/phantom-glip"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=990_002)
    ap.add_argument("--layout", choices=["both", *LAYOUTS], default="both")
    args = ap.parse_args()

    vol, truth = phantom.generate(args.seed, 0, "full", workers=2)
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_ct_series(vol, Path(tmp), SeriesMeta.synthetic(args.seed, "bench-0"))
        for name in layouts:
            results[name] = measure(
                args.model, Path(tmp), args.threads, args.repeats, LAYOUTS[name]
            )
    version = next(iter(results.values()))[2]
    print(
        f"model {version}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"series {vol.shape_zyx[::-1]} (X, Y, Z), median of {args.repeats}"
    )
    stages = list(next(iter(results.values()))[0])
    print(f"  {'stage':<10} " + " ".join(f"{n:>14}" for n in layouts))
    for k in [*stages, "total"]:
        vals = [sum(r[0].values()) if k == "total" else r[0][k] for r in results.values()]
        print(f"  {k:<10} " + " ".join(f"{v:12.2f} s" for v in vals))
    for name, (med, pts, _) in results.items():
        total = sum(med.values())
        err = euclidean_errors(pts, truth.landmarks_lps)
        print(
            f"  {name}: total/goal {total / GOAL_S:.2f} (goal {GOAL_S:.0f} s); errors (mm) "
            f"RCC/LCC/NCC {' / '.join(f'{e:.2f}' for e in err)}"
        )
    if len(results) == 2:
        cl, ct = results["channels_last"][0], results["contiguous"][0]
        print(f"  inference channels_last / contiguous: {cl['inference'] / ct['inference']:.2f}")


if __name__ == "__main__":
    main()
