"""What the node accepts and how it tells a series' cardiac phases apart: the storage
classes that become jobs or are only archived, the transfer syntaxes accepted, and the
phase attributes with their canonical text. Shared by the SCP, the assembler and the
worker's series loader, so that none of them imports another."""

from __future__ import annotations

from typing import Any

from pydicom import uid as sc

TRANSFER_SYNTAXES: list[str] = [
    sc.ExplicitVRLittleEndian,
    sc.ImplicitVRLittleEndian,
    sc.DeflatedExplicitVRLittleEndian,
    sc.JPEGBaseline8Bit,
    sc.JPEGExtended12Bit,
    sc.JPEGLossless,
    sc.JPEGLosslessSV1,
    sc.JPEGLSLossless,
    sc.JPEGLSNearLossless,
    sc.JPEG2000Lossless,
    sc.JPEG2000,
    sc.RLELossless,
]
"""Accepted for every storage class; the sender's choice is stored as sent."""

PROCESSED_CLASSES: list[str] = [
    sc.CTImageStorage,
    sc.EnhancedCTImageStorage,
    sc.LegacyConvertedEnhancedCTImageStorage,
]
"""Storage classes that can become jobs."""

ARCHIVE_ONLY_CLASSES: list[str] = [
    sc.SecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
    sc.BasicTextSRStorage,
    sc.EnhancedSRStorage,
    sc.ComprehensiveSRStorage,
    sc.Comprehensive3DSRStorage,
    sc.XRayRadiationDoseSRStorage,
    sc.KeyObjectSelectionDocumentStorage,
    sc.SegmentationStorage,
    sc.GrayscaleSoftcopyPresentationStateStorage,
    sc.RawDataStorage,
    sc.EncapsulatedPDFStorage,
]
"""Other storage classes that come with a CT study: archived, never processed."""

PHASE_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("cardiac_phase_percent", "NominalPercentageOfCardiacPhase"),
    ("temporal_position_index", "TemporalPositionIndex"),
    ("trigger_time", "TriggerTime"),
    ("acquisition_number", "AcquisitionNumber"),
)
"""Instance columns (and the DICOM attribute each comes from) that separate cardiac
phases, in the order they are tried."""


def phase_value_str(value: Any) -> str:
    """The canonical text of a phase attribute value (stored on the job)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
