"""``dicomnode`` operator commands: status, jobs, series, deliveries, results, models,
echo and purge (registered in :mod:`dicomnode.cli`).

Errors are one line and a hint on stderr (exit status 1), never a traceback, unless the
global ``--debug`` option is given.
"""

from __future__ import annotations

import typer

from dicomnode.operate.admin_cli.annotations import annotations_app
from dicomnode.operate.admin_cli.database import node_db, open_database
from dicomnode.operate.admin_cli.deliveries import (
    deliveries_app,
    deliveries_list,
    deliveries_requeue,
)
from dicomnode.operate.admin_cli.errors import CliError, cli_errors, describe_error, print_error
from dicomnode.operate.admin_cli.format import STATE_STYLES, console, err_console
from dicomnode.operate.admin_cli.help import (
    DELIVERIES_HELP,
    JOBS_HELP,
    MODELS_HELP,
    RESULTS_HELP,
    SERIES_HELP,
)
from dicomnode.operate.admin_cli.jobs import jobs_app, jobs_cancel, jobs_list, jobs_retry, jobs_show
from dicomnode.operate.admin_cli.models import (
    models_app,
    models_list,
    models_promote,
    models_register,
)
from dicomnode.operate.admin_cli.options import (
    JsonOpt,
    LimitOpt,
    SeriesDecision,
    SeriesState,
)
from dicomnode.operate.admin_cli.results import results_app, results_export
from dicomnode.operate.admin_cli.series import series_app, series_list, series_show
from dicomnode.operate.admin_cli.status import render_status, status
from dicomnode.operate.admin_cli.tools import echo, purge

__all__ = [
    "DELIVERIES_HELP",
    "JOBS_HELP",
    "MODELS_HELP",
    "RESULTS_HELP",
    "SERIES_HELP",
    "STATE_STYLES",
    "CliError",
    "JsonOpt",
    "LimitOpt",
    "SeriesDecision",
    "SeriesState",
    "cli_errors",
    "console",
    "deliveries_app",
    "deliveries_list",
    "deliveries_requeue",
    "describe_error",
    "echo",
    "err_console",
    "jobs_app",
    "jobs_cancel",
    "jobs_list",
    "jobs_retry",
    "jobs_show",
    "models_app",
    "models_list",
    "models_promote",
    "models_register",
    "node_db",
    "open_database",
    "print_error",
    "purge",
    "register",
    "render_status",
    "results_app",
    "results_export",
    "series_app",
    "series_list",
    "series_show",
    "status",
]


def register(app: typer.Typer) -> None:
    """Add the operator commands to the ``dicomnode`` app."""
    app.command("status")(status)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(series_app, name="series")
    app.add_typer(deliveries_app, name="deliveries")
    app.add_typer(results_app, name="results")
    app.add_typer(models_app, name="models")
    app.add_typer(annotations_app, name="annotations")
    app.command("echo")(echo)
    app.command("purge")(purge)
