"""Resampling: exact geometry, the model grid, anti-aliasing, HU clip and scale."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError
from volume_fixtures import oblique_direction, rotation

from glipcore.geometry import make_affine
from glipcore.preprocess import Preprocessing, antialias_sigmas, model_grid, to_model_grid
from glipcore.resample import resample
from glipcore.volume import Volume


def _lps_grid(affine: NDArray[np.float64], shape_zyx: tuple[int, int, int]) -> NDArray[np.float64]:
    """LPS mm of every voxel centre, shape (Z, Y, X, 3)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _volume_of(f: object, affine: NDArray[np.float64], shape_zyx: tuple[int, int, int]) -> Volume:
    lps = _lps_grid(affine, shape_zyx)
    return Volume(np.asarray(f(lps), dtype=np.float32), affine)  # type: ignore[operator]


# ----------------------------------------------------------------- resample()


def _translation(mm: float) -> NDArray[np.float64]:
    t = np.zeros((4, 4))
    t[:3, 3] = mm
    return t


def test_resample_is_exact_for_a_linear_field_on_sheared_and_oblique_grids() -> None:
    grad, offset = np.array([3.0, -2.0, 5.0]), 100.0

    def field(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return p @ grad + offset

    src_affine = make_affine((-10.0, 5.0, 20.0), (0.8, 0.9, 1.3), oblique_direction())
    src_affine[:3, 2] += 0.25 * src_affine[:3, 0]  # shear: slices drift along i
    src = _volume_of(field, src_affine, (24, 30, 32))
    centre = src_affine[:3, :3] @ np.array([15.5, 14.5, 11.5]) + src_affine[:3, 3]
    turn, half = rotation("y", 40.0), np.array([15 * 1.1, 13 * 0.7, 11 * 1.6]) / 2
    target = make_affine(centre - turn @ half, (1.1, 0.7, 1.6), turn)
    out = resample(src, target, (12, 14, 16), default_value=-5000.0)
    assert out.array.dtype == np.float32 and np.allclose(out.affine, target)
    lps = _lps_grid(target, (12, 14, 16))
    ijk = np.linalg.solve(src_affine[:3, :3], (lps - src_affine[:3, 3]).reshape(-1, 3).T).T
    inside = np.all((ijk >= 0) & (ijk <= np.array([31, 29, 23])), axis=1).reshape(12, 14, 16)
    assert inside.sum() > 2000
    assert np.allclose(out.array[inside], field(lps)[inside], atol=2e-3)
    far = resample(src, target + _translation(200.0), (2, 2, 2), default_value=-5000.0)
    assert np.all(far.array == -5000.0)  # entirely outside the source


def test_resample_nearest_keeps_labels_and_a_one_voxel_shift() -> None:
    labels = np.random.default_rng(1).integers(0, 5, (6, 7, 8)).astype(np.uint8)
    affine = make_affine((1.0, 2.0, 3.0), (0.5, 0.5, 2.0), oblique_direction())
    vol = Volume(labels, affine)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0]  # target voxel i is source voxel i + 1
    out = resample(vol, shifted, (6, 7, 7), default_value=0, interpolator="nearest")
    assert out.array.dtype == np.uint8
    assert np.array_equal(out.array, labels[:, :, 1:])


def test_resample_rejects_unknown_interpolator() -> None:
    vol = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="interpolator must be one of"):
        resample(vol, np.eye(4), (2, 2, 2), default_value=0, interpolator="cubic")  # type: ignore[arg-type]


# ----------------------------------------------------------------- the model grid


def test_model_grid_of_an_axis_aligned_volume() -> None:
    affine = make_affine((-20.0, 15.0, -40.0), (0.7, 0.7, 1.25))
    grid, shape = model_grid(affine, (20, 48, 64), 1.6)
    # extents 63*0.7 = 44.1, 47*0.7 = 32.9, 19*1.25 = 23.75 mm -> ceil(extent / 1.6) + 1 voxels
    assert shape == (16, 22, 29)
    assert np.allclose(grid, make_affine((-20.0, 15.0, -40.0), (1.6, 1.6, 1.6)))


def test_model_grid_covers_an_oblique_volume_tightly() -> None:
    affine = make_affine((5.0, -7.0, 11.0), (0.6, 0.8, 1.5), oblique_direction())
    shape_src = (10, 30, 40)
    grid, shape = model_grid(affine, shape_src, 1.6)
    corners = np.array(list(itertools.product([0, 39], [0, 29], [0, 9])), dtype=float)
    lps = corners @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = grid[:3, 3], grid[:3, 3] + 1.6 * (np.array(shape[::-1]) - 1)
    assert np.allclose(lo, lps.min(axis=0))
    assert np.all(hi >= lps.max(axis=0) - 1e-9) and np.all(hi < lps.max(axis=0) + 1.6)


@pytest.mark.parametrize(
    ("spacing", "direction"),
    [((0.5, 0.5, 0.6), oblique_direction()), ((0.7, 0.7, 2.5), None)],
    ids=["oblique-fine", "thick-slices"],
)
def test_a_blob_keeps_its_lps_position_on_the_model_grid(
    spacing: tuple[float, float, float], direction: NDArray[np.float64] | None
) -> None:
    shape = (int(40 / spacing[2]), 80, 80)
    centre_ijk = (np.array(shape[::-1]) - 1) / 2
    affine = make_affine((0.0, 0.0, 0.0), spacing, direction)
    truth = centre_ijk @ affine[:3, :3].T + np.array([0.37, -0.61, 0.83])  # off-grid

    def blob(p: NDArray[np.float64]) -> NDArray[np.float64]:
        return 1000.0 * np.exp(-np.sum((p - truth) ** 2, axis=-1) / (2 * 2.5**2))

    out = to_model_grid(_volume_of(blob, affine, shape))
    assert np.allclose(out.affine[:3, :3], 1.6 * np.eye(3))
    hu = Preprocessing().unscale(out.array).astype(np.float64)
    lps = _lps_grid(out.affine, out.shape_zyx)
    near = np.linalg.norm(lps - truth, axis=-1) < 11.0
    w = hu[near]
    centroid = (lps[near] * w[:, None]).sum(axis=0) / w.sum()
    assert np.linalg.norm(centroid - truth) < 0.1
    assert hu.max() > 700.0  # smoothed and sampled off-peak, but not washed out


# ----------------------------------------------------------------- anti-aliasing


def test_antialias_sigmas_by_hand() -> None:
    fwhm_to_sigma = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    got = antialias_sigmas(np.array([0.4, 1.0, 2.0]), 1.6)
    assert np.allclose(
        got, [math.sqrt(1.6**2 - 0.16) * fwhm_to_sigma, math.sqrt(1.56) * fwhm_to_sigma, 0.0]
    )


@pytest.mark.parametrize("axis", [0, 2], ids=["stripes-along-z", "stripes-along-x"])
def test_high_frequency_stripes_average_out_instead_of_aliasing(axis: int) -> None:
    shape = (64, 48, 48)
    index = np.indices(shape)[axis]
    pattern = np.where(index % 2 == 0, 500.0, -500.0).astype(np.float32)  # mean 0 HU
    vol = Volume(pattern, make_affine((0.0, 0.0, 0.0), (0.4, 0.4, 0.5)))
    prep = Preprocessing()
    hu = prep.unscale(to_model_grid(vol, prep).array)
    inner = hu[2:-3, 2:-3, 2:-3]
    assert np.max(np.abs(inner)) < 5.0
    # Without the Gaussian, sampling every 4th source voxel sees only the +500 stripes.
    grid, grid_shape = model_grid(vol.affine, vol.shape_zyx, 1.6)
    naive = resample(vol, grid, grid_shape, default_value=0.0).array[2:-3, 2:-3, 2:-3]
    assert np.max(np.abs(naive)) > 100.0


# ----------------------------------------------------------------- window and scale


def test_hu_is_clipped_and_scaled() -> None:
    slabs = np.zeros((48, 20, 20), np.float32)
    slabs[:16], slabs[16:32], slabs[32:] = -3000.0, 250.0, 3000.0  # 16 mm slabs at 1 mm
    vol = Volume(slabs, make_affine((0, 0, 0), (1.0, 1.0, 1.0)))
    out = to_model_grid(vol).array
    # model slice k sits at z = 1.6 k: slices 4, 15 and 25 are deep inside each slab
    assert out.dtype == np.float32
    assert np.allclose(out[4, 3:-3, 3:-3], 0.0, atol=1e-6)
    assert np.allclose(out[15, 3:-3, 3:-3], (250 + 1000) / 2500, atol=1e-5)
    assert np.allclose(out[25, 3:-3, 3:-3], 1.0, atol=1e-6)
    narrow = to_model_grid(vol, Preprocessing(hu_min=-200, hu_max=300)).array
    assert np.allclose(narrow[15, 3:-3, 3:-3], (250 + 200) / 500, atol=1e-5)


def test_model_grid_meta_records_the_preprocessing() -> None:
    vol = Volume(np.zeros((4, 5, 6), np.float32), make_affine((1, 2, 3), (2.0, 2.0, 2.0)), {"a": 1})
    out = to_model_grid(vol)
    assert out.meta["a"] == 1
    assert out.meta["preprocessing"] == Preprocessing().model_dump()
    assert out.meta["source_shape_zyx"] == [4, 5, 6]


def test_preprocessing_is_serialisable_and_validated() -> None:
    prep = Preprocessing(spacing_mm=2.0, hu_min=-500, hu_max=800)
    assert Preprocessing.model_validate_json(prep.model_dump_json()) == prep
    assert Preprocessing().spacing_mm == 1.6
    with pytest.raises(ValidationError, match="must exceed"):
        Preprocessing(hu_min=100, hu_max=100)
    with pytest.raises(ValidationError):
        Preprocessing(spacing_mm=0)
    with pytest.raises(ValidationError):
        Preprocessing(window=3)  # type: ignore[call-arg]
    assert np.allclose(prep.unscale(prep.scale(np.array([-500.0, 150.0, 800.0]))), [-500, 150, 800])


# ----------------------------------------------------------------- against scipy.ndimage


def _scipy_model_grid(vol: Volume, prep: Preprocessing) -> tuple[NDArray[np.float64], Volume]:
    """Independent reference: sampled Gaussian (edge values extended) on the source, then
    trilinear sampling at the model-grid points, both by scipy.ndimage."""
    from scipy import ndimage

    out = to_model_grid(vol, prep)
    fwhm = np.sqrt(np.maximum(prep.spacing_mm**2 - vol.spacing**2, 0.0))
    sigma_zyx = (fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / vol.spacing)[::-1]
    smooth = ndimage.gaussian_filter(
        vol.array.astype(np.float64), sigma_zyx, mode="nearest", truncate=4.0
    )
    lps = _lps_grid(out.affine, out.shape_zyx).reshape(-1, 3)
    ijk = np.linalg.solve(vol.affine[:3, :3], (lps - vol.affine[:3, 3]).T)
    ref = ndimage.map_coordinates(smooth, ijk[::-1], order=1, mode="nearest")
    return ref.reshape(out.shape_zyx), out


@pytest.mark.parametrize(
    ("direction", "margin", "atol"),
    [
        (np.eye(3), 0, 0.05),
        (np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), 0, 0.05),
        # SimpleITK's recursive Gaussian approximates the sampled one (about 1 HU here)
        (oblique_direction(), 3, 2.0),
    ],
    ids=["axial", "sagittal-flipped", "oblique"],
)
def test_model_grid_matches_scipy_reference(
    direction: NDArray[np.float64], margin: int, atol: float
) -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 300.0, (30, 40, 44)).astype(np.float32)  # HU, every frequency
    vol = Volume(noise, make_affine((3.0, -4.0, 5.0), (0.45, 0.5, 0.6), direction))
    prep = Preprocessing(hu_min=-5000, hu_max=5000)  # no clipping: compare raw sampling
    ref, out = _scipy_model_grid(vol, prep)
    hu = prep.unscale(out.array)
    lps = _lps_grid(out.affine, out.shape_zyx).reshape(-1, 3)
    ijk = np.linalg.solve(vol.affine[:3, :3], (lps - vol.affine[:3, 3]).T).T
    hi = np.array(vol.shape_zyx[::-1]) - 1 - margin  # margin: voxels kept off the source edge
    inner = np.all((ijk >= margin) & (ijk <= hi), axis=1).reshape(out.shape_zyx)
    assert inner.sum() > 400
    assert np.max(np.abs(hu[inner] - ref[inner])) < atol
    assert np.std(ref[inner]) > 20.0  # the comparison is not between two flat fields
