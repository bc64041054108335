"""Helpers for the Volume I/O, resampling and DICOM-writer tests (small volumes only)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk  # noqa: N813
from numpy.typing import NDArray

from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import make_affine
from glipcore.volume import Volume

SHAPE_ZYX = (20, 48, 64)


def rotation(axis: str, degrees: float) -> NDArray[np.float64]:
    """Right-handed rotation matrix about x, y or z."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    i = "xyz".index(axis)
    r = np.eye(3)
    a, b = [k for k in range(3) if k != i]
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def oblique_direction() -> NDArray[np.float64]:
    """A direction matrix tilted out of all three LPS planes."""
    return rotation("z", 25.0) @ rotation("x", -35.0) @ rotation("y", 12.0)


def hu_volume(
    shape_zyx: tuple[int, int, int] = SHAPE_ZYX,
    origin: tuple[float, float, float] = (-20.0, 15.0, -40.0),
    spacing: tuple[float, float, float] = (0.7, 0.7, 1.25),
    direction: NDArray[np.float64] | None = None,
    seed: int = 0,
) -> Volume:
    """Integer-valued HU volume (so DICOM round trips are exact) with a given geometry."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 2000, shape_zyx).astype(np.float32)
    return Volume(array=array, affine=make_affine(origin, spacing, direction))


def meta(case_id: str = "test0001", seed: int = 0, **overrides: Any) -> SeriesMeta:
    return SeriesMeta.synthetic(seed, case_id, **overrides)


def write_series(vol: Volume, folder: Path, **kwargs: Any) -> list[Path]:
    series_meta = kwargs.pop("series_meta", None) or meta()
    return write_ct_series(vol, folder, series_meta, **kwargs)


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for one file."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if "Error" in line]


def convert(tool: list[str], src_dir: Path, dst_dir: Path) -> Path:
    """Run a per-file converter (``tool + [src, dst]``) over every .dcm file of a folder."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(src_dir.glob("*.dcm")):
        subprocess.run([*tool, str(src), str(dst_dir / src.name)], check=True)
    return dst_dir


def transfer_syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def sitk_series(folder: Path) -> sitk.Image:
    """The series as SimpleITK/GDCM reads it (independent of our loader)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def sitk_index_to_lps(img: sitk.Image, ijk: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.array(
        [img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in ijk]
    )


def edit_files(paths: list[Path], edit: Callable[[int, pydicom.Dataset], None]) -> None:
    """Rewrite each file after ``edit(index, dataset)``."""
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        edit(k, ds)
        ds.save_as(path, enforce_file_format=True)


def ds_values(values: NDArray[np.float64] | list[float]) -> list[str]:
    """Numbers as DICOM DS strings (16 characters at most)."""
    return [pydicom.valuerep.format_number_as_ds(float(v)) for v in values]
