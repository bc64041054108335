"""The output recipe version: what, besides the input and the model, shapes a result's
content. It goes into every result UID (:class:`.uids.ResultKey`), so that a release that
changes an object (an added SR group, another caption) or a changed setting (the SEG
sphere radius, the key-image size, a plausibility range that words the warnings) never
reuses a UID for other content.

The version hashes the node's version, the source of this package and of the modules
whose results the objects carry (the annulus sizing: a changed contour method changes the
SR's polygon and numbers), the versions of the libraries that encode or draw the objects,
and the settings.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import glipcore
from dicomnode import __version__
from dicomnode.config import Identity, OutputsConfig, PlausibilityConfig

_LIBRARIES = ("highdicom", "pydicom", "matplotlib", "numpy", "scipy", "SimpleITK")
_CONTENT_SOURCES = (
    Path(glipcore.__file__).parent / "sizing.py",
    Path(glipcore.__file__).parent / "lumen_rays.py",
    Path(glipcore.__file__).parent / "reformat.py",
    Path(glipcore.__file__).parent / "polygon.py",
    Path(glipcore.__file__).parent / "resample.py",
    Path(__file__).parents[1] / "result_keys.py",
)
"""Sources outside this package whose output the objects carry (annulus sizing)."""


@lru_cache(maxsize=1)
def code_version() -> str:
    """Digest of the node version, this package's source files, the sizing sources and the
    encoding libraries."""
    h = hashlib.sha256(f"glip-node {__version__}".encode())
    for lib in _LIBRARIES:
        h.update(f"\n{lib} {version(lib)}".encode())
    for path in (*sorted(Path(__file__).parent.glob("*.py")), *_CONTENT_SOURCES):
        h.update(f"\n{path.name}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def output_recipe(
    outputs: OutputsConfig, plausibility: PlausibilityConfig, identity: Identity
) -> str:
    """The recipe version (24 hex digits) of the objects made with these settings."""
    settings = {
        "outputs": outputs.model_dump(mode="json"),
        "plausibility": plausibility.model_dump(mode="json"),
        "identity": identity.model_dump(mode="json"),
    }
    text = code_version() + "\n" + json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


__all__ = ["code_version", "output_recipe"]
