"""Command help reflowed to the terminal's width (glipcore.cli_help)."""

from __future__ import annotations

import inspect

from typer.testing import CliRunner

from glipcore.cli_help import reflow


def test_reflow_joins_prose_and_keeps_examples_and_tables() -> None:
    text = """First line.

    A paragraph wrapped
    in the source.

    States:
      queued   waiting
      running  a worker holds it

    - a list item
    - another
    """
    assert reflow(text).split("\n\n") == [
        "First line.",
        "A paragraph wrapped in the source.",
        "States:\n  queued   waiting\n  running  a worker holds it",
        "- a list item\n- another",
    ]


def test_the_apps_show_reflowed_help_at_80_columns() -> None:
    from dicomnode.cli import app as node_app
    from dicomnode.operate import node_cli
    from glipcore.cli import app as glip_app
    from glipcore.model_cli import evaluate

    # Prose paragraphs are one line each once the apps are built; examples keep theirs.
    for fn in (evaluate, node_cli.worker):
        doc = inspect.getdoc(fn) or ""
        prose = [p for p in doc.split("\n\n") if not p.startswith(("Example", " "))]
        assert len(prose) >= 2 and all("\n" not in p for p in prose), doc
    runner = CliRunner()
    out = runner.invoke(node_app, ["worker", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert out.exit_code == 0
    # rich wraps the joined paragraph at 80 columns: no line of one or two words in between
    lines = [ln.strip() for ln in out.output.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("A worker claims"))
    assert all(len(ln) > 40 for ln in lines[start : start + 2]), lines[start : start + 3]
    out = runner.invoke(glip_app, ["phantom", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert "# small and quick, for tests" in out.output
