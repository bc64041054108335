"""The whole node in one process: SCP, assembler, worker and delivery.

``dicomnode serve`` runs SCP + assembler + delivery and ``dicomnode worker`` the worker as
separate services; the demo, the end-to-end benchmark and the integration tests run them
together with :class:`EmbeddedNode`.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.config import NodeConfig
from dicomnode.services import Receiving, open_engine, start_background_services, start_receiving

if TYPE_CHECKING:
    from dicomnode.process.worker import Worker


class EmbeddedNode:
    """SCP, assembler, worker and delivery of one configuration, started and stopped together."""

    def __init__(self, cfg: NodeConfig, *, with_worker: bool = True) -> None:
        self.cfg = cfg
        self.engine = open_engine(cfg)
        self.worker: Worker | None = None
        if with_worker:  # the worker brings torch: imported only when wanted
            from dicomnode.process.worker import Worker

            self.worker = Worker(cfg, self.engine)
        self.receiving: Receiving | None = None
        self._stop = threading.Event()
        self._worker_thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None

    @property
    def port(self) -> int:
        """The SCP's listening port."""
        if self.receiving is None:
            raise RuntimeError("the node is not started")
        return self.receiving.port

    def start(self) -> EmbeddedNode:
        """Load the model, then start receiving, assembling, working and delivering."""
        if self.worker is not None:
            self.worker.load_model()
        self.receiving = start_receiving(self.cfg, self.engine)
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
        if self.receiving is not None:
            self.receiving.stop(grace_s=2.0)
            self.receiving = None
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
