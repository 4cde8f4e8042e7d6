"""Typed, validated daemon configuration (`inspector run -c line.yaml`).

The daemon refuses to start on any problem, with one sentence naming the file, the field and what
was expected: unknown keys (a misspelled key must not silently fall back to a default), wrong
types, a missing model file, a folder source whose folder does not exist, a video file that is
not there. YAML is read with the safe loader. Relative paths are relative to the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from .config_outputs import OutputSettings
from .config_review import ReviewSettings, ShadowSettings
from .config_sources import RedisStreamSource, SourceSettings, resolve_path
from .errors import ConfigError, describe_validation_error
from .strict import Strict


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


class Batching(Strict):
    # items per batch: frames, or traffic rows (a block of rows counts as its rows). Frames rarely gain
    # past 32; traffic rows gain up to a few thousand (the per-batch costs are spread over more rows)
    max_batch: Annotated[int, Field(ge=1, le=65536)] = 32
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 5.0
    # Threads that score batches at once, each running the model on its own batch (sinks still see
    # batches in queue order). On few cores, 2 workers with model.intra_op_threads 1 keep every core
    # busy while the sources decode; 1 worker with all intra-op threads suits a lone large model.
    workers: Annotated[int, Field(ge=1, le=64)] = 1


class QueueSettings(Strict):
    size: Annotated[int, Field(ge=1, le=100_000)] = 256  # items per source (traffic: rows; a larger block of rows is queued in pieces)
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
    review: ReviewSettings | None = None  # the operator's review page; absent = no page
    shadow: ShadowSettings | None = None  # a candidate model scoring beside the active one

    @model_validator(mode="after")
    def _unique_names(self) -> "DaemonConfig":
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {duplicates}")
        return self


def _resolve_output_files(config: DaemonConfig, base: Path) -> None:
    """Password files and TLS files of the line outputs, relative to the config file like every path."""
    stream_sources = [s for s in config.sources if isinstance(s, RedisStreamSource)]
    for output in (config.outputs.mqtt, config.outputs.opcua, config.outputs.redis_stream, *stream_sources):
        if output is None:
            continue
        if output.auth.password_file is not None:
            output.auth.password_file = resolve_path(output.auth.password_file, base)
        tls = getattr(output, "tls", None)
        if tls is not None:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(tls, name) is not None:
                    setattr(tls, name, resolve_path(getattr(tls, name), base))


def _check_files(config: DaemonConfig, source: Path) -> None:
    if not config.model.path.is_file():
        raise ConfigError(f"{source}: field 'model.path': model file {config.model.path} does not exist")
    for index, settings in enumerate(config.sources):
        problem = settings.missing_file()
        if problem is not None:
            raise ConfigError(f"{source}: field 'sources.{index}.{problem[0]}': {problem[1]}")
    for section in ("review", "shadow"):
        settings = getattr(config, section)
        problem = settings.missing_file() if settings is not None else None
        if problem is not None:
            raise ConfigError(f"{source}: field '{section}.{problem[0]}': {problem[1]}")


def parse_daemon_config(raw: object, source: str | Path, base: Path | None = None, check_files: bool = True) -> DaemonConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        config = DaemonConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, model=DaemonConfig)) from None
    base = base or Path(".")
    config.model.path = resolve_path(config.model.path, base)
    config.journal.path = resolve_path(config.journal.path, base)
    if config.evidence.dir is not None:
        config.evidence.dir = resolve_path(config.evidence.dir, base)
    for settings in config.sources:
        settings.resolve_paths(base)
    for settings in (config.review, config.shadow):
        if settings is not None:
            settings.resolve_paths(base, config.journal.path)
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
