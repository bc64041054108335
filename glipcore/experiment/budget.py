"""Budget presets: how big and how long every run of an experiment is.

``configs/experiments/budgets.yaml`` holds one mapping per preset (``cpu``, ``paper``). A
preset's ``steps`` is a number or ``pilot``: the smallest step count at which the pilot
(GLiP, 3 seeds) reaches ``pilot_target_mm`` median error on the held-out set, at most
``max_steps``. Every run of a preset gets the same budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from glipcore.phantom_cases import PhantomData
from glipcore.preprocess import Preprocessing

DEFAULT_BUDGETS = Path("configs/experiments/budgets.yaml")


class HeldOutSpec(BaseModel):
    """The held-out phantom test set: its own seed (never trained on), at least
    ``per_grade`` cases of each quality grade (the first such indices of the seed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 515151
    per_grade: int = Field(10, ge=1)
    preset: Literal["model", "fast"] = "model"


class StageTwoBudget(BaseModel):
    """The second stage: a local network on isotropic patches around first-stage
    predictions (paper 4.5.3: patch 32 voxels, disturbance 4 voxels)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patch_vox: int = Field(32, ge=8)
    disturbance_vox: int = Field(4, ge=0)
    spacing_mm: float = Field(0.4, gt=0)
    widths: tuple[int, ...] = (8, 16, 32)
    steps: int = Field(1500, ge=1)
    eval_every: int = Field(300, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    train_cases: int | None = Field(
        120, ge=1, description="cap on training cases whose patches are rendered (None: all)"
    )
    val_cases: int = Field(12, ge=1)


class Budget(BaseModel):
    """One budget preset; every run under it trains the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = True
    steps: int | Literal["pilot"] = "pilot"
    max_steps: int = Field(3000, ge=1)
    eval_every: int = Field(200, ge=1)
    pilot_target_mm: float = Field(1.5, gt=0)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    plateau_patience: int = Field(2, ge=0)
    crop_zyx: tuple[int, int, int] = (48, 64, 64)
    margin_vox: int = Field(8, ge=0)
    widths: tuple[int, ...] = (8, 16, 32, 64)
    preprocessing: Preprocessing = Preprocessing()
    train: PhantomData = PhantomData(seed=1000, cases=240, preset="model")
    val_cases: int = Field(12, ge=1)
    test: HeldOutSpec = HeldOutSpec()
    stage2: StageTwoBudget = StageTwoBudget()
    cache_dir: Path = Path("runs/cache")
    runs_dir: Path = Path("runs/experiments")

    @model_validator(mode="after")
    def _sizes(self) -> Budget:
        if self.val_cases >= self.train.cases:
            raise ValueError(
                f"val_cases ({self.val_cases}) must be fewer than the training cohort's "
                f"{self.train.cases} cases"
            )
        if isinstance(self.steps, int) and self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every")
        if self.max_steps % self.eval_every:
            raise ValueError(f"max_steps ({self.max_steps}) must be a multiple of eval_every")
        return self


def load_budgets(path: Path = DEFAULT_BUDGETS) -> dict[str, Budget]:
    """Every preset of a budgets YAML file, by name."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of budget presets (cpu:, paper:)")
    return {str(k): Budget.model_validate({**v, "name": str(k)}) for k, v in data.items()}


def load_budget(name: str, path: Path = DEFAULT_BUDGETS) -> Budget:
    """The preset ``name`` of ``path``; ValueError naming the presets when unknown."""
    budgets = load_budgets(path)
    if name not in budgets:
        raise ValueError(f"unknown budget {name!r}; {path} has: {', '.join(budgets)}")
    return budgets[name]
