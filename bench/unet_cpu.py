"""U-Net forward and training-step seconds on this CPU, two widths, both memory layouts.

Training step = forward + backward + Adam step with the GLiP loss, batch 1; each figure is
the median of a few repeats after a warm-up. Ratios are against the first row, measured in
the same run.

    .venv/bin/python -m bench.unet_cpu [--size 80 128 128] [--repeats 3] [--compile] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from glipcore.heatmap import gaussian_heatmaps_ijk
from glipcore.losses import GLiPLoss
from glipcore.unet import UNet3D

WIDTHS: tuple[tuple[int, ...], ...] = ((16, 32, 64, 128), (8, 16, 32, 64))


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    widths: tuple[int, ...],
    size: tuple[int, int, int],
    channels_last: bool,
    compile_model: bool,
    repeats: int,
    warmup: int,
) -> tuple[float, float]:
    """(forward seconds, train-step seconds) for one configuration."""
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = UNet3D(1, 3, widths, norm="batch").to(memory_format=fmt)  # type: ignore[call-overload]
    model: Callable[[torch.Tensor], torch.Tensor] = net
    if compile_model:
        model = torch.compile(net)
    x = torch.randn(1, 1, *size).contiguous(memory_format=fmt)
    centre = torch.tensor([[[s / 2 for s in reversed(size)]] * 3], dtype=torch.float32)
    target = gaussian_heatmaps_ijk(size, centre, (1.6, 1.6, 1.6), sigma_mm=1.0)
    loss_fn = GLiPLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()

    net.eval()
    fwd = _median_seconds(forward, repeats, warmup)
    net.train()
    trn = _median_seconds(step, repeats, warmup)
    return fwd, trn


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.unet_cpu", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--size", type=int, nargs=3, default=[80, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--quick", action="store_true", help="32 x 48 x 48 input, 1 repeat")
    a = p.parse_args(argv)
    size: tuple[int, int, int] = (32, 48, 48) if a.quick else (a.size[0], a.size[1], a.size[2])
    repeats = 1 if a.quick else a.repeats
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"input 1x1x{size[0]}x{size[1]}x{size[2]} (Z,Y,X), batch 1, GLiP loss, Adam, "
        f"compile {'on' if a.compile else 'off'}, median of {repeats} after {a.warmup} warm-up"
    )
    cols = ("forward s", "train s", "fwd x", "train x")
    print(f"{'widths':16s} {'layout':16s} " + " ".join(f"{c:>10s}" for c in cols))
    ref: tuple[float, float] | None = None
    for widths in WIDTHS:
        for cl in (False, True):
            fwd, trn = measure(widths, size, cl, a.compile, repeats, a.warmup)
            ref = ref or (fwd, trn)
            name = "-".join(map(str, widths))
            layout = "channels_last_3d" if cl else "contiguous"
            print(
                f"{name:16s} {layout:16s} {fwd:10.2f} {trn:10.2f} "
                f"{fwd / ref[0]:10.2f} {trn / ref[1]:10.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
