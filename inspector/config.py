"""Typed, validated daemon configuration (`inspector run -c line.yaml`).

The daemon refuses to start on any problem, with one sentence naming the file, the field and what
was expected: unknown keys (a misspelled key must not silently fall back to a default), wrong
types, a missing model file, a folder source whose folder does not exist, a video file that is
not there. YAML is read with the safe loader. Relative paths are relative to the config file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config_outputs import OutputSettings
from .errors import ConfigError, describe_validation_error
from .settings import Backoff, Credentials, check_redis_url
from .strict import Strict

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ModelSettings(Strict):
    path: Path
    threshold: Annotated[float, Field(gt=0)] | None = None  # overrides the card's threshold
    intra_op_threads: Annotated[int, Field(ge=0, le=256)] = 0  # 0 = onnxruntime's default (all cores)
    inter_op_threads: Annotated[int, Field(ge=1, le=256)] = 1
    optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # onnxruntime's worker threads spin between runs by default; beside source threads (video
    # decoding, CSV parsing) on few cores that spinning steals their CPU. false = they sleep.
    spinning: bool = False
    watch_interval_s: Annotated[float, Field(ge=0, le=3600)] = 2.0  # poll the model file for replacement; 0 = only SIGHUP


class _SourceBase(Strict):
    name: str
    policy: Literal["drop_oldest", "block"] | None = None  # default: drop_oldest for live streams, block otherwise

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not SOURCE_NAME.match(name):
            raise ValueError("source names are 1-63 letters, digits, '_', '.', '-' and start with a letter or digit")
        return name


class CameraSource(_SourceBase):
    """cv2.VideoCapture on a device index, a video file, or an rtsp:// / http(s):// URL."""

    kind: Literal["camera"]
    uri: Union[int, str]
    realtime: bool = True  # video files: pace frames at the file's frame rate
    loop: bool = False  # video files: start again at the end (soak tests, demos)
    reconnect: Backoff = Backoff()
    read_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # a live camera (device or URL) that has delivered no frame for this long, since the start or its
    # last frame, fails /healthz (503, with the reason), retrying or not
    stale_after_s: Annotated[float, Field(gt=0)] = 10.0

    @property
    def is_file(self) -> bool:
        return isinstance(self.uri, str) and "://" not in self.uri

    @property
    def effective_policy(self) -> str:
        return self.policy or ("block" if self.is_file else "drop_oldest")


class FolderSource(_SourceBase):
    """Watch a directory for new image files; existing files first, in name order."""

    kind: Literal["folder"]
    path: Path
    patterns: list[str] = Field(default_factory=lambda: ["*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff"])
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    settle_s: Annotated[float, Field(ge=0, le=60)] = 0.3  # size and mtime unchanged this long = fully written
    move_processed: bool = True  # scored files to done/, unreadable ones to rejected/
    incomplete_grace_s: Annotated[float, Field(ge=0, le=3600)] = 5.0  # an undecodable file this fresh may still be arriving
    max_pixels: Annotated[int, Field(ge=1)] | None = None  # refuse larger images before decoding; None = the card's limit

    @property
    def effective_policy(self) -> str:
        return self.policy or "block"


class TrafficSource(_SourceBase):
    """Flow records (CSV or JSON lines) for a tabular model: a followed file, stdin, or TCP clients."""

    kind: Literal["traffic"]
    mode: Literal["file", "stdin", "tcp"]
    format: Literal["csv", "jsonl"] = "csv"
    path: Path | None = None  # mode file
    header: bool = False  # mode file, CSV: the file starts with a header line to skip
    from_start: bool = True  # mode file: read what the file already holds, then follow
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.1
    listen: str = "127.0.0.1:9200"  # mode tcp: bind address host:port (loopback unless configured)
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 16
    idle_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    # a line must be complete this long after its first byte: a client trickling bytes (one a second
    # resets the idle timeout) would otherwise hold a connection slot for ever
    line_timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @model_validator(mode="after")
    def _mode_fields(self) -> "TrafficSource":
        if self.mode == "file" and self.path is None:
            raise ValueError("mode 'file' needs path")
        if self.mode == "tcp":
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"listen must be host:port, got {self.listen!r}")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def effective_policy(self) -> str:
        return self.policy or "block"


class RedisStreamSource(_SourceBase):
    """One consumer of a consumer group on a Redis stream: several inspectors share the stream's entries."""

    kind: Literal["redis_stream"]
    url: str = "redis://127.0.0.1:6379/0"  # no password in the URL: use auth
    auth: Credentials = Credentials()  # Redis ACL user (or only a password: username "default")
    stream: str
    group: str = "inspectors"
    consumer: str | None = None  # default <host>-<pid>: unique per process
    payload: Literal["rows", "frames"] = "rows"
    format: Literal["csv", "jsonl"] = "csv"  # rows: field `field` holds one CSV line or one JSON object
    field: str = "row"  # rows: the entry field with the row; frames: the field with the encoded image
    start_id: str = "0"  # where a new group starts: "0" the whole stream, "$" only entries added from now on
    count: Annotated[int, Field(ge=1, le=100_000)] = 1000  # entries per read
    block_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    claim_idle_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0  # pending this long on a consumer = it died
    claim_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    max_pixels: Annotated[int, Field(ge=1)] | None = None  # frames: refuse larger images before decoding
    reconnect: Backoff = Backoff(initial_s=0.2, max_s=10.0)

    @model_validator(mode="after")
    def _claim_timing(self) -> "RedisStreamSource":
        if self.claim_interval_s >= self.claim_idle_s:
            raise ValueError("claim_interval_s must be shorter than claim_idle_s (a live consumer renews its entries "
                             "every claim_interval_s)")
        return self

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        return check_redis_url(url)

    @property
    def effective_policy(self) -> str:
        return self.policy or "block"  # a full queue stops reading: the stream holds the rest


SourceSettings = Annotated[Union[CameraSource, FolderSource, TrafficSource, RedisStreamSource],
                           Field(discriminator="kind")]


class Batching(Strict):
    max_batch: Annotated[int, Field(ge=1, le=1024)] = 32
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 5.0
    # Threads that score batches at once, each running the model on its own batch (sinks still see
    # batches in queue order). On few cores, 2 workers with model.intra_op_threads 1 keep every core
    # busy while the sources decode; 1 worker with all intra-op threads suits a lone large model.
    workers: Annotated[int, Field(ge=1, le=64)] = 1


class QueueSettings(Strict):
    size: Annotated[int, Field(ge=1, le=100_000)] = 256  # items per source
    # bytes per source of queued items (decoded frames and their model input, traffic windows), and the
    # most one batch may hold: RSS stays under (sources + batching.workers) x max_bytes + the model
    max_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = 256 << 20


class MetricsSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108  # 0 = pick a free port (tests)
    drift_window: Annotated[int, Field(ge=10, le=1_000_000)] = 500


class JournalSettings(Strict):
    path: Path = Path("journal/decisions.jsonl")
    max_bytes: Annotated[int, Field(ge=1024)] = 50_000_000
    backups: Annotated[int, Field(ge=0, le=1000)] = 5
    fsync: bool = False  # fsync after every batch: survives power loss, costs a disk sync per batch


class EvidenceSettings(Strict):
    dir: Path | None = Path("evidence")
    max_files: Annotated[int, Field(ge=1)] = 1000
    max_bytes: Annotated[int, Field(ge=1)] = 500_000_000
    # evidence is skipped while its file system has less free space than this: it never takes the
    # room the journal needs
    reserve_bytes: Annotated[int, Field(ge=0)] = 64 << 20


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    status_interval_s: Annotated[float, Field(ge=0)] = 10.0  # periodic one-line status; 0 = off


class DaemonConfig(Strict):
    model: ModelSettings
    sources: Annotated[list[SourceSettings], Field(min_length=1)]
    batching: Batching = Batching()
    queue: QueueSettings = QueueSettings()
    metrics: MetricsSettings = MetricsSettings()
    journal: JournalSettings = JournalSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    logging: LoggingSettings = LoggingSettings()
    outputs: OutputSettings = OutputSettings()  # per-part verdicts to the line: MQTT, OPC UA

    @model_validator(mode="after")
    def _unique_names(self) -> "DaemonConfig":
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {duplicates}")
        return self


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _resolve_output_files(config: DaemonConfig, base: Path) -> None:
    """Password files and TLS files of the line outputs, relative to the config file like every path."""
    stream_sources = [s for s in config.sources if isinstance(s, RedisStreamSource)]
    for output in (config.outputs.mqtt, config.outputs.opcua, config.outputs.redis_stream, *stream_sources):
        if output is None:
            continue
        if output.auth.password_file is not None:
            output.auth.password_file = _resolve(output.auth.password_file, base)
        tls = getattr(output, "tls", None)
        if tls is not None:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(tls, name) is not None:
                    setattr(tls, name, _resolve(getattr(tls, name), base))


def _check_files(config: DaemonConfig, source: Path) -> None:
    if not config.model.path.is_file():
        raise ConfigError(f"{source}: field 'model.path': model file {config.model.path} does not exist")
    for index, settings in enumerate(config.sources):
        field = f"sources.{index}"
        if isinstance(settings, FolderSource) and not settings.path.is_dir():
            raise ConfigError(f"{source}: field '{field}.path': folder {settings.path} does not exist")
        if isinstance(settings, CameraSource) and settings.is_file and not Path(settings.uri).is_file():
            raise ConfigError(f"{source}: field '{field}.uri': video file {settings.uri} does not exist "
                              "(use an integer for a camera device, or an rtsp:// or http:// URL)")


def parse_daemon_config(raw: object, source: str | Path, base: Path | None = None, check_files: bool = True) -> DaemonConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        config = DaemonConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, model=DaemonConfig)) from None
    base = base or Path(".")
    config.model.path = _resolve(config.model.path, base)
    config.journal.path = _resolve(config.journal.path, base)
    if config.evidence.dir is not None:
        config.evidence.dir = _resolve(config.evidence.dir, base)
    for settings in config.sources:
        if isinstance(settings, FolderSource):
            settings.path = _resolve(settings.path, base)
        elif isinstance(settings, TrafficSource):
            if settings.path is not None:
                settings.path = _resolve(settings.path, base)
        elif isinstance(settings, CameraSource) and settings.is_file:
            settings.uri = str(_resolve(Path(settings.uri), base))
    _resolve_output_files(config, base)
    if check_files:
        _check_files(config, Path(source))
    return config


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file's top-level mapping, read with the safe loader; every problem is one ConfigError sentence."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}: not valid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    return raw


def load_daemon_config(path: str | Path, check_files: bool = True) -> DaemonConfig:
    path = Path(path)
    return parse_daemon_config(read_yaml_mapping(path), path, base=path.parent.resolve(), check_files=check_files)
