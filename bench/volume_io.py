"""Time the full-size path: write a 512 x 512 x 320 CT series, load it, resample it to the
model grid. Run: ``.venv/bin/python -m bench.volume_io [--slices 320]``."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from glipcore.dicom_loader import load_dicom_series
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import make_affine
from glipcore.preprocess import to_model_grid
from glipcore.volume import Volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=320)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.slices, args.size, args.size)
    array = rng.normal(40.0, 300.0, shape).round().clip(-1024, 3000).astype(np.float32)
    vol = Volume(array, make_affine((-102.2, -120.0, -80.0), (0.4, 0.4, 0.5)))
    meta = SeriesMeta.synthetic(0, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_ct_series(vol, Path(tmp), meta, rescale_intercept=-1024)
        t1 = time.perf_counter()
        loaded = load_dicom_series(Path(tmp))
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    model = to_model_grid(loaded)
    t4 = time.perf_counter()
    tilt = np.radians(10.0)  # the same pixels on an oblique grid take the SimpleITK path
    turn = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    oblique = Volume(loaded.array, make_affine(loaded.affine[:3, 3], loaded.spacing, turn))
    t5 = time.perf_counter()
    to_model_grid(oblique)
    t6 = time.perf_counter()
    print(f"volume {shape[2]} x {shape[1]} x {shape[0]} (X x Y x Z), 0.4 x 0.4 x 0.5 mm")
    print(f"write series  {t1 - t0:6.2f} s")
    print(f"load series   {t2 - t1:6.2f} s")
    print(f"to_model_grid {t4 - t3:6.2f} s -> {model.shape_zyx[::-1]} voxels at 1.6 mm")
    print(f"to_model_grid {t6 - t5:6.2f} s (same volume on a 10-degree oblique grid)")


if __name__ == "__main__":
    main()
