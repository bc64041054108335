"""Errors for the operator: one line and a hint on stderr (exit status 1), never a
traceback, unless the global ``--debug`` option is given."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.markup import escape
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dicomnode.operate.admin import AdminError
from dicomnode.operate.admin_cli.format import err_console


def debug_enabled(ctx: typer.Context) -> bool:
    obj = ctx.find_root().obj or {}
    return bool(obj.get("debug"))


class CliError(Exception):
    """An error for the operator: one line and an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """The one-line message and hint for an exception."""
    from dicomnode.db.session import DatabaseError
    from dicomnode.learn.registry import RegistryError
    from glipcore.bundle import BundleError

    if isinstance(exc, CliError):
        return exc.message, exc.hint
    if isinstance(exc, AdminError):
        return str(exc), exc.hint
    if isinstance(exc, RegistryError):
        return str(exc), "`dicomnode models list` shows the registered versions"
    if isinstance(exc, BundleError):
        return str(exc), "a bundle folder holds bundle.json and the fold*.pt files it lists"
    if isinstance(exc, DatabaseError):
        msg, _, hint = str(exc).partition(": run ")
        return msg, f"run {hint}" if hint else None
    if isinstance(exc, OperationalError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return (
            f"cannot use the database: {first}",
            "is the database server running, and is database.url in the configuration right?",
        )
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {exc}", "rerun with --debug for details"
    if isinstance(exc, OSError):
        return str(exc), None
    return (
        f"unexpected error ({type(exc).__name__}): {exc}",
        "rerun with --debug for the traceback, and please report it",
    )


def print_error(message: str, hint: str | None = None) -> None:
    """``error: ...`` and ``hint: ...`` on stderr, one line each."""
    lines = message.strip().splitlines() or ["(no message)"]
    first = lines[0] + (" (--debug shows more)" if len(lines) > 1 else "")
    err_console.print(f"[bold red]error:[/] {escape(first)}", soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", soft_wrap=True)


@contextmanager
def cli_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn exceptions into one line and a hint (exit status 1), unless --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug_enabled(ctx):
            raise
        print_error(*describe_error(exc))
        raise typer.Exit(code=1) from None
