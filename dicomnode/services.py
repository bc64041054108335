"""Start-up pieces shared by `dicomnode serve`, `dicomnode worker` and the embedded node:
the database with its schema check, receiving (SCP + assembler) and the background
scheduler (delivery, retention purge, retraining when ``retrain.schedule`` is set).

This is the only module that imports the SCP; it does so when receiving starts, so the
commands that do not receive (worker, status, config check) never load it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from dicomnode.config import NodeConfig
from dicomnode.db import migrate

if TYPE_CHECKING:
    from dicomnode.receive.assembler import Assembler
    from dicomnode.receive.scp import StorageSCP

log = logging.getLogger(__name__)


def ensure_schema(cfg: NodeConfig, engine: Engine) -> None:
    """Create the schema in an empty database; refuse an outdated one."""
    if migrate.current_revision(engine) is None:
        log.info("empty database: creating the schema")
        migrate.upgrade(cfg.database_url)
    migrate.check_current(engine)


def open_engine(cfg: NodeConfig) -> Engine:
    """The configured database's engine, its schema created or checked (an outdated schema
    raises :class:`dicomnode.db.session.DatabaseError`)."""
    from dicomnode.db.session import engine_from_config

    engine = engine_from_config(cfg)
    try:
        ensure_schema(cfg, engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


class Receiving:
    """The started SCP and assembler of one node; :meth:`stop` ends both."""

    def __init__(self, scp: StorageSCP, assembler: Assembler) -> None:
        self.scp = scp
        self.assembler = assembler

    @property
    def port(self) -> int:
        """The SCP's listening port (useful when network.port is 0)."""
        return self.scp.port

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting (associations get ``grace_s`` to finish), then the sweeps."""
        self.scp.stop(grace_s=grace_s)
        self.assembler.stop()


def start_receiving(cfg: NodeConfig, engine: Engine) -> Receiving:
    """Listen for C-STORE and start the assembler's completeness sweep.

    A port that cannot be bound raises OSError before the assembler starts."""
    from dicomnode.receive.assembler import Assembler
    from dicomnode.receive.scp import StorageSCP

    scp = StorageSCP(cfg, engine)
    assembler = Assembler(cfg, engine)
    scp.start()
    assembler.start()
    return Receiving(scp, assembler)


def start_background_services(
    cfg: NodeConfig, engine: Engine, *, retention: bool
) -> BackgroundScheduler:
    """Delivery (and, with ``retention``, the scheduled purge when enabled) on one started
    background scheduler; with ``retrain.schedule`` set, retrains too (each one a
    subprocess with limited threads: :mod:`dicomnode.learn.retrain_schedule`)."""
    from dicomnode.deliver.service import DeliveryService
    from dicomnode.learn.retrain_schedule import schedule_retrain
    from dicomnode.operate.retention import schedule_purge

    scheduler = BackgroundScheduler(timezone="UTC")
    DeliveryService(engine, cfg).start(scheduler)
    if retention and cfg.retention.enabled:
        schedule_purge(scheduler, engine, cfg.archive_dir, cfg.retention)
    schedule_retrain(scheduler, engine, cfg)
    scheduler.start()
    return scheduler
