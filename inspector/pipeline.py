"""Source threads -> bounded per-source queues -> micro-batcher -> scorer -> sinks.

Backpressure is explicit and per source, so a live camera can never push a lossless folder's items
out of the queue:
  block        the source waits for space (files, folders: nothing is lost)
  drop_oldest  the oldest queued item of that source is dropped and counted (live cameras: the
               newest frame matters most, and a camera cannot be paused)
The batcher takes up to `max_batch` items round-robin across sources, waiting at most `max_wait_ms`
after the first item for more to arrive. Every queue is bounded; nothing grows without limit.
An item counts as done only after every sink (journal first) has handled it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .ratelimit import RateLimitedLog
from .scorer import Rejection, Scorer, ScoreResult
from .sources.base import Emit, Item

log = logging.getLogger(__name__)


class Sink(Protocol):
    def handle(self, items: list[Item], results: list[ScoreResult | Rejection], inference_s: float) -> None: ...

    def close(self) -> None: ...


@dataclass
class _SourceQueue:
    name: str
    size: int
    policy: str
    items: deque
    dropped: int = 0


class Pipeline:
    def __init__(self, scorer_ref: Callable[[], Scorer], sinks: list[Sink], max_batch: int, max_wait_ms: float,
                 on_drop: Callable[[str], None] | None = None, on_error: Callable[[str], None] | None = None):
        self._scorer_ref = scorer_ref
        self.sinks = sinks
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queues: dict[str, _SourceQueue] = {}
        self._order: list[str] = []
        self._next = 0
        self._cond = threading.Condition()
        self._closed = False  # no more items accepted
        self._on_drop = on_drop or (lambda source: None)
        self._on_error = on_error or (lambda where: None)
        self.items_done = 0
        self._rejections = RateLimitedLog(log)

    # --- producer side -------------------------------------------------------------------------
    def add_source(self, name: str, size: int, policy: str) -> Emit:
        self._queues[name] = _SourceQueue(name, size, policy, deque())
        self._order.append(name)
        queue = self._queues[name]

        def emit(item: Item | list[Item]) -> bool:
            """Queue one item, or a list of items in order under one lock (traffic chunks)."""
            items = item if isinstance(item, list) else (item,)
            with self._cond:
                for one in items:
                    if queue.policy == "block":
                        while len(queue.items) >= queue.size and not self._closed:
                            self._cond.notify_all()  # let the batcher drain what is queued
                            self._cond.wait(0.1)
                    elif len(queue.items) >= queue.size:
                        queue.items.popleft()
                        queue.dropped += 1
                        self._on_drop(name)
                    if self._closed:
                        return False
                    queue.items.append(one)
                self._cond.notify_all()
                return True

        return emit

    def depth(self, name: str) -> int:
        return len(self._queues[name].items)

    def pending(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def close(self) -> None:
        """Stop accepting items; what is queued is still processed by `run_until_drained`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- consumer side -------------------------------------------------------------------------
    def _take(self) -> list[Item]:
        batch: list[Item] = []
        names = self._order
        empty_rounds = 0
        while len(batch) < self.max_batch and empty_rounds < len(names):
            queue = self._queues[names[self._next % len(names)]]
            self._next += 1
            if queue.items:
                batch.append(queue.items.popleft())
                empty_rounds = 0
            else:
                empty_rounds += 1
        return batch

    def next_batch(self, timeout: float) -> list[Item]:
        """Wait up to `timeout` for a first item, then up to max_wait for a fuller batch."""
        with self._cond:
            if not self.pending():
                self._cond.wait(timeout)
                if not self.pending():
                    return []
            deadline = time.perf_counter() + self.max_wait
            while self.pending() < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._take()
            self._cond.notify_all()  # space for blocked producers
            return batch

    def process(self, batch: list[Item]) -> None:
        scorer = self._scorer_ref()
        results: list[ScoreResult | Rejection | None] = [None] * len(batch)
        frames, windows = [], []
        for index, item in enumerate(batch):
            if item.rejection is not None:
                results[index] = Rejection(*item.rejection)
            elif item.features is not None:
                windows.append(index)
            else:
                frames.append(index)
        started = time.perf_counter()
        if frames:
            self._fill(results, frames, lambda: scorer.score_images(
                [batch[i].image for i in frames], [f"{batch[i].source} {batch[i].origin}" for i in frames],
                max_batch=self.max_batch))
        if windows:
            self._fill(results, windows, lambda: scorer.score_features(np.stack([batch[i].features for i in windows])))
        inference_s = time.perf_counter() - started
        for item, result in zip(batch, results):
            if isinstance(result, Rejection):
                self._rejections.warning((item.source, result.reason), f"rejected: {result.message}")
        for sink in self.sinks:
            try:
                sink.handle(batch, results, inference_s)  # type: ignore[arg-type]
            except Exception:
                log.exception("sink %s failed", type(sink).__name__)
                self._on_error(type(sink).__name__)
        for item, result in zip(batch, results):
            if item.on_done is not None:
                try:
                    item.on_done(item, result)
                except Exception:
                    log.exception("completion of %s %s failed", item.source, item.origin)
            item.image = item.features = None
        self.items_done += len(batch)

    @staticmethod
    def _fill(results: list, indices: list[int], score: Callable[[], list]) -> None:
        """Put the scores of `indices` into `results`; an unexpected runtime failure rejects them
        (reason inference_error) instead of killing the daemon."""
        try:
            scored = score()
        except Exception as exc:
            log.exception("scoring a batch of %d failed", len(indices))
            scored = [Rejection("inference_error", f"inference failed: {exc}")] * len(indices)
        for index, result in zip(indices, scored):
            results[index] = result

    def run(self, keep_going: Callable[[], bool], poll: float = 0.05) -> None:
        """Batch and score until `keep_going()` is false, then drain what is still queued."""
        while keep_going():
            batch = self.next_batch(poll)
            if batch:
                self.process(batch)
        self.close()
        while True:
            batch = self.next_batch(0)
            if not batch:
                break
            self.process(batch)
