"""The model the daemon scores with now: one holder, swapped by the reloader, read by everyone else.

The pipeline reads `scorer` once per batch, so a swap lands between batches; sinks that describe the
model (journal version, evidence captions, line outputs) read it when they write. Subscribers hear
of every swap (metrics, outputs that publish the model's identity).
"""

from __future__ import annotations

from typing import Callable

from .scorer import Scorer


class ActiveModel:
    def __init__(self, scorer: Scorer):
        self._scorer = scorer
        self._subscribers: list[Callable[[Scorer], None]] = []

    @property
    def scorer(self) -> Scorer:
        return self._scorer

    @property
    def version(self) -> str:
        return self._scorer.card.version

    def subscribe(self, callback: Callable[[Scorer], None]) -> None:
        self._subscribers.append(callback)

    def swap(self, scorer: Scorer) -> Scorer:
        """Make `scorer` the active model (one reference assignment: atomic for readers); returns the old one."""
        old, self._scorer = self._scorer, scorer
        for callback in self._subscribers:
            callback(scorer)
        return old
