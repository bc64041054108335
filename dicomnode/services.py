"""Start-up pieces shared by `dicomnode serve`, `dicomnode worker` and the embedded node:
the schema check and the background scheduler (delivery, retention purge)."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from dicomnode.config import NodeConfig
from dicomnode.db import migrate

log = logging.getLogger(__name__)


def ensure_schema(cfg: NodeConfig, engine: Engine) -> None:
    """Create the schema in an empty database; refuse an outdated one."""
    if migrate.current_revision(engine) is None:
        log.info("empty database: creating the schema")
        migrate.upgrade(cfg.database_url)
    migrate.check_current(engine)


def start_background_services(
    cfg: NodeConfig, engine: Engine, *, retention: bool
) -> BackgroundScheduler:
    """Delivery (and, with ``retention``, the scheduled purge when enabled) on one started
    background scheduler."""
    from dicomnode.deliver.delivery import DeliveryService
    from dicomnode.operate.retention import schedule_purge

    scheduler = BackgroundScheduler(timezone="UTC")
    DeliveryService(engine, cfg).start(scheduler)
    if retention and cfg.retention.enabled:
        schedule_purge(scheduler, engine, cfg.archive_dir, cfg.retention)
    scheduler.start()
    return scheduler
