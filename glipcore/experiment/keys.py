"""Run keys: a result is reused only when nothing that made it has changed.

A run's key hashes its resolved configuration (run settings and budget sizes, not the
device or thread count), the phantom generator version and the source of the glipcore
modules that affect training and evaluation (:data:`CODE_FILES`). Editing one of them, or
the phantom, gives every run a new key, so stale results are never reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import glipcore

CODE_FILES: tuple[str, ...] = (
    "dataset.py",
    "decode.py",
    "geometry.py",
    "heatmap.py",
    "landmarks.py",
    "losses.py",
    "metrics.py",
    "phantom_cases.py",
    "predict.py",
    "preprocess.py",
    "second_stage.py",
    "train.py",
    "unet.py",
    "unet_config.py",
    "volume.py",
    "phantom/*.py",
    "experiment/runner.py",
    "experiment/stage_two.py",
    "experiment/testset.py",
)
"""glipcore source files (globs, relative to the package) whose change invalidates runs."""

KEY_LENGTH = 12


def code_files(root: Path | None = None) -> list[Path]:
    """The files of :data:`CODE_FILES` that exist, sorted."""
    base = Path(root) if root is not None else Path(glipcore.__file__).parent
    found: set[Path] = set()
    for pattern in CODE_FILES:
        found.update(p for p in base.glob(pattern) if p.is_file())
    return sorted(found)


def code_hash(root: Path | None = None) -> str:
    """sha256 over the relative names and bytes of :func:`code_files` (hex)."""
    base = Path(root) if root is not None else Path(glipcore.__file__).parent
    h = hashlib.sha256()
    for p in code_files(base):
        h.update(p.relative_to(base).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def run_key(config: dict[str, Any], generator_version: str, code: str) -> str:
    """The first :data:`KEY_LENGTH` hex digits of the hash of a resolved configuration
    (JSON-able, key order irrelevant), the generator version and the code hash."""
    payload = json.dumps(
        {"config": config, "generator": generator_version, "code": code},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]
