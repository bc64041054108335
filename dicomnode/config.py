"""Node configuration: one loader for every ``dicomnode`` command.

Precedence: built-in defaults < YAML file (``--config FILE``) < environment variables
(prefix ``DICOMNODE_``, nested keys joined by ``__``, e.g. ``DICOMNODE_NETWORK__PORT=11113``;
lists and mappings as JSON). ``configs/node.yaml`` documents every key with its default;
a test keeps it equal to the defaults written here.

Relative paths are relative to the working directory of the process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "DICOMNODE_"
CONFIG_ENV = "DICOMNODE_CONFIG"
"""Environment variable naming the config file when ``--config`` is not given."""

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash
_UID_ROOT_RE = re.compile(r"^[0-9]+(\.[0-9]+)*\.?$")
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


SHIPPED_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "phantom-glip"
"""The phantom-trained model shipped in the repository (the embedded default)."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad key and what it expects."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE_RE.match(value):
        raise ValueError(
            "an AE title is 1-16 printable ASCII characters, not all spaces, without backslash"
        )
    return stripped


AeTitle = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(_check_ae_title)]


class Identity(_Section):
    """How the node's own objects are marked (outputs use it; ingest recognises it)."""

    uid_root: str = "2.25.4310749083864333264016674165094214414."
    manufacturer: str = "glip-node"
    series_description_prefix: str = "GLIP"

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, v: str) -> str:
        if not _UID_ROOT_RE.match(v) or len(v) > 48:
            raise ValueError("a UID root is digits separated by dots, at most 48 characters")
        return v if v.endswith(".") else v + "."


class TlsConfig(_Section):
    """TLS for the SCP. Off by default; when on, cert_file and key_file are required."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files(self) -> TlsConfig:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("tls.enabled needs tls.cert_file and tls.key_file")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("tls.require_client_cert needs tls.ca_file to verify clients")
        return self


class NetworkConfig(_Section):
    """Where and how the SCP listens."""

    bind_address: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)  # 0: any free port
    max_associations: int = Field(default=8, ge=1, le=1000)
    max_pdu_bytes: int = Field(default=4_194_304, ge=0)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=120.0, gt=0)
    # A new connection that has not sent its A-ASSOCIATE-RQ (and finished the TLS
    # handshake) within this many seconds is closed; it never counts as an association.
    request_timeout_s: float = Field(default=5.0, gt=0)
    # Connections open at once from one peer address (pending and associated); more are
    # closed at once, so that one host cannot use up the node's threads.
    max_connections_per_host: int = Field(default=16, ge=1, le=10000)
    # Largest data set accepted (as received, and inflated when deflated); a larger one
    # is refused with 0xA700 and the association goes on.
    max_instance_size: ByteSize = ByteSize(1024**3)
    # Data sets larger than this are received into a temporary file in the archive
    # instead of memory, so memory is bounded by this size per association.
    spool_above: ByteSize = ByteSize(16 * 1024**2)
    # Storage SOP classes accepted: all (every standard storage class and any unknown or
    # private class a peer proposes), standard (standard storage classes only), listed
    # (only series_facts' processed and archive-only classes). Only CT becomes a job.
    storage_classes: Literal["all", "standard", "listed"] = "all"
    tls: TlsConfig = TlsConfig()

    @field_validator("max_pdu_bytes")
    @classmethod
    def _pdu(cls, v: int) -> int:
        if v != 0 and v < 4096:
            raise ValueError("max_pdu_bytes is 0 (unlimited) or at least 4096")
        return v


class AllowedCaller(_Section):
    """One calling AE title allowed to associate, optionally only from one host."""

    ae_title: AeTitle
    host: str | None = None


class AccessConfig(_Section):
    """Who may associate. An empty list refuses everyone unless accept_any is true."""

    accept_any: bool = False
    allowed: list[AllowedCaller] = []


class ArchiveConfig(_Section):
    """The on-disk archive of received instances."""

    dir: Path | None = None
    layout: Literal["uid", "hashed"] = "uid"
    fsync: bool = True
    duplicate_policy: Literal["keep_first", "keep_newest"] = "keep_first"
    min_free: str = "2GiB"

    @field_validator("min_free", mode="before")
    @classmethod
    def _min_free(cls, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError("min_free is a size such as 2GiB or 500000000, or a percent like 5%")
        s = str(v).strip()
        if s.endswith("%"):
            try:
                pct = float(s[:-1])
            except ValueError:
                pct = -1.0
            if not 0.0 <= pct < 100.0:
                raise ValueError("a min_free percent is between 0% and 100%")
            return s
        if not _SIZE_RE.match(s):
            raise ValueError(
                "min_free is a size such as 2GiB, 500MB or 500000000 (bytes), or a percent like 5%"
            )
        return s

    def min_free_bytes(self, total_bytes: int) -> int:
        """The watermark in bytes for a file system of ``total_bytes``."""
        s = self.min_free.strip()
        if s.endswith("%"):
            return int(total_bytes * float(s[:-1]) / 100.0)
        m = _SIZE_RE.match(s)
        if m is None:  # the validator accepts nothing else; guards model_construct()
            raise ValueError(f"archive.min_free {self.min_free!r} is not a size or a percent")
        unit = (m.group(2) or "B").upper()
        return int(float(m.group(1)) * _UNITS[unit])


class DatabaseConfig(_Section):
    """The database. Default: SQLite (WAL) in var_dir; PostgreSQL via postgresql+psycopg://."""

    url: str | None = None
    busy_timeout_s: float = Field(default=30.0, gt=0)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("sqlite") or v.startswith("postgresql")):
            raise ValueError("url is sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB")
        return v


class AssemblerConfig(_Section):
    """Series completeness."""

    quiet_time_s: float = Field(default=30.0, gt=0)
    forced_deadline_s: float = Field(default=1800.0, gt=0)
    sweep_interval_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _deadline(self) -> AssemblerConfig:
        if self.forced_deadline_s < self.quiet_time_s:
            raise ValueError("assembler.forced_deadline_s must be >= assembler.quiet_time_s")
        return self


class SelectionConfig(_Section):
    """Which completed series become jobs."""

    modalities: list[str] = ["CT"]
    require_original: bool = True
    exclude_localizers: bool = True
    min_slices: int = Field(default=40, ge=1)
    max_slice_thickness_mm: float = Field(default=1.5, gt=0)
    min_z_coverage_mm: float = Field(default=60.0, ge=0)
    phase: Literal["most_complete"] | Annotated[float, Field(ge=0, lt=100)] = "most_complete"
    late_instances: Literal["reprocess", "ignore"] = "reprocess"
    skip_own_outputs: bool = True


class Destination(_Section):
    """A DICOM peer that receives results (C-STORE SCU from the node)."""

    name: str = Field(min_length=1)
    ae_title: AeTitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    # DICOM TLS to this peer; ca_file verifies its certificate (null: system CAs). The
    # node's own certificate (network.tls cert_file/key_file) is offered when set.
    tls: bool = False
    tls_ca_file: Path | None = None
    # Which result objects this peer takes (many PACS refuse SR or SEG).
    kinds: list[Literal["sr", "seg", "keyimage"]] = ["sr", "seg", "keyimage"]
    # Treat a C-STORE Warning status (0xB000, 0xB007, 0xB006) as delivered.
    accept_warning: bool = False

    @field_validator("kinds")
    @classmethod
    def _some_kinds(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a destination needs at least one of sr, seg, keyimage")
        return sorted(set(v), key=v.index)


class DeliveryConfig(_Section):
    """Retry policy for sending results (one place for every destination)."""

    # Attempts per object before it is dead-lettered (`dicomnode deliveries requeue`).
    max_attempts: int = Field(default=10, ge=1)
    # Exponential backoff between attempts: initial * 2^(attempt-1), at most backoff_max_s,
    # with +-jitter (a fraction) so that many deliveries do not retry in lock step.
    backoff_initial_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=600.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    # Seconds to connect/negotiate and to wait for a C-STORE response.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    # Circuit breaker per destination: after this many consecutive transient failures the
    # destination is skipped for breaker_open_s seconds (others keep flowing).
    breaker_failures: int = Field(default=3, ge=1)
    breaker_open_s: float = Field(default=30.0, gt=0)
    # How often the delivery loop looks for due deliveries.
    poll_interval_s: float = Field(default=1.0, gt=0)


class WorkerConfig(_Section):
    """Job workers: claiming, leases, device and threads."""

    # Jobs processed at once by one worker process.
    threads: int = Field(default=1, ge=1, le=64)
    # A claimed job's lease (renewed by heartbeats every lease_s / 3); an expired lease is
    # reclaimed by another worker, and the old holder may no longer write results.
    lease_s: float = Field(default=900.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    poll_interval_s: float = Field(default=2.0, gt=0)
    # auto: CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Torch intra-op threads on CPU (null: all cores but one, so the SCP keeps a core).
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    # Extra network passes on augmented copies of the volume for the confidence score
    # (0-4; they never move the landmarks). 0 falls back to peak sharpness alone, a far
    # weaker signal (bench.confidence: AUROC 0.69 vs 0.89 with 2 passes) at about half the
    # inference time.
    tta_passes: int = Field(default=2, ge=0, le=4)


class PlausibilityConfig(_Section):
    """Plausibility gate on each result; a failed check flags or withholds the result.

    Impossible geometry (an inter-hinge distance or the plane tilt outside its range) and
    a doubtful model (fold spread or confidence past its limit) have separate actions."""

    # Inter-hinge distances (RCC-LCC, LCC-NCC, NCC-RCC) must lie in this range, mm.
    hinge_distance_mm: tuple[float, float] = (8.0, 40.0)
    # Tilt of the annulus plane from axial, degrees.
    plane_tilt_deg: tuple[float, float] = (10.0, 85.0)
    # Largest spread of the fold models' predictions of one hinge point (RMS, mm).
    max_fold_spread_mm: float = Field(default=4.0, gt=0)
    # Lowest per-landmark confidence score (0..1): the calibrated probability that the
    # landmark lies within 2 mm, from test-time augmentation spread, peak sharpness and fold
    # spread (glipcore.confidence). With the shipped five-landmark model (bench.confidence,
    # 90 held-out phantoms, 80 with calcium at the hinges) 0.5 flagged 2 of the 3 landmarks
    # > 2 mm off and 2 of 447 others, 0.4 none of the 3; a full-size phantom's LCC 11 mm
    # off scored 0.48.
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    # What a failed check does. withhold: the result is stored and recorded with its
    # findings (`dicomnode results`) but never delivered; flag: it is delivered with the
    # findings as warnings in the SR text and the key-image captions.
    # geometry_action: an inter-hinge distance or the plane tilt outside its range.
    geometry_action: Literal["flag", "withhold"] = "withhold"
    # confidence_action: fold spread or confidence past its limit (and nothing worse).
    confidence_action: Literal["flag", "withhold"] = "flag"

    @model_validator(mode="before")
    @classmethod
    def _no_single_action(cls, data: Any) -> Any:
        if isinstance(data, dict) and "action" in data:
            raise ValueError(
                "plausibility.action was split: set geometry_action (default withhold) and "
                "confidence_action (default flag) instead"
            )
        return data

    @field_validator("hinge_distance_mm", "plane_tilt_deg")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(v)}")
        return v


class OutputsConfig(_Section):
    """Result objects written per job (SR, SEG, key images)."""

    # Radius of the sphere drawn per hinge point in the SEG, mm.
    seg_sphere_radius_mm: float = Field(default=2.5, gt=0, le=20)
    # Key images: square size in pixels and field of view in mm of the reformats.
    keyimage_size_px: int = Field(default=512, ge=128, le=2048)
    keyimage_fov_mm: float = Field(default=90.0, gt=10, le=400)


class ModelConfig(_Section):
    """The model bundle used for inference. The active model version in the database wins;
    this is the embedded default (null: the shipped phantom model, models/phantom-glip)."""

    bundle: Path | None = None


class LoggingConfig(_Section):
    """Logging (never carries patient names, IDs or birth dates, at any level)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: human-readable lines; json: one JSON object per line (for log shippers).
    format: Literal["text", "json"] = "text"


class MetricsConfig(_Section):
    """Prometheus metrics endpoint (/metrics)."""

    enabled: bool = False
    bind_address: str = "127.0.0.1"
    # TCP port per process; a worker adds its instance number (see systemd units).
    port: int = Field(default=9464, ge=0, le=65535)


class RetentionConfig(_Section):
    """Scheduled purge of archived images of delivered studies (database rows stay)."""

    enabled: bool = True
    # Archived instances of a study whose results were all delivered this many days ago
    # are deleted. Studies carrying annotations are never purged (retraining needs them).
    delivered_days: float = Field(default=30.0, gt=0)
    # How often the purge runs, hours.
    interval_h: float = Field(default=6.0, gt=0)


class RetrainGateConfig(_Section):
    """When a retrained candidate may replace the active model (each rule must hold)."""

    # Held-out annotated studies needed before a candidate can be promoted at all.
    min_holdout_studies: int = Field(default=5, ge=1)
    # The candidate's median hinge error may exceed the active model's by at most this.
    median_margin_mm: float = Field(default=0.0, ge=0)
    # The candidate's worst hinge error may exceed the active model's by at most this.
    worst_margin_mm: float = Field(default=2.0, ge=0)
    # The candidate's SDR at 2 mm may be lower than the active model's by at most this.
    sdr2_margin: float = Field(default=0.0, ge=0, le=1)
    # On the fixed phantom reference set: median margin (mm) against the active model. It
    # guards against forgetting: bench.retrain's first difficult-site candidate (held-out
    # median 2.24 -> 1.38 mm) lost 0.29 mm here and 0.46 mm on 8 other ordinary phantoms,
    # and was refused. It cannot catch annotations that are wrong on the site's scans
    # only: a candidate trained on 10 mm-shifted annotations moved it by 0.33 mm.
    reference_margin_mm: float = Field(default=0.25, ge=0)


class RetrainConfig(_Section):
    """``dicomnode retrain``: dataset, held-out split, training budget, gate, promotion."""

    # auto: a candidate that passes the gate is promoted; manual: it is only registered.
    promote: Literal["auto", "manual"] = "auto"
    # Wall-time budget of one retrain (dataset, training and evaluation), minutes.
    budget_min: float = Field(default=60.0, gt=0)
    # CPU threads training and evaluation use (leave cores to the SCP and a worker).
    threads: int = Field(default=2, ge=1, le=256)
    # Share of annotated studies held out for the comparison (stable hash of the UID).
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    # At least this many studies are held out (when that many exist).
    holdout_min: int = Field(default=5, ge=1)
    # Fine-tune the active model (false: train from scratch).
    fine_tune: bool = True
    # Ordinary phantom cases mixed into the training set (0: none), against forgetting:
    # bench.retrain's difficult-site candidate with 16 lost 0.46 mm on ordinary phantoms
    # and was refused; with 48 it passed the gate (generated once, then cached).
    phantom_cases: int = Field(default=48, ge=0)
    # Phantoms of the fixed reference set (seeded, never annotated) and its seed.
    reference_cases: int = Field(default=8, ge=1)
    reference_seed: int = 9_000
    # Paired bootstrap resamples of the comparison's confidence intervals.
    bootstrap: int = Field(default=1000, ge=100)
    # A running retrain's lease; one that is not renewed expires after this (seconds).
    lease_s: float = Field(default=600.0, gt=0)
    # Training configuration (YAML, glip train's schema) the retrain starts from; null:
    # the active model's architecture and preprocessing with the budget's epochs.
    train_config: Path | None = None
    # Where datasets, candidates and logs go (null: var_dir/retrain).
    dir: Path | None = None
    # The node's own scheduler starts retrains (null: the systemd timer does, the default):
    # a crontab line in UTC ("0 2 * * 0") or "every N" with s, m, h or d ("every 12h").
    # Each run is a subprocess of `dicomnode serve` with `threads` threads and lower priority.
    schedule: str | None = None
    gate: RetrainGateConfig = RetrainGateConfig()

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from dicomnode.learn.retrain_schedule import trigger_of

        trigger_of(v)  # raises ScheduleError (a ValueError) naming the accepted forms
        return v.strip()


class NodeConfig(BaseSettings):
    """The whole node configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    ae_title: AeTitle = "GLIPNODE"
    var_dir: Path = Path("var")
    identity: Identity = Identity()
    network: NetworkConfig = NetworkConfig()
    access: AccessConfig = AccessConfig()
    archive: ArchiveConfig = ArchiveConfig()
    database: DatabaseConfig = DatabaseConfig()
    assembler: AssemblerConfig = AssemblerConfig()
    selection: SelectionConfig = SelectionConfig()
    destinations: list[Destination] = []
    delivery: DeliveryConfig = DeliveryConfig()
    worker: WorkerConfig = WorkerConfig()
    plausibility: PlausibilityConfig = PlausibilityConfig()
    outputs: OutputsConfig = OutputsConfig()
    model: ModelConfig = ModelConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    retention: RetentionConfig = RetentionConfig()
    retrain: RetrainConfig = RetrainConfig()

    @field_validator("destinations")
    @classmethod
    def _unique_destinations(cls, v: list[Destination]) -> list[Destination]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dup)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; environment variables override them.
        return (env_settings, init_settings)

    @property
    def archive_dir(self) -> Path:
        """The archive folder (archive.dir, or var_dir/archive)."""
        return self.archive.dir if self.archive.dir is not None else self.var_dir / "archive"

    @property
    def bundle_path(self) -> Path:
        """The configured model bundle (model.bundle, or the shipped phantom model)."""
        return self.model.bundle if self.model.bundle is not None else SHIPPED_BUNDLE

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL (database.url, or SQLite at var_dir/dicomnode.db)."""
        if self.database.url is not None:
            return self.database.url
        return f"sqlite:///{(self.var_dir / 'dicomnode.db').as_posix()}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def _expected_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The allowed keys of the mapping at ``loc[:-1]`` (None when not a model)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        ann = fields[part].annotation
        args = getattr(ann, "__args__", None)
        current = args[0] if args and not hasattr(ann, "model_fields") else ann
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields is not None else None


def _field_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The location without pydantic's union-member tags (e.g. ``constrained-float``)."""
    return tuple(p for p in loc if isinstance(p, int) or p.isidentifier())


def _env_source(loc: tuple[int | str, ...]) -> str | None:
    """The set environment variable that supplies the value at ``loc`` (the key's own, or
    one of a section above it holding JSON), or None."""
    names = [p for p in loc if not isinstance(p, int)]
    present = {k.upper() for k in os.environ}
    for n in range(len(names), 0, -1):
        var = ENV_PREFIX + "__".join(str(p) for p in names[:n]).upper()
        if var in present:
            return var
    return None


def _yaml_line(path: Path, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) of the key at ``loc`` in the YAML file, or of its nearest
    enclosing key that is there; None when the file does not mention it."""
    try:
        node: yaml.Node | None = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line: int | None = None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            hit = next((kv for kv in node.value if kv[0].value == part), None)
            if hit is None:
                return line
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _source(loc: tuple[int | str, ...], path: Path | None) -> str:
    """Where the value at ``loc`` came from: `` [environment: VAR]``, `` [file F, line N]``
    or nothing (a default)."""
    var = _env_source(loc)
    if var is not None:
        return f" [environment: {var}]"
    line = _yaml_line(path, loc) if path is not None else None
    return f" [file {path}, line {line}]" if line is not None else ""


def _format_errors(exc: ValidationError, origin: str, path: Path | None = None) -> str:
    by_key: dict[tuple[int | str, ...], list[str]] = {}
    shown: dict[tuple[int | str, ...], str] = {}
    for err in exc.errors():
        loc = _field_loc(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            allowed = _expected_keys(NodeConfig, loc)
            hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
            by_key.setdefault(loc, []).append(f"unknown key{hint}")
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        msgs = by_key.setdefault(loc, [])
        if msg not in msgs:
            msgs.append(msg)
        got = err.get("input")
        if not isinstance(got, dict | list) and got is not None:
            shown[loc] = f" (got {got!r})"
    lines = [f"invalid configuration ({origin}):"]
    for loc, msgs in by_key.items():
        key = ".".join(str(p) for p in loc) or "(top level)"
        text = " or ".join(msgs)
        lines.append(f"  {key}: {text}{shown.get(loc, '')}{_source(loc, path)}")
    return "\n".join(lines)


def load_config(path: Path | str | None = None) -> NodeConfig:
    """Load the configuration: defaults < ``path`` (or $DICOMNODE_CONFIG) < environment.

    Raises :class:`ConfigError` naming every bad key and what it expects.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data = _read_yaml(Path(path)) if path is not None else {}
    origin = f"file {path} + {ENV_PREFIX}* environment" if path else "defaults + environment"
    try:
        return NodeConfig(**data)
    except ValidationError as exc:
        where = Path(path) if path is not None else None
        raise ConfigError(_format_errors(exc, origin, where)) from None
