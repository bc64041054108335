"""Attributes every result object shares: series description, patient/study, equipment."""

from __future__ import annotations

import copy
from datetime import datetime

import pydicom
from highdicom._standard_utils import get_module_attribute_map

from dicomnode import __version__
from dicomnode.process.outputs.context import OutputContext

LO_MAX = 64

KIND_LABELS = {"sr": "SR", "seg": "SEG", "keyimage": "KEY"}
"""How each kind is named in SeriesDescription."""

SERIES_NUMBERS = {"sr": 9901, "seg": 9902, "keyimage": 9903}
"""Fixed series numbers of the result series (high, away from scanner series)."""

RESEARCH_USE_ONLY = "RESEARCH USE ONLY - not for clinical decisions"
PHANTOM_TRAINED = "PHANTOM-TRAINED MODEL - trained on synthetic phantom CT only"

PATIENT_STUDY_MODULES = (
    "patient",
    "clinical-trial-subject",
    "general-study",
    "patient-study",
    "clinical-trial-study",
)
"""The modules of the Patient and Study IEs that every result object shares with its CT
(their attributes are read from highdicom's tables of the standard)."""

_RETIRED_PATIENT = ("OtherPatientIDs",)  # retired from the Patient module, still in use
_MANDATORY_MODULES = ("patient", "general-study")  # their Type 2 attributes must be present


def _module_keywords(
    modules: tuple[str, ...], types: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    table = get_module_attribute_map()
    out: list[str] = []
    for module in modules:
        for attr in table[module]:
            top_level = not attr["path"]
            if (
                top_level
                and (types is None or attr["type"] in types)
                and attr["keyword"] not in out
            ):
                out.append(attr["keyword"])
    return tuple(out)


PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    *_module_keywords(PATIENT_STUDY_MODULES),
    *_RETIRED_PATIENT,
)
"""Every top-level attribute copied from the CT (the modules above, plus retired ones)."""

_TYPE2_KEYWORDS = _module_keywords(_MANDATORY_MODULES, types=("2",))

_STAMPS = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
)


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
    """Copy the Patient and Study modules (:data:`PATIENT_STUDY_KEYWORDS`) from the CT, as
    they are there; Type 2 attributes of the mandatory modules are empty where the CT lacks
    them, and the object's own value of an attribute the CT lacks is dropped."""
    src = ctx.source[0]
    if "SpecificCharacterSet" in src:
        ds.SpecificCharacterSet = src.SpecificCharacterSet
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in src:
            ds[keyword] = copy.deepcopy(src[keyword])
        elif keyword in _TYPE2_KEYWORDS:
            setattr(ds, keyword, None)
        elif keyword in ds:
            del ds[keyword]


def stamp_times(ds: pydicom.Dataset, when: datetime) -> None:
    """Set every creation/content date and time the encoders wrote to ``when`` (local
    time of the node), not the wall clock at encoding."""
    local = when.astimezone()
    for date_kw, time_kw in _STAMPS:
        if date_kw in ds or time_kw in ds:
            setattr(ds, date_kw, local.strftime("%Y%m%d"))
            setattr(ds, time_kw, local.strftime("%H%M%S.%f"))
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = local.strftime("%Y%m%d%H%M%S.%f")


def mark_node_output(ds: pydicom.Dataset, ctx: OutputContext, kind: str) -> None:
    """SeriesDescription, Manufacturer and versions that say who made it and with what."""
    ds.SeriesDescription = series_description(ctx, kind)
    ds.Manufacturer = ctx.identity.manufacturer
    ds.ManufacturerModelName = ctx.model_name[:LO_MAX]
    ds.SoftwareVersions = software_versions(ctx)
    copy_patient_study(ds, ctx)
    stamp_times(ds, ctx.content_time)


__all__ = [
    "KIND_LABELS",
    "PATIENT_STUDY_KEYWORDS",
    "PATIENT_STUDY_MODULES",
    "PHANTOM_TRAINED",
    "RESEARCH_USE_ONLY",
    "SERIES_NUMBERS",
    "copy_patient_study",
    "mark_node_output",
    "series_description",
    "software_versions",
    "stamp_times",
]
