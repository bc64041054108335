"""Peak memory of the Predictor on a long scan (a CT angiogram down to the pelvis, ~500 mm
of z): the default z-slab inference against the same Predictor with slabs disabled.

The scan is a full-size phantom (512 x 512 x 320 slices of 0.5 mm) extended in z by
mirrored tiling of its own end blocks (the ventricle below, the ascending aorta above:
noisy tissue and vessels, not air), with the affine shifted so the phantom's truth still
applies. Each mode runs in its own subprocess so resident-memory peaks do not mix; a peak
is the kernel's high-water mark (VmHWM), reset (``/proc/self/clear_refs``) before the
measured step, or ``ru_maxrss`` where the reset is not allowed.

    .venv/bin/python -m bench.predict_memory [--model models/phantom-glip] [--z-mm 500]
        [--threads 2] [--seed 990002]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glipcore import phantom
from glipcore.geometry import FloatArray
from glipcore.metrics import euclidean_errors
from glipcore.predict import DEFAULT_HALO_Z, DEFAULT_SLAB_Z, Predictor
from glipcore.preprocess import to_model_grid
from glipcore.volume import Volume

BUDGET_GIB = 24.0
NO_SLAB_Z = 1_000_000
"""A slab height no scan reaches: the whole volume in one pass."""
GIB = 1024.0**3


def mirrored_indices(n: int, block: int) -> NDArray[np.intp]:
    """Source slice offsets 0..block-1 for ``n`` slices going outward from an edge, tiling
    the edge block back and forth (0, 1, .., block-1, block-1, .., 0, 0, 1, ..) so that
    every seam joins two identical slices."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    q = np.arange(n) % (2 * block)
    return np.where(q < block, q, 2 * block - 1 - q).astype(np.intp)


def extend_z(vol: Volume, total_slices: int, block: int = 40) -> Volume:
    """``vol`` grown to ``total_slices`` (split evenly below and above) by mirrored tiling
    of its ``block`` end slices; the affine moves so LPS positions are unchanged."""
    z = vol.shape_zyx[0]
    if total_slices < z:
        raise ValueError(f"total_slices {total_slices} < the volume's {z} slices")
    if not 1 <= block <= z // 2:
        raise ValueError(f"block must be in 1..{z // 2}, got {block}")
    lo = (total_slices - z) // 2
    hi = total_slices - z - lo
    below = vol.array[mirrored_indices(lo, block)[::-1]]  # slice -1 is next to slice 0
    above = vol.array[z - 1 - mirrored_indices(hi, block)]
    array = np.concatenate([below, vol.array, above], axis=0)
    shift = np.eye(4)
    shift[2, 3] = -lo
    meta = {**vol.meta, "extended_z": {"below": lo, "above": hi, "block": block}}
    return Volume(array=array, affine=vol.affine @ shift, meta=meta)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Current resident set size."""
    return _status_kib("VmRSS") * 1024


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark; False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_bytes(reset_ok: bool) -> int:
    """RSS high-water mark since the last reset (or since start without one)."""
    if reset_ok:
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    model: Path, array_path: Path, affine: FloatArray, slab_z: int, threads: int
) -> dict[str, Any]:
    """In this process: load the scan, build the Predictor, then the peak RSS of
    ``to_model_grid`` alone and of ``Predictor.predict`` (each from a reset)."""
    base = rss_bytes()
    vol = Volume(array=np.load(array_path), affine=affine)
    predictor = Predictor(
        model, threads=threads, slab_z=slab_z, halo_z=DEFAULT_HALO_Z, tta_passes=0
    )
    loaded = rss_bytes()
    ok = reset_peak()
    grid = to_model_grid(vol, predictor.bundle.manifest.preprocessing)
    resample_peak = peak_bytes(ok)
    grid_bytes = int(grid.array.nbytes)
    grid_shape = list(grid.shape_zyx)
    del grid
    gc.collect()
    ok = reset_peak()
    before = rss_bytes()
    t0 = time.perf_counter()
    pred = predictor.predict(vol)
    wall = time.perf_counter() - t0
    return {
        "slab_z": slab_z,
        "reset_ok": ok,
        "rss_start": base,
        "rss_loaded": loaded,
        "rss_before_predict": before,
        "resample_peak": resample_peak,
        "predict_peak": peak_bytes(ok),
        "volume_bytes": int(vol.array.nbytes),
        "grid_bytes": grid_bytes,
        "grid_shape_zyx": grid_shape,
        "predict_s": wall,
        "timings_s": pred.timings_s,
        "landmarks_lps": pred.landmarks_lps.tolist(),
    }


def _run_child(
    model: Path, array_path: Path, affine: FloatArray, slab_z: int, threads: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.predict_memory",
        "--child",
        str(array_path),
        "--affine",
        json.dumps(affine.tolist()),
        "--slab-z",
        str(slab_z),
        "--model",
        str(model.resolve()),
        "--threads",
        str(threads),
    ]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"child (slab_z={slab_z}) failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _gib(n: float) -> str:
    return f"{n / GIB:6.2f} GiB"


def report(runs: dict[str, dict[str, Any]], truth: FloatArray) -> str:
    """Table of both modes and the ratios of the peak memory they add."""
    a = next(iter(runs.values()))
    lines = [
        f"scan {a['volume_bytes'] / 4 / 512 / 512:.0f} slices of 512 x 512 float32: volume array "
        f"{_gib(a['volume_bytes']).strip()}; model grid {a['grid_shape_zyx']} (Z, Y, X) = "
        f"{a['grid_bytes'] / 2**20:.0f} MiB",
        f"{'mode':<22} {'start':>10} {'loaded':>10} {'resample pk':>12} {'predict pk':>11} "
        f"{'added':>10} {'infer s':>8} {'total s':>8}  errors RCC/LCC/NCC mm",
    ]
    for name, r in runs.items():
        err = euclidean_errors(np.array(r["landmarks_lps"]), truth)
        added = r["predict_peak"] - r["rss_before_predict"]
        lines.append(
            f"{name:<22} {_gib(r['rss_start'])} {_gib(r['rss_loaded'])} "
            f"{_gib(r['resample_peak']):>12} {_gib(r['predict_peak']):>11} {_gib(added)} "
            f"{r['timings_s']['inference']:8.1f} {r['predict_s']:8.1f}  "
            + " / ".join(f"{e:.2f}" for e in err)
        )
    if len(runs) == 2:
        (n1, r1), (n2, r2) = runs.items()
        add1 = r1["predict_peak"] - r1["rss_before_predict"]
        add2 = r2["predict_peak"] - r2["rss_before_predict"]
        diff = np.abs(np.array(r1["landmarks_lps"]) - np.array(r2["landmarks_lps"])).max()
        lines.append(
            f"ratio {n1} / {n2}: predict peak {r1['predict_peak'] / r2['predict_peak']:.2f}, "
            f"added by predict {add1 / add2:.2f}, inference time "
            f"{r1['timings_s']['inference'] / r2['timings_s']['inference']:.2f}; "
            f"max coordinate difference {diff:.4f} mm"
        )
    worst = max(r["predict_peak"] for r in runs.values())
    lines.append(
        f"budget {BUDGET_GIB:.0f} GiB: worst peak {worst / GIB:.2f} GiB "
        f"({100 * worst / (BUDGET_GIB * GIB):.0f} % of budget)"
        + ("" if all(r["reset_ok"] for r in runs.values()) else " [ru_maxrss: no HWM reset]")
    )
    return "\n".join(lines)


def run(model: Path, z_mm: float, threads: int, seed: int) -> dict[str, dict[str, Any]]:
    """Build the tall scan, measure both modes in subprocesses and print the table."""
    t0 = time.perf_counter()
    vol, truth = phantom.generate(seed, 0, "full", workers=max(1, threads))
    slices = round(z_mm / float(vol.spacing[2]))
    tall = extend_z(vol, slices)
    del vol
    print(
        f"built {tall.shape_zyx[0]} x {tall.spacing[2]:.2f} mm = "
        f"{tall.shape_zyx[0] * tall.spacing[2]:.0f} mm of z in {time.perf_counter() - t0:.0f} s "
        f"(mean HU of the padded ends {float(tall.array[:40].mean()):.0f} / "
        f"{float(tall.array[-40:].mean()):.0f})"
    )
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tall.npy"
        np.save(path, tall.array)
        affine = tall.affine
        del tall
        gc.collect()
        runs[f"slabs (slab_z={DEFAULT_SLAB_Z})"] = _run_child(
            model, path, affine, DEFAULT_SLAB_Z, threads
        )
        runs["whole volume (no slab)"] = _run_child(model, path, affine, NO_SLAB_Z, threads)
    print(report(runs, truth.landmarks_lps))
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.predict_memory", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", type=Path, default=Path("models/phantom-glip"))
    p.add_argument("--z-mm", type=float, default=500.0, help="scan length (default 500 mm)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=990_002)
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--affine", default=None, help=argparse.SUPPRESS)
    p.add_argument("--slab-z", type=int, default=DEFAULT_SLAB_Z, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        affine = np.array(json.loads(a.affine), dtype=np.float64)
        print(json.dumps(measure(a.model, a.child, affine, a.slab_z, a.threads)))
        return
    run(a.model, a.z_mm, a.threads, a.seed)


if __name__ == "__main__":
    main()
