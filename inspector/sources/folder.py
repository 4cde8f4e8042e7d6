"""Folder source: watch a directory for new image files.

Files present at start come first, then new ones, in name order. A file is read only once its size
and modification time have stayed the same for `settle_s` (a writer that is still copying it is
never read early). A file that still fails to decode while younger than `incomplete_grace_s` is
treated as still arriving (a writer that paused) and retried; after that it is rejected. With `move_processed`, a scored file moves to `done/` and an unreadable one to
`rejected/` after it has been journaled, so a restarted daemon neither scores a finished file again
nor skips an unfinished one; a file journaled just before a crash but not yet moved is recognised
from the journal at start-up and moved without being scored again. Polling (not inotify) so it works on network shares too.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from pathlib import Path

from ..config_sources import FolderSource
from ..errors import ItemRejected
from ..image_files import name_order, read_image
from .base import Emit, Item, Source

log = logging.getLogger(__name__)

DONE, REJECTED = "done", "rejected"
JOURNAL_TAIL_BYTES = 8_000_000  # how much of the journal recovery reads after a crash


def move_without_overwrite(source: Path, folder: Path, seq: int) -> Path:
    """Move a decided file into done/ or rejected/ under its own name, or, when a file of that name is
    already there (a camera reusing names), as <stem>.<seq><suffix>: seq is the one its journal line has."""
    folder.mkdir(exist_ok=True)
    target = folder / source.name
    if target.exists():
        target = folder / f"{source.stem}.{seq}{source.suffix}"
    os.replace(source, target)
    return target


class FolderSourceThread(Source):
    def __init__(self, settings: FolderSource, max_pixels: int = 50_000_000, journal: Path | None = None, **callbacks):
        super().__init__(settings.name, **callbacks)
        self.settings = settings
        self.max_pixels = max_pixels
        self.journal = journal
        self._observed: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, unchanged since)
        self._taken: set[str] = set()  # emitted and not yet moved (or kept in place)
        self._irregular: list[str] = []  # matching names that are not regular files, to report once
        self._unjournaled_logged = False

    def _candidates(self) -> list[os.DirEntry]:
        """Regular files matching the patterns, in name order (`name_order`: frame_9 before frame_10).
        A symlink, FIFO, socket or directory with a matching name is never opened (a FIFO would block,
        a link could point anywhere); it is reported once as a rejected item (not_a_regular_file)
        instead of being silently skipped."""
        entries = []
        with os.scandir(self.settings.path) as it:
            for entry in it:
                if not any(fnmatch.fnmatch(entry.name.lower(), p.lower()) for p in self.settings.patterns):
                    continue
                if entry.is_file(follow_symlinks=False):
                    entries.append(entry)
                elif entry.name not in self._taken:
                    self._irregular.append(entry.name)
        return sorted(entries, key=lambda e: name_order(e.name))

    def _irregular_items(self) -> list[Item]:
        items = []
        for name in sorted(set(self._irregular)):
            self._taken.add(name)
            path = self.settings.path / name
            kind = ("a symbolic link" if path.is_symlink() else "a directory" if path.is_dir() else
                    "a FIFO, socket or device")
            items.append(Item(self.name, self.next_seq(), time.time(), name, on_done=self._finish,
                              rejection=("not_a_regular_file", f"{name}: {kind}, not an image file; left unread")))
        self._irregular.clear()
        return items

    def _ready(self, entry: os.DirEntry, now: float) -> bool:
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            self._observed.pop(entry.name, None)
            return False
        key = (stat.st_size, stat.st_mtime_ns)
        previous = self._observed.get(entry.name)
        if previous is None or previous[:2] != key:
            self._observed[entry.name] = (*key, now)
            return self.settings.settle_s == 0 and stat.st_size > 0
        return now - previous[2] >= self.settings.settle_s

    def recover(self) -> int:
        """After a crash: files the journal already decided but that were never moved (the process died
        between journaling and moving) are moved now instead of being scored twice. A file counts as
        decided only if it was last modified before the journal line's capture time, so a new file that
        reuses an old name is still scored."""
        if not (self.settings.move_processed and self.journal and self.journal.is_file()):
            return 0
        decided: dict[str, tuple[float, bool, int]] = {}
        with open(self.journal, "rb") as handle:
            handle.seek(max(0, self.journal.stat().st_size - JOURNAL_TAIL_BYTES))
            for raw in handle.read().splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut short by the crash, or the partial first line of the tail
                if isinstance(line, dict) and line.get("source") == self.name and "origin" in line:
                    decided[line["origin"]] = (float(line.get("captured_at", 0)), line.get("verdict") == "rejected",
                                               int(line.get("seq", 0)))
        moved = 0
        for name, (captured_at, rejected, seq) in decided.items():
            path = self.settings.path / name
            try:
                if path.stat().st_mtime > captured_at:
                    continue
            except OSError:
                continue
            move_without_overwrite(path, self.settings.path / (REJECTED if rejected else DONE), seq)
            moved += 1
        if moved:
            log.info("source %s: %d file(s) were journaled before a crash but not moved; moved now, not re-scored",
                     self.name, moved)
        return moved

    def produce(self, emit: Emit) -> None:
        self.recover()
        self.set_up(True)
        down_logged = False
        while not self.stopping.is_set():
            try:
                entries = self._candidates()
            except OSError as exc:
                if not down_logged:
                    log.warning("source %s: cannot list %s (%s); retrying", self.name, self.settings.path, exc.strerror)
                    down_logged = True
                self.set_up(False)
                self.retrying_until = time.time() + self.settings.poll_interval_s * 5
                self.stopping.wait(self.settings.poll_interval_s * 5)
                continue
            if down_logged:
                down_logged = False
                self.set_up(True)
            if self._irregular and not emit(self._irregular_items()):
                return
            now = time.monotonic()
            present = {e.name for e in entries}
            for name in list(self._observed):
                if name not in present:
                    del self._observed[name]
            for entry in entries:
                if self.stopping.is_set():
                    return
                if entry.name in self._taken or not self._ready(entry, now):
                    continue
                item = self._item(Path(entry.path))
                if item is None:
                    continue  # looks incomplete: observe it again
                self._taken.add(entry.name)
                self._observed.pop(entry.name, None)
                if not emit(item):
                    return
            self.stopping.wait(self.settings.poll_interval_s)

    def _item(self, path: Path) -> Item | None:
        captured = time.time()
        try:
            image = read_image(path, self.max_pixels)
            return Item(self.name, self.next_seq(), captured, path.name, image=image, on_done=self._finish)
        except ItemRejected as rejected:
            if rejected.reason in ("decode_failed", "empty_file") and self._young(path, captured):
                self._observed.pop(path.name, None)
                return None
            return Item(self.name, self.next_seq(), captured, path.name,
                        rejection=(rejected.reason, str(rejected)), on_done=self._finish)
        except Exception as exc:  # a decoder failing in a way nobody foresaw rejects this file, not the source
            log.exception("source %s: reading %s failed", self.name, path.name)
            return Item(self.name, self.next_seq(), captured, path.name, on_done=self._finish,
                        rejection=("read_error", f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}"))

    def _young(self, path: Path, now: float) -> bool:
        try:
            return now - path.stat().st_mtime < self.settings.incomplete_grace_s
        except OSError:
            return False

    def _finish(self, item: Item, result: object) -> None:
        """After the item is journaled: move the file out of the watched folder (or remember it). A file
        whose journal line could not be written (disk full) stays where it is and is read again later:
        a file never leaves the folder without its decision on disk."""
        if not item.journaled:
            if not self._unjournaled_logged:
                log.warning("source %s: the journal cannot be written; files stay in %s and are scored again "
                            "once it can", self.name, self.settings.path)
                self._unjournaled_logged = True
            self._taken.discard(item.origin)
            self._observed.pop(item.origin, None)
            return
        self._unjournaled_logged = False
        if not self.settings.move_processed:
            return  # stays in _taken: never scored twice by this process
        target_dir = self.settings.path / (REJECTED if result.rejected else DONE)
        source = self.settings.path / item.origin
        try:
            kept_as = move_without_overwrite(source, target_dir, item.seq)
            if kept_as.name != item.origin:
                log.info("source %s: %s/ already holds %s; this one (seq %d) is kept as %s", self.name,
                         target_dir.name, item.origin, item.seq, kept_as.name)
        except FileNotFoundError:
            pass  # deleted meanwhile: nothing to move
        except OSError as exc:
            log.warning("source %s: cannot move %s to %s/ (%s)", self.name, item.origin, target_dir.name, exc.strerror)
            return
        self._taken.discard(item.origin)
