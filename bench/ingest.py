"""Ingest throughput: the same full-size phantom CT series (320 x 512 x 512, about 160 MB)
sent by dcmtk's storescu to

  (a) dcmtk storescp (TCP_NODELAY=1 in its environment),
  (b) pynetdicom's storescp app (``python -m pynetdicom storescp``, default settings),
  (c) ``dicomnode serve`` with fsync on, then with fsync off (netfast acceptor),
  (s) ``dicomnode serve`` with fsync on on pynetdicom's stock acceptor
      (``DICOMNODE_ACCEPTOR=stock``): what netfast is worth,

and then by 4 storescu processes at once (4 different copies of the series) into (c).
Every receiver writes the files to disk. storescu runs with TCP_NODELAY=1 for every
receiver. Each measurement is the median of ``--repeat`` runs into a fresh receiver.

    .venv/bin/python -m bench.ingest [--repeat 3] [--senders 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from dicomnode.operate.localpacs import free_port

PY = sys.executable
SEED = 2024
DATA_VERSION = "1"


def make_series(workdir: Path, copies: int) -> list[Path]:
    """``copies`` folders holding the same phantom volume under different UIDs (cached)."""
    from glipcore.dicomwrite import SeriesMeta, write_ct_series
    from glipcore.phantom import generate

    dirs = [workdir / f"series{i}" for i in range(copies)]
    stamp = workdir / "data.stamp"
    if stamp.exists() and stamp.read_text() == f"{DATA_VERSION}:{copies}":
        return dirs
    print(f"writing {copies} copies of the full-size phantom series into {workdir} ...")
    vol, _ = generate(SEED, 0, "full")
    for i, d in enumerate(dirs):
        shutil.rmtree(d, ignore_errors=True)
        write_ct_series(vol, d, SeriesMeta.synthetic(SEED + i, f"bench-ingest-{i}"))
    stamp.write_text(f"{DATA_VERSION}:{copies}")
    return dirs


def wait_echo(port: int, aet: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["/usr/bin/echoscu", "-aet", "STORESCU", "-aec", aet, "127.0.0.1", str(port)],
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"receiver on port {port} did not answer C-ECHO in {timeout} s")


@contextmanager
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def send(port: int, aet: str, series: list[Path]) -> float:
    """Seconds for len(series) storescu processes sending at once (one series each)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = ["/usr/bin/storescu", "+sd", "-aet", "STORESCU", "-aec", aet, "127.0.0.1", str(port)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([*cmd, str(d)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for d in series
    ]
    outs = [p.communicate() for p in procs]
    dt = time.perf_counter() - t0
    for p, (_o, e) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {e.decode(errors='replace')[-2000:]}")
    return dt


@dataclass
class Receiver:
    """How to start one receiver into a fresh folder: (command, env, AE title)."""

    name: str
    start: Callable[[Path, int], tuple[list[str], dict[str, str]]]
    aet: str
    count: Callable[[Path], int]


def _files(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file())


def dcmtk(out: Path, port: int) -> tuple[list[str], dict[str, str]]:
    out.mkdir(parents=True)
    cmd = ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(port)]
    return cmd, {"TCP_NODELAY": "1"}


def pynetdicom_app(out: Path, port: int) -> tuple[list[str], dict[str, str]]:
    out.mkdir(parents=True)
    return [PY, "-m", "pynetdicom", "storescp", str(port), "-aet", "STORESCP", "-od", str(out)], {}


def dicomnode(
    fsync: bool, acceptor: str = "netfast"
) -> Callable[[Path, int], tuple[list[str], dict[str, str]]]:
    def start(out: Path, port: int) -> tuple[list[str], dict[str, str]]:
        out.mkdir(parents=True)
        cfg = {
            "var_dir": str(out),
            "network": {"port": port, "max_associations": 8},
            "access": {"allowed": [{"ae_title": "STORESCU"}]},
            "archive": {"fsync": fsync, "min_free": "1GiB"},
            "logging": {"level": "WARNING"},
        }
        path = out / "node.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return [PY, "-m", "dicomnode", "--config", str(path), "serve"], {
            "DICOMNODE_ACCEPTOR": acceptor
        }

    return start


def _node_count(out: Path) -> int:
    return sum(1 for _ in (out / "archive").rglob("*.dcm"))


def measure(rec: Receiver, series: list[Path], workdir: Path, repeat: int) -> float:
    """Median seconds to receive ``series`` (sent at once) into a fresh receiver."""
    times = []
    n_expected = sum(len(list(d.iterdir())) for d in series)
    for r in range(repeat):
        out = workdir / "out" / f"{rec.name.replace(' ', '_')}-{r}"
        shutil.rmtree(out, ignore_errors=True)
        port = free_port()
        cmd, env = rec.start(out, port)
        with process(cmd, env):
            wait_echo(port, rec.aet)
            times.append(send(port, rec.aet, series))
            time.sleep(0.3)
        got = rec.count(out)
        shutil.rmtree(out, ignore_errors=True)
        if got != n_expected:
            raise RuntimeError(f"{rec.name}: {got} files stored, expected {n_expected}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per receiver (median)")
    ap.add_argument("--senders", type=int, default=4, help="concurrent senders into (c)")
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "glip-bench-ingest",
        help="where the series (cached between runs) and received files go",
    )  # fmt: skip
    args = ap.parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(f"/usr/bin/{tool}") is None:
            print(f"{tool} not found: install dcmtk (scripts/setup.sh)", file=sys.stderr)
            return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    series = make_series(args.workdir, max(1, args.senders))
    one = series[:1]
    files = sorted(p for p in one[0].iterdir())
    mb = sum(p.stat().st_size for p in files) / 1e6
    n = len(files)
    print(f"series: {n} instances, {mb:.1f} MB; storescu with TCP_NODELAY=1; "
          f"median of {args.repeat} runs\n")  # fmt: skip

    receivers = {
        "a": Receiver("(a) dcmtk storescp", dcmtk, "STORESCP", _files),
        "b": Receiver("(b) pynetdicom storescp", pynetdicom_app, "STORESCP", _files),
        "c": Receiver("(c) dicomnode fsync on", dicomnode(True), "GLIPNODE", _node_count),
        "c0": Receiver("(c) dicomnode fsync off", dicomnode(False), "GLIPNODE", _node_count),
        "s": Receiver(
            "(s) dicomnode stock acceptor, fsync on",
            dicomnode(True, "stock"),
            "GLIPNODE",
            _node_count,
        ),
    }
    secs = {k: measure(r, one, args.workdir, args.repeat) for k, r in receivers.items()}
    multi_rec = Receiver(f"(c) dicomnode fsync on, {len(series)} senders", dicomnode(True),
                         "GLIPNODE", _node_count)  # fmt: skip
    multi = measure(multi_rec, series, args.workdir, args.repeat)

    print(f"{'receiver':40s} {'seconds':>8s} {'MB/s':>8s} {'inst/s':>8s}")
    for k, r in receivers.items():
        s = secs[k]
        print(f"{r.name:40s} {s:8.3f} {mb / s:8.1f} {n / s:8.1f}")
    print(f"{multi_rec.name:40s} {multi:8.3f} {len(series) * mb / multi:8.1f} "
          f"{len(series) * n / multi:8.1f}")  # fmt: skip
    print()
    for k, label in (("c", "fsync on, netfast"), ("c0", "fsync off, netfast"),
                     ("s", "fsync on, stock pynetdicom acceptor")):  # fmt: skip
        print(f"{label:36s}: c/b = {secs['b'] / secs[k]:.2f}x   "
              f"c/a = {secs['a'] / secs[k]:.2f}x")  # fmt: skip
    print("targets: c/b >= 1.5x with fsync on; stretch c/a >= 0.5x "
          "(ratios are throughput ratios: time of the peer / time of c)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
