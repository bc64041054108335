"""Comprehensive 3D SR (TID 1500 Measurement Report) of the hinge points and annulus plane.

Content tree (highdicom builds the templates):

- Imaging Measurement Report (TID 1500): language, device observer (the model), procedure
- Imaging Measurements
  - one Planar ROI group (TID 1410) per hinge point RCC, LCC, NCC: tracking identifier
    (shared with the SEG segment), SCOORD3D POINT in the CT's Frame of Reference, finding
    type "Aortic valve hinge point", finding site aortic valve with the cusp's sinus as
    modifier, TID 4019 algorithm identification, "Certainty of Finding" = confidence
  - one Planar ROI group for the annulus plane: closed SCOORD3D POLYGON RCC -> LCC -> NCC
    -> RCC, the three inter-hinge distances (mm), the plane's tilt from axial (deg) and
    the coplanar C-arm view as Positioner Primary (+LAO) / Secondary (+cranial) Angle (deg)
  - when the annulus was sized: a Planar ROI group "Aortic annulus": the lumen contour as
    a closed SCOORD3D POLYGON on the plane (first point repeated last), NUMs area (mm2),
    perimeter (mm), area- and perimeter-derived diameters (mm), minimum and maximum
    diameter (Diameter with derivation Minimum / Maximum, mm) and eccentricity (1)
  - when the model predicts the coronary ostia: one Planar ROI group per ostium (LCO,
    RCO): SCOORD3D POINT, finding type Ostium, finding site the left main / right coronary
    artery ostium, NUM Height above the annulus plane (mm, to the ostium's centre along
    the plane normal), "Certainty of Finding"
- Qualitative Evaluations: TEXT items "research use only", "phantom-trained model" (when
  so), the coplanar view in words, which earlier result this one replaces (when so), how
  the ostium height is measured (when ostia are reported), why the annulus was not sized
  (when refused: "Annulus sizing refused"), and each plausibility warning
- Image Library (TID 1600): every CT image plane the result was made from, with its
  geometry (TID 1604): each single-frame instance, or each frame of a multi-frame
  (Enhanced) CT with its frame number and the geometry of its functional groups (the
  SCOORD3D coordinates reference the Frame of Reference, no single image)

A result that replaces an earlier one of the same series (reprocessed after late
instances) names that SR in Predecessor Documents Sequence.

SCOORD3D Graphic Data is FL (32-bit float) in DICOM: coordinates read back equal the
inputs rounded to float32 (within 4e-6 mm at 100 mm).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from dicomnode.process.outputs import codes as c
from dicomnode.process.outputs.common import (
    PHANTOM_TRAINED,
    RESEARCH_USE_ONLY,
    SERIES_NUMBERS,
    mark_node_output,
    series_description,
    software_versions,
)
from dicomnode.process.outputs.context import (
    LANDMARK_NAMES,
    OSTIUM_LABELS,
    OSTIUM_NAMES,
    OutputContext,
    OutputError,
    PriorResult,
)
from dicomnode.process.outputs.measurements import (
    HEIGHT_DEFINITION,
    coplanar_view,
    hinge_distances_mm,
    ostium_heights_mm,
    plane_tilt_deg,
)
from dicomnode.process.outputs.uids import ResultKey, output_uid

KIND = "sr"
REPORT = "report"


def report_uid(key: ResultKey) -> str:
    """SOP Instance UID of the SR of the result with ``key``."""
    return key.instance_uid(KIND, REPORT)


def replaces_text(prior: PriorResult) -> str:
    """The SR's note on the result it replaces."""
    return (
        f"Replaces the earlier result of this series ({prior.description}): "
        f"SR {prior.sr_sop_instance_uid}"
    )


def tracking_uid(ctx: OutputContext, name: str) -> str:
    """Tracking UID of a hinge point (or "annulus"): the same in SR and SEG."""
    return output_uid(ctx.identity.uid_root, ctx.series_uid, ctx.model_version, "tracking", name)


def algorithm(ctx: OutputContext) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of the model."""
    return hd.sr.AlgorithmIdentification(
        name=ctx.model_name,
        version=ctx.model_version,
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer=ctx.identity.manufacturer,
    )


def _hinge_group(
    ctx: OutputContext, name: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    point = ctx.landmarks_lps[name].reshape(1, 3)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(ctx, name), identifier=f"{name} hinge point"
        ),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=point,
            frame_of_reference_uid=ctx.frame_of_reference_uid,
        ),
        finding_type=c.HINGE_POINT,
        algorithm_id=algorithm(ctx),
        finding_sites=[
            hd.sr.FindingSite(
                anatomic_location=c.AORTIC_VALVE, topographical_modifier=c.SINUS[name]
            )
        ],
        measurements=[
            hd.sr.Measurement(name=c.CERTAINTY, value=ctx.confidence[name], unit=c.NO_UNITS)
        ],
    )


def _annulus_group(ctx: OutputContext) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    pts = ctx.points()
    polygon = np.vstack([pts, pts[:1]])
    view = coplanar_view(ctx.plane_normal)
    values = [
        *((c.DISTANCE[k], v, c.MM) for k, v in hinge_distances_mm(ctx.landmarks_lps).items()),
        (c.TILT, plane_tilt_deg(ctx.plane_normal), c.DEG),
        (c.PRIMARY_ANGLE, view.lao_deg, c.DEG),
        (c.SECONDARY_ANGLE, view.cranial_deg, c.DEG),
    ]
    measurements = [hd.sr.Measurement(name=n, value=float(v), unit=u) for n, v, u in values]
    return _ring_group(ctx, "annulus", "Annulus plane", polygon, measurements)


def _ring_group(
    ctx: OutputContext,
    key: str,
    identifier: str,
    polygon: np.ndarray,
    measurements: list[hd.sr.Measurement],
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A measurement group on the aortic ring: a closed SCOORD3D polygon and its NUMs."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(ctx, key), identifier=identifier
        ),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
            graphic_data=polygon,
            frame_of_reference_uid=ctx.frame_of_reference_uid,
        ),
        finding_type=c.AORTIC_RING,
        algorithm_id=algorithm(ctx),
        finding_sites=[hd.sr.FindingSite(anatomic_location=c.AORTIC_VALVE)],
        measurements=measurements,
    )


def _annulus_sizing_group(
    ctx: OutputContext,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """The "Aortic annulus" group: lumen contour and its measurements (None: not sized)."""
    s = ctx.sizing
    if s is None:
        return None
    contour = np.asarray(s.contour_lps, dtype=np.float64)
    polygon = np.vstack([contour, contour[:1]])  # closed: the first vertex repeated last
    diameter = [
        hd.sr.Measurement(name=c.DIAMETER, value=float(value), unit=c.MM, derivation=derivation)
        for value, derivation in (
            (s.min_diameter_mm, c.MINIMUM),
            (s.max_diameter_mm, c.MAXIMUM),
        )
    ]
    values = [
        (c.AREA, s.area_mm2, c.MM2),
        (c.PERIMETER, s.perimeter_mm, c.MM),
        (c.AREA_DIAMETER, s.area_diameter_mm, c.MM),
        (c.PERIMETER_DIAMETER, s.perimeter_diameter_mm, c.MM),
    ]
    measurements = [
        *(hd.sr.Measurement(name=n, value=float(v), unit=u) for n, v, u in values),
        *diameter,
        hd.sr.Measurement(name=c.ECCENTRICITY, value=float(s.eccentricity), unit=c.NO_UNITS),
    ]
    return _ring_group(ctx, "annulus-lumen", "Aortic annulus", polygon, measurements)


def _ostium_group(
    ctx: OutputContext, name: str, height_mm: float
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One coronary ostium: its point, site, height above the annulus plane, confidence."""
    values = [hd.sr.Measurement(name=c.HEIGHT, value=height_mm, unit=c.MM)]
    if name in ctx.confidence:
        values.append(
            hd.sr.Measurement(name=c.CERTAINTY, value=ctx.confidence[name], unit=c.NO_UNITS)
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(ctx, name), identifier=OSTIUM_LABELS[name].capitalize()
        ),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=ctx.ostia_lps[name].reshape(1, 3),
            frame_of_reference_uid=ctx.frame_of_reference_uid,
        ),
        finding_type=c.OSTIUM,
        algorithm_id=algorithm(ctx),
        finding_sites=[hd.sr.FindingSite(anatomic_location=c.CORONARY_OSTIUM[name])],
        measurements=values,
    )


def _measurement_groups(
    ctx: OutputContext,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """Hinge points, annulus plane, annulus sizing (when measured), ostia (when predicted)."""
    groups = [*(_hinge_group(ctx, name) for name in LANDMARK_NAMES), _annulus_group(ctx)]
    sizing = _annulus_sizing_group(ctx)
    if sizing is not None:
        groups.append(sizing)
    heights = ostium_heights_mm(ctx.ostia_lps, ctx.plane_origin, ctx.plane_normal)
    groups += [_ostium_group(ctx, name, heights[name]) for name in OSTIUM_NAMES if name in heights]
    return groups


def sizing_refusal_text(ctx: OutputContext) -> str | None:
    """The SR's and key images' note on a refused annulus sizing (None when not refused)."""
    if ctx.sizing_refusal is None:
        return None
    return f"Annulus sizing refused: {ctx.sizing_refusal}; the hinge points stand"


def notes(ctx: OutputContext) -> list[str]:
    """The free-text notes of a result: research use, phantom training, coplanar view."""
    out = [RESEARCH_USE_ONLY]
    if ctx.trained_on_phantom:
        out.append(PHANTOM_TRAINED)
    view = coplanar_view(ctx.plane_normal)
    out.append(f"Coplanar annulus view: {view.label(degree_sign=False)}")
    out.append(f"Model: {ctx.model_name} {ctx.model_version}")
    if ctx.prior is not None:
        out.append(replaces_text(ctx.prior))
    if ctx.ostia_lps:
        out.append(HEIGHT_DEFINITION)
    return out


def _qualitative_container(ctx: OutputContext) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items = [
        hd.sr.TextContentItem(
            name=c.COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for text in notes(ctx)
    ]
    refusal = sizing_refusal_text(ctx)
    if refusal is not None:
        items.append(
            hd.sr.TextContentItem(
                name=c.SIZING_REFUSED,
                value=refusal,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    items += [
        hd.sr.TextContentItem(
            name=c.WARNING, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for text in ctx.warnings
    ]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _report(ctx: OutputContext) -> hd.sr.MeasurementReport:
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(
                ctx.identity.uid_root, "device", ctx.model_version, "device", ctx.model_name
            ),
            name=ctx.model_name[:64],
            manufacturer_name=ctx.identity.manufacturer,
            model_name=ctx.model_version[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=_measurement_groups(ctx),
    )
    report[0].ContentSequence.append(_qualitative_container(ctx))
    return report


def _image_library(ctx: OutputContext) -> pydicom.Dataset:
    """TID 1600 with one entry per source plane; a multi-frame CT's entries get their
    frame numbers (highdicom groups the planes by Frame of Reference, keeping their order,
    and references the instance only)."""
    (library,) = hd.sr.ImageLibrary([frame.as_image() for frame in ctx.frames])
    images = [
        item
        for group in library.ContentSequence
        for item in group.ContentSequence
        if item.ValueType == hd.sr.ValueTypeValues.IMAGE.value
    ]
    if len(images) != len(ctx.frames):
        raise OutputError(f"Image Library lists {len(images)} images for {len(ctx.frames)} planes")
    by_uid: dict[str, list[pydicom.Dataset]] = {}
    for image in images:
        by_uid.setdefault(str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID), []).append(
            image
        )
    for frame in ctx.frames:
        image = by_uid[str(frame.header.SOPInstanceUID)].pop(0)
        if frame.frame_number is not None:
            image.ReferencedSOPSequence[0].ReferencedFrameNumber = frame.frame_number
    return library


def _insert_image_library(sr: pydicom.Dataset, library: pydicom.Dataset) -> None:
    """Put the Image Library where TID 1500 has it: after Procedure Reported, before
    Imaging Measurements. It is added to the finished document because highdicom
    deep-copies and searches the whole content tree on construction: with a 320-slice
    library that took 17 of build_sr's 24 s (cProfile, loaded 2-core machine)."""
    items = sr.ContentSequence
    names = [str(i.ConceptNameCodeSequence[0].CodeValue) for i in items]
    at = names.index(codes.DCM.ImagingMeasurements.value)
    items.insert(at, library)


def _predecessor(ctx: OutputContext, prior: PriorResult) -> pydicom.Dataset:
    """The identifying attributes of the prior SR (same study: same series of CT)."""
    ds = pydicom.Dataset()
    ds.StudyInstanceUID = ctx.source[0].StudyInstanceUID
    ds.SeriesInstanceUID = prior.sr_series_instance_uid
    ds.SOPClassUID = pydicom.uid.Comprehensive3DSRStorage
    ds.SOPInstanceUID = prior.sr_sop_instance_uid
    return ds


def build_sr(ctx: OutputContext) -> pydicom.Dataset:
    """The Comprehensive 3D SR of one result (see the module docstring)."""
    key = ctx.key
    if ctx.prior is not None and ctx.prior.sr_sop_instance_uid == report_uid(key):
        raise OutputError("a result cannot replace itself (prior SR has this SR's UID)")
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(ctx.source),
        content=_report(ctx)[0],
        series_instance_uid=key.series_uid(KIND),
        series_number=SERIES_NUMBERS[KIND],
        sop_instance_uid=report_uid(key),
        instance_number=1,
        manufacturer=ctx.identity.manufacturer,
        is_complete=True,
        is_final=False,
        series_description=series_description(ctx, KIND),
        manufacturer_model_name=ctx.model_name[:64],
        software_versions=software_versions(ctx),
        coding_schemes=[c.local_coding_scheme()],
        previous_versions=None if ctx.prior is None else [_predecessor(ctx, ctx.prior)],
    )
    _insert_image_library(sr, _image_library(ctx))
    mark_node_output(sr, ctx, KIND)
    return sr


__all__ = [
    "algorithm",
    "build_sr",
    "notes",
    "replaces_text",
    "report_uid",
    "sizing_refusal_text",
    "tracking_uid",
]
