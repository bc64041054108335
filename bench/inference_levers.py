"""Inference levers for the shipped U-Net on this CPU, side by side: eager contiguous (the
peer), eager channels_last_3d (the Predictor's CPU default), TorchScript trace + freeze,
and torch.compile. Forward pass of one fold on a model-grid volume, median of repeats.

    python -m bench.inference_levers [--model models/phantom-glip] [--threads 2]
                                     [--size 112 128 128] [--repeats 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from glipcore.bundle import load_bundle

Forward = Callable[[torch.Tensor], torch.Tensor]


def median_seconds(fn: Forward, x: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Median wall seconds of ``fn(x)`` under inference mode."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/phantom-glip"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=3, default=[112, 128, 128], metavar=("Z", "Y", "X"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow start)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_bundle(args.model).models[0].eval()
    x = torch.randn(1, 1, *args.size)
    rows: list[tuple[str, float, str]] = []
    rows.append(("eager contiguous (peer)", median_seconds(net, x, args.repeats), ""))
    cl = torch.channels_last_3d
    net_cl = net.to(memory_format=cl)  # type: ignore[call-overload]
    x_cl = x.contiguous(memory_format=cl)
    rows.append(("eager channels_last_3d", median_seconds(net_cl, x_cl, args.repeats), ""))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer notes the static padding branch
        traced = torch.jit.freeze(torch.jit.trace(net_cl, x_cl))
    rows.append(("TorchScript trace+freeze", median_seconds(traced, x_cl, args.repeats), ""))
    if not args.no_compile:
        t0 = time.perf_counter()
        compiled: Forward = torch.compile(net_cl)  # type: ignore[assignment]
        with torch.inference_mode():
            compiled(x_cl)
        first = time.perf_counter() - t0
        secs = median_seconds(compiled, x_cl, args.repeats)
        rows.append(("torch.compile (inductor)", secs, f"first call {first:.0f} s"))
    peer = rows[0][1]
    shape = "x".join(map(str, args.size))
    print(
        f"torch {torch.__version__}, {args.threads} threads, input 1x1x{shape} (Z,Y,X), "
        f"one fold of {args.model}, median of {args.repeats}"
    )
    for name, secs, note in rows:
        print(f"  {name:<28} {secs:7.3f} s   x{secs / peer:.2f}  {note}")


if __name__ == "__main__":
    main()
