"""3D U-Net: shapes, sizes, config and padding helpers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcore.unet import (
    UNet3D,
    UNetConfig,
    build_unet,
    crop_pads,
    pad_to_multiple,
    required_multiple,
)


@pytest.mark.parametrize(
    ("widths", "norm", "size"),
    [
        ((4, 8, 16), "batch", (8, 12, 16)),
        ((4, 8), "instance", (6, 4, 10)),
        ((4, 8, 8, 16), "group", (16, 8, 16)),
        ((4,), "none", (3, 5, 7)),
        ((2, 4, 4, 4, 8), "batch", (32, 32, 16)),
    ],
)
def test_output_shape(widths: tuple[int, ...], norm: str, size: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, out_channels=3, widths=widths, norm=norm)  # type: ignore[arg-type]
    out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


def test_output_is_unbounded_and_trainable() -> None:
    torch.manual_seed(0)
    net = UNet3D(widths=(4, 8), norm="none", upsample="nearest")
    x = torch.randn(1, 1, 8, 8, 8)
    target = torch.full((1, 3, 8, 8, 8), 5.0)  # far outside (0, 1): no output activation
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = ((net(x) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(net(x).mean()) > 2.0
    assert first is not None and loss.item() < 0.5 * first


def test_parameter_count_matches_the_architecture() -> None:
    widths, cin, cout = (3, 5, 7), 2, 4
    net = UNet3D(cin, cout, widths, norm="none")

    def conv(a: int, b: int, k: int = 27) -> int:
        return k * a * b + b  # weights + bias

    want = 0
    c = cin
    for w in widths:
        want += conv(c, w) + conv(w, w)
        c = w
    for lv in range(len(widths) - 1):
        want += conv(widths[lv] + widths[lv + 1], widths[lv]) + conv(widths[lv], widths[lv])
    want += conv(widths[0], cout, k=1)
    assert sum(p.numel() for p in net.parameters()) == want


def test_bad_sizes_and_arguments_are_refused() -> None:
    net = UNet3D(widths=(4, 8, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 1, 8, 8, 6))
    with pytest.raises(ValueError, match=r"\(B, C, Z, Y, X\)"):
        net(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="widths"):
        UNet3D(widths=())
    with pytest.raises(ValueError, match="norm"):
        UNet3D(norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels"):
        required_multiple(0)


def test_required_multiple() -> None:
    assert [required_multiple(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 16]
    assert UNet3D(widths=(4, 8, 16, 32)).multiple == 8


@settings(max_examples=30, deadline=None)
@given(
    z=st.integers(1, 13),
    y=st.integers(1, 13),
    x=st.integers(1, 13),
    m=st.sampled_from([1, 2, 4, 8]),
    mode=st.sampled_from(["replicate", "constant"]),
)
def test_pad_and_crop_round_trip(z: int, y: int, x: int, m: int, mode: str) -> None:
    t = torch.randn(2, 3, z, y, x)
    padded, pads = pad_to_multiple(t, m, mode=mode, value=-1.0)
    assert all(n % m == 0 for n in padded.shape[-3:])
    assert all(0 <= n - o < m for n, o in zip(padded.shape[-3:], t.shape[-3:], strict=True))
    assert all(abs(a - b) <= 1 for a, b in pads)
    torch.testing.assert_close(crop_pads(padded, pads), t)


def test_padded_prediction_has_the_input_size() -> None:
    net = UNet3D(widths=(4, 8, 8), norm="instance").eval()
    x = torch.randn(1, 1, 10, 7, 13)
    padded, pads = pad_to_multiple(x, net.multiple)
    with torch.no_grad():
        out = crop_pads(net(padded), pads)
    assert out.shape == (1, 3, 10, 7, 13)
    # constant padding uses the given value; (Z, Y, X) pads are split before/after
    p, pads = pad_to_multiple(torch.zeros(1, 1, 5, 4, 1), 4, mode="constant", value=7.0)
    assert pads == ((1, 2), (0, 0), (1, 2)) and p.shape == (1, 1, 8, 4, 4)
    assert float(p[0, 0, 0, 0, 0]) == 7.0 and float(p[0, 0, 1, 0, 1]) == 0.0


def test_config_round_trip_and_build() -> None:
    cfg = UNetConfig(widths=(8, 16, 32, 64), norm="group")
    d = cfg.to_dict()
    assert d == {
        "in_channels": 1,
        "out_channels": 3,
        "widths": [8, 16, 32, 64],
        "norm": "group",
        "upsample": "trilinear",
    }
    assert UNetConfig(**d) == cfg and cfg.levels == 4
    net = build_unet(d)
    assert net.widths == (8, 16, 32, 64) and net.levels == 4
    assert build_unet().widths == (16, 32, 64, 128)
    with pytest.raises(ValueError, match="widths"):
        UNetConfig(widths=(8, 0))
    with pytest.raises(ValueError):
        UNetConfig(depth=4)  # type: ignore[call-arg]
