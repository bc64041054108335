"""An archived phantom study for the annotation tests: a small CT around a phantom's
annulus, ingested without the network and selected (a job exists), with its truth points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from ingest_fixtures import Rig, node_config
from sqlalchemy import Engine

from dicomnode.config import NodeConfig
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import FloatArray, make_affine
from glipcore.phantom import random_case, truth_of
from glipcore.volume import Volume

SHAPE_ZYX = (48, 32, 32)
SPACING_MM = (2.0, 2.0, 1.25)  # (i, j, k); the node selects slices of at most 1.5 mm
NAMES = ("RCC", "LCC", "NCC")


@dataclass
class Archived:
    """A study in the archive: its CT files, UIDs, volume and truth (hinges, ostia)."""

    rig: Rig
    files: list[Path]
    volume: Volume
    hinges: FloatArray
    ostia: FloatArray
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str

    @property
    def engine(self) -> Engine:
        return self.rig.engine

    @property
    def cfg(self) -> NodeConfig:
        return self.rig.cfg

    @property
    def archive(self) -> Path:
        return self.rig.cfg.archive_dir

    def points(self, *, ostia: bool = True) -> dict[str, FloatArray]:
        out = dict(zip(NAMES, self.hinges, strict=True))
        if ostia:
            out.update(zip(("LCO", "RCO"), self.ostia, strict=True))
        return out


def phantom_ct(out_dir: Path, seed: int = 5) -> tuple[list[Path], Volume, FloatArray, FloatArray]:
    """A 32 x 32 x 48 CT of 2 x 2 x 1.25 mm voxels centred on a phantom annulus (noise:
    only the geometry matters)."""
    truth = truth_of(random_case(seed, 0))
    origin = truth.annulus_center - (np.array(SHAPE_ZYX[::-1]) - 1) / 2.0 * np.array(SPACING_MM)
    affine = make_affine(origin, list(SPACING_MM))
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1000, size=SHAPE_ZYX).astype(np.float32)
    vol = Volume(array, affine)
    files = write_ct_series(vol, out_dir, SeriesMeta.synthetic(seed, f"ann{seed}"))
    return files, vol, truth.landmarks_lps, truth.ostia_lps


def archive_phantom_study(db_url: str, tmp_path: Path, seed: int = 5) -> Archived:
    """Write, ingest and select a phantom CT series (the assembler makes its job)."""
    files, vol, hinges, ostia = phantom_ct(tmp_path / f"ct{seed}", seed)
    return archive_series(db_url, tmp_path / "var", files, vol, hinges, ostia, "phantom")


def archive_series(
    db_url: str,
    var: Path,
    files: list[Path],
    vol: Volume,
    hinges: FloatArray,
    ostia: FloatArray,
    what: str,
) -> Archived:
    """Send a written CT series to a node on ``db_url``, sweep until the assembler selects
    it (a job exists) and return it as :class:`Archived`."""
    rig = Rig(node_config(db_url, var))
    rig.send(files)
    rig.sweep_after(5.0)
    rig.sweep_after(5.0)
    if not rig.jobs():
        raise RuntimeError(f"the {what} series was not selected")
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Archived(
        rig,
        files,
        vol,
        hinges,
        ostia,
        str(head.StudyInstanceUID),
        str(head.SeriesInstanceUID),
        str(head.FrameOfReferenceUID),
    )


def csv_text(rows: list[dict[str, str]], columns: list[str]) -> str:
    """An annotation CSV from dicts (missing cells empty)."""
    lines = [",".join(columns)]
    lines += [",".join(r.get(c, "") for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def point_cells(points: dict[str, FloatArray]) -> dict[str, str]:
    """``RCC_x``.. cells of the points."""
    return {
        f"{n}_{ax}": repr(float(v))
        for n, p in points.items()
        for ax, v in zip("xyz", p, strict=True)
    }


HINGE_COLUMNS = [f"{n}_{ax}" for n in NAMES for ax in "xyz"]
OSTIUM_COLUMNS = [f"{n}_{ax}" for n in ("LCO", "RCO") for ax in "xyz"]
