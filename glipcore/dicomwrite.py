"""Write a Volume (HU) as DICOM CT: a single-frame CT Image Storage series, one Enhanced
CT Image Storage file or one Legacy Converted Enhanced CT Image Storage file. Used by the
phantom and by tests; output is deterministic (UIDs derive from the series UID, no
wall-clock dates)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from glipcore import __version__
from glipcore.geometry import FloatArray
from glipcore.volume import Volume

DEFAULT_UID_PREFIX = PYDICOM_ROOT_UID
"""UID root for generated objects (pydicom's; deterministic via entropy sources)."""

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
COMPRESSED = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = UNCOMPRESSED + COMPRESSED


@dataclass(frozen=True)
class SeriesMeta:
    """Patient, study, series and equipment attributes of a written CT series."""

    patient_name: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    patient_birth_date: str = ""
    patient_sex: str = "O"
    study_date: str = "20240101"
    study_time: str = "120000"
    study_id: str = "1"
    accession_number: str = ""
    referring_physician_name: str = ""
    study_description: str = "CT cardiac pre-TAVR (glip-node phantom)"
    series_description: str = "CTA aortic root phantom"
    series_number: int = 1
    acquisition_number: int = 1
    manufacturer: str = "glip-node phantom"
    manufacturer_model_name: str = "glipcore phantom"
    device_serial_number: str = "0"
    software_versions: str = f"glipcore {__version__}"
    institution_name: str = "glip-node"
    station_name: str = "PHANTOM"
    body_part_examined: str = "HEART"
    patient_position: str = "HFS"
    kvp: float = 100.0
    tube_current_ma: int = 300
    exposure_time_ms: int = 280
    convolution_kernel: str = "STANDARD"
    contrast_agent: str | None = "Iodinated contrast (synthetic)"
    window_center: float = 200.0
    window_width: float = 800.0
    uid_prefix: str = DEFAULT_UID_PREFIX

    @classmethod
    def synthetic(
        cls,
        seed_or_rng: int | np.random.Generator,
        case_id: str,
        *,
        uid_prefix: str = DEFAULT_UID_PREFIX,
        **overrides: Any,
    ) -> SeriesMeta:
        """Synthetic identity for a phantom case: patient "PHANTOM^<CASE_ID>", random birth
        date, sex and study date/time from the seed, and UIDs that depend only on
        (seed, case_id), so regenerating a case reproduces its UIDs."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", case_id):
            raise ValueError(f"case_id must be 1-40 letters, digits, '_' or '-', got {case_id!r}")
        rng = (
            seed_or_rng
            if isinstance(seed_or_rng, np.random.Generator)
            else np.random.default_rng(seed_or_rng)
        )
        token = str(int(rng.integers(0, 2**62)))
        label = case_id.upper().replace("-", "").replace("_", "")

        def uid(kind: str) -> str:
            return str(generate_uid(uid_prefix, ["glip-node phantom", case_id, token, kind]))

        fields: dict[str, Any] = {
            "patient_name": f"PHANTOM^{label}",
            "patient_id": f"GLIP-{label}"[:64],
            "patient_birth_date": _date(rng, 1930, 1965),
            "patient_sex": str(rng.choice(["F", "M"])),
            "study_date": _date(rng, 2020, 2024),
            "study_time": f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00",
            "accession_number": f"GLIP{int(token) % 10**8:08d}",
            "study_instance_uid": uid("study"),
            "series_instance_uid": uid("series"),
            "frame_of_reference_uid": uid("frame-of-reference"),
            "uid_prefix": uid_prefix,
        }
        fields.update(overrides)
        return cls(**fields)

    def instance_uid(self, kind: str, index: int = 0) -> str:
        """Deterministic SOP Instance UID for object ``kind`` number ``index`` of the series."""
        return str(generate_uid(self.uid_prefix, [self.series_instance_uid, kind, str(index)]))


def _date(rng: np.random.Generator, first_year: int, last_year: int) -> str:
    year = int(rng.integers(first_year, last_year + 1))
    return f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    orientation: list[float]  # ImageOrientationPatient: row (i) then column (j) cosines
    pixel_spacing: list[float]  # (spacing between rows = j, between columns = i)
    positions: FloatArray  # (n, 3) ImagePositionPatient per slice k
    normal: FloatArray
    slice_spacing: float
    centre_offset: FloatArray  # from a slice's first pixel to its centre, LPS mm
    fov_mm: float  # reconstruction diameter: the larger in-plane extent


def _geometry(affine: FloatArray, shape_zyx: tuple[int, int, int]) -> _Geometry:
    cols = affine[:3, :3]
    sp = np.linalg.norm(cols, axis=0)
    u, v, w = cols[:, 0] / sp[0], cols[:, 1] / sp[1], cols[:, 2] / sp[2]
    if abs(float(np.dot(u, v))) > 1e-6:
        raise ValueError("the affine's i and j axes are not orthogonal: DICOM needs square grids")
    normal = np.cross(u, v)
    if float(np.linalg.norm(np.cross(w, normal))) > 1e-6:
        raise ValueError(
            "the affine's slice axis is not along the slice normal (sheared, like a gantry "
            "tilt); resample to an orthogonal grid before writing"
        )
    n_slices, rows, n_cols = shape_zyx
    positions = affine[:3, 3] + np.outer(np.arange(n_slices), cols[:, 2])
    iop = [0.0 if abs(x) < 1e-12 else float(x) for x in (*u, *v)]
    centre = cols[:, 0] * (n_cols - 1) / 2 + cols[:, 1] * (rows - 1) / 2
    fov = max(float(sp[0]) * n_cols, float(sp[1]) * rows)
    return _Geometry(
        iop, [float(sp[1]), float(sp[0])], positions, normal, float(sp[2]), centre, fov
    )


def _ds(values: Sequence[float] | NDArray[Any]) -> list[str]:
    return [format_number_as_ds(0.0 if abs(float(x)) < 1e-12 else float(x)) for x in values]


# --------------------------------------------------------------------------- pixels


@dataclass(frozen=True)
class _Encoding:
    intercept: float
    bits_stored: int


def _stored_values(array: NDArray[Any], enc: _Encoding) -> NDArray[np.int16]:
    """HU -> int16 stored values (rounded) for RescaleSlope 1 and the given intercept."""
    low, high = float(np.min(array)), float(np.max(array))  # NaN propagates
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("the volume holds NaN or infinite values; DICOM CT stores integers")
    lo, hi = -(2 ** (enc.bits_stored - 1)), 2 ** (enc.bits_stored - 1) - 1
    if round(low - enc.intercept) < lo or round(high - enc.intercept) > hi:
        raise ValueError(
            f"HU range [{low:.0f}, {high:.0f}] with intercept {enc.intercept:g} does not fit "
            f"{enc.bits_stored} signed bits; use bits_stored=16 or clip the volume"
        )
    stored = np.empty(array.shape, dtype=np.int16)
    for k in range(array.shape[0]):  # slice by slice: no full-size float64 copy
        stored[k] = np.rint(np.asarray(array[k], dtype=np.float64) - enc.intercept)
    return stored


def _check_transfer_syntax(transfer_syntax: str, shape_zyx: tuple[int, int, int]) -> UID:
    ts = UID(transfer_syntax)
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(u.name for u in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f"transfer syntax {ts} ({ts.name}) is not supported; use one of {names}")
    if ts == JPEG2000Lossless and min(shape_zyx[1:]) < 32:
        # openjpeg's encoder uses 6 wavelet levels, which need 2^5 pixels per side
        raise ValueError(
            f"JPEG 2000 needs at least 32 rows and columns, got {shape_zyx[1]} x "
            f"{shape_zyx[2]}; use another transfer syntax for such small images"
        )
    return ts


def _set_pixels(ds: Dataset, stored: NDArray[np.int16], ts: UID) -> None:
    """Pixel Data for one frame or a (frames, rows, cols) stack, encoded for ``ts``."""
    if ts in UNCOMPRESSED:
        ds.PixelData = np.ascontiguousarray(stored).astype("<i2", copy=False).tobytes()
        ds["PixelData"].VR = "OW"
        return
    ds.compress(ts, np.ascontiguousarray(stored), generate_instance_uid=False)


def _file_meta(sop_class: str, sop_instance: str, ts: UID) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = UID(sop_class)
    fm.MediaStorageSOPInstanceUID = UID(sop_instance)
    fm.TransferSyntaxUID = ts
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = f"GLIPNODE_{__version__}"[:16]
    return fm


# --------------------------------------------------------------------------- common modules


def _patient_study_series(ds: Dataset, meta: SeriesMeta) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = meta.patient_birth_date
    ds.PatientSex = meta.patient_sex
    ds.StudyInstanceUID = meta.study_instance_uid
    ds.StudyDate = meta.study_date
    ds.StudyTime = meta.study_time
    ds.ReferringPhysicianName = meta.referring_physician_name
    ds.StudyID = meta.study_id
    ds.AccessionNumber = meta.accession_number
    ds.StudyDescription = meta.study_description
    ds.Modality = "CT"
    ds.SeriesInstanceUID = meta.series_instance_uid
    ds.SeriesNumber = meta.series_number
    ds.SeriesDate = meta.study_date
    ds.SeriesTime = meta.study_time
    ds.SeriesDescription = meta.series_description
    ds.BodyPartExamined = meta.body_part_examined
    ds.PatientPosition = meta.patient_position
    ds.FrameOfReferenceUID = meta.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = meta.manufacturer
    ds.InstitutionName = meta.institution_name
    ds.StationName = meta.station_name
    ds.ManufacturerModelName = meta.manufacturer_model_name
    ds.DeviceSerialNumber = meta.device_serial_number
    ds.SoftwareVersions = meta.software_versions


def _pixel_description(ds: Dataset, rows: int, cols: int, enc: _Encoding) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 1


def _contrast(ds: Dataset, meta: SeriesMeta) -> None:
    if meta.contrast_agent:
        ds.ContrastBolusAgent = meta.contrast_agent
        ds.ContrastBolusRoute = "IV"


# --------------------------------------------------------------------------- single-frame CT


def _ct_slice(
    meta: SeriesMeta,
    geo: _Geometry,
    k: int,
    shape: tuple[int, int],
    enc: _Encoding,
    ts: UID,
) -> Dataset:
    sop_uid = meta.instance_uid("ct", k)
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, sop_uid, ts)
    _patient_study_series(ds, meta)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = meta.acquisition_number
    ds.ContentDate = meta.study_date
    ds.ContentTime = meta.study_time
    ds.AcquisitionDate = meta.study_date
    ds.AcquisitionTime = meta.study_time
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImagePositionPatient = _ds(geo.positions[k])
    ds.ImageOrientationPatient = _ds(geo.orientation)
    ds.PixelSpacing = _ds(geo.pixel_spacing)
    ds.SliceThickness = format_number_as_ds(geo.slice_spacing)
    ds.SliceLocation = format_number_as_ds(float(geo.positions[k] @ geo.normal))
    _pixel_description(ds, shape[0], shape[1], enc)
    ds.RescaleIntercept = format_number_as_ds(enc.intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = format_number_as_ds(meta.window_center)
    ds.WindowWidth = format_number_as_ds(meta.window_width)
    ds.KVP = format_number_as_ds(meta.kvp)
    ds.XRayTubeCurrent = meta.tube_current_ma
    ds.ExposureTime = meta.exposure_time_ms
    ds.ConvolutionKernel = meta.convolution_kernel
    ds.ReconstructionDiameter = format_number_as_ds(geo.fov_mm)
    ds.GantryDetectorTilt = "0"
    ds.PatientOrientation = ""  # Type 2C: present though the image plane module is given
    _contrast(ds, meta)
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(
    vol: Volume,
    out_dir: Path,
    meta: SeriesMeta,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_prefix: str = "CT",
    rescale_intercept: float = 0.0,
    bits_stored: int = 16,
) -> list[Path]:
    """Write ``vol`` (HU) as one CT Image Storage file per slice k into ``out_dir``.

    Pixels are stored as signed int16 = round(HU - rescale_intercept) with slope 1
    (intercept 0 or -1024 are the usual choices). Geometry comes from the affine:
    ImagePositionPatient of slice k = affine @ (0, 0, k, 1), ImageOrientationPatient from
    the i and j columns, PixelSpacing = (j spacing, i spacing). Returns the files in k
    order."""
    ts = _check_transfer_syntax(transfer_syntax, vol.shape_zyx)
    enc = _encoding(rescale_intercept, bits_stored)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(vol.shape_zyx[0])))
    paths = []
    for k, ds in enumerate(_ct_slices(vol, meta, enc, ts)):
        path = out_dir / f"{file_prefix}{k + 1:0{width}d}.dcm"
        _write(ds, path)
        paths.append(path)
    return paths


def _encoding(rescale_intercept: float, bits_stored: int) -> _Encoding:
    if bits_stored not in (12, 16):
        raise ValueError(f"bits_stored must be 12 or 16, got {bits_stored}")
    return _Encoding(float(rescale_intercept), bits_stored)


def _ct_slices(vol: Volume, meta: SeriesMeta, enc: _Encoding, ts: UID) -> Iterator[Dataset]:
    """The single-frame CT datasets of ``vol``, slice k after slice k - 1, pixels encoded."""
    n, rows, cols = vol.shape_zyx
    geo = _geometry(vol.affine, vol.shape_zyx)
    stored = _stored_values(vol.array, enc)
    for k in range(n):
        ds = _ct_slice(meta, geo, k, (rows, cols), enc, ts)
        _set_pixels(ds, stored[k], ts)
        yield ds


# --------------------------------------------------------------------------- Enhanced CT


def _coerce(keyword: str, value: Any) -> Any:
    """Numbers -> the element's VR (DS strings within 16 characters, FD floats)."""
    if value is None:
        return None
    vr = dictionary_VR(keyword)
    many = isinstance(value, list | tuple | np.ndarray)
    values = list(value) if many else [value]
    if vr == "DS":
        values = [v if isinstance(v, str) else _ds([v])[0] for v in values]
    elif vr in ("FD", "FL"):
        values = [float(v) for v in values]
    return values if many else values[0]


def _item(**attrs: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, _coerce(keyword, value))
    return item


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _shared_groups(meta: SeriesMeta, geo: _Geometry, enc: _Encoding, event_uid: str) -> Dataset:
    fg = Dataset()
    fg.PixelMeasuresSequence = _seq(
        _item(
            PixelSpacing=_ds(geo.pixel_spacing),
            SliceThickness=format_number_as_ds(geo.slice_spacing),
        )
    )
    fg.PlaneOrientationSequence = _seq(_item(ImageOrientationPatient=_ds(geo.orientation)))
    fg.PixelValueTransformationSequence = _seq(
        _item(
            RescaleIntercept=format_number_as_ds(enc.intercept),
            RescaleSlope="1",
            RescaleType="HU",
        )
    )
    fg.FrameVOILUTSequence = _seq(
        _item(
            WindowCenter=format_number_as_ds(meta.window_center),
            WindowWidth=format_number_as_ds(meta.window_width),
        )
    )
    fg.CTImageFrameTypeSequence = _seq(
        _item(
            FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
            PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME",
            VolumeBasedCalculationTechnique="NONE",
        )
    )
    fg.FrameAnatomySequence = _seq(
        _item(
            AnatomicRegionSequence=_seq(_code("80891009", "SCT", "Heart")),
            FrameLaterality="U",
        )
    )
    fg.IrradiationEventIdentificationSequence = _seq(_item(IrradiationEventUID=event_uid))
    fg.CTAcquisitionTypeSequence = _seq(
        _item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
    )
    fg.CTAcquisitionDetailsSequence = _seq(
        _item(
            DataCollectionDiameter=500,
            RevolutionTime=0.28,
            SingleCollimationWidth=0.5,
            TotalCollimationWidth=80,
            TableHeight=150,
            GantryDetectorTilt=0,
        )
    )
    fg.CTTableDynamicsSequence = _seq(
        _item(TableSpeed=50, TableFeedPerRotation=14, SpiralPitchFactor=0.175)
    )
    fg.CTGeometrySequence = _seq(
        _item(DistanceSourceToDetector=1085.6, DistanceSourceToDataCollectionCenter=595)
    )
    fg.CTReconstructionSequence = _seq(
        _item(
            ReconstructionAlgorithm="FILTER_BACK_PROJ",
            ConvolutionKernel=meta.convolution_kernel,
            ConvolutionKernelGroup="SOFT_TISSUE",
            ReconstructionDiameter=geo.fov_mm,
            ReconstructionPixelSpacing=geo.pixel_spacing,
            ReconstructionAngle=360,
            ImageFilter="NONE",
        )
    )
    fg.CTExposureSequence = _seq(
        _item(
            ExposureTimeInms=float(meta.exposure_time_ms),
            XRayTubeCurrentInmA=float(meta.tube_current_ma),
            ExposureInmAs=meta.tube_current_ma * meta.exposure_time_ms / 1000.0,
            ExposureModulationType="NONE",
        )
    )
    fg.CTXRayDetailsSequence = _seq(
        _item(
            KVP=meta.kvp,
            FocalSpots=[0.7],
            FilterType="BODY",
            FilterMaterial=["ALUMINUM"],
        )
    )
    if meta.contrast_agent:
        fg.ContrastBolusUsageSequence = _seq(
            _item(
                ContrastBolusAgentNumber=1,
                ContrastBolusAgentAdministered="YES",
                ContrastBolusAgentDetected=None,
            )
        )
    return fg


def _frame_group(meta: SeriesMeta, geo: _Geometry, k: int) -> Dataset:
    stamp = f"{meta.study_date}{meta.study_time}"
    fg = Dataset()
    fg.FrameContentSequence = _seq(
        _item(
            FrameAcquisitionNumber=meta.acquisition_number,
            FrameReferenceDateTime=stamp,
            FrameAcquisitionDateTime=stamp,
            FrameAcquisitionDuration=float(meta.exposure_time_ms),
            StackID="1",
            InStackPositionNumber=k + 1,
            DimensionIndexValues=[1, k + 1],
        )
    )
    fg.PlanePositionSequence = _seq(_item(ImagePositionPatient=_ds(geo.positions[k])))
    centre = geo.positions[k] + geo.centre_offset
    fg.CTPositionSequence = _seq(
        _item(
            TablePosition=float(-centre[2]),
            ReconstructionTargetCenterPatient=centre.tolist(),
            DataCollectionCenterPatient=centre.tolist(),
        )
    )
    return fg


def _dimensions(ds: Dataset, dim_uid: str) -> None:
    ds.DimensionOrganizationSequence = _seq(_item(DimensionOrganizationUID=dim_uid))
    ds.DimensionOrganizationType = "3D"
    stack = _item(
        DimensionOrganizationUID=dim_uid,
        DimensionIndexPointer=Tag("StackID"),
        FunctionalGroupPointer=Tag("FrameContentSequence"),
        DimensionDescriptionLabel="Stack ID",
    )
    position = _item(
        DimensionOrganizationUID=dim_uid,
        DimensionIndexPointer=Tag("InStackPositionNumber"),
        FunctionalGroupPointer=Tag("FrameContentSequence"),
        DimensionDescriptionLabel="In-Stack Position Number",
    )
    ds.DimensionIndexSequence = _seq(stack, position)


def _enhanced_dataset(vol: Volume, meta: SeriesMeta, enc: _Encoding, ts: UID) -> Dataset:
    n, rows, cols = vol.shape_zyx
    geo = _geometry(vol.affine, vol.shape_zyx)
    sop_uid = meta.instance_uid("enhanced-ct")
    dim_uid = meta.instance_uid("dimension-organization")
    stamp = f"{meta.study_date}{meta.study_time}"
    ds = Dataset()
    ds.file_meta = _file_meta(EnhancedCTImageStorage, sop_uid, ts)
    _patient_study_series(ds, meta)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate = meta.study_date
    ds.ContentTime = meta.study_time
    ds.AcquisitionNumber = meta.acquisition_number
    ds.AcquisitionDateTime = stamp
    ds.AcquisitionDuration = float(meta.exposure_time_ms) / 1000.0
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = _seq()
    _pixel_description(ds, rows, cols, enc)
    ds.NumberOfFrames = n
    if meta.contrast_agent:
        ds.ContrastBolusAgentSequence = _seq(
            _item(
                CodeValue="385420005",
                CodingSchemeDesignator="SCT",
                CodeMeaning="Contrast media",
                ContrastBolusAgentNumber=1,
                ContrastBolusAdministrationRouteSequence=_seq(
                    _code("47625008", "SCT", "Intravenous route")
                ),
                ContrastBolusIngredientCodeSequence=_seq(_code("44588005", "SCT", "Iodine")),
                ContrastBolusVolume=None,
                ContrastBolusIngredientConcentration=None,
            )
        )
    ds.SharedFunctionalGroupsSequence = _seq(
        _shared_groups(meta, geo, enc, meta.instance_uid("irradiation-event"))
    )
    ds.PerFrameFunctionalGroupsSequence = _seq(*(_frame_group(meta, geo, k) for k in range(n)))
    _dimensions(ds, dim_uid)
    return ds


def write_enhanced_ct(
    vol: Volume,
    path: Path,
    meta: SeriesMeta,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale_intercept: float = 0.0,
    bits_stored: int = 16,
) -> Path:
    """Write ``vol`` (HU) as one Enhanced CT Image Storage file; frame k is slice k with
    its own PlanePositionSequence, the rest in the shared functional groups."""
    ts = _check_transfer_syntax(transfer_syntax, vol.shape_zyx)
    enc = _encoding(rescale_intercept, bits_stored)
    ds = _enhanced_dataset(vol, meta, enc, ts)
    _set_pixels(ds, _stored_values(vol.array, enc), ts)
    return _write(ds, path)


def write_legacy_enhanced_ct(
    vol: Volume,
    path: Path,
    meta: SeriesMeta,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale_intercept: float = 0.0,
    bits_stored: int = 16,
) -> Path:
    """Write ``vol`` (HU) as one Legacy Converted Enhanced CT Image Storage file: the
    single-frame series :func:`write_ct_series` would write (not written itself), converted
    by highdicom into a new series of ``meta``'s study.

    The Common Instance Reference module that highdicom adds is left out: its source
    instances exist nowhere, and dciodvfy counts a Referenced Series Sequence as an error
    when the frames' only references are their Conversion Source Attributes (kept)."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    ts = _check_transfer_syntax(transfer_syntax, vol.shape_zyx)
    enc = _encoding(rescale_intercept, bits_stored)
    slices = list(_ct_slices(vol, meta, enc, UID(ExplicitVRLittleEndian)))
    ds = LegacyConvertedEnhancedCTImage(
        slices,
        series_instance_uid=meta.instance_uid("legacy-enhanced-series"),
        series_number=meta.series_number + 100,
        sop_instance_uid=meta.instance_uid("legacy-enhanced-ct"),
        instance_number=1,
        transfer_syntax_uid=ts,
    )
    if "ReferencedSeriesSequence" in ds:
        del ds.ReferencedSeriesSequence
    return _write(ds, path)


__all__ = [
    "DEFAULT_UID_PREFIX",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "SeriesMeta",
    "write_ct_series",
    "write_enhanced_ct",
    "write_legacy_enhanced_ct",
]
