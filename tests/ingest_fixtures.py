"""Fixtures and helpers of the ingest tests (issue 5): a throwaway PostgreSQL 15 server,
databases on both backends, tiny CT series on disk, and a running node.

Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, select, update

from dicomnode.config import NodeConfig
from dicomnode.db.models import AssociationAudit, Event, Job, Series, utcnow
from dicomnode.db.session import engine_from_config, make_engine, session_factory
from dicomnode.operate.localpacs import free_port
from dicomnode.receive.archive import Archive
from dicomnode.receive.assembler import Assembler
from dicomnode.receive.filemeta import file_header
from dicomnode.receive.headers import read_header_file
from dicomnode.receive.ingest import IngestStore
from dicomnode.receive.scp import StorageSCP
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.volume import Volume

PG_BIN_GLOB = "/usr/lib/postgresql/15/bin"
_db_counter = itertools.count()


def _pg_bin() -> Path:
    hits = sorted(glob.glob(PG_BIN_GLOB)) or sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not hits or not (Path(hits[-1]) / "initdb").exists():
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql: "
            "run scripts/setup.sh (it installs the Debian postgresql package)",
            pytrace=False,
        )
    return Path(hits[-1])


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server tools as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


class PgServer:
    """A running throwaway PostgreSQL server on loopback."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir, self.root, self.port = bin_dir, root, port

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start PostgreSQL (initdb + pg_ctl as the postgres user) in a temp dir; stop it after."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="glip-pg-"))
    data, sock_dir = root / "data", root / "sock"
    sock_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock_dir, "postgres", "postgres")
    os.chmod(root, 0o700)
    run = {"check": True, "capture_output": True, "text": True}
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            **run,  # type: ignore[call-overload]
        )
        port = free_port()
        opts = (
            f"-p {port} -k {sock_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    opts,
                    "-l",
                    str(root / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            **run,  # type: ignore[call-overload]
        )
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}\n{log}", pytrace=False)
    server = PgServer(bin_dir, root, port)
    try:
        yield server
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend (a fresh PostgreSQL database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = f"t{os.getpid()}_{next(_db_counter)}"
    server.admin(f"CREATE DATABASE {name}")
    try:
        yield server.url(name)
    finally:
        with contextlib.suppress(Exception):
            server.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """``db_url`` upgraded to the newest schema through the migrations."""
    from dicomnode.db import migrate

    migrate.upgrade(db_url)
    return db_url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    """An engine on the migrated test database (SQLite and PostgreSQL)."""
    eng = make_engine(migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database only (for tests whose subject is not the database)."""
    from dicomnode.db import migrate

    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine on :func:`sqlite_url`."""
    eng = make_engine(sqlite_url)
    yield eng
    eng.dispose()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --------------------------------------------------------------------------- test series


def tiny_volume(
    seed: int = 0,
    shape_zyx: tuple[int, int, int] = (24, 24, 24),
    spacing_ijk: tuple[float, float, float] = (0.8, 0.8, 1.0),
    origin: tuple[float, float, float] = (-10.0, -12.0, -30.0),
) -> Volume:
    """A small axial CT volume of integer HU (so any lossless codec round-trips exactly)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1500, size=shape_zyx).astype(np.float32)
    affine = np.diag([*spacing_ijk, 1.0])
    affine[:3, 3] = origin
    return Volume(array=array, affine=affine)


def write_series(
    out_dir: Path,
    *,
    seed: int = 0,
    case_id: str = "case",
    vol: Volume | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale_intercept: float = 0.0,
    bits_stored: int = 16,
    **overrides: Any,
) -> list[Path]:
    """Write ``vol`` (default: :func:`tiny_volume`) as a CT series; ``overrides`` go to
    SeriesMeta (e.g. study_instance_uid to put two series in one study)."""
    meta = SeriesMeta.synthetic(seed, case_id, **overrides)
    return write_ct_series(
        vol if vol is not None else tiny_volume(seed),
        out_dir,
        meta,
        transfer_syntax=transfer_syntax,
        rescale_intercept=rescale_intercept,
        bits_stored=bits_stored,
    )


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file without preamble and file meta."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a DICOM file"
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len :]


def storescu_config(path: Path) -> Path:
    """A storescu association config (profile "CT") proposing CT Image Storage once per
    transfer syntax the node accepts, so that every file goes in its own transfer syntax
    (storescu's built-in profiles would convert most compressed files)."""
    from dicomnode.receive.series_facts import TRANSFER_SYNTAXES

    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(TRANSFER_SYNTAXES):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[CTContexts]"]
    lines += [
        f"PresentationContext{i + 1} = 1.2.840.10008.5.1.4.1.1.2\\TS{i}"
        for i in range(len(TRANSFER_SYNTAXES))
    ]
    lines += ["[[Profiles]]", "[CT]", "PresentationContexts = CTContexts"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- running node

TEST_CALLERS = [{"ae_title": "STORESCU"}, {"ae_title": "ECHOSCU"}]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def node_config(db_url: str, var_dir: Path, **overrides: Any) -> NodeConfig:
    """A test configuration: free port, 1 s quiet time, 0.2 s sweep, small series accepted."""
    base: dict[str, Any] = {
        "var_dir": str(var_dir),
        "database": {"url": db_url},
        "network": {"port": 0, "acse_timeout_s": 10, "dimse_timeout_s": 10},
        "access": {"allowed": TEST_CALLERS},
        "archive": {"min_free": "0"},
        "assembler": {"quiet_time_s": 1.0, "sweep_interval_s": 0.2, "forced_deadline_s": 30},
        "selection": {"min_slices": 10, "min_z_coverage_mm": 15.0},
    }
    return NodeConfig(**_merge(base, overrides))


@dataclass
class Node:
    """The SCP and the assembler running in this process against one database."""

    cfg: NodeConfig
    engine: Engine
    scp: StorageSCP | None = None
    assembler: Assembler | None = None
    with_assembler: bool = True

    def start(self) -> Node:
        self.scp = StorageSCP(self.cfg, self.engine)
        self.scp.start()
        if self.with_assembler:
            self.assembler = Assembler(self.cfg, self.engine)
            self.assembler.start()
        return self

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop(grace_s=2.0)
            self.scp = None
        if self.assembler is not None:
            self.assembler.stop()
            self.assembler = None

    @property
    def port(self) -> int:
        assert self.scp is not None
        return self.scp.port

    def storescu(
        self, files: list[Path], aet: str = "STORESCU", *extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Send ``files`` with dcmtk's storescu (verbose, so statuses are in the output)."""
        cmd = ["/usr/bin/storescu", "-v", "-aet", aet, "-aec", self.cfg.ae_title, *extra]
        cmd += ["127.0.0.1", str(self.port), *map(str, files)]
        env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk: no Nagle delay per small PDU
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)

    def echoscu(self, aet: str = "ECHOSCU", *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = ["/usr/bin/echoscu", "-v", "-aet", aet, "-aec", self.cfg.ae_title, *extra]
        cmd += ["127.0.0.1", str(self.port)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def rows(self, model: type[Any], *where: Any) -> list[Any]:
        with session_factory(self.engine)() as s:
            return list(s.scalars(select(model).where(*where).order_by(model.id)))

    def audits(self, n: int, timeout: float = 10.0) -> list[AssociationAudit]:
        """The audit rows once ``n`` associations have ended (rows are written just after
        the peer has its answer)."""
        wait_for(
            lambda: len([a for a in self.rows(AssociationAudit) if a.outcome != "open"]) >= n,
            timeout,
        )
        return self.rows(AssociationAudit)

    def wait_jobs(self, n: int, timeout: float = 15.0) -> list[Job]:
        """Wait until at least ``n`` jobs exist; then the jobs."""
        wait_for(lambda: len(self.rows(Job)) >= n, timeout)
        return self.rows(Job)

    def wait_decided(self, n_series: int, timeout: float = 15.0) -> list[Series]:
        """Wait until ``n_series`` series carry a decision."""
        wait_for(
            lambda: len([x for x in self.rows(Series) if x.decision is not None]) >= n_series,
            timeout,
        )
        return self.rows(Series)


@pytest.fixture
def node_factory(migrated_url: str, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start nodes on the test database: ``node_factory(**config_overrides)``."""
    made: list[Node] = []
    engines: list[Engine] = []

    def make(*, start: bool = True, with_assembler: bool = True, **overrides: Any) -> Node:
        cfg = node_config(migrated_url, tmp_path / "var", **overrides)
        engine = engine_from_config(cfg)
        engines.append(engine)
        node = Node(cfg, engine, with_assembler=with_assembler)
        made.append(node)
        return node.start() if start else node

    yield make
    for node in made:
        node.stop()
    for engine in engines:
        engine.dispose()


def ingest(store: IngestStore, files: list[Path]) -> list[str]:
    """Put files into the archive and database as the C-STORE handler does (no network)."""
    from pydicom import dcmread

    outcomes = []
    for f in files:
        ts = str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        facts = read_header_file(str(f))
        head = file_header(facts.sop_class_uid, facts.sop_instance_uid, ts, "TEST")
        outcomes.append(store.store(facts, [head, dataset_bytes(f)], ts))
    return outcomes


def retag(files: list[Path], out_dir: Path, suffix: str, **attrs: Any) -> list[Path]:
    """Copies of ``files`` with new SOP Instance UIDs (derived from the old one and
    ``suffix``) and ``attrs`` set, e.g. a second cardiac phase of the same series."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True, exist_ok=True)
    outs = []
    for f in files:
        ds = dcmread(f)
        uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), suffix])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        for k, v in attrs.items():
            setattr(ds, k, v)
        out = out_dir / f.name
        ds.save_as(out, enforce_file_format=True)
        outs.append(out)
    return outs


# --------------------------------------------------------------------------- no network


class Rig:
    """Ingest without the network and sweep with an explicit clock."""

    def __init__(self, cfg: NodeConfig, started_at: datetime | None = None) -> None:
        self.cfg = cfg
        self.engine = engine_from_config(cfg)
        self.store = IngestStore(self.engine, Archive.from_config(cfg.archive_dir, cfg.archive))
        # a node running for a day unless told otherwise: the sweeps' explicit clocks then
        # meet no fresh quiet period after a start
        self.assembler = Assembler(
            cfg, self.engine, started_at=started_at or utcnow() - timedelta(days=1)
        )
        self.sessions = session_factory(self.engine)

    def send(self, files: list[Path]) -> list[str]:
        return ingest(self.store, files)

    def sweep_after(self, seconds: float) -> None:
        self.assembler.sweep(utcnow() + timedelta(seconds=seconds))

    def jobs(self) -> list[Job]:
        with self.sessions() as s:
            return list(s.scalars(select(Job).order_by(Job.id)))

    def series(self, uid: str) -> Series:
        with self.sessions() as s:
            return s.scalars(select(Series).where(Series.series_instance_uid == uid)).one()

    def events(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(Event.kind).order_by(Event.id)))

    def claim(self, job_id: int) -> None:
        """What a worker does when it takes a job."""
        with self.sessions() as s, s.begin():
            s.execute(
                update(Job).where(Job.id == job_id).values(state="running", started_at=utcnow())
            )


@pytest.fixture
def rig_factory(migrated_url: str, tmp_path: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(started_at: datetime | None = None, **overrides: Any) -> Rig:
        rig = Rig(node_config(migrated_url, tmp_path / "var", **overrides), started_at)
        rigs.append(rig)
        return rig

    yield make
    for r in rigs:
        r.store.close()
        r.engine.dispose()


# --------------------------------------------------------------------------- raw SCU


def variant(src: Path, out: Path, *, meta_class: str | None = None, **attrs: Any) -> Path:
    """A copy of the DICOM file ``src`` with a new SOP Instance UID and ``attrs`` set;
    ``TransferSyntaxUID`` among them re-encodes it (e.g. deflated), ``meta_class`` puts
    another SOP class in the file meta than in the data set (pynetdicom's raw sender
    picks the presentation context from the file meta)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(src)
    ts = attrs.pop("TransferSyntaxUID", None)
    uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), str(out)])
    ds.SOPInstanceUID = uid
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPClassUID = meta_class or ds.SOPClassUID
    if ts is not None:
        ds.file_meta.TransferSyntaxUID = ts
    out.parent.mkdir(parents=True, exist_ok=True)
    # enforce_file_format would take the meta's SOP class from the data set
    ds.save_as(out, enforce_file_format=meta_class is None)
    return out


class RawScu:
    """A pynetdicom SCU sending files' data sets as they are encoded (no re-encoding),
    with the presentation context named by each file's meta. Use as a context manager."""

    def __init__(
        self,
        port: int,
        contexts: list[tuple[str, list[str]]],
        *,
        calling: str = "STORESCU",
        called: str = "GLIPNODE",
    ) -> None:
        from pynetdicom import AE

        self.ae = AE(ae_title=calling)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 60
        for sop_class, syntaxes in contexts:  # one context per transfer syntax
            for ts in syntaxes:
                self.ae.add_requested_context(sop_class, [ts])
        self.assoc = self.ae.associate("127.0.0.1", port, ae_title=called)

    def __enter__(self) -> RawScu:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    @property
    def accepted(self) -> set[str]:
        """The abstract syntaxes the node accepted."""
        return {str(cx.abstract_syntax) for cx in self.assoc.accepted_contexts}

    def send(self, path: Path) -> int:
        """C-STORE the data set of ``path``; the status (-1: no response)."""
        from pynetdicom import _config

        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            rsp = self.assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
        return int(rsp.Status) if "Status" in rsp else -1


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed key and certificate (CN=localhost) in ``folder``."""
    key, crt = folder / "node.key", folder / "node.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, crt
