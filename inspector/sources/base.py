"""What every source produces, and the thread scaffolding they share."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One thing to score: a frame or a window of traffic rows, or a rejection placeholder.

    A rejected item still travels through the pipeline so it is journaled and counted in order.
    """

    source: str
    seq: int
    captured_at: float  # wall clock, seconds since the epoch
    origin: str  # frame index or file name
    image: np.ndarray | None = field(default=None, repr=False)
    prepared: object | None = field(default=None, repr=False)  # the image as model input (scorer.PreparedFrame)
    features: np.ndarray | None = field(default=None, repr=False)  # a window of encoded traffic rows
    rejection: tuple[str, str] | None = None  # (reason, message)
    evidence: str | None = None  # the evidence file's name, once the evidence sink has written it
    entry_id: str | None = None  # a stream entry's id (redis_stream sources): journaled, so duplicates show
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

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

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
            except Exception:  # a source bug must not take the daemon down silently
                log.exception("source %s failed", self.name)
                self.set_up(False)
            finally:
                self.finished.set()

        self.thread = threading.Thread(target=run, name=f"source-{self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def healthy(self, now: float) -> bool:
        """Up, finished cleanly, or retrying within its backoff."""
        if self.up or self.finished.is_set():
            return True
        return self.retrying_until is not None and now <= self.retrying_until + 1.0
