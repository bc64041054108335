"""3D U-Net for heatmap regression (paper Fig. 1), with configurable levels, widths and norm.

Each level: two (3x3x3 conv -> norm -> ReLU) blocks. Encoder levels are joined by 2x2x2
max-pooling; each decoder level upsamples by 2 (trilinear, or nearest), concatenates the
skip connection and applies two conv blocks; a 1x1x1 conv maps to ``out_channels``. No
output activation: GLiP uses the raw output, the baselines apply sigmoid in their loss.

With widths (16, 32, 64, 128) this costs about 170 GFLOP per 128 x 128 x 80 input.
Spatial sizes must be multiples of 2^(levels - 1); :func:`pad_to_multiple` and
:func:`crop_pads` let the predictor run on any volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glipcore.unet_config import NormKind, UNetConfig, UpsampleKind

Pads = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""(before, after) padding of the Z, Y and X axes."""


def required_multiple(levels: int) -> int:
    """Spatial sizes a U-Net with ``levels`` levels accepts are multiples of this."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return int(2 ** (levels - 1))


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "replicate", value: float = 0.0
) -> tuple[torch.Tensor, Pads]:
    """Pad the last three axes of ``x`` (..., Z, Y, X) up to multiples of ``multiple``,
    splitting each axis's padding evenly (extra voxel after). ``mode`` is as
    :func:`torch.nn.functional.pad` ("replicate", "constant" with ``value``, "reflect").
    Returns the padded tensor and the pads for :func:`crop_pads`."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if x.ndim < 3:
        raise ValueError(f"need (..., Z, Y, X), got shape {tuple(x.shape)}")
    pads: list[tuple[int, int]] = []
    for n in x.shape[-3:]:
        total = (-n) % multiple
        pads.append((total // 2, total - total // 2))
    p: Pads = (pads[0], pads[1], pads[2])
    if all(a == 0 and b == 0 for a, b in p):
        return x, p
    flat = [p[2][0], p[2][1], p[1][0], p[1][1], p[0][0], p[0][1]]  # F.pad wants X first
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=value), p
    # replicate/reflect need a batch and channel axis: (N, C, Z, Y, X)
    lead = x.shape[:-3]
    y = x.reshape(1, -1, *x.shape[-3:])
    y = F.pad(y, flat, mode=mode)
    return y.reshape(*lead, *y.shape[-3:]), p


def crop_pads(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on (..., Z, Y, X)."""
    (z0, z1), (y0, y1), (x0, x1) = pads
    z, y, xx = x.shape[-3:]
    return x[..., z0 : z - z1, y0 : y - y1, x0 : xx - x1]


def _norm(kind: NormKind, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (3x3x3 conv -> norm -> ReLU) layers."""

    def __init__(self, c_in: int, c_out: int, norm: NormKind) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """3D U-Net: (B, in_channels, Z, Y, X) -> (B, out_channels, Z, Y, X), raw output."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        norm: NormKind = "batch",
        upsample: UpsampleKind = "trilinear",
    ) -> None:
        super().__init__()
        ws = tuple(int(w) for w in widths)
        if not ws or any(w < 1 for w in ws):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        if norm not in ("batch", "instance", "group", "none"):
            raise ValueError(f"unknown norm {norm!r}; valid: batch, instance, group, none")
        if upsample not in ("trilinear", "nearest"):
            raise ValueError(f"unknown upsample {upsample!r}; valid: trilinear, nearest")
        self.widths = ws
        self.upsample = upsample
        self.encoders = nn.ModuleList()
        c = in_channels
        for w in ws:
            self.encoders.append(ConvBlock(c, w, norm))
            c = w
        self.decoders = nn.ModuleList(
            ConvBlock(ws[lv] + ws[lv + 1], ws[lv], norm) for lv in range(len(ws) - 1)
        )
        self.head = nn.Conv3d(ws[0], out_channels, 1)

    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def multiple(self) -> int:
        """Input spatial sizes must be multiples of this."""
        return required_multiple(self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"input must be (B, C, Z, Y, X), got shape {tuple(x.shape)}")
        m = self.multiple
        if any(n % m for n in x.shape[-3:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[-3:])} is not a multiple of {m} "
                f"(= 2^(levels-1) for {self.levels} levels); pad with pad_to_multiple()"
            )
        skips: list[torch.Tensor] = []
        for lv, enc in enumerate(self.encoders):
            if lv > 0:
                x = F.max_pool3d(x, 2)
            x = enc(x)
            skips.append(x)
        for lv in range(self.levels - 2, -1, -1):
            if self.upsample == "trilinear":
                x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
            else:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.decoders[lv](torch.cat([skips[lv], x], dim=1))
        out: torch.Tensor = self.head(x)
        return out


def build_unet(cfg: UNetConfig | dict[str, Any] | None = None) -> UNet3D:
    """A U-Net from a config (or a dict of its fields; None = defaults)."""
    c = cfg if isinstance(cfg, UNetConfig) else UNetConfig(**(cfg or {}))
    return UNet3D(c.in_channels, c.out_channels, c.widths, c.norm, c.upsample)


__all__ = [
    "NormKind",
    "Pads",
    "UNet3D",
    "UNetConfig",
    "UpsampleKind",
    "build_unet",
    "crop_pads",
    "pad_to_multiple",
    "required_multiple",
]
