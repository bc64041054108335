"""Landmark lists by name: which landmarks a model predicts, in channel order, and the
points of a case or a prediction picked by name.

A model's landmark list (``TrainConfig.landmarks``, a bundle's ``landmarks``) names a
subset of :data:`glipcore.ALL_LANDMARKS` that holds the three hinge points (the annulus
plane needs them), each at most once; its order is the network's channel order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from glipcore import ALL_LANDMARKS, LANDMARKS, OSTIA


def check_landmarks(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple; ValueError unless they are known, distinct and include the
    three hinge points."""
    out = tuple(names)
    unknown = [n for n in out if n not in ALL_LANDMARKS]
    if unknown:
        raise ValueError(f"unknown landmarks {unknown}; known: {list(ALL_LANDMARKS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"landmarks must be distinct, got {list(out)}")
    missing = [n for n in LANDMARKS if n not in out]
    if missing:
        raise ValueError(
            f"landmarks must include the hinge points {list(LANDMARKS)}; missing {missing}"
        )
    return out


def pick(names: Sequence[str], points: ArrayLike, wanted: Iterable[str]) -> NDArray[np.float64]:
    """Rows of ``points`` (..., L, 3), in ``names`` order, for the ``wanted`` names."""
    p = np.asarray(points, dtype=np.float64)
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for n in wanted:
        if n not in index:
            raise ValueError(f"no landmark {n!r} here; have {list(names)}")
        rows.append(index[n])
    return np.asarray(p[..., rows, :], dtype=np.float64)


def named_points(
    hinges: ArrayLike, ostia: ArrayLike | None, wanted: Iterable[str]
) -> NDArray[np.float64]:
    """(L, 3) points for the ``wanted`` names from hinge points (3, 3) in RCC, LCC, NCC
    order and optional ostia (2, 3) in LCO, RCO order; a row of NaN for an ostium that is
    not known (``ostia`` None or its row NaN)."""
    ost = np.full((len(OSTIA), 3), np.nan) if ostia is None else np.asarray(ostia, float)
    table = np.concatenate([np.asarray(hinges, dtype=np.float64).reshape(3, 3), ost])
    return pick(ALL_LANDMARKS, table, wanted).reshape(-1, 3)


def with_truth(names: Sequence[str], truths: Iterable[ArrayLike]) -> tuple[str, ...]:
    """The ``names`` (in order) that at least one of ``truths`` (each (L, 3), a NaN row for
    an unknown landmark) has a point for."""
    known = np.zeros(len(names), dtype=bool)
    for t in truths:
        known |= np.isfinite(np.asarray(t, dtype=np.float64)).all(axis=1)
    return tuple(n for n, k in zip(names, known.tolist(), strict=True) if k)


__all__ = ["check_landmarks", "named_points", "pick", "with_truth"]
