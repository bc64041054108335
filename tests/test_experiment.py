"""``glip experiment`` end to end at a tiny size: every experiment type runs, finished runs
are skipped, a changed code hash reruns, the report builds with its figures, and the
``paper`` budget builds its configurations and takes one tiny step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from glipcore.experiment.budget import Budget, load_budget, load_budgets
from glipcore.experiment.execute import run_plan
from glipcore.experiment.plan import make_plan
from glipcore.experiment.spec import ExperimentSpec, load_experiments
from glipcore.experiment.store import Store

pytestmark = pytest.mark.slow  # ~30 s of CPU: six tiny trainings, ten phantoms, two reports

CODE = "tiny-test-code"
"""A fixed code hash: other edits to the working tree must not change the keys mid-test."""

TINY_EXPERIMENTS: list[dict[str, object]] = [
    {"name": "pilot", "title": "Pilot", "kind": "pilot", "priority": 0, "runs": [{"loss": "glip"}]},
    {
        "name": "losses",
        "title": "Losses",
        "kind": "losses",
        "priority": 1,
        "claim": "GLiP lowest",
        "runs": [{"loss": "glip"}, {"loss": "wce"}],
    },
    {
        "name": "ablation",
        "title": "Ablation",
        "kind": "ablation",
        "priority": 2,
        "claim": "OT worse",
        "runs": [
            {"loss": "ot"},
            {"loss": "glip"},
            {"loss": "glip", "variant": "paper"},
            {"loss": "glip", "variant": "paper", "lam": 0.001},
        ],
    },
    {
        "name": "gp",
        "title": "GP",
        "kind": "gp",
        "priority": 3,
        "claim": "GP helps only OT",
        "runs": [{"loss": "wce"}, {"loss": "wce+gp"}],
    },
    {
        "name": "grade",
        "title": "Grades",
        "kind": "grade",
        "priority": 3,
        "claim": "q",
        "runs": [{"loss": "glip"}],
    },
    {
        "name": "second",
        "title": "Second stage",
        "kind": "second-stage",
        "priority": 4,
        "claim": "second helps",
        "runs": [{"loss": "glip", "second_stage": True}],
    },
    {
        "name": "sigma",
        "title": "Sigma",
        "kind": "sigma",
        "priority": 3,
        "claim": "sigma",
        "runs": [{"loss": "glip"}, {"loss": "best-baseline"}],
    },
    {
        "name": "lambda",
        "title": "Lambda",
        "kind": "lambda",
        "priority": 3,
        "claim": "lambda",
        "runs": [{"loss": "glip", "lam": 0}, {"loss": "glip"}],
    },
    {
        "name": "stability",
        "title": "Stability",
        "kind": "stability",
        "priority": 5,
        "claim": "stable",
        "runs": [{"loss": "glip"}, {"loss": "best-baseline"}],
    },
]


def tiny_budget(root: Path) -> dict[str, object]:
    """A budget that trains in seconds: 4 mm model grid, (4, 8) U-Net, 2 steps."""
    return {
        "description": "tiny test budget",
        "device": "cpu",
        "threads": 1,
        "channels_last": False,
        "steps": "pilot",
        "max_steps": 2,
        "eval_every": 2,
        "batch_size": 1,
        "crop_zyx": [16, 16, 16],
        "margin_vox": 1,
        "widths": [4, 8],
        "preprocessing": {"spacing_mm": 4.0},
        "train": {"seed": 1000, "cases": 5, "preset": "fast"},
        "val_cases": 1,
        "test": {"seed": 515151, "per_grade": 1, "preset": "fast"},
        "stage2": {
            "patch_vox": 8,
            "disturbance_vox": 1,
            "spacing_mm": 1.6,
            "widths": [4, 8],
            "steps": 2,
            "eval_every": 2,
            "batch_size": 2,
            "train_cases": 2,
            "val_cases": 1,
        },
        "cache_dir": str(root / "cache"),
        "runs_dir": str(root / "runs"),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Budget, list[ExperimentSpec]]:
    """Every experiment type run once at the tiny size (module-wide)."""
    root = tmp_path_factory.mktemp("experiment")
    (root / "budgets.yaml").write_text(yaml.safe_dump({"cpu": tiny_budget(root)}))
    exps = root / "experiments"
    exps.mkdir()
    for e in TINY_EXPERIMENTS:
        (exps / f"{e['name']}.yaml").write_text(yaml.safe_dump(e))
    budget = load_budget("cpu", root / "budgets.yaml")
    experiments = load_experiments(exps)
    done = run_plan(budget, experiments, Store(root / "report"), code=CODE, progress=False)
    assert len(done) == 8  # pilot, glip, wce, ot, 2 paper variants, wce+gp, glip stage 2
    return root, budget, experiments


def test_every_experiment_type_runs_and_writes_its_results(
    tiny: tuple[Path, Budget, list[ExperimentSpec]],
) -> None:
    root, budget, experiments = tiny
    store = Store(root / "report")
    plan = make_plan(budget, experiments, store, CODE)
    assert {r.state for r in plan.runs} == {"done"}
    assert plan.pilot_steps == 2 and plan.best_baseline == "wce"
    kinds = {e.kind for e in experiments}
    assert kinds == {
        "pilot",
        "losses",
        "ablation",
        "gp",
        "grade",
        "second-stage",
        "sigma",
        "lambda",
        "stability",
    }
    for r in plan.runs:
        assert r.key is not None
        folder = store.find(r.key)
        assert folder is not None and folder.name == f"{r.name}-{r.key}"
        summary = json.loads((folder / "summary.json").read_text())
        with open(folder / "cases.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 5 and {row["quality"] for row in rows} == {"1", "2", "3-", "3+", "4"}
        with open(folder / "curve.csv") as f:
            curve = list(csv.DictReader(f))
        assert curve and "val_median_mm" in curve[0]
        if r.stage == "first":
            assert {"RCC_mm", "LCC_mm", "NCC_mm", "plane_mm", "angle_deg", "failed"} <= set(rows[0])
            assert summary["steps"] == 2 and curve[-1]["step"] == "2"
        else:
            assert {"first_RCC_mm", "second_NCC_mm"} <= set(rows[0])
            assert set(summary["test"]["second_sdr"]) == {
                "0.5",
                "1",
                "1.5",
                "2",
                "2.5",
                "3",
                "3.5",
                "4",
            }
    # checkpoints stay out of the report folder
    assert not list((root / "report").rglob("*.pt"))
    assert list((root / "runs").rglob("last.pt"))


def test_a_finished_run_is_skipped_and_a_changed_code_hash_reruns(
    tiny: tuple[Path, Budget, list[ExperimentSpec]],
) -> None:
    root, budget, experiments = tiny
    store = Store(root / "report")
    before = sorted(p.name for p in store.runs_dir.iterdir())
    assert run_plan(budget, experiments, store, code=CODE, progress=False) == []
    assert sorted(p.name for p in store.runs_dir.iterdir()) == before
    plan = make_plan(budget, experiments, store, "changed-code")
    assert {r.state for r in plan.runs} <= {"pending", "waiting"}
    done = run_plan(budget, experiments, store, code="changed-code", progress=False, max_runs=1)
    assert done == ["glip-s1-l10-seed0-pilot"]
    after = sorted(p.name for p in store.runs_dir.iterdir())
    assert len(after) == len(before) + 1


def test_the_report_builds_with_figures_and_says_what_is_missing(
    tiny: tuple[Path, Budget, list[ExperimentSpec]],
) -> None:
    from glipcore.experiment.report import write_report

    root, budget, experiments = tiny
    store = Store(root / "report")
    page = write_report(budget, experiments, store, CODE).read_text()
    figures = root / "report" / "figures"
    for name in (
        "pilot-curves.png",
        "fig2-losses.png",
        "fig3-plane.png",
        "fig4-angle.png",
        "fig5-ablation.png",
        "fig6-gp.png",
        "fig7-quality.png",
        "fig9-second-stage.png",
        "fig10-stages.png",
        "fig11-sigma.png",
        "fig12-lambda.png",
        "learning-curves.png",
    ):
        assert (figures / name).stat().st_size > 1000, name
        assert f"figures/{name}" in page
    assert "| the paper's claim | our phantom result | agrees? |" in page
    assert "Every planned run is done." in page
    assert "was not run here" in page
    assert "The paper variant (eq. 6-7 as printed)" in page and "At lambda 0.001 " in page
    assert "| GLiP (paper penalty, lambda 0.001) |" in page
    defaults = page.split("## Defaults for the shipped model", 1)[1].split("\n## ", 1)[0]
    assert "| argmax decoding (no sub-voxel refinement) |" in defaults
    assert "| lambda 0 (no penalty) |" in defaults
    assert "no reason to change" in defaults or "beat the shipped setting" in defaults
    # with another code hash nothing counts as done, and the report says so
    partial = write_report(budget, experiments, store, "other-code").read_text()
    assert "These runs are not done" in partial and "not run yet" in partial.lower()
    assert "needs the GLiP run with the shipped settings" in partial


def test_cli_dry_run_and_status(tiny: tuple[Path, Budget, list[ExperimentSpec]]) -> None:
    from glipcore.cli import app

    root, _, _ = tiny
    args = [
        "--budgets",
        str(root / "budgets.yaml"),
        "--experiments",
        str(root / "experiments"),
        "--report-dir",
        str(root / "report"),
    ]
    r = CliRunner().invoke(app, ["experiment", "status", *args])
    assert r.exit_code == 0, r.output
    assert "pending" in r.output or "done" in r.output
    r = CliRunner().invoke(app, ["experiment", "paper", "--dry-run", "--only", "losses", *args])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["experiment", "paper", "--dry-run", "--only", "nope", *args])
    assert r.exit_code == 2 and "unknown experiment" in r.output


def test_shipped_configs_resolve_and_the_paper_budget_takes_one_tiny_step() -> None:
    from glipcore.experiment.runner import tiny_step
    from glipcore.experiment.spec import RunSpec

    budgets = load_budgets(Path("configs/experiments/budgets.yaml"))
    assert set(budgets) == {"cpu", "paper"}
    assert budgets["cpu"].steps == "pilot" and budgets["paper"].widths == (16, 32, 64, 128)
    experiments = load_experiments(Path("configs/experiments"))
    assert {e.kind for e in experiments} == {
        "pilot",
        "losses",
        "ablation",
        "gp",
        "grade",
        "second-stage",
        "sigma",
        "lambda",
        "stability",
    }
    paper = budgets["paper"]
    plan = make_plan(paper, experiments, Store(Path("/nonexistent-report")), CODE)
    assert plan.pilot_steps == 20000
    first = [r for r in plan.runs if r.stage == "first" and r.run is not None]
    assert len({r.key for r in first}) == len(first) >= 20
    for loss in ("glip", "wce"):
        run = RunSpec(loss=loss).resolve(None)
        assert run is not None
        loss_value = tiny_step(paper.model_copy(update={"device": "cpu"}), run)
        assert loss_value == loss_value  # finite, not NaN
