"""Score drift per source: the population stability index (PSI) of the recent normal-verdict scores
against a baseline of the same source's first scores under the active model.

Why a baseline from the line and not the card's calibration scores: the PSI of two samples of one
distribution is not 0 but about (bins - 1) * (1/n_recent + 1/n_reference), with a spread of the same
size. A card is calibrated on a few dozen held-out images (6 on a PIPED class), so against it a
healthy line read 0.3 - 0.6, above the alert level. The first `window` scores of the source give a
reference as large as the recent window: a healthy stream then reads about 0.02, and a change of
lighting, camera or material shows as a shift from what this line looked like when the model went
live. Anomalies are left out of both sides: defects are the anomaly-rate alert's business; drift is
about the normal parts.

Bins are the baseline's quintiles (equal shares minimise the statistic's noise). The baseline of
each (source, model version) is kept in a JSON file beside the journal, so a restart keeps it and a
new model version starts a new one; delete the file to take a new baseline deliberately.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BINS = 5
MIN_RECENT = 50  # fewer recent scores than this (or than the window) give no reading yet


def population_stability_index(scores: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    """PSI of `scores` binned at `edges` (len(expected) - 1 inner edges) against `expected` shares."""
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(expected))[: len(expected)]
    actual = np.clip(counts / max(1, len(scores)), 1e-4, None)
    expected = np.clip(expected, 1e-4, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class Baseline:
    """The reference of one source: quintile edges of its first scores and their shares there."""

    def __init__(self, scores: np.ndarray):
        self.scores = np.sort(np.asarray(scores, dtype=np.float64))
        self.edges = np.quantile(self.scores, np.arange(1, BINS) / BINS)
        counts = np.bincount(np.searchsorted(self.edges, self.scores, side="right"), minlength=BINS)
        self.shares = counts / len(self.scores)

    def psi(self, recent: np.ndarray) -> float:
        return population_stability_index(recent, self.edges, self.shares)


class DriftMonitor:
    """Recent normal-verdict scores per source and their PSI against the source's baseline."""

    def __init__(self, window: int, path: Path | None = None):
        self.window = window
        self.path = Path(path) if path is not None else None
        self.model_version = ""
        self._recent: dict[str, deque] = {}
        self._collecting: dict[str, list[float]] = {}
        self._baselines: dict[str, Baseline] = {}
        self.latest: dict[str, float] = {}  # the last reading per source
        self._lock = threading.Lock()

    def set_model(self, version: str) -> None:
        """Scores of another model are not comparable: start over, from a stored baseline if any."""
        with self._lock:
            self.model_version = version
            stored = self._load().get(version, {})
            self._baselines = {source: Baseline(np.asarray(scores)) for source, scores in stored.items()
                               if len(scores) >= 2}
            for source in self._recent:
                self._recent[source].clear()
                self._collecting[source] = []
            self.latest.clear()

    @property
    def sources(self) -> list[str]:
        return list(self._recent)

    def add_source(self, source: str) -> None:
        with self._lock:
            self._recent[source] = deque(maxlen=self.window)
            self._collecting[source] = []

    def observe(self, source: str, normal_scores: list[float]) -> float | None:
        """Add a batch's normal-verdict scores; the PSI now, or None while there is no reading yet."""
        with self._lock:
            recent = self._recent.get(source)
            if recent is None:
                return None
            recent.extend(normal_scores)
            if source not in self._baselines:
                collecting = self._collecting[source]
                collecting.extend(normal_scores)
                if len(collecting) < self.window:
                    return None
                self._baselines[source] = Baseline(np.asarray(collecting[:self.window]))
                self._collecting[source] = []
                self._store()
                log.info("drift baseline of source %s: its first %d normal scores under model %s", source,
                         self.window, self.model_version)
            if len(recent) < min(MIN_RECENT, self.window):
                return None
            self.latest[source] = self._baselines[source].psi(np.fromiter(recent, float))
            return self.latest[source]

    # --- the baseline file: {model version: {source: [scores]}}, written atomically ---------------
    def _load(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError) as exc:
            log.warning("drift baseline %s unreadable (%s): taking new baselines", self.path, exc)
            return {}

    def _store(self) -> None:
        if self.path is None:
            return
        data = {self.model_version: {source: [round(float(s), 6) for s in baseline.scores]
                                     for source, baseline in self._baselines.items()}}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(data))
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("drift baseline %s not saved (%s): a restart will take a new one", self.path, exc)
