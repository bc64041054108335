"""Volume files: NIfTI read and write (through SimpleITK), and :func:`load_volume`, which
loads any supported path (a DICOM folder, a NIfTI file, an Enhanced DICOM file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK

from glipcore.dicom_loader import load_dicom_file, load_dicom_series
from glipcore.geometry import FloatArray, make_affine, spacing_of
from glipcore.volume import Volume, VolumeError, VolumeErrorReason

# SimpleITK's SWIG wrappers carry no annotations: use it as a dynamic module.
sitk: Any = SimpleITK
SitkImage = Any


def _orthonormal_direction(affine: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(direction, spacing) of an affine without shear; ValueError otherwise."""
    spacing = spacing_of(affine)
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise ValueError(
            "the affine is sheared (its axes are not orthogonal): SimpleITK and NIfTI store "
            "orthogonal grids only; resample it first"
        )
    return direction, spacing


def _to_sitk(vol: Volume) -> SitkImage:
    direction, spacing = _orthonormal_direction(vol.affine)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in vol.affine[:3, 3]])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def _affine_of_sitk(img: SitkImage) -> FloatArray:
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    return make_affine(img.GetOrigin(), img.GetSpacing(), direction)


def load_nifti(path: Path) -> Volume:
    """A 3-D NIfTI file -> Volume (float32). SimpleITK converts NIfTI's RAS to LPS."""
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE, f"{path} is not a readable NIfTI file: {exc}"
        ) from exc
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            VolumeErrorReason.UNSUPPORTED_FILE,
            f"{path}: need a 3-D scalar image, got {img.GetDimension()}-D with "
            f"{img.GetNumberOfComponentsPerPixel()} component(s)",
        )
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    return Volume(
        array=array,
        affine=_affine_of_sitk(img),
        meta={"loader": "nifti", "source_files": [str(path)]},
    )


def save_nifti(vol: Volume, path: Path) -> Path:
    """Write a Volume as NIfTI (.nii or .nii.gz); SimpleITK writes LPS as RAS."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    sitk.WriteImage(_to_sitk(vol), str(path), useCompression=path.name.endswith(".gz"))
    return path


def load_volume(path: Path) -> Volume:
    """Any supported path -> Volume: a folder -> DICOM series (or its single Enhanced
    file); .nii/.nii.gz -> NIfTI; a single DICOM file -> Enhanced CT (a single slice is
    refused)."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    if not path.is_file():
        raise VolumeError(VolumeErrorReason.UNSUPPORTED_FILE, f"{path} does not exist")
    if path.name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    return load_dicom_file(path)


__all__ = ["load_nifti", "load_volume", "save_nifti"]
