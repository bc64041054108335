"""Attributes every result object shares: series description, patient/study, equipment."""

from __future__ import annotations

import pydicom

from dicomnode import __version__
from dicomnode.process.outputs.context import OutputContext

LO_MAX = 64

KIND_LABELS = {"sr": "SR", "seg": "SEG", "keyimage": "KEY"}
"""How each kind is named in SeriesDescription."""

SERIES_NUMBERS = {"sr": 9901, "seg": 9902, "keyimage": 9903}
"""Fixed series numbers of the result series (high, away from scanner series)."""

RESEARCH_USE_ONLY = "RESEARCH USE ONLY - not for clinical decisions"
PHANTOM_TRAINED = "PHANTOM-TRAINED MODEL - trained on synthetic phantom CT only"

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_OPTIONAL_STUDY = ("StudyDescription", "IssuerOfPatientID")


def series_description(ctx: OutputContext, kind: str) -> str:
    """``<prefix> <KIND> <model version> RUO[ phantom]``, at most 64 characters (a long
    model version is shortened from the left, keeping its hash)."""
    head = [ctx.identity.series_description_prefix, KIND_LABELS[kind]]
    tail = ["RUO"] + (["phantom"] if ctx.trained_on_phantom else [])
    version = ctx.model_version
    room = LO_MAX - len(" ".join([*head, *tail])) - 2
    if len(version) > room:
        version = "~" + version[-(room - 1) :] if room > 1 else ""
    return " ".join(p for p in [*head, version, *tail] if p)[:LO_MAX]


def software_versions(ctx: OutputContext) -> str:
    """SoftwareVersions: node and model version (LO, <= 64 characters)."""
    return f"glip-node {__version__}; {ctx.model_version}"[:LO_MAX]


def copy_patient_study(ds: pydicom.Dataset, ctx: OutputContext) -> None:
    """Copy patient and study attributes from the CT (empty where the CT has none)."""
    src = ctx.source[0]
    if "SpecificCharacterSet" in src:
        ds.SpecificCharacterSet = src.SpecificCharacterSet
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, src.get(keyword, ""))
    for keyword in _OPTIONAL_STUDY:
        if src.get(keyword):
            setattr(ds, keyword, src.get(keyword))


def mark_node_output(ds: pydicom.Dataset, ctx: OutputContext, kind: str) -> None:
    """SeriesDescription, Manufacturer and versions that say who made it and with what."""
    ds.SeriesDescription = series_description(ctx, kind)
    ds.Manufacturer = ctx.identity.manufacturer
    ds.ManufacturerModelName = ctx.model_name[:LO_MAX]
    ds.SoftwareVersions = software_versions(ctx)
    copy_patient_study(ds, ctx)


__all__ = [
    "KIND_LABELS",
    "PHANTOM_TRAINED",
    "RESEARCH_USE_ONLY",
    "SERIES_NUMBERS",
    "copy_patient_study",
    "mark_node_output",
    "series_description",
    "software_versions",
]
