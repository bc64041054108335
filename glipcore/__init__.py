"""glipcore: the science of glip-node.

Heatmaps, the GLiP loss and baselines, the 3D U-Net, decoding, geometry and metrics,
the aortic-root phantom, volumes and resampling, training, the model bundle and the
Predictor. No networking, no database, no DICOM networking.
"""

__version__ = "0.1.0"

LANDMARKS: tuple[str, ...] = ("RCC", "LCC", "NCC")
"""Landmark names in channel order: right, left and non-coronary cusp hinge points."""

OSTIA: tuple[str, ...] = ("LCO", "RCO")
"""Optional landmarks: the left and right coronary ostia (centre of the vessel where it
leaves the sinus wall)."""

ALL_LANDMARKS: tuple[str, ...] = LANDMARKS + OSTIA
"""Every landmark a manifest or a bundle may name, in channel order."""
