"""The promotion gate: may a retrained candidate replace the active model?

Every rule compares the candidate with the active model on the same cases and gives a
readable reason, kept with the candidate whether it holds or not. The candidate passes
only when every rule holds:

* enough held-out studies to judge at all;
* its median hinge error on them is not worse than the active model's (within a margin);
* its worst hinge error is not worse by more than a margin;
* its success detection rate at 2 mm is not lower (within a margin);
* its median on the fixed phantom reference set (no annotation can change it) is not worse
  by more than a margin, so wrong annotations cannot vote for themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomnode.config import RetrainGateConfig

PASSED = "passed"
REFUSED = "refused"


@dataclass(frozen=True)
class Scores:
    """A model's hinge-point error summary on a set of cases (mm; SDR as shares)."""

    cases: int
    median_mm: float
    q3_mm: float
    worst_mm: float
    sdr_2mm: float


@dataclass(frozen=True)
class GateInput:
    """Candidate and active model on the held-out studies and on the reference set."""

    holdout_candidate: Scores
    holdout_active: Scores
    reference_candidate: Scores
    reference_active: Scores


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict and its reason."""

    rule: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """The gate's decision (:data:`PASSED` or :data:`REFUSED`) and every rule's verdict."""

    decision: str
    rules: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return self.decision == PASSED

    def reasons(self) -> list[str]:
        """Every rule as ``"ok: ..."`` or ``"FAILED: ..."``."""
        return [("ok: " if r.ok else "FAILED: ") + r.reason for r in self.rules]


def enough_studies(g: GateInput, cfg: RetrainGateConfig) -> RuleResult:
    """At least ``min_holdout_studies`` held-out studies."""
    n = g.holdout_candidate.cases
    need = cfg.min_holdout_studies
    return RuleResult("enough_studies", n >= need, f"{n} held-out studies (at least {need} needed)")


def _not_worse(rule: str, what: str, cand: float, act: float, margin: float) -> RuleResult:
    ok = cand <= act + margin
    return RuleResult(
        rule,
        ok,
        f"{what}: candidate {cand:.2f} mm, active {act:.2f} mm "
        f"(allowed up to {act + margin:.2f} mm)",
    )


def median_not_worse(g: GateInput, cfg: RetrainGateConfig) -> RuleResult:
    """Held-out median hinge error not above the active model's + ``median_margin_mm``."""
    c, a = g.holdout_candidate, g.holdout_active
    return _not_worse(
        "median", "held-out median error", c.median_mm, a.median_mm, cfg.median_margin_mm
    )


def worst_within_margin(g: GateInput, cfg: RetrainGateConfig) -> RuleResult:
    """Held-out worst hinge error not above the active model's + ``worst_margin_mm``."""
    c, a = g.holdout_candidate, g.holdout_active
    return _not_worse("worst", "held-out worst error", c.worst_mm, a.worst_mm, cfg.worst_margin_mm)


def sdr2_not_lower(g: GateInput, cfg: RetrainGateConfig) -> RuleResult:
    """Held-out SDR at 2 mm not below the active model's - ``sdr2_margin``."""
    c, a = g.holdout_candidate.sdr_2mm, g.holdout_active.sdr_2mm
    ok = c >= a - cfg.sdr2_margin
    return RuleResult(
        "sdr_2mm",
        ok,
        f"held-out SDR at 2 mm: candidate {c:.0%}, active {a:.0%} "
        f"(at least {max(0.0, a - cfg.sdr2_margin):.0%} needed)",
    )


def reference_not_worse(g: GateInput, cfg: RetrainGateConfig) -> RuleResult:
    """Reference-set median not above the active model's + ``reference_margin_mm``."""
    c, a = g.reference_candidate, g.reference_active
    return _not_worse(
        "reference",
        "phantom reference set median error",
        c.median_mm,
        a.median_mm,
        cfg.reference_margin_mm,
    )


RULES = (enough_studies, median_not_worse, worst_within_margin, sdr2_not_lower, reference_not_worse)
"""The gate's rules, in the order they are reported."""


def decide(g: GateInput, cfg: RetrainGateConfig) -> Decision:
    """Apply every rule; the candidate passes when all hold."""
    results = tuple(rule(g, cfg) for rule in RULES)
    return Decision(PASSED if all(r.ok for r in results) else REFUSED, results)


__all__ = [
    "PASSED",
    "REFUSED",
    "RULES",
    "Decision",
    "GateInput",
    "RuleResult",
    "Scores",
    "decide",
    "enough_studies",
    "median_not_worse",
    "reference_not_worse",
    "sdr2_not_lower",
    "worst_within_margin",
]
