"""The daemon config's `sources:` entries, one settings class per `kind` (inspector.source_kinds maps
each kind to the thread that serves it). Each source resolves and checks its own files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from .regions import Region
from .settings import Backoff, Credentials, check_redis_url
from .strict import Strict

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def resolve_path(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


class _SourceBase(Strict):
    name: str
    policy: Literal["drop_oldest", "block"] | None = None  # default: drop_oldest for live streams, block otherwise

    def resolve_paths(self, base: Path) -> None:
        """Make the files this source reads relative to the config file's folder (none by default)."""

    def missing_file(self) -> tuple[str, str] | None:
        """(field, problem) when a file or folder this source reads does not exist."""
        return None

    @property
    def regions(self) -> tuple[Region, ...]:
        """The regions of interest its frames are scored in (none: whole frames)."""
        return tuple(getattr(self, "roi", ()))

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
    # regions of interest in frame pixels, e.g. [{x: 640, y: 300, width: 640, height: 480}]: only they are
    # scored (worst region = the frame's score); heatmaps and evidence stay whole frames
    roi: list[Region] = Field(default_factory=list)

    @property
    def is_file(self) -> bool:
        return isinstance(self.uri, str) and "://" not in self.uri

    @property
    def effective_policy(self) -> str:
        return self.policy or ("block" if self.is_file else "drop_oldest")

    def resolve_paths(self, base: Path) -> None:
        if self.is_file:
            self.uri = str(resolve_path(Path(self.uri), base))

    def missing_file(self) -> tuple[str, str] | None:
        if self.is_file and not Path(self.uri).is_file():
            return "uri", (f"video file {self.uri} does not exist (use an integer for a camera device, or an "
                           "rtsp:// or http:// URL)")
        return None


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
    # regions of interest in frame pixels, e.g. [{x: 640, y: 300, width: 640, height: 480}]: only they are
    # scored (worst region = the frame's score); heatmaps and evidence stay whole frames
    roi: list[Region] = Field(default_factory=list)

    @property
    def effective_policy(self) -> str:
        return self.policy or "block"

    def resolve_paths(self, base: Path) -> None:
        self.path = resolve_path(self.path, base)

    def missing_file(self) -> tuple[str, str] | None:
        return None if self.path.is_dir() else ("path", f"folder {self.path} does not exist")


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

    def resolve_paths(self, base: Path) -> None:
        if self.path is not None:
            self.path = resolve_path(self.path, base)

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
    # regions of interest in frame pixels, e.g. [{x: 640, y: 300, width: 640, height: 480}]: only they are
    # scored (worst region = the frame's score); heatmaps and evidence stay whole frames
    roi: list[Region] = Field(default_factory=list)

    @model_validator(mode="after")
    def _claim_timing(self) -> "RedisStreamSource":
        if self.roi and self.payload != "frames":
            raise ValueError("roi is for frames: this stream carries rows (payload: rows)")
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
