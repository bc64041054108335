"""Parametric aortic-root CT phantom with ground truth.

An analytic thorax around the aortic root (torso, fat, muscle, lungs, spine, sternum, liver,
heart chambers, LVOT, root with three sinuses of Valsalva and closed leaflets, sinotubular
junction, ascending aorta, left and right coronary ostia with proximal arteries, calcium on
the cusps and beside the hinges, as much as the calcium options ask: see
:mod:`glipcore.phantom.calcium`), blurred analytically in mm and sampled on any grid, then
given noise and, for the poorer grades, motion blur and streaks.

Quality grades (the paper's five; ranges the scan is drawn from, see ``params.GRADES``):

====  =================  ============  ===========  ===========================
grade noise SD (native)  blood (HU)    motion (mm)  streaks (count, peak HU)
====  =================  ============  ===========  ===========================
1     48-60              250-320       1.0-1.8      6-12, 120-260
2     38-50              260-380       0.5-1.1      3-8, 50-140
3-    28-40              300-450       0.2-0.7      0-4, 20-70
3+    20-30              350-500       0-0.4        0-2, 10-30
4     15-22              430-550       0-0.2        none
====  =================  ============  ===========  ===========================

Noise SD is at the native 0.4 x 0.4 x 0.5 mm sampling; motion is an extra Gaussian blur
of everything that beats; streaks are beam-hardening/photon-starvation bands through the
dense SVC contrast or through valve calcium, in the axial slices that contain them.

Typical use::

    vol, truth = generate(seed=1, index=0, preset="model")
    case = random_case(1, 0); img = render(case, affine, shape)   # any grid
"""

from __future__ import annotations

from glipcore.phantom.calcium import CALCIUM_LEVELS, check_calcium
from glipcore.phantom.params import GRADES, QUALITY_GRADES, PhantomCase, random_case
from glipcore.phantom.render import (
    PRESETS,
    blur_sigmas,
    grid_for,
    noise_sd,
    render,
    render_clean,
    sample,
    voxel_width,
)
from glipcore.phantom.truth import PhantomTruth, truth_of
from glipcore.volume import Volume

GENERATOR_VERSION = "aortic-root-phantom/1.1"
"""Changes whenever the anatomy, its random draw, the rendering or the options change.

- 1.1: calcium options (``calcium`` none/mild/heavy and ``hinge_calcium``: annular nodules
  0-2 mm from the hinge points), each on its own random stream; cases with the default
  options are bit for bit those of 1.0. Also: enhanced (multi-frame) DICOM output and the
  coronary-ostium columns in ``glip phantom``'s manifest.
- 1.0: the first analytic aortic-root phantom.
"""

REPRODUCES_DEFAULT_COHORTS_OF: frozenset[str] = frozenset(
    {"aortic-root-phantom/1.0", GENERATOR_VERSION}
)
"""Generator versions whose cases with default options this generator draws bit for bit
(pinned by a fingerprint test): a model trained on such a cohort has seen exactly the cases
that ``glip phantom`` makes today with default options. Drop a version when the default
draw changes."""


def case_id(seed: int, index: int) -> str:
    """The id of case ``index`` of cohort ``seed`` (e.g. "phantom-7-0003")."""
    return f"phantom-{seed}-{index:04d}"


def generate(
    seed: int,
    index: int,
    preset: str = "full",
    *,
    workers: int = 1,
    calcium: str = "default",
    hinge_calcium: bool = False,
) -> tuple[Volume, PhantomTruth]:
    """Draw case (seed, index) with its calcium options (see :mod:`glipcore.phantom.calcium`)
    and render it on a preset grid (HU, float32, with noise)."""
    case = random_case(seed, index, calcium=calcium, hinge_calcium=hinge_calcium)
    affine, shape = grid_for(case, preset)
    array = render(case, affine, shape, noise=True, workers=workers)
    meta = {
        "case_id": case_id(seed, index),
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "index": index,
        "preset": preset,
        "calcium": calcium,
        "hinge_calcium": hinge_calcium,
    }
    return Volume(array=array, affine=affine, meta=meta), truth_of(case)


__all__ = [
    "CALCIUM_LEVELS",
    "GENERATOR_VERSION",
    "GRADES",
    "PRESETS",
    "QUALITY_GRADES",
    "REPRODUCES_DEFAULT_COHORTS_OF",
    "PhantomCase",
    "PhantomTruth",
    "blur_sigmas",
    "case_id",
    "check_calcium",
    "generate",
    "grid_for",
    "noise_sd",
    "random_case",
    "render",
    "render_clean",
    "sample",
    "truth_of",
    "voxel_width",
]
