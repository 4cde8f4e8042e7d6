"""Thresholds from normal data.

`quantile` (default) needs no labelled defects: the threshold is the (1 - target) quantile of the
scores of held-out normal images, so about `target` of normal parts raise an alarm. A held-out set
too small to resolve that quantile (n * target < 1, e.g. 6 images at 1%) would otherwise put the
threshold at the largest observed score: too low for 6 images, and hostage to one odd image in 60.
There the quantile comes from a log-normal fitted to the held-out scores. `f1_optimal` is the option
for users who have a labelled validation folder.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from inspector.card import Calibration

QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)


def score_quantiles(scores: np.ndarray) -> dict[str, float]:
    scores = np.asarray(scores, dtype=np.float64)
    out = {f"p{level * 100:g}": float(np.quantile(scores, level)) for level in QUANTILE_LEVELS}
    out["min"], out["max"], out["mean"] = float(scores.min()), float(scores.max()), float(scores.mean())
    return out


def quantile_threshold(normal_scores: np.ndarray, target_false_alarm_rate: float) -> float:
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("calibration needs at least one finite normal score")
    level = 1.0 - target_false_alarm_rate
    if scores.size * target_false_alarm_rate >= 1.0:
        return float(np.quantile(scores, level, method="higher"))
    positive = np.maximum(scores, 1e-12)
    logs = np.log(positive)
    spread = logs.std(ddof=1) if scores.size > 1 else 0.0
    return float(np.exp(logs.mean() + NormalDist().inv_cdf(level) * spread))


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score cut that maximises F1 (anomaly = positive) on a labelled validation set."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("F1-optimal calibration needs both normal and anomalous validation items")
    best_f1, best = -1.0, float(scores.max())
    for cut in np.unique(scores):
        predicted = scores >= cut
        tp = np.sum(predicted & labels)
        fp = np.sum(predicted & ~labels)
        fn = np.sum(~predicted & labels)
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        if f1 > best_f1:
            best_f1, best = f1, float(cut)
    return best


def calibrate(normal_scores: np.ndarray, target_false_alarm_rate: float, method: str = "quantile",
              validation_scores: np.ndarray | None = None, validation_labels: np.ndarray | None = None) -> Calibration:
    if method == "quantile":
        threshold = quantile_threshold(normal_scores, target_false_alarm_rate)
    elif method == "f1_optimal":
        if validation_scores is None or validation_labels is None:
            raise ValueError("f1_optimal calibration needs validation scores and labels")
        threshold = f1_optimal_threshold(validation_scores, validation_labels)
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    threshold = max(threshold, 1e-12)
    return Calibration(threshold=threshold, method=method, target_false_alarm_rate=target_false_alarm_rate,
                       n_samples=int(np.asarray(normal_scores).size), quantiles=score_quantiles(normal_scores))
