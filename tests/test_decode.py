"""Decoding: argmax, sub-voxel refinement, peak sharpness and coherence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glipcore.decode import (
    DEFAULT_REFINE,
    REFINE_METHODS,
    argmax_ijk,
    peak_coherence,
    peak_sharpness,
    refine_ijk,
)


def _peaks(kind: str, n: int, size: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n maps with peaks at random sub-voxel positions near the centre; true (n, 3) ijk."""
    rng = np.random.default_rng(seed)
    true_zyx = size // 2 + rng.uniform(-0.5, 0.5, (n, 3))
    g = np.arange(size, dtype=np.float64)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)
    d = grid[None] - true_zyx[:, None, None, None, :]
    r = np.sqrt((d**2).sum(-1))
    if kind == "gauss":
        maps = np.exp(-(r**2) / (2 * 1.0**2))
        step = 1 - np.exp(-1 / 2)
    elif kind == "cone":
        maps = 3.0 - 0.7 * r
        step = 0.7
    else:
        raise AssertionError(kind)
    maps = maps + noise * step * rng.standard_normal(maps.shape)
    return maps, true_zyx[:, ::-1].copy()


def _err(est: torch.Tensor, true: np.ndarray) -> float:
    return float(np.linalg.norm(est.double().numpy() - true, axis=-1).mean())


def test_argmax_order_and_leading_shape() -> None:
    h = torch.zeros(2, 3, 4, 5, 6)
    h[1, 2, 1, 2, 3] = 1.0  # (z, y, x) = (1, 2, 3)
    h[0, 0, 3, 4, 5] = 1.0
    got = argmax_ijk(h)
    assert got.shape == (2, 3, 3) and got.dtype == torch.int64
    assert got[1, 2].tolist() == [3, 2, 1]
    assert got[0, 0].tolist() == [5, 4, 3]
    assert argmax_ijk(h[1, 2]).tolist() == [3, 2, 1]


@pytest.mark.parametrize("kind", ["gauss", "cone"])
def test_refinement_beats_argmax_on_noisy_subvoxel_peaks(kind: str) -> None:
    maps, true = _peaks(kind, 300, 9, noise=0.1, seed=1 if kind == "gauss" else 2)
    t = torch.from_numpy(maps).float()
    e_arg = _err(argmax_ijk(t), true)
    assert 0.4 < e_arg < 0.6  # uniform sub-voxel offsets: about 0.48 voxels
    for method in REFINE_METHODS:
        e = _err(refine_ijk(t, method=method), true)  # type: ignore[arg-type]
        limit = 0.7 if method == "centroid" else 0.5
        assert e < limit * e_arg, (method, e, e_arg)
    assert _err(refine_ijk(t), true) < 0.3 * e_arg


def test_fits_are_exact_on_their_own_shapes() -> None:
    rng = np.random.default_rng(5)
    g = np.arange(7.0)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    for _ in range(10):
        t = 3 + rng.uniform(-0.5, 0.5, 3)  # (z, y, x)
        l1 = -(abs(z - t[0]) + abs(y - t[1]) + abs(x - t[2]))  # V along every axis
        quad = -((z - t[0]) ** 2 + (y - t[1]) ** 2 + (x - t[2]) ** 2)  # parabola
        v = refine_ijk(torch.from_numpy(l1), method="vfit")
        p = refine_ijk(torch.from_numpy(quad), method="parabola")
        np.testing.assert_allclose(v.numpy(), t[::-1], atol=1e-9)
        np.testing.assert_allclose(p.numpy(), t[::-1], atol=1e-9)
    assert DEFAULT_REFINE in REFINE_METHODS


@pytest.mark.parametrize("method", REFINE_METHODS)
def test_border_peaks_are_not_refined_across_the_border(method: str) -> None:
    g = np.arange(6.0)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    t = np.array([-0.3, 2.2, 5.4])  # (z, y, x): beyond the first slice and the last column
    m = torch.from_numpy(np.exp(-((z - t[0]) ** 2 + (y - t[1]) ** 2 + (x - t[2]) ** 2) / 2))
    got = refine_ijk(m, method=method).tolist()  # type: ignore[arg-type]
    assert got[2] == 0.0  # k
    assert got[0] == 5.0  # i
    assert abs(got[1] - 2.2) < (0.15 if method != "centroid" else 0.3)  # j is refined
    corner = torch.zeros(3, 3, 3)
    corner[0, 0, 0] = 1.0
    assert refine_ijk(corner, method=method).tolist() == [0.0, 0.0, 0.0]  # type: ignore[arg-type]


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shift=st.floats(-100, 100),
    scale=st.floats(0.01, 100),
    method=st.sampled_from(REFINE_METHODS),
)
def test_decoding_is_shift_and_scale_invariant(
    seed: int, shift: float, scale: float, method: str
) -> None:
    maps, _ = _peaks("cone", 2, 7, noise=0.3, seed=seed)
    a = torch.from_numpy(maps)
    b = a * scale + shift
    torch.testing.assert_close(
        refine_ijk(a, method=method),  # type: ignore[arg-type]
        refine_ijk(b, method=method),  # type: ignore[arg-type]
        rtol=0,
        atol=1e-6,
    )
    torch.testing.assert_close(peak_sharpness(a), peak_sharpness(b), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(peak_coherence(a), peak_coherence(b), rtol=1e-6, atol=1e-9)


def _ref_sharpness(m: np.ndarray, radius: int) -> float:
    z, y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    ring = []
    for dz, dy, dx in itertools.product(range(-radius, radius + 1), repeat=3):
        p = (z + dz, y + dy, x + dx)
        if (dz, dy, dx) != (0, 0, 0) and all(0 <= c < n for c, n in zip(p, m.shape, strict=True)):
            ring.append(m[p])
    mad = 1.4826 * np.median(np.abs(m - np.median(m)))
    spread = max(mad, 1e-3 * (m.max() - m.min()))
    return float((m[z, y, x] - np.mean(ring)) / spread)


def test_sharpness_matches_reference_and_orders_peaks() -> None:
    rng = np.random.default_rng(7)
    m = rng.normal(size=(2, 5, 5, 7))  # 175 voxels: the median is one element
    m[0, 4, 0, 3] = 9.0  # peak on a border
    got = peak_sharpness(torch.from_numpy(m)).numpy()
    want = [_ref_sharpness(m[0], 2), _ref_sharpness(m[1], 2)]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert peak_sharpness(torch.full((4, 4, 4), 3.0)).item() == 0.0
    narrow, _ = _peaks("gauss", 1, 11, 0.0, 0)
    wide = narrow[0] ** (1 / 9)  # sigma 3 instead of 1, same peak
    assert peak_sharpness(torch.from_numpy(narrow[0])) > peak_sharpness(torch.from_numpy(wide))


def test_coherence_separates_clean_peaks_from_noise() -> None:
    g = np.arange(9.0)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    cone = 5 - np.sqrt((z - 4) ** 2 + (y - 4) ** 2 + (x - 4) ** 2)
    assert peak_coherence(torch.from_numpy(cone)).item() == pytest.approx(1.0)
    gauss, _ = _peaks("gauss", 1, 9, 0.0, 3)
    assert peak_coherence(torch.from_numpy(gauss[0])).item() > 0.6
    noise = torch.from_numpy(np.random.default_rng(4).normal(size=(20, 9, 9, 9)))
    assert peak_coherence(noise).abs().mean().item() < 0.25


def test_bad_input_is_refused() -> None:
    bad = torch.zeros(3, 3, 3)
    bad[1, 1, 1] = float("nan")
    for fn in (argmax_ijk, refine_ijk, peak_sharpness, peak_coherence):
        with pytest.raises(ValueError, match="NaN"):
            fn(bad)
        with pytest.raises(ValueError, match=r"\(\.\.\., Z, Y, X\)"):
            fn(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="valid: hybrid"):
        refine_ijk(torch.zeros(3, 3, 3), method="gauss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        argmax_ijk(torch.zeros(0, 3, 3, 3))
