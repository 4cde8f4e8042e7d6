"""Thresholds from normal data.

`quantile` (default) needs no labelled defects: the threshold is set from the scores of held-out
normal images so that at most `target` of normal parts raise an alarm. A quantile estimated from a
few dozen scores is itself a random number: taken at face value (confidence 0.5) it lets through
more than `target` false alarms about half of the time, and with 6 images at 1% it would sit at the
largest score, alarming on about 1/7 of normal parts. So the threshold is an upper confidence limit
of the (1 - target) quantile at `confidence` (default 0.9): at least 1 - target of normal parts pass,
with that confidence, under the assumptions of the estimate used:

  enough scores (the (1 - target) quantile has an order statistic above it with probability
  >= confidence, e.g. n >= 230 at 1% and 0.9): that order statistic, from the binomial
  distribution of ranks; no assumption on the score distribution.
  fewer: a one-sided normal tolerance limit on the log scores (log-normal scores; the
  non-central t factor k: exp(mean + k * sd)), which extrapolates the tail. Scores far below the
  rest are left out of that fit first (a log score more than LOW_OUTLIER_SPREADS robust spreads
  below the median: the modified z-score rule of Iglewicz and Hoaglin), because only the upper tail
  matters: a few near-empty frames, or frames a fold model fits unusually well, inflated the sd and
  with it a limit on the UPPER tail, to 2.5 times the largest normal score on a PIPED class (32
  scores: median 30, largest 34, smallest 9; threshold 86). High scores are kept, whatever their
  size: they are what the tail is. On log-normal scores the rule drops about 2 scores in 10,000
  (the normal's mass 3.5 standard deviations below its mean; more with few scores, whose spread
  estimate is rough).

`f1_optimal` is the option for users who have a labelled validation folder.
"""

from __future__ import annotations

import logging
from statistics import NormalDist

import numpy as np
from scipy import stats

from inspector.card import Calibration

log = logging.getLogger(__name__)

QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)


def score_quantiles(scores: np.ndarray) -> dict[str, float]:
    scores = np.asarray(scores, dtype=np.float64)
    out = {f"p{level * 100:g}": float(np.quantile(scores, level)) for level in QUANTILE_LEVELS}
    out["min"], out["max"], out["mean"] = float(scores.min()), float(scores.max()), float(scores.mean())
    return out


def quantile_threshold(normal_scores: np.ndarray, target_false_alarm_rate: float, confidence: float = 0.9) -> float:
    """Upper `confidence` limit of the (1 - target) quantile of the normal scores (see the module doc)."""
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64).reshape(-1))
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("calibration needs at least one finite normal score")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    level = 1.0 - target_false_alarm_rate
    n = scores.size
    rank = order_statistic_rank(n, target_false_alarm_rate, confidence)
    if rank is not None:
        return float(scores[rank - 1])
    logs = np.log(np.maximum(scores, 1e-12))
    if n < 2:
        return float(np.exp(logs[0]))
    logs = without_low_outliers(logs)
    return float(np.exp(logs.mean() + tolerance_factor(logs.size, level, confidence) * logs.std(ddof=1)))


def order_statistic_rank(n: int, target_false_alarm_rate: float, confidence: float) -> int | None:
    """The 1-based rank of the smallest of n sorted normal scores that lies above the (1 - target)
    quantile with probability `confidence`, or None where n scores are too few for one (the limit then
    extrapolates the tail: the log-normal tolerance limit)."""
    level = 1.0 - target_false_alarm_rate
    # X_(k) lies above the level-quantile iff fewer than k of n scores fall below it:
    # P = BinomCDF(k - 1; n, level). The smallest k with P >= confidence, if k <= n.
    rank = int(stats.binom.ppf(confidence, n, level)) + 1
    if n * target_false_alarm_rate >= 1.0 and rank <= n:
        return rank
    return None


LOW_OUTLIER_SPREADS = 3.5  # Iglewicz and Hoaglin's cut for the modified z-score


def robust_spread(values: np.ndarray, centre: float) -> float:
    """1.4826 x the median absolute deviation from `centre` (their median): the standard deviation
    of normally distributed values, barely moved by a few far ones."""
    return 1.4826 * float(np.median(np.abs(np.asarray(values, dtype=np.float64) - centre)))


def without_low_outliers(logs: np.ndarray) -> np.ndarray:
    """`logs` without the values more than LOW_OUTLIER_SPREADS robust spreads below their median, as
    long as two values remain."""
    centre = float(np.median(logs))
    kept = logs[logs >= centre - LOW_OUTLIER_SPREADS * robust_spread(logs, centre)]
    return kept if kept.size >= 2 else logs


def tolerance_factor(n: int, coverage: float, confidence: float) -> float:
    """k of the one-sided normal tolerance limit mean + k * sd: it exceeds the `coverage` quantile
    with probability `confidence` (non-central t; at confidence 0.5 close to the plain z quantile)."""
    z = NormalDist().inv_cdf(coverage)
    return float(stats.nct.ppf(confidence, df=n - 1, nc=z * np.sqrt(n)) / np.sqrt(n))


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
              validation_scores: np.ndarray | None = None, validation_labels: np.ndarray | None = None,
              confidence: float = 0.9) -> Calibration:
    if method == "quantile":
        threshold = quantile_threshold(normal_scores, target_false_alarm_rate, confidence)
    elif method == "f1_optimal":
        if validation_scores is None or validation_labels is None:
            raise ValueError("f1_optimal calibration needs validation scores and labels")
        threshold = f1_optimal_threshold(validation_scores, validation_labels)
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    threshold = max(threshold, 1e-12)
    normal = np.asarray(normal_scores, dtype=np.float64)
    if method == "quantile" and normal.size > 1 and normal.max() == normal.min():
        # ties: "at or above the threshold alarms" would alarm on every normal part
        threshold = float(np.nextafter(max(threshold, normal.max()), np.inf))
        log.warning("every normal image scores the same (%.6g): the model sees no difference between them (blank or "
                    "identical photos?); the threshold sits just above that score, so any change alarms", normal.max())
    return Calibration(threshold=threshold, method=method, target_false_alarm_rate=target_false_alarm_rate,
                       confidence=confidence if method == "quantile" else None,
                       n_samples=int(np.asarray(normal_scores).size), quantiles=score_quantiles(normal_scores))
