"""Source threads -> bounded per-source queues -> micro-batcher -> scorer -> sinks.

Backpressure is explicit and per source, so a live camera can never push a lossless folder's items
out of the queue:
  block        the source waits for space (files, folders: nothing is lost)
  drop_oldest  the oldest queued item of that source is dropped and counted (live cameras: the
               newest frame matters most, and a camera cannot be paused)
The batcher takes up to `max_batch` items round-robin across sources, waiting at most `max_wait_ms`
after the first item for more to arrive. Every queue is bounded; nothing grows without limit.
An item counts as done only after every sink (journal first) has handled it.

With `workers` > 1, that many threads take and score batches at once (onnxruntime sessions accept
concurrent runs; give each one intra-op thread), and a ticket taken with each batch makes the sinks
see batches in the order they left the queues: the journal stays in order, counts stay exact.

Frames are turned into model input on the thread that emits them, before they are queued: decoding
and preprocessing of the next frames then run beside the model on the batcher thread, instead of
between its runs. A frame the model cannot take is rejected right there and queued as a rejection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from .active_model import ActiveModel
from .errors import ItemRejected
from .preprocess import model_input_bytes
from .regions import Region, regions_input_bytes
from .ratelimit import RateLimitedLog
from .scorer import FeatureScores, ScoreResult
from .sources.base import Emit, Item
from .sources.row_blocks import expand, rows_of, split

log = logging.getLogger(__name__)

FRAME_RUN_LIMIT = 1024  # frames or tiles per model run: max_batch may allow tens of thousands of traffic rows


class Sink(Protocol):
    def handle(self, items: list[Item], results: list[ScoreResult], inference_s: float) -> None: ...

    def close(self) -> None: ...


@dataclass
class _SourceQueue:
    name: str
    size: int
    policy: str
    items: deque
    dropped: int = 0
    max_bytes: int = 256 << 20
    bytes: int = 0
    rows: int = 0  # items, counting a block of traffic rows as its rows

    def no_room_for(self, nbytes: int, nrows: int = 1) -> bool:
        """Full in items (rows), or in bytes (an empty queue always takes one item: the batcher's budget
        check and the pre-tiling refusal keep a single item within max_bytes)."""
        return bool(self.items) and (self.rows + nrows > self.size or self.bytes + nbytes > self.max_bytes)

    def push(self, item: Item, nbytes: int, nrows: int) -> None:
        self.items.append(item)
        self.bytes += nbytes
        self.rows += nrows

    def pop(self) -> Item:
        item = self.items.popleft()
        self.bytes -= item_bytes(item)
        self.rows -= rows_of(item)
        return item

    def pop_rows(self, limit: int) -> Item:
        """The first item, or its first `limit` rows when it is a larger block (the rest stays first)."""
        if rows_of(self.items[0]) <= limit:
            return self.pop()
        head, tail = split(self.items[0], limit)
        self.items[0] = tail
        self.bytes -= item_bytes(head)
        self.rows -= limit
        return head


def pieces_of(item: Item, rows: int) -> list[Item]:
    """The item, or a block cut into pieces of at most `rows` rows."""
    pieces = []
    while item.rows is not None and len(item.rows) > rows:
        head, item = split(item, rows)
        pieces.append(head)
    return pieces + [item]


def item_bytes(item: Item) -> int:
    """What a queued item holds in memory: the decoded frame, its model input, a traffic window."""
    total = 0
    for array in (item.image, item.features, getattr(item.prepared, "tiles", None)):
        if isinstance(array, np.ndarray):
            total += array.nbytes
    return total


class Batch(list):
    """Items taken together from the queues, with their place in the order the sinks must see."""

    ticket: int = -1


class Pipeline:
    def __init__(self, model: ActiveModel, sinks: list[Sink], max_batch: int, max_wait_ms: float,
                 on_drop: Callable[[str], None] | None = None, on_error: Callable[[str], None] | None = None,
                 workers: int = 1):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._model = model
        self.workers = workers
        self.sinks = sinks
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queues: dict[str, _SourceQueue] = {}
        self._regions: dict[str, tuple[Region, ...]] = {}  # per source: regions of interest (none: whole frames)
        self.max_batch_bytes = 0  # the largest queue budget: what one batch may hold
        self._order: list[str] = []
        self._next = 0
        self._cond = threading.Condition()
        self._closed = False  # no more items accepted
        self._on_drop = on_drop or (lambda source: None)
        self._on_error = on_error or (lambda where: None)
        self.items_done = 0
        self._rejections = RateLimitedLog(log)
        self._tickets_taken = 0  # under _cond
        self._tickets_done = 0  # under _turn
        self._turn = threading.Condition()

    # --- producer side -------------------------------------------------------------------------
    def add_source(self, name: str, size: int, policy: str, max_bytes: int = 256 << 20,
                   regions: tuple[Region, ...] = ()) -> Emit:
        """The emit function of a source's queue; its frames are scored only in `regions`, when given."""
        self._queues[name] = _SourceQueue(name, size, policy, deque(), max_bytes=max_bytes)
        self._regions[name] = tuple(regions)
        self.max_batch_bytes = max(self.max_batch_bytes, max_bytes)
        self._order.append(name)
        queue = self._queues[name]

        def emit(item: Item | list[Item]) -> bool:
            """Queue one item, or a list of items in order under one lock (traffic chunks). A block of
            rows larger than the queue goes in pieces of at most queue.size rows: the queue's bound, and
            so the wait of its last row, holds for blocks too."""
            items = item if isinstance(item, list) else (item,)
            if any(one.rows is not None and len(one.rows) > queue.size for one in items):
                items = [piece for one in items for piece in pieces_of(one, queue.size)]
            for one in items:
                if one.image is not None and one.rejection is None:
                    self._prepare(one, queue.max_bytes)
            sizes = [(item_bytes(one), rows_of(one)) for one in items]
            with self._cond:
                for one, (nbytes, nrows) in zip(items, sizes):
                    if queue.policy == "block":
                        while queue.no_room_for(nbytes, nrows) and not self._closed:
                            self._cond.notify_all()  # let the batcher drain what is queued
                            self._cond.wait(0.1)
                    else:
                        while queue.no_room_for(nbytes, nrows):
                            for _ in range(rows_of(queue.pop())):
                                queue.dropped += 1
                                self._on_drop(name)
                    if self._closed:
                        return False
                    queue.push(one, nbytes, nrows)
                self._cond.notify_all()
                return True

        return emit

    def _prepare(self, item: Item, max_bytes: int) -> None:
        """The model input of a frame, made on the source's thread; a frame whose input would not fit
        the queue's byte budget is refused before it is tiled (it could never be queued)."""
        scorer = self._model.scorer
        spec = scorer.card.input
        regions = self._regions.get(item.source, ())
        needed = item.image.nbytes + (regions_input_bytes(regions, spec) if regions else
                                      model_input_bytes(item.image.shape[0], item.image.shape[1], spec))
        if needed > max_bytes:
            item.rejection = ("too_large", f"{item.source} {item.origin}: a {item.image.shape[1]}x"
                              f"{item.image.shape[0]} frame needs {needed / 2**20:.0f} MiB as model input, more "
                              f"than queue.max_bytes ({max_bytes / 2**20:.0f} MiB): crop it with a region of "
                              "interest, or raise queue.max_bytes")
            item.image = None
            return
        try:
            item.prepared = scorer.prepare(item.image, f"{item.source} {item.origin}", regions)
        except ItemRejected as rejected:
            item.rejection = (rejected.reason, str(rejected))
        except Exception as exc:  # never lose the item: the batcher prepares it again and rejects it there
            self._rejections.warning((item.source, "prepare_failed"),
                                     f"preparing {item.source} {item.origin} failed: {exc!r}")

    def depth(self, name: str) -> int:
        return self._queues[name].rows

    def pending(self) -> int:
        return sum(q.rows for q in self._queues.values())

    def close(self) -> None:
        """Stop accepting items; what is queued is still processed by `run_until_drained`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- consumer side -------------------------------------------------------------------------
    def _take(self) -> list[Item]:
        """Up to max_batch items (rows) round-robin across the queues, within one queue's byte budget."""
        batch: list[Item] = []
        names = self._order
        empty_rounds = 0
        held = taken = 0
        while taken < self.max_batch and empty_rounds < len(names):
            queue = self._queues[names[self._next % len(names)]]
            self._next += 1
            if queue.items:
                nbytes = item_bytes(queue.items[0])
                if batch and held + nbytes > self.max_batch_bytes:
                    break  # a batch holds at most one queue's budget of memory
                item = queue.pop_rows(self.max_batch - taken)
                held += item_bytes(item)
                taken += rows_of(item)
                batch.append(item)
                empty_rounds = 0
            else:
                empty_rounds += 1
        return batch

    def next_batch(self, timeout: float) -> Batch:
        """Wait up to `timeout` for a first item, then up to max_wait for a fuller batch."""
        with self._cond:
            if not self.pending():
                self._cond.wait(timeout)
                if not self.pending():
                    return Batch()
            deadline = time.perf_counter() + self.max_wait
            while self.pending() < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = Batch(self._take())  # empty when another worker took the items while this one waited
            if batch:
                batch.ticket = self._tickets_taken
                self._tickets_taken += 1
                self._cond.notify_all()  # space for blocked producers
            return batch

    def process(self, batch: Batch) -> None:
        """Score a batch (concurrently with other workers), then hand it to the sinks in ticket order."""
        if not batch:
            return
        try:
            results, inference_s = self._score(batch)
        except BaseException:
            with self._turn_of(batch.ticket):  # pass the turn on, or every later batch waits for ever
                pass
            raise
        with self._turn_of(batch.ticket):
            self._finish(batch, results, inference_s)

    @contextmanager
    def _turn_of(self, ticket: int) -> Iterator[None]:
        """Hold the sinks' turn for `ticket`: wait for every earlier batch, then let the next one go."""
        with self._turn:
            while self._tickets_done != ticket:
                self._turn.wait()
            try:
                yield
            finally:
                self._tickets_done += 1
                self._turn.notify_all()

    def _score(self, batch: list[Item]) -> tuple[list, float]:
        scorer = self._model.scorer
        results: list[ScoreResult | None] = [None] * len(batch)
        frames, windows = [], []
        for index, item in enumerate(batch):
            if item.rejection is not None:
                results[index] = ScoreResult.rejection(*item.rejection)
            elif item.features is not None:
                windows.append(index)
            else:
                frames.append(index)
        started = time.perf_counter()
        if frames:
            self._fill(results, frames, lambda: scorer.score_images(
                [batch[i].image for i in frames], [f"{batch[i].source} {batch[i].origin}" for i in frames],
                max_batch=min(self.max_batch, FRAME_RUN_LIMIT), prepared=[batch[i].prepared for i in frames],
                regions=[self._regions.get(batch[i].source, ()) for i in frames]))
        if windows:
            self._fill(results, windows, lambda: self._score_windows(scorer, [batch[i] for i in windows]))
        return results, time.perf_counter() - started

    @staticmethod
    def _score_windows(scorer, items: list[Item]) -> list:
        """Single windows and blocks of them in one model run: a ScoreResult per single window, a
        FeatureScores per block."""
        scores = scorer.score_feature_arrays(np.concatenate(
            [item.features if item.rows is not None else item.features[None] for item in items]))
        starts = np.cumsum([0] + [rows_of(item) for item in items])
        singles = [k for k, item in enumerate(items) if item.rows is None]
        # the single windows' results in one vectorised pass (per-row stream sources send thousands)
        one_by_one = iter(scores.take(starts[singles]).results() if singles else [])
        return [next(one_by_one) if item.rows is None else scores.take(slice(starts[k], starts[k + 1]))
                for k, item in enumerate(items)]

    def _finish(self, batch: list[Item], results: list, inference_s: float) -> None:
        rows = 0
        for item, result in zip(batch, results):
            rows += rows_of(item)
            if result.rejected:
                self._rejections.warning((item.source, result.reason), f"rejected: {result.message}")
            elif isinstance(result, FeatureScores) and not result.finite.all():
                self._rejections.warning((item.source, "non_finite_score"), f"rejected: {item.source}: "
                                         f"{int((~result.finite).sum())} rows scored non-finite (non_finite_score)")
        one_by_one = None  # the batch with blocks as single rows, for sinks that want them so
        for sink in self.sinks:
            try:
                if getattr(sink, "takes_row_blocks", False):
                    sink.handle(batch, results, inference_s)  # type: ignore[arg-type]
                else:
                    one_by_one = one_by_one or expand(batch, results)
                    sink.handle(*one_by_one, inference_s)  # type: ignore[arg-type]
            except Exception:
                log.exception("sink %s failed", type(sink).__name__)
                self._on_error(type(sink).__name__)
        for item, result in zip(batch, results):
            if item.on_done is not None:
                try:
                    item.on_done(item, result)
                except Exception:
                    log.exception("completion of %s %s failed", item.source, item.origin)
            item.image = item.features = item.prepared = None
        self.items_done += rows

    @staticmethod
    def _fill(results: list, indices: list[int], score: Callable[[], list]) -> None:
        """Put the scores of `indices` into `results`; an unexpected runtime failure rejects them
        (reason inference_error) instead of killing the daemon."""
        try:
            scored = score()
        except Exception as exc:
            log.exception("scoring a batch of %d failed", len(indices))
            scored = [ScoreResult.rejection("inference_error", f"inference failed: {exc}")] * len(indices)
        for index, result in zip(indices, scored):
            results[index] = result

    def run(self, keep_going: Callable[[], bool], poll: float = 0.05, drain: bool = True) -> None:
        """Batch and score until `keep_going()` is false, then drain what is still queued (unless not
        `drain`: a measurement that stops leaves its queued frames)."""
        stop_helpers = threading.Event()

        def helper() -> None:
            while not stop_helpers.is_set():
                batch = self.next_batch(poll)
                if batch:
                    self.process(batch)

        helpers = [threading.Thread(target=helper, name=f"scorer-{i + 1}", daemon=True) for i in range(self.workers - 1)]
        for thread in helpers:
            thread.start()
        try:
            while keep_going():
                batch = self.next_batch(poll)
                if batch:
                    self.process(batch)
            self.close()
        finally:
            stop_helpers.set()
            for thread in helpers:
                thread.join()
        while drain:
            batch = self.next_batch(0)
            if not batch:
                break
            self.process(batch)
