"""Ingest of one received instance: the archive file and its rows (patient, study,
series, instance), with the duplicate policy.

Used by the C-STORE handler (:mod:`dicomnode.receive.scp`) and usable on files already on
disk (facts from :func:`dicomnode.receive.headers.read_header_file`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, Select, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dicomnode.db.models import Instance, Patient, Series, Study, UtcDateTime, utcnow
from dicomnode.receive.archive import Archive, Chunk, chunk_size
from dicomnode.receive.headers import HeaderFacts

Outcome = Literal["stored", "replaced", "duplicate"]
_R = TypeVar("_R")


class IngestStore:
    """Archives instances and records their rows. Thread-safe.

    ``duplicate_policy``: keep_first (a second copy of a SOP Instance UID is discarded)
    or keep_newest (it atomically replaces the first; the row follows). The file system
    is the first duplicate check (the file name derives from the UIDs); the unique SOP
    Instance UID in the database the second (the same UID under another series).
    """

    def __init__(
        self,
        engine: Engine,
        archive: Archive,
        duplicate_policy: Literal["keep_first", "keep_newest"] = "keep_first",
        *,
        cache_size: int = 4096,
        writers: int = 8,
    ) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="archive-writer")
        self.closed = False
        self.archive = archive
        self.policy = duplicate_policy
        self._dialect_insert = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        )
        self._series_cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        ins = self._dialect_insert(Instance)
        self._ins_first = ins.on_conflict_do_nothing(index_elements=["sop_instance_uid"]).returning(
            Instance.id
        )
        cols = [
            c.name for c in Instance.__table__.columns if c.name not in ("id", "sop_instance_uid")
        ]
        self._ins_newest = ins.on_conflict_do_update(
            index_elements=["sop_instance_uid"], set_={c: ins.excluded[c] for c in cols}
        )
        now = bindparam("b_now", type_=UtcDateTime())
        self._touch = (
            update(Series)
            .where(Series.id == bindparam("b_sid"))
            .values(
                last_received_at=now,
                burst_started_at=case(
                    (Series.state == "receiving", Series.burst_started_at), else_=now
                ),
                state="receiving",
                instance_count=Series.instance_count + bindparam("b_inc"),
            )
        )
        self._find = select(Instance.path, Instance.series_fk).where(
            Instance.sop_instance_uid == bindparam("b_uid")
        )

    def store(
        self,
        facts: HeaderFacts,
        chunks: Sequence[Chunk],
        transfer_syntax: str,
        association_id: int | None = None,
    ) -> Outcome:
        """Archive one instance (the file's bytes in ``chunks``) and record it.

        The file is written (and fsynced) on a writer thread while the row is prepared in
        a transaction; the transaction commits only once the file is in place, so a row
        never points at a file that is not durable. On return both are durable (when the
        archive fsyncs and SQLite runs synchronous=FULL).
        """
        rel = self.archive.relpath(facts.study_uid, facts.series_uid, facts.sop_instance_uid)
        extra = {"transfer_syntax_uid": str(transfer_syntax), "association_fk": association_id}
        if self.policy == "keep_first":
            if self.archive.path(rel).exists():
                return self._record_existing_file(facts, rel, extra)
            return self._store_first(facts, chunks, rel, extra)
        return self._store_newest(facts, chunks, rel, extra)

    def close(self) -> None:
        """Stop the writer threads."""
        self._pool.shutdown(wait=True)
        self.closed = True

    def _existing(self, conn: Connection, sop_uid: str) -> tuple[str, int] | None:
        row = conn.execute(self._find, {"b_uid": sop_uid}).first()
        return (row[0], row[1]) if row else None

    def _place_new(self, chunks: Sequence[Chunk], rel: str) -> bool:
        tmp, _ = self.archive.write_temp(chunks)
        return self.archive.commit_new(tmp, rel)

    def _place_replace(self, chunks: Sequence[Chunk], rel: str) -> bool:
        tmp, _ = self.archive.write_temp(chunks)
        self.archive.commit_replace(tmp, rel)
        return True

    def _record_existing_file(self, facts: HeaderFacts, rel: str, extra: dict[str, Any]) -> Outcome:
        """keep_first and the file exists: a duplicate, or a file whose row was never
        committed (crash between rename and commit), which is recorded now."""
        size = self.archive.path(rel).stat().st_size
        now = utcnow()
        with self.engine.begin() as conn:
            if self._existing(conn, facts.sop_instance_uid) is not None:
                return "duplicate"
            series_id = self._series_id(conn, facts, now)
            values = self._row(facts, series_id, rel, size, now, extra)
            inserted = self._insert_first(conn, values, series_id, now)
        return "stored" if inserted else "duplicate"

    def _store_first(
        self, facts: HeaderFacts, chunks: Sequence[Chunk], rel: str, extra: dict[str, Any]
    ) -> Outcome:
        def record(
            conn: Connection, values: dict[str, Any], series_id: int, now: datetime
        ) -> tuple[bool, tuple[str, int] | None]:
            inserted = self._insert_first(conn, values, series_id, now)
            return inserted, None if inserted else self._existing(conn, facts.sop_instance_uid)

        placed, (inserted, existing) = self._write_and_record(
            self._place_new, record, facts, chunks, rel, extra
        )
        if placed and existing is not None and existing[0] != rel:
            self.archive.discard(rel)  # a concurrent copy under another series won
        return "stored" if inserted else "duplicate"

    def _store_newest(
        self, facts: HeaderFacts, chunks: Sequence[Chunk], rel: str, extra: dict[str, Any]
    ) -> Outcome:
        def record(
            conn: Connection, values: dict[str, Any], series_id: int, now: datetime
        ) -> tuple[str, int] | None:
            old = self._existing(conn, facts.sop_instance_uid)
            conn.execute(self._ins_newest, values)
            moved = old is not None and old[1] != series_id
            inc = 1 if old is None or moved else 0
            conn.execute(self._touch, {"b_sid": series_id, "b_now": now, "b_inc": inc})
            if old is not None and moved:
                conn.execute(
                    update(Series)
                    .where(Series.id == old[1])
                    .values(instance_count=Series.instance_count - 1)
                )
            return old

        _, old = self._write_and_record(self._place_replace, record, facts, chunks, rel, extra)
        if old is not None and old[0] != rel:
            self.archive.discard(old[0])
        return "stored" if old is None else "replaced"

    def _write_and_record(
        self,
        place: Callable[[Sequence[Chunk], str], bool],
        record: Callable[[Connection, dict[str, Any], int, datetime], _R],
        facts: HeaderFacts,
        chunks: Sequence[Chunk],
        rel: str,
        extra: dict[str, Any],
    ) -> tuple[bool, _R]:
        """Write the file with ``place`` on a writer thread while ``record`` writes the rows
        (given the instance row's values, the series id and the time) in one transaction,
        which commits only once the file is durable. Returns ``place``'s and ``record``'s
        results."""
        size = sum(chunk_size(c) for c in chunks)
        fut = self._pool.submit(place, chunks, rel)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                series_id = self._series_id(conn, facts, now)
                values = self._row(facts, series_id, rel, size, now, extra)
                result = record(conn, values, series_id, now)
                placed = fut.result()  # the file is durable before the row commits
        finally:
            wait([fut])  # never leave a writer reading the caller's buffer
        return placed, result

    def _insert_first(
        self, conn: Connection, values: dict[str, Any], series_id: int, now: datetime
    ) -> bool:
        """Insert the instance row unless its SOP Instance UID is known; True if inserted
        (the series is then touched)."""
        inserted = conn.execute(self._ins_first, values).first() is not None
        if inserted:
            conn.execute(self._touch, {"b_sid": series_id, "b_now": now, "b_inc": 1})
        return inserted

    @staticmethod
    def _row(
        facts: HeaderFacts,
        series_id: int,
        rel: str,
        size: int,
        now: datetime,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            **facts.instance_columns(),
            **extra,
            "series_fk": series_id,
            "path": rel,
            "size_bytes": size,
            "received_at": now,
        }

    def _series_id(self, conn: Connection, f: HeaderFacts, now: datetime) -> int:
        with self._lock:
            cached = self._series_cache.get(f.series_uid)
            if cached is not None:
                self._series_cache.move_to_end(f.series_uid)
                return cached
        sid = self._id_or_insert(
            conn,
            select(Series.id).where(Series.series_instance_uid == f.series_uid),
            Series,
            "series_instance_uid",
            lambda: {
                "series_instance_uid": f.series_uid,
                "study_fk": self._study_id(conn, f),
                "modality": f.modality,
                "series_number": f.series_number,
                "series_description": f.series_description,
                "manufacturer": f.manufacturer,
                "sop_class_uid": f.sop_class_uid,
                "frame_of_reference_uid": f.frame_of_reference_uid,
                "state": "receiving",
                "instance_count": 0,
                "first_received_at": now,
                "last_received_at": now,
                "burst_started_at": now,
            },
        )
        with self._lock:
            self._series_cache[f.series_uid] = sid
            while len(self._series_cache) > self._cache_size:
                self._series_cache.popitem(last=False)
        return sid

    def _study_id(self, conn: Connection, f: HeaderFacts) -> int:
        return self._id_or_insert(
            conn,
            select(Study.id).where(Study.study_instance_uid == f.study_uid),
            Study,
            "study_instance_uid",
            lambda: {
                "study_instance_uid": f.study_uid,
                "patient_fk": self._patient_id(conn, f),
                "study_date": f.study_date,
                "accession_number": f.accession_number,
                "study_description": f.study_description,
                "created_at": utcnow(),
            },
        )

    def _patient_id(self, conn: Connection, f: HeaderFacts) -> int:
        conn.execute(
            self._dialect_insert(Patient)
            .values(patient_id=f.patient_id, issuer=f.issuer, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["patient_id", "issuer"])
        )
        return int(
            conn.execute(
                select(Patient.id).where(
                    Patient.patient_id == f.patient_id, Patient.issuer == f.issuer
                )
            ).scalar_one()
        )

    def _id_or_insert(
        self,
        conn: Connection,
        lookup: Select[int],
        model: type[Series] | type[Study],
        unique: str,
        values: Callable[[], dict[str, Any]],
    ) -> int:
        """The id ``lookup`` finds; else insert ``values()`` (a concurrent insert of the
        same ``unique`` key wins) and look again."""
        found = conn.execute(lookup).scalar()
        if found is not None:
            return int(found)
        conn.execute(
            self._dialect_insert(model)
            .values(**values())
            .on_conflict_do_nothing(index_elements=[unique])
        )
        return int(conn.execute(lookup).scalar_one())

    def forget_cache(self) -> None:
        """Drop cached series ids (after rows were deleted by hand)."""
        with self._lock:
            self._series_cache.clear()
