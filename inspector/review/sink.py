"""The sink that offers items for review: every anomaly, and a sample of normal verdicts near the threshold.

It runs after the evidence sink, so an item's evidence file name is known when it is stored. The
sample is a pure function of the item (`ReviewSampling.wants`), so the evidence sink can write a
picture for exactly the sampled normal items without talking to this one.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Callable

from ..active_model import ActiveModel
from ..scorer import ANOMALY, NORMAL, ScoreResult
from ..sources.base import Item
from .store import NewItem, ReviewStore

log = logging.getLogger(__name__)


class ReviewSampling:
    def __init__(self, near_threshold: float, sample_every: int):
        self.near_threshold = near_threshold
        self.sample_every = sample_every

    def wants(self, item: Item, result: ScoreResult) -> bool:
        if result.verdict == ANOMALY:
            return True
        return (result.verdict == NORMAL and result.normalised >= self.near_threshold
                and item.seq % self.sample_every == 0)


class ReviewSink:
    name = "review"

    def __init__(self, store: ReviewStore, sampling: ReviewSampling, model: ActiveModel, run: str,
                 on_error: Callable[[str], None] | None = None):
        self.store = store
        self.sampling = sampling
        self._model = model
        self.run = run  # the daemon run: with (source, seq) it names an item uniquely
        self._on_error = on_error or (lambda sink: None)
        self._failing = False

    def handle(self, items: list[Item], results: list[ScoreResult], inference_s: float) -> None:
        scorer = self._model.scorer
        version = scorer.card.version
        offered = [NewItem(self.run, item.source, item.seq, item.origin, item.captured_at, version, result.raw,
                           result.normalised, scorer.threshold, result.verdict, item.evidence, item.frame)
                   for item, result in zip(items, results) if not result.rejected and self.sampling.wants(item, result)]
        if not offered:
            return
        try:
            self.store.add_items(offered)
        except sqlite3.Error as exc:
            if not self._failing:
                log.error("review database %s: cannot write (%s); scoring continues, these items are not offered "
                          "for review", self.store.path, exc)
                self._failing = True
            self._on_error("review")
            return
        if self._failing:
            log.info("review database %s: writing again", self.store.path)
            self._failing = False

    def close(self) -> None:
        self.store.close()
