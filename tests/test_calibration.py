"""Thresholds from normal data meet the configured false-alarm rate."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import calibrate, f1_optimal_threshold, quantile_threshold


@pytest.mark.parametrize("target", [0.01, 0.05])
@pytest.mark.parametrize("distribution", ["lognormal", "gamma", "uniform"])
def test_quantile_threshold_meets_the_target_false_alarm_rate(target, distribution):
    rng = np.random.default_rng(42)
    draw = {"lognormal": lambda n: rng.lognormal(0.0, 0.5, n), "gamma": lambda n: rng.gamma(2.0, 1.0, n),
            "uniform": lambda n: rng.uniform(0, 1, n)}[distribution]
    threshold = quantile_threshold(draw(20_000), target)
    fresh = draw(200_000)  # new normal items from the same process
    rate = np.mean(fresh >= threshold)
    assert rate == pytest.approx(target, rel=0.15)


def test_small_holdout_extrapolates_the_tail_instead_of_taking_the_largest_score():
    """6 held-out images cannot resolve a 1% quantile: their maximum alone would alarm on ~1/7 of
    normal parts. The log-normal tail fit lands near the target in the typical (median) case."""
    rng = np.random.default_rng(0)
    fresh = rng.lognormal(0.0, 0.3, 200_000)
    rates, rates_of_max = [], []
    for _ in range(300):
        holdout = rng.lognormal(0.0, 0.3, 6)
        threshold = quantile_threshold(holdout, 0.01)
        rates.append(np.mean(fresh >= threshold))
        rates_of_max.append(np.mean(fresh >= holdout.max()))
    assert np.median(rates) < 0.02
    assert np.mean(rates) < 0.35 * np.mean(rates_of_max)


def test_calibration_records_method_target_and_quantiles():
    scores = np.linspace(1.0, 2.0, 1001)
    cal = calibrate(scores, 0.01)
    assert cal.method == "quantile" and cal.target_false_alarm_rate == 0.01 and cal.n_samples == 1001
    assert cal.threshold == pytest.approx(1.99, abs=1e-3)
    assert cal.quantiles["p50"] == pytest.approx(1.5) and cal.quantiles["max"] == 2.0


def test_f1_optimal_threshold_separates_labelled_validation_data():
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.9, 1.0, 1.2])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    assert f1_optimal_threshold(scores, labels) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_optimal_threshold(scores, np.zeros(7))


def test_calibration_refuses_non_finite_scores():
    with pytest.raises(ValueError, match="finite"):
        quantile_threshold(np.array([1.0, np.nan]), 0.01)
