"""What every source produces, and the thread scaffolding they share."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .row_blocks import RowBlock

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One thing to score: a frame, a window of traffic rows or a block of them, or a rejection placeholder.

    A rejected item still travels through the pipeline so it is journaled and counted in order.
    """

    source: str
    seq: int
    captured_at: float  # wall clock, seconds since the epoch
    origin: str  # frame index or file name
    image: np.ndarray | None = field(default=None, repr=False)
    prepared: object | None = field(default=None, repr=False)  # the image as model input (scorer.PreparedFrame)
    features: np.ndarray | None = field(default=None, repr=False)  # a window of encoded traffic rows (n windows: a block)
    rows: "RowBlock | None" = field(default=None, repr=False)  # set: this item is a block of rows (inspector.sources.row_blocks)
    rejection: tuple[str, str] | None = None  # (reason, message)
    evidence: str | None = None  # the evidence file's name, once the evidence sink has written it
    frame: str | None = None  # the captured frame's file beside it (kept for review items)
    entry_id: str | None = None  # a stream entry's id (redis_stream sources): journaled, so duplicates show
    journaled: bool = False  # set by the journal once the item's line is written (a full disk leaves it False)
    enqueued: float = field(default_factory=time.perf_counter)
    on_done: Callable[["Item", object], None] | None = field(default=None, repr=False)


Emit = Callable[["Item | list[Item]"], bool]  # one item or a list in order; False when the pipeline is stopping


class Source:
    """Base for source threads: naming, sequence numbers, up/down state, reconnect counting.

    Subclasses implement `produce(emit)`, returning when the source is finished (a video file ended)
    or when `self.stopping` is set.
    """

    def __init__(self, name: str, on_state: Callable[[str, bool], None] | None = None,
                 on_reconnect: Callable[[str], None] | None = None, on_finished: Callable[[str], None] | None = None):
        self.name = name
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._seq = 0
        self._on_state = on_state or (lambda name, up: None)
        self._on_reconnect = on_reconnect or (lambda name: None)
        self._on_finished = on_finished or (lambda name: None)
        self.up = False
        self.retrying_until: float | None = None  # while retrying: when the next attempt is due
        self.thread: threading.Thread | None = None
        self.stale_after_s: float | None = None  # sources that must deliver steadily (live cameras) set this
        self.started_at = time.time()
        self.last_delivery: float | None = None  # wall time of the last item delivered
        self.problem: str | None = None  # why the source is down or retrying, for /healthz

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_seqs(self, n: int) -> int:
        """Reserve n consecutive sequence numbers (a block of rows); returns the first."""
        first = self._seq + 1
        self._seq += n
        return first

    def set_up(self, up: bool) -> None:
        if up != self.up:
            log.info("source %s is %s", self.name, "up" if up else "down")
        self.up = up
        self._on_state(self.name, up)

    def mark_finished(self) -> None:
        """A source that ended normally (a video file reached its end): down, but not a failure."""
        self.up = False
        self._on_state(self.name, False)
        self._on_finished(self.name)

    def count_reconnect(self) -> None:
        self._on_reconnect(self.name)

    def produce(self, emit: Emit) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self, emit: Emit) -> None:
        def run() -> None:
            try:
                self.produce(emit)
            except Exception as exc:  # a source bug must not take the daemon down silently
                log.exception("source %s failed", self.name)
                self.problem = f"failed: {type(exc).__name__}: {exc}"[:300]
                self.set_up(False)
            finally:
                self.finished.set()

        self.started_at = time.time()
        self.thread = threading.Thread(target=run, name=f"source-{self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def state(self, now: float) -> tuple[str, str | None]:
        """(up | finished | retrying | stalled | down, the reason when not up). Healthy: up, finished,
        or retrying within its backoff, unless a source that must deliver steadily has been silent
        for longer than `stale_after_s`."""
        if self.finished.is_set():
            return ("down", self.problem) if self.problem else ("finished", None)
        if self.stale_after_s is not None:
            silent = now - (self.last_delivery or self.started_at)
            if silent > self.stale_after_s:
                detail = f"; {self.problem}" if self.problem else ""
                return "stalled", f"no frame for {silent:.0f} s (limit {self.stale_after_s:g} s){detail}"
        if self.up:
            return "up", None
        if self.retrying_until is not None and now <= self.retrying_until + 1.0:
            return "retrying", self.problem
        return "down", self.problem or "stopped delivering"
