"""Sub-voxel decoding vs argmax: mean error on synthetic noisy Gaussian and cone peaks.

Each peak sits at a uniformly random sub-voxel position; the table gives the mean
Euclidean error in voxels of argmax and of every refinement method on the same maps,
and the ratio of the default method's error to argmax's.

    .venv/bin/python -m bench.decode [--n 500] [--size 21] [--noise 0 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from glipcore.decode import DEFAULT_REFINE, REFINE_METHODS, argmax_ijk, refine_ijk

Shape = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SHAPES: dict[str, Shape] = {
    # d: offsets (N, Z, Y, X, 3) from the true peak in voxels; r2: squared distance
    "gauss s=0.6": lambda d, r2: torch.exp(-r2 / (2 * 0.625**2)),
    "gauss s=1.25": lambda d, r2: torch.exp(-r2 / (2 * 1.25**2)),
    "gauss s=2.5": lambda d, r2: torch.exp(-r2 / (2 * 2.5**2)),
    "cone L2": lambda d, r2: 5.0 - torch.sqrt(r2),
    "cone L1": lambda d, r2: 5.0 - d.abs().sum(-1) / 3**0.5,
    "cone rounded": lambda d, r2: 5.0 - torch.sqrt(r2 + 1.0),
}


def synthetic_peaks(
    shape: Shape, n: int, size: int, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n maps (n, size, size, size) with peaks at random positions within one voxel of the
    centre, plus Gaussian noise whose sd is ``noise`` times the noiseless drop from the
    peak to a voxel one step away. Returns the maps and the true positions (n, 3) ijk."""
    c = size // 2
    true_zyx = c + torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5
    g = torch.arange(size, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1)
    d = grid[None] - true_zyx[:, None, None, None, :]
    maps = shape(d, (d**2).sum(-1))
    ref = torch.zeros(1, 1, 1, 1, 3, dtype=torch.float64)
    step = ref.clone()
    step[..., 2] = 1.0
    drop = float((shape(ref, (ref**2).sum(-1)) - shape(step, (step**2).sum(-1))).squeeze())
    maps = maps + noise * drop * torch.randn(maps.shape, generator=gen, dtype=torch.float64)
    return maps.float(), true_zyx.flip(-1)


def mean_error(est: torch.Tensor, true: torch.Tensor) -> float:
    return float((est.to(torch.float64) - true).norm(dim=-1).mean())


def run(n: int, size: int, noises: list[float], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    methods = list(REFINE_METHODS)
    head = f"{'peak':14s} {'noise':>5s} {'argmax':>7s} " + " ".join(f"{m:>9s}" for m in methods)
    print(f"mean error (voxels), {n} peaks per row, {size}^3 maps, default = {DEFAULT_REFINE}")
    print(head + f" {'default/argmax':>15s}")
    t0 = time.perf_counter()
    for name, shape in SHAPES.items():
        for noise in noises:
            maps, true = synthetic_peaks(shape, n, size, noise, gen)
            e_arg = mean_error(argmax_ijk(maps), true)
            errs = {m: mean_error(refine_ijk(maps, method=m), true) for m in methods}  # type: ignore[arg-type]
            cols = " ".join(f"{errs[m]:9.3f}" for m in methods)
            ratio = errs[DEFAULT_REFINE] / e_arg
            print(f"{name:14s} {noise:5.2f} {e_arg:7.3f} {cols} {ratio:15.2f}")
    print(f"({time.perf_counter() - t0:.1f} s; noise = sd / noiseless drop to a neighbour)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="peaks per row (default 500)")
    p.add_argument("--size", type=int, default=15, help="map edge in voxels (default 15)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2], help="noise levels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="100 peaks per row")
    a = p.parse_args(argv)
    run(100 if a.quick else a.n, a.size, a.noise, a.seed)


if __name__ == "__main__":
    main()
