"""Coded concepts of the result objects.

Standard codes (SNOMED CT "SCT", DICOM "DCM", UCUM) where one fits; the rest are local codes
of coding scheme ``99GLIP`` (declared in each object's Coding Scheme Identification
Sequence). Every code in use is listed in :data:`CODE_TABLE`:

==========  ======  ===========================================  ===========================
value       scheme  meaning                                      use
==========  ======  ===========================================  ===========================
34202007    SCT     Aortic valve                                 finding site; SEG region
89093001    SCT     Right sinus of Valsalva                      site modifier / SEG, RCC
36371001    SCT     Left sinus of Valsalva                       site modifier / SEG, LCC
24865005    SCT     Non-coronary sinus                           site modifier / SEG, NCC
77583004    SCT     Aortic valve ring                            finding of plane, annulus
264114003   SCT     Ostium                                       finding of an ostium group
1256091001  SCT     Left Main Coronary Artery Ostium             finding site, LCO
56789007    SCT     Right Coronary Artery Ostium                 finding site, RCO
42798000    SCT     Area                                         annulus area (mm2)
131191004   SCT     Perimeter                                    annulus perimeter (mm)
81827009    SCT     Diameter                                     min / max annulus diameter
255605001   SCT     Minimum                                      derivation: min diameter
56851009    SCT     Maximum                                      derivation: max diameter
121207      DCM     Height                                       ostium height (mm)
91723000    SCT     Anatomical structure                         SEG property category
111012      DCM     Certainty of Finding                         confidence, 0..1, unit "1"
112011      DCM     Positioner Primary Angle                     coplanar view, +LAO/-RAO
112012      DCM     Positioner Secondary Angle                   coplanar view, +CRA/-CAU
121106      DCM     Comment                                      research use, model notes
GLIP001     99GLIP  Aortic valve hinge point                     finding of a hinge group
GLIP011     99GLIP  Aortic valve hinge point, right cusp         SEG property type, RCC
GLIP012     99GLIP  Aortic valve hinge point, left cusp          SEG property type, LCC
GLIP013     99GLIP  Aortic valve hinge point, non-coronary cusp  SEG property type, NCC
GLIP021     99GLIP  Inter-hinge distance RCC-LCC                 distance (mm)
GLIP022     99GLIP  Inter-hinge distance LCC-NCC                 distance (mm)
GLIP023     99GLIP  Inter-hinge distance NCC-RCC                 distance (mm)
GLIP031     99GLIP  Annulus plane tilt from axial                tilt (deg)
GLIP041     99GLIP  Plausibility warning                         warning (TEXT)
GLIP051     99GLIP  Area-derived diameter                        2 sqrt(area / pi) (mm)
GLIP052     99GLIP  Perimeter-derived diameter                   perimeter / pi (mm)
GLIP053     99GLIP  Eccentricity                                 sqrt(1 - (min/max)^2), "1"
GLIP054     99GLIP  Annulus sizing refused                       why no sizing (TEXT)
==========  ======  ===========================================  ===========================

Units are UCUM: ``mm``, ``mm2``, ``deg``, ``1`` (no units).
"""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem

LOCAL_SCHEME = "99GLIP"
LOCAL_SCHEME_NAME = "glip-node local codes"


def _sct(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


def _dcm(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="DCM", meaning=meaning)


def _local(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=LOCAL_SCHEME, meaning=meaning)


def _ucum(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


AORTIC_VALVE = _sct("34202007", "Aortic valve")
AORTIC_RING = _sct("77583004", "Aortic valve ring")
ANATOMICAL_STRUCTURE = _sct("91723000", "Anatomical structure")
SINUS = {
    "RCC": _sct("89093001", "Right sinus of Valsalva"),
    "LCC": _sct("36371001", "Left sinus of Valsalva"),
    "NCC": _sct("24865005", "Non-coronary sinus"),
}
OSTIUM = _sct("264114003", "Ostium")
CORONARY_OSTIUM = {
    "LCO": _sct("1256091001", "Left Main Coronary Artery Ostium"),
    "RCO": _sct("56789007", "Right Coronary Artery Ostium"),
}
AREA = _sct("42798000", "Area")
PERIMETER = _sct("131191004", "Perimeter")
DIAMETER = _sct("81827009", "Diameter")
MINIMUM = _sct("255605001", "Minimum")
MAXIMUM = _sct("56851009", "Maximum")
HEIGHT = _dcm("121207", "Height")
CERTAINTY = _dcm("111012", "Certainty of Finding")
PRIMARY_ANGLE = _dcm("112011", "Positioner Primary Angle")
SECONDARY_ANGLE = _dcm("112012", "Positioner Secondary Angle")
COMMENT = _dcm("121106", "Comment")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)

HINGE_POINT = _local("GLIP001", "Aortic valve hinge point")
HINGE = {
    "RCC": _local("GLIP011", "Aortic valve hinge point, right cusp"),
    "LCC": _local("GLIP012", "Aortic valve hinge point, left cusp"),
    "NCC": _local("GLIP013", "Aortic valve hinge point, non-coronary cusp"),
}
DISTANCE = {
    "RCC-LCC": _local("GLIP021", "Inter-hinge distance RCC-LCC"),
    "LCC-NCC": _local("GLIP022", "Inter-hinge distance LCC-NCC"),
    "NCC-RCC": _local("GLIP023", "Inter-hinge distance NCC-RCC"),
}
TILT = _local("GLIP031", "Annulus plane tilt from axial")
WARNING = _local("GLIP041", "Plausibility warning")
AREA_DIAMETER = _local("GLIP051", "Area-derived diameter")
PERIMETER_DIAMETER = _local("GLIP052", "Perimeter-derived diameter")
ECCENTRICITY = _local("GLIP053", "Eccentricity")
SIZING_REFUSED = _local("GLIP054", "Annulus sizing refused")

MM = _ucum("mm", "millimeter")
MM2 = _ucum("mm2", "square millimeter")
DEG = _ucum("deg", "degree")
NO_UNITS = _ucum("1", "no units")

CODE_TABLE: dict[str, hd.sr.CodedConcept] = {
    "AORTIC_VALVE": AORTIC_VALVE,
    "AORTIC_RING": AORTIC_RING,
    "ANATOMICAL_STRUCTURE": ANATOMICAL_STRUCTURE,
    **{f"SINUS[{k}]": v for k, v in SINUS.items()},
    "CERTAINTY": CERTAINTY,
    "PRIMARY_ANGLE": PRIMARY_ANGLE,
    "SECONDARY_ANGLE": SECONDARY_ANGLE,
    "COMMENT": COMMENT,
    "HINGE_POINT": HINGE_POINT,
    **{f"HINGE[{k}]": v for k, v in HINGE.items()},
    **{f"DISTANCE[{k}]": v for k, v in DISTANCE.items()},
    "TILT": TILT,
    "WARNING": WARNING,
    "OSTIUM": OSTIUM,
    **{f"CORONARY_OSTIUM[{k}]": v for k, v in CORONARY_OSTIUM.items()},
    "AREA": AREA,
    "PERIMETER": PERIMETER,
    "DIAMETER": DIAMETER,
    "MINIMUM": MINIMUM,
    "MAXIMUM": MAXIMUM,
    "HEIGHT": HEIGHT,
    "AREA_DIAMETER": AREA_DIAMETER,
    "PERIMETER_DIAMETER": PERIMETER_DIAMETER,
    "ECCENTRICITY": ECCENTRICITY,
    "SIZING_REFUSED": SIZING_REFUSED,
}
"""Every code the outputs use, by name (the table above)."""


def local_coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification item declaring ``99GLIP``."""
    return CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME,
        name=LOCAL_SCHEME_NAME,
        responsible_organization="glip-node",
    )


__all__ = ["CODE_TABLE", "LOCAL_SCHEME", "local_coding_scheme"]
