"""Command help that fits the terminal: docstring paragraphs reflowed before typer shows them.

typer (rich markup mode) keeps a help text's single line breaks, so a paragraph wrapped at
90 columns in the source comes out ragged in an 80-column terminal: every other line holds
one or two words. :func:`reflow_help` joins the lines of each prose paragraph of every
command, callback and group of an app, so rich wraps them to the terminal's width. A
paragraph with an indented or bulleted line (examples, state tables, lists) is kept as
written. Markdown mode is no cure: it reads ``<SECTION>`` as an HTML tag and drops it, and
turns ``# comment`` lines of examples into headings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

_LIST_MARKS = ("- ", "* ", "\b")


def _verbatim(paragraph: str) -> bool:
    return any(
        line[:1].isspace() or line.startswith(_LIST_MARKS) for line in paragraph.splitlines()
    )


def reflow(text: str) -> str:
    """``text`` dedented, with the lines of each prose paragraph joined by spaces."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if _verbatim(p) else " ".join(line.strip() for line in p.splitlines()) for p in paragraphs
    )


def _reflow_doc(callback: Callable[..., Any] | None) -> None:
    doc = inspect.getdoc(callback) if callable(callback) else None
    if doc and callback is not None:
        callback.__doc__ = reflow(doc)


def reflow_help(app: typer.Typer) -> typer.Typer:
    """Reflow the help of ``app``, its commands, callbacks and sub-apps, in place; returns
    ``app``. Call it once the app's commands are registered."""
    if isinstance(app.info.help, str):
        app.info.help = reflow(app.info.help)
    if app.registered_callback is not None:
        cb = app.registered_callback
        if isinstance(cb.help, str):
            cb.help = reflow(cb.help)
        _reflow_doc(cb.callback)
    for command in app.registered_commands:
        if isinstance(command.help, str):
            command.help = reflow(command.help)
        _reflow_doc(command.callback)
    for group in app.registered_groups:
        if isinstance(group.help, str):
            group.help = reflow(group.help)
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)
    return app


__all__ = ["reflow", "reflow_help"]
