"""The decision journal: one JSON line per item, flushed per batch, size-rotated.

Serialised with orjson: at tens of thousands of traffic rows per second the standard json module
was the largest single cost of the pipeline.

An item is journaled before it counts as done. When the disk is full or the folder is not
writable, scoring goes on: the failure is logged once per outage, counted (`on_error`), and the
journal resumes by itself when writing works again.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import orjson

from ..active_model import ActiveModel
from ..scorer import FeatureScores, ScoreResult
from ..sources.base import Item
from ..sources.row_blocks import expand
from .journal_blocks import block_lines

log = logging.getLogger(__name__)


def record(item: Item, result: ScoreResult, latency_s: float, model_version: str, now_iso: str) -> dict:
    """The journal line of one item; items read from a stream also carry its entry id."""
    line = _record(item, result, latency_s, model_version, now_iso)
    if item.entry_id is not None:
        line["entry_id"] = item.entry_id
    return line


def _record(item: Item, result: ScoreResult, latency_s: float, model_version: str, now_iso: str) -> dict:
    """One dict literal per outcome: this runs per traffic row."""
    if result.reason is None:
        return {"time": now_iso, "source": item.source, "seq": item.seq, "origin": item.origin,
                "captured_at": round(item.captured_at, 6), "latency_ms": round(latency_s * 1000, 3),
                "model_version": model_version, "score": round(result.raw, 6),
                "normalised": round(result.normalised, 6), "verdict": result.verdict}
    return {"time": now_iso, "source": item.source, "seq": item.seq, "origin": item.origin,
            "captured_at": round(item.captured_at, 6), "latency_ms": round(latency_s * 1000, 3),
            "model_version": model_version, "verdict": "rejected", "reason": result.reason, "error": result.message}


def _encode(lines: list[dict]) -> bytes:
    dumps = orjson.dumps
    return b"\n".join([dumps(line) for line in lines]) + b"\n"


class JournalSink:
    takes_row_blocks = True  # blocks of traffic rows come whole (inspector.sources.row_blocks)

    def __init__(self, path: Path, max_bytes: int, backups: int, fsync: bool = False,
                 model: ActiveModel | None = None, on_error: Callable[[str], None] | None = None, name: str = "journal"):
        self.path = Path(path)
        self.name = name  # in log lines and error counts: "journal", or "shadow" for a candidate's journal
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.model = model
        self._on_error = on_error or (lambda reason: None)
        self._file = None
        self._failing = False
        self.lines_written = 0

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # unbuffered: a failed batch leaves nothing to flush later
            if self._file.tell() > 0 and not self._ends_with_newline():
                self._file.write(b"\n")  # a line cut short by a crash stays alone on its line
        return self._file

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def _rotate_if_needed(self) -> None:
        if self._file is None or self._file.tell() < self.max_bytes:
            return
        self._file.close()
        self._file = None
        if self.backups == 0:
            os.replace(self.path, self.path.with_name(self.path.name + ".old"))
            os.remove(self.path.with_name(self.path.name + ".old"))
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def handle(self, items: list[Item], results: list, inference_s: float) -> None:
        """Journal a batch in one write; a block of rows whose scores are all finite is formatted as a
        whole (journal_blocks), anything else line by line."""
        if not items:
            return
        now = time.perf_counter()
        version = self.model.version if self.model is not None else ""
        now_iso = datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # one timestamp per batch
        pieces: list[bytes] = []
        single: list[dict] = []
        count = 0
        for item, result in zip(items, results):
            if item.rows is not None and isinstance(result, FeatureScores) and result.finite.all():
                if single:
                    pieces.append(_encode(single))
                    single = []
                pieces.append(block_lines(item, result, now - item.enqueued, version, now_iso))
                count += len(item.rows)
            elif item.rows is None:
                single.append(record(item, result, now - item.enqueued, version, now_iso))
                count += 1
            else:  # a block with a non-finite score or rejected whole: line by line
                rows, row_results = expand([item], [result])
                single += [record(row, row_result, now - item.enqueued, version, now_iso)
                           for row, row_result in zip(rows, row_results)]
                count += len(rows)
        if single:
            pieces.append(_encode(single))
        if self.write_bytes(b"".join(pieces), count):
            for item in items:
                item.journaled = True

    def write(self, lines: list[dict]) -> bool:
        """Append JSON lines as one write (a batch is on disk whole or not at all); False when it failed."""
        return self.write_bytes(_encode(lines), len(lines))

    def write_bytes(self, text: bytes, count: int) -> bool:
        """Append `count` newline-terminated lines as one write; False when it failed."""
        start = None
        try:
            handle = self._open()
            start = handle.tell()
            view = memoryview(text)
            while view:  # raw writes may be partial
                view = view[handle.write(view):]
            if self.fsync:
                os.fsync(handle.fileno())
            self._rotate_if_needed()
        except OSError as exc:
            if not self._failing:
                log.error("%s %s: cannot write (%s); scoring continues; folder sources keep their files "
                          "until it recovers, other items are lost from the journal", self.name, self.path,
                          exc.strerror or exc)
                self._failing = True
            self._on_error(self.name)
            if self._file is not None:
                try:
                    if start is not None:  # a batch is on disk whole or not at all: no cut line is left
                        os.ftruncate(self._file.fileno(), start)
                    self._file.close()
                except OSError:
                    pass
                self._file = None
            return False
        if self._failing:
            log.info("%s %s: writing again", self.name, self.path)
            self._failing = False
        self.lines_written += count
        return True

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                if self.fsync:
                    os.fsync(self._file.fileno())
                self._file.close()
            except OSError as exc:
                log.error("journal %s: close failed (%s)", self.path, exc.strerror)
            self._file = None
