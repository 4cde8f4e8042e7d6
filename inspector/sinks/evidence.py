"""Evidence images: for every anomaly (and every item the review page samples), the frame and its
heatmap overlay side by side (PNG); with `frames`, also the frame as captured (lossless PNG), which
retraining from the operator's reviews learns from.

Written atomically (temp file + rename) under the evidence folder; file names are built from
sanitised source names and sequence numbers only, so nothing can escape the folder. Retention keeps
at most `max_files` files and `max_bytes` bytes, deleting the oldest first.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import cv2

from ..active_model import ActiveModel
from ..overlay import evidence_picture, heatmap_scale
from ..scorer import ANOMALY, ScoreResult
from ..sources.base import Item

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
FRAME_SUFFIX = ".frame.png"  # beside an evidence picture: its frame as captured (review items only)


def caption(item: Item, result: ScoreResult, scorer) -> list[str]:
    """The evidence image's caption: what was decided, on what, when, by which model."""
    captured = datetime.fromtimestamp(item.captured_at, timezone.utc).isoformat(timespec="milliseconds")
    return [f"{result.verdict.upper()}  score {result.raw:.4g}  threshold {scorer.threshold:.4g}  "
            f"normalised {result.normalised:.3f}",
            f"{item.source}  {item.origin}  seq {item.seq}"[:90],
            f"captured {captured}",
            f"model {scorer.card.name} {scorer.card.version}"[:90]]


def safe_component(text: str, limit: int = 64) -> str:
    """A file-name component that cannot be a path: no separators, no leading dots, bounded length."""
    cleaned = _UNSAFE.sub("_", text).lstrip(".")[:limit]
    return cleaned or "_"


class EvidenceSink:
    def __init__(self, folder: Path, max_files: int, max_bytes: int, model: ActiveModel,
                 on_error: Callable[[str], None] | None = None, on_written: Callable[[str], None] | None = None,
                 reserve_bytes: int = 0, also: Callable[[Item, ScoreResult], bool] | None = None,
                 frames: bool = False):
        self.folder = Path(folder)
        self.frames = frames
        self._also = also or (lambda item, result: False)  # normal items that get a picture too (review samples)
        self.reserve_bytes = reserve_bytes
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._model = model
        self._on_error = on_error or (lambda reason: None)
        self._on_written = on_written or (lambda source: None)
        self._failing = False
        self._files: deque[tuple[Path, int]] = deque()
        self._bytes = 0
        try:  # an unusable folder must not stop the daemon: writes fail, are counted, and recover later
            self.folder.mkdir(parents=True, exist_ok=True)
            existing = sorted((p for p in self.folder.glob("*.png") if p.is_file()), key=lambda p: p.stat().st_mtime)
        except OSError as exc:
            log.error("evidence %s: not usable (%s); scoring continues without evidence until it is",
                      self.folder, exc.strerror or exc)
            self._failing = True
            existing = []
        for path in existing:
            size = path.stat().st_size
            self._files.append((path, size))
            self._bytes += size
        self._enforce()

    def path_for(self, item: Item) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(item.captured_at))
        name = f"{safe_component(item.source)}_{stamp}_{item.seq:08d}.png"
        path = (self.folder / name).resolve()
        if path.parent != self.folder.resolve():  # belt and braces: never write outside the folder
            raise ValueError(f"evidence path {path} escapes {self.folder}")
        return path

    def _enforce(self) -> None:
        while self._files and (len(self._files) > self.max_files or self._bytes > self.max_bytes):
            path, size = self._files.popleft()
            self._bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _write_png(self, path: Path, image) -> int:
        """Encode and write one PNG atomically (temp file + rename); its size. Raises OSError."""
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise OSError("PNG encoding failed")
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if free - len(encoded) < self.reserve_bytes:
            raise OSError(f"{free:,} bytes free, evidence.reserve_bytes keeps {self.reserve_bytes:,} for the journal")
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(encoded.tobytes())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk must not leave half-written files behind
            raise
        self._files.append((path, len(encoded)))
        self._bytes += len(encoded)
        return len(encoded)

    def handle(self, items: list[Item], results: list, inference_s: float) -> None:
        scorer = self._model.scorer
        for item, result in zip(items, results):
            if result.rejected or item.image is None or not (result.verdict == ANOMALY or self._also(item, result)):
                continue
            if result.heatmap is None:
                continue
            try:
                picture = evidence_picture(item.image, result.heatmap, heatmap_scale(scorer.card, scorer.threshold),
                                           caption(item, result, scorer))
                path = self.path_for(item)
                self._write_png(path, picture)
                item.evidence = path.name
                if self.frames:  # the frame as captured, lossless: what retraining learns from
                    frame = path.with_name(path.stem + FRAME_SUFFIX)
                    self._write_png(frame, item.image)
                    item.frame = frame.name
            except OSError as exc:
                if not self._failing:
                    log.error("evidence %s: cannot write (%s); scoring continues", self.folder, exc.strerror or exc)
                self._failing = True
                self._on_error("evidence")
                self._enforce()
                continue
            if self._failing:
                log.info("evidence %s: writing again", self.folder)
                self._failing = False
            self._on_written(item.source)
            self._enforce()

    def close(self) -> None:
        pass
