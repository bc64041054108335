"""The whole node in one process: SCP, assembler, worker and delivery.

``dicomnode serve`` runs SCP + assembler + delivery and ``dicomnode worker`` the worker as
separate services; the demo, the end-to-end benchmark and the integration tests run them
together with :class:`EmbeddedNode`.
"""

from __future__ import annotations

import threading
from types import TracebackType

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.config import NodeConfig
from dicomnode.db.session import engine_from_config
from dicomnode.process.worker import Worker
from dicomnode.receive.assembler import Assembler
from dicomnode.receive.scp import StorageSCP
from dicomnode.services import ensure_schema, start_background_services


class EmbeddedNode:
    """SCP, assembler, worker and delivery of one configuration, started and stopped together."""

    def __init__(self, cfg: NodeConfig, *, with_worker: bool = True) -> None:
        self.cfg = cfg
        self.engine = engine_from_config(cfg)
        ensure_schema(cfg, self.engine)
        self.scp = StorageSCP(cfg, self.engine)
        self.assembler = Assembler(cfg, self.engine)
        self.worker = Worker(cfg, self.engine) if with_worker else None
        self._stop = threading.Event()
        self._worker_thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None

    @property
    def port(self) -> int:
        """The SCP's listening port."""
        return self.scp.port

    def start(self) -> EmbeddedNode:
        """Load the model, then start receiving, assembling, working and delivering."""
        if self.worker is not None:
            self.worker.load_model()
        self.scp.start()
        self.assembler.start()
        self._scheduler = start_background_services(self.cfg, self.engine, retention=False)
        if self.worker is not None:
            self._worker_thread = threading.Thread(
                target=self.worker.run, args=(self._stop,), name="worker", daemon=True
            )
            self._worker_thread.start()
        return self

    def stop(self) -> None:
        """Stop everything (in-flight work finishes or is left to its lease)."""
        self._stop.set()
        self.scp.stop(grace_s=2.0)
        self.assembler.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=60)
        self.engine.dispose()

    def __enter__(self) -> EmbeddedNode:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
