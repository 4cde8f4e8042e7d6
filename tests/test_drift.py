"""The drift gauge: quiet on a healthy line, loud on a shifted one, blind to defects, and its baseline
outlives a restart but not a new model."""

from __future__ import annotations

import json

import numpy as np

from inspector.drift import DriftMonitor

WINDOW = 500


def healthy(rng, n):
    return rng.lognormal(-0.7, 0.25, n).tolist()  # normalised scores of normal parts, well below 1.0


def readings(monitor, scores, batch=16):
    out = []
    for start in range(0, len(scores), batch):
        psi = monitor.observe("cam", scores[start:start + batch])
        if psi is not None:
            out.append(psi)
    return out


def test_a_healthy_stream_stays_well_below_the_stable_level_at_every_reading():
    monitor = DriftMonitor(WINDOW)
    monitor.set_model("v1")
    monitor.add_source("cam")
    values = readings(monitor, healthy(np.random.default_rng(0), 20_000))
    assert len(values) > 1000
    assert np.percentile(values, 99) < 0.1 and max(values) < 0.1


def test_no_reading_until_the_baseline_is_complete():
    monitor = DriftMonitor(WINDOW)
    monitor.set_model("v1")
    monitor.add_source("cam")
    assert monitor.observe("cam", healthy(np.random.default_rng(1), WINDOW - 1)) is None
    assert monitor.observe("cam", healthy(np.random.default_rng(2), 1)) is not None


def test_brighter_light_that_lifts_every_score_by_a_third_reads_as_drift():
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(WINDOW)
    monitor.set_model("v1")
    monitor.add_source("cam")
    readings(monitor, healthy(rng, 2000))
    shifted = readings(monitor, [s * 1.33 for s in healthy(rng, 2000)])
    assert shifted[-1] > 0.25


def test_defects_on_the_line_are_not_drift():
    """The metrics sink hands only normal-verdict scores over: a 20% defect rate leaves drift quiet."""
    from inspector.scorer import ScoreResult
    from inspector.sinks.metrics import Metrics
    from inspector.sources.base import Item

    rng = np.random.default_rng(4)
    metrics = Metrics(WINDOW)
    metrics.register_source("cam")
    seq = 0
    for _ in range(200):
        items, results = [], []
        for score in healthy(rng, 16):
            defect = rng.random() < 0.2
            value = score * 3 if defect else score
            seq += 1
            items.append(Item("cam", seq, 0.0, f"f{seq}"))
            results.append(ScoreResult(value, value, "anomaly" if value >= 1 else "normal", {}))
        metrics.handle(items, results, 0.001)
    assert 0 < metrics.drift.labels("cam")._value.get() < 0.1


def test_the_baseline_survives_a_restart_and_a_new_model_takes_a_new_one(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "decisions.drift.json"
    first = DriftMonitor(WINDOW, path)
    first.set_model("v1")
    first.add_source("cam")
    readings(first, healthy(rng, 1000))
    assert set(json.loads(path.read_text())["v1"]) == {"cam"}

    restarted = DriftMonitor(WINDOW, path)  # the line drifted while the daemon was down
    restarted.set_model("v1")
    restarted.add_source("cam")
    assert readings(restarted, [s * 1.33 for s in healthy(rng, 1000)])[-1] > 0.25

    retrained = DriftMonitor(WINDOW, path)  # a new model version: its scores start a new baseline
    retrained.set_model("v2")
    retrained.add_source("cam")
    assert readings(retrained, [s * 1.33 for s in healthy(rng, 400)]) == []
