"""Model-grid phantom cohorts for training: calcium options and mixes, cache keys, ostia."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from glipcore.phantom import generate
from glipcore.phantom_cases import CalciumShare, PhantomData, phantom_cases
from glipcore.preprocess import Preprocessing

MIX = [{"fraction": 0.6, "level": "default"}, {"fraction": 0.4, "level": "heavy", "hinge": True}]


def test_a_mix_assigns_cases_in_proportion_and_stably() -> None:
    spec = PhantomData.model_validate({"seed": 1000, "cases": 240, "calcium": MIX})
    labels = [spec.share_of(i).label for i in range(240)]
    counts = Counter(labels)
    assert abs(counts["heavy+hinge"] - 96) <= 3 and counts["default"] + counts["heavy+hinge"] == 240
    more = spec.model_copy(update={"cases": 300})
    assert [more.share_of(i).label for i in range(240)] == labels  # stable per index
    other = PhantomData.model_validate({"seed": 1001, "cases": 240, "calcium": MIX})
    assert [other.share_of(i).label for i in range(240)] != labels
    single = PhantomData(calcium="heavy", hinge_calcium=True)
    assert single.shares() == (CalciumShare(fraction=1.0, level="heavy", hinge=True),)


@pytest.mark.parametrize(
    ("calcium", "message"),
    [
        ([{"fraction": 0.6}], "sum to 0.6"),
        ([], "at least one share"),
        ("extreme", "calcium"),
    ],
)
def test_bad_calcium_settings_are_refused(calcium: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PhantomData.model_validate({"calcium": calcium})
    with pytest.raises(ValidationError, match="hinge_calcium"):
        PhantomData.model_validate({"calcium": MIX, "hinge_calcium": True})


def test_cases_carry_ostia_and_the_cache_keys_the_options(tmp_path: Path) -> None:
    prep = Preprocessing()
    cache = tmp_path / "cache"
    plain = PhantomData(seed=5, cases=5, preset="fast")
    calcified = PhantomData(seed=5, cases=5, preset="fast", calcium="heavy", hinge_calcium=True)
    a, meta_a = phantom_cases(plain, prep, cache, progress=False)
    b, meta_b = phantom_cases(calcified, prep, cache, progress=False)
    assert len(list(cache.glob("phantom-*.npz"))) == 10  # a stale default case is never reused
    assert meta_a["phantom_calcium_cases"] == {"default": 5}
    assert meta_b["phantom_calcium_cases"] == {"heavy+hinge": 5}
    assert meta_b["phantom_calcium"] == [{"fraction": 1.0, "level": "heavy", "hinge": True}]
    for case_a, case_b in zip(a, b, strict=True):
        assert case_a.case_id == case_b.case_id
        assert np.array_equal(case_a.landmarks_lps, case_b.landmarks_lps)
        assert not np.array_equal(case_a.volume.array, case_b.volume.array)
    _, truth = generate(5, 2, "fast", calcium="heavy", hinge_calcium=True)
    assert b[2].ostia_lps is not None and np.array_equal(b[2].ostia_lps, truth.ostia_lps)
    again, _ = phantom_cases(calcified, prep, cache, progress=False)  # from the cache
    assert np.array_equal(again[2].volume.array, b[2].volume.array)
    assert len(list(cache.glob("phantom-*.npz"))) == 10
