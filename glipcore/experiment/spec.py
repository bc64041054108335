"""Experiment files (one YAML per experiment under ``configs/experiments/``) and their runs.

An experiment names its runs (loss, penalty variant, sigma, lambda, seed) and what the
report does with them (``kind``). ``loss: best-baseline`` stands for the baseline with the
lowest median hinge error in the loss comparison; it is resolved once that is done. Runs
with the same resolved settings are one run (one key), whichever experiments list them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from glipcore.losses import BASELINE_NAMES, LOSS_NAMES

BEST_BASELINE = "best-baseline"
ExperimentKind = Literal[
    "pilot", "losses", "ablation", "gp", "grade", "second-stage", "sigma", "lambda", "stability"
]
DEFAULT_EXPERIMENTS_DIR = Path("configs/experiments")


class RunSpec(BaseModel):
    """One first-stage training run as an experiment file writes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: str = "glip"
    variant: Literal["code", "paper"] = "code"
    sigma_mm: float = Field(1.0, gt=0)
    lam: float = Field(10.0, ge=0)
    seed: int = 0
    curve_on: Literal["val", "test"] = Field(
        "val", description="where the learning curve is measured: validation or held-out set"
    )
    second_stage: bool = False

    @field_validator("loss")
    @classmethod
    def _known(cls, v: str) -> str:
        key = v.strip().lower()
        if key != BEST_BASELINE and key not in LOSS_NAMES:
            raise ValueError(f"unknown loss {v!r}; valid: {', '.join(LOSS_NAMES)}, best-baseline")
        return key

    def resolve(self, best_baseline: str | None) -> ResolvedRun | None:
        """The run with ``best-baseline`` replaced and settings that do not matter for its
        loss normalised (so equal runs get equal keys); None while the best baseline is
        not known."""
        loss = self.loss
        if loss == BEST_BASELINE:
            if best_baseline is None:
                return None
            loss = best_baseline
        base, _, gp = loss.partition("+")
        lam, variant = self.lam, self.variant
        if loss == "glip" and lam == 0:
            loss = "ot"
        if loss == "ot" or (base in BASELINE_NAMES and not gp):
            lam, variant = 0.0, "code"
        return ResolvedRun(
            loss=loss,
            variant=variant,
            sigma_mm=self.sigma_mm,
            lam=lam,
            seed=self.seed,
            curve_on=self.curve_on,
        )


class ResolvedRun(BaseModel):
    """A first-stage run with concrete, normalised settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: str
    variant: Literal["code", "paper"]
    sigma_mm: float
    lam: float
    seed: int
    curve_on: Literal["val", "test"]

    @property
    def name(self) -> str:
        """A readable, filesystem-safe name, e.g. ``glip-s1-l10-seed0``, ``wce-gp-s1-l10``."""
        parts = [self.loss.replace("+", "-")]
        if self.variant == "paper":
            parts.append("paperpen")
        parts.append(f"s{self.sigma_mm:g}")
        if self.lam > 0:
            parts.append(f"l{self.lam:g}")
        parts.append(f"seed{self.seed}")
        if self.curve_on == "test":
            parts.append("pilot")
        return "-".join(parts)

    @property
    def label(self) -> str:
        """Label for tables and figures, e.g. ``GLiP``, ``WCE+GP``, ``OT (no penalty)``."""
        nice = {
            "glip": "GLiP",
            "ot": "OT (no penalty)",
            "wce": "WCE",
            "focal": "FL",
            "mse": "MSE",
            "l1": "L1",
            "smoothl1": "SL1",
        }
        base, _, gp = self.loss.partition("+")
        text = nice.get(base, base) + ("+GP" if gp else "")
        if self.variant == "paper":
            text += (
                " (paper penalty)"
                if self.lam in (0, 10)
                else f" (paper penalty, lambda {self.lam:.2g})"
            )
        return text


class ExperimentSpec(BaseModel):
    """One experiment: its runs and what the report makes of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    title: str
    paper: str = Field("", description="the paper's figures or section it mirrors")
    kind: ExperimentKind
    priority: int = Field(5, ge=0, description="lower runs first; cut from the end")
    claim: str = Field("", description="the paper's claim this experiment checks")
    runs: tuple[RunSpec, ...]

    @field_validator("runs")
    @classmethod
    def _some(cls, v: tuple[RunSpec, ...]) -> tuple[RunSpec, ...]:
        if not v:
            raise ValueError("an experiment needs at least one run")
        return v


def load_experiment(path: Path) -> ExperimentSpec:
    """One experiment YAML file."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an experiment file must be a YAML mapping")
    return ExperimentSpec.model_validate(data)


def load_experiments(folder: Path = DEFAULT_EXPERIMENTS_DIR) -> list[ExperimentSpec]:
    """Every experiment file in ``folder`` (all ``*.yaml`` but ``budgets.yaml``), in
    priority order; ValueError on a duplicate name or when there is none."""
    files = sorted(p for p in Path(folder).glob("*.yaml") if p.name != "budgets.yaml")
    specs = [load_experiment(p) for p in files]
    if not specs:
        raise ValueError(f"{folder}: no experiment files (*.yaml)")
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{folder}: duplicate experiment names {sorted(dup)}")
    if sum(s.kind == "pilot" for s in specs) > 1:
        raise ValueError(f"{folder}: more than one pilot experiment")
    return sorted(specs, key=lambda s: (s.priority, s.name))
