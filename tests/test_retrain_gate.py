"""The promotion gate's rules on fixed metric tables, and the held-out split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicomnode.config import RetrainGateConfig
from dicomnode.learn.compare import paired_bootstrap, scores_of
from dicomnode.learn.gate import (
    PASSED,
    REFUSED,
    GateInput,
    Scores,
    decide,
    enough_studies,
    median_not_worse,
    reference_not_worse,
    sdr2_not_lower,
    worst_within_margin,
)
from dicomnode.learn.holdout import holdout_score, split_holdout

CFG = RetrainGateConfig(
    min_holdout_studies=5,
    median_margin_mm=0.0,
    worst_margin_mm=2.0,
    sdr2_margin=0.0,
    reference_margin_mm=0.25,
)
ACTIVE = Scores(cases=8, median_mm=1.5, q3_mm=2.0, worst_mm=4.0, sdr_2mm=0.70)
REF_ACTIVE = Scores(cases=4, median_mm=1.2, q3_mm=1.6, worst_mm=2.5, sdr_2mm=0.80)


def gate(candidate: Scores, reference: Scores = REF_ACTIVE) -> GateInput:
    return GateInput(candidate, ACTIVE, reference, REF_ACTIVE)


def with_(s: Scores, **kw: float) -> Scores:
    return Scores(**{**vars(s), **kw})


def test_a_candidate_equal_to_the_active_model_passes() -> None:
    d = decide(gate(ACTIVE), CFG)
    assert d.decision == PASSED and d.passed
    assert len(d.reasons()) == 5 and all(r.startswith("ok: ") for r in d.reasons())


def test_enough_studies() -> None:
    assert enough_studies(gate(with_(ACTIVE, cases=5)), CFG).ok
    r = enough_studies(gate(with_(ACTIVE, cases=4)), CFG)
    assert not r.ok and "4 held-out studies (at least 5" in r.reason


def test_median_not_worse() -> None:
    assert median_not_worse(gate(with_(ACTIVE, median_mm=1.4)), CFG).ok
    assert not median_not_worse(gate(with_(ACTIVE, median_mm=1.51)), CFG).ok
    lenient = CFG.model_copy(update={"median_margin_mm": 0.1})
    assert median_not_worse(gate(with_(ACTIVE, median_mm=1.55)), lenient).ok


def test_worst_within_margin() -> None:
    assert worst_within_margin(gate(with_(ACTIVE, worst_mm=6.0)), CFG).ok
    r = worst_within_margin(gate(with_(ACTIVE, worst_mm=6.01)), CFG)
    assert not r.ok and "6.01" in r.reason and "6.00" in r.reason


def test_sdr2_not_lower() -> None:
    assert sdr2_not_lower(gate(with_(ACTIVE, sdr_2mm=0.75)), CFG).ok
    assert not sdr2_not_lower(gate(with_(ACTIVE, sdr_2mm=0.69)), CFG).ok


def test_reference_not_worse() -> None:
    assert reference_not_worse(gate(ACTIVE, with_(REF_ACTIVE, median_mm=1.45)), CFG).ok
    r = reference_not_worse(gate(ACTIVE, with_(REF_ACTIVE, median_mm=1.46)), CFG)
    assert not r.ok and "reference" in r.reason


def test_a_poisoned_candidate_is_refused_for_every_error_rule() -> None:
    # annotations shifted by 10 mm: ~10 mm everywhere, even where annotations cannot reach
    poisoned = Scores(cases=8, median_mm=10.2, q3_mm=11.0, worst_mm=13.0, sdr_2mm=0.0)
    d = decide(gate(poisoned, with_(REF_ACTIVE, median_mm=10.1)), CFG)
    assert d.decision == REFUSED
    failed = [r.rule for r in d.rules if not r.ok]
    assert failed == ["median", "worst", "sdr_2mm", "reference"]
    assert sum(r.startswith("FAILED: ") for r in d.reasons()) == 4


def test_undefined_scores_refuse() -> None:
    nan = Scores(0, math.nan, math.nan, math.nan, math.nan)
    assert decide(GateInput(nan, nan, REF_ACTIVE, REF_ACTIVE), CFG).decision == REFUSED


def test_scores_and_paired_bootstrap() -> None:
    active = np.array([[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    worse = active + 1.0
    s = scores_of(active)
    assert (s.cases, s.median_mm, s.worst_mm) == (4, 1.0, 5.0)
    assert s.sdr_2mm == pytest.approx(10 / 12)
    d = paired_bootstrap(worse, active, "median_mm", resamples=200)
    assert d["delta"] == 1.0 and d["lo"] == pytest.approx(1.0) and d["hi"] == pytest.approx(1.0)
    sdr = paired_bootstrap(worse, active, "sdr_2mm", resamples=200)
    assert sdr["delta"] < 0 and sdr["lo"] <= sdr["delta"] <= sdr["hi"]


def test_holdout_is_stable_and_grows_with_the_site() -> None:
    uids = [f"1.2.3.{i}" for i in range(40)]
    held = split_holdout(uids, 0.2, 5)
    assert held == split_holdout(list(reversed(uids)), 0.2, 5)
    assert all(holdout_score(u) < 0.2 for u in held) or len(held) == 5
    more = split_holdout([*uids, *(f"1.2.4.{i}" for i in range(40))], 0.2, 5)
    below = {u for u in uids if holdout_score(u) < 0.2}
    assert below <= more  # a study held out by its hash stays held out
    assert len(split_holdout(uids[:6], 0.2, 5)) == 4  # two studies always stay for training
    assert split_holdout(uids[:2], 0.2, 5) == set()
