"""Sinks in isolation: journal rotation, evidence retention and safe names, the score histogram."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from inspector.active_model import ActiveModel
from inspector.config import parse_daemon_config
from inspector.errors import ConfigError
from inspector.scorer import ScoreResult
from inspector.sinks.evidence import EvidenceSink, safe_component
from inspector.sinks.journal import JournalSink
from inspector.sources.base import Item


def _items(n, source="cam"):
    return [Item(source, i, time.time(), f"frame {i}", image=np.zeros((8, 8, 3), np.uint8)) for i in range(1, n + 1)]


def test_the_journal_rotates_by_size_and_keeps_every_line(tmp_path):
    sink = JournalSink(tmp_path / "j.jsonl", max_bytes=2_000, backups=50)
    for start in range(0, 100, 10):
        items = _items(100)[start:start + 10]
        results = [ScoreResult(0.5, 0.25, "normal", {}) if i % 3 else ScoreResult.rejection("decode_failed", "bad") for i in range(10)]
        sink.handle(items, results, 0.001)
    sink.close()
    files = sorted(tmp_path.glob("j.jsonl*"))
    assert len(files) > 3 and all(f.stat().st_size < 4_000 for f in files)
    lines = [json.loads(l) for f in files for l in f.read_text().splitlines()]
    assert sorted(l["seq"] for l in lines) == list(range(1, 101))
    assert {l["verdict"] for l in lines} == {"normal", "rejected"}


class _Card:
    name, version = "parts", "3+20261202T120000Z.abc123"

    class score:  # noqa: N801 - a stand-in with the fields the overlay reads
        map_output = "anomaly_map"
        map_in_score_units = False
        weights = {"residual_max": 1.0}
        scales = {"residual_max": 1.0}


class _Scorer:
    card = _Card()
    threshold = 1.0


def test_evidence_keeps_at_most_max_files_and_writes_inside_its_folder(tmp_path):
    sink = EvidenceSink(tmp_path / "evidence", max_files=3, max_bytes=10**9, model=ActiveModel(_Scorer()))
    items = _items(5, source="../../etc/passwd")
    results = [ScoreResult(2.0, 2.0, "anomaly", {}, heatmap=np.ones((8, 8), np.float32)) for _ in items]
    sink.handle(items, results, 0.0)
    written = sorted((tmp_path / "evidence").iterdir())
    assert len(written) == 3
    assert all(p.parent == tmp_path / "evidence" and p.name.startswith("_.._etc_passwd_") for p in written)
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("hostile", ["../x", "/abs/path", "a/../../b", "..", ".hidden", "name\x00nul", "x" * 300])
def test_safe_component_can_never_be_a_path(hostile):
    name = safe_component(hostile)
    assert "/" not in name and "\x00" not in name and not name.startswith(".") and 0 < len(name) <= 64


def test_source_names_that_look_like_paths_are_refused_by_the_config(tmp_path):
    with pytest.raises(ConfigError, match="sources.0.*name"):
        parse_daemon_config({"model": {"path": "m.onnx"},
                             "sources": [{"name": "../evil", "kind": "folder", "path": str(tmp_path)}]},
                            "line.yaml", check_files=False)


def test_the_batch_histogram_exposes_exactly_what_prometheus_clients_histogram_does():
    """Same values, including values equal to a bucket bound (le is inclusive), same exposition."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from inspector.sinks.bulk_histogram import BulkHistogram

    buckets = (0.1, 0.5, 1.0, 2.0)
    values = [0.05, 0.1, 0.3, 0.5, 0.5, 1.0, 1.5, 2.0, 7.0, 0.1]
    reference, bulk = CollectorRegistry(), CollectorRegistry()
    classic = Histogram("x_score", "doc", ["source"], buckets=buckets, registry=reference)
    batch = BulkHistogram("x_score", "doc", ["source"], buckets=buckets, registry=bulk)
    for v in values:
        classic.labels("cam").observe(v)
    batch.observe_many(("cam",), values[:4])
    batch.observe_many(("cam",), values[4:])
    def samples(registry):
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if line.startswith("x_score") and "_created" not in line)
    assert samples(bulk) == samples(reference)


def test_an_evidence_image_explains_itself_with_a_colour_scale_and_a_caption(tmp_path):
    """Below frame | overlay: a blue-to-red scale whose red is the threshold, then the verdict, score,
    threshold, source, capture time and model, so the PNG alone tells the operator what happened."""
    import cv2

    from inspector.overlay import BAR_HEIGHT, CAPTION_MIN_WIDTH, LINE_HEIGHT

    sink = EvidenceSink(tmp_path / "evidence", max_files=10, max_bytes=10**9, model=ActiveModel(_Scorer()))
    item = Item("cam", 7, 1_796_300_000.0, "frame 7", image=np.full((64, 64, 3), 128, np.uint8))
    sink.handle([item], [ScoreResult(2.5, 2.5, "anomaly", {}, heatmap=np.ones((64, 64), np.float32))], 0.0)
    picture = cv2.imread(str(tmp_path / "evidence" / item.evidence))
    assert picture.shape[1] == CAPTION_MIN_WIDTH  # two 64 px panels widened for the caption
    assert picture.shape[0] == 64 + BAR_HEIGHT + LINE_HEIGHT + 4 * LINE_HEIGHT + 4
    bar = picture[64 + BAR_HEIGHT // 2]
    assert bar[2, 0] > 100 and bar[2, 2] < 50 and bar[-3, 2] > 100 and bar[-3, 0] < 50  # blue left, red right
    caption = picture[64 + BAR_HEIGHT + LINE_HEIGHT:]
    assert (caption > 200).any()  # text drawn
    panel = picture[:64, 64:128]
    assert panel[..., 2].mean() > panel[..., 0].mean()  # a heatmap at the threshold's level is drawn red
    from inspector.sinks.evidence import caption as caption_lines
    lines = caption_lines(item, ScoreResult(2.5, 2.5, "anomaly", {}), _Scorer())
    assert lines[0].startswith("ANOMALY  score 2.5  threshold 1") and "cam  frame 7  seq 7" in lines[1]
    assert lines[2] == "captured 2026-12-03T12:13:20.000+00:00" and lines[3] == f"model parts {_Card.version}"
