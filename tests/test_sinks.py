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
        map_baseline = None  # a card from before format 12: colours start at 0


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


def _score_unit_card(baseline):
    """A card whose heatmap is in score units (red = the threshold), with the good surface's typical level."""
    from types import SimpleNamespace

    from inspector.card import ScoreDefinition

    return SimpleNamespace(score=ScoreDefinition(weights={"patch_knn": 1.0}, scales={"patch_knn": 1.0},
                                                 map_in_score_units=True, map_baseline=baseline))


def test_a_heatmap_colours_from_the_good_surfaces_typical_level_so_only_a_flaw_warms():
    """A map on pretrained features has most cells of a good frame at half the threshold or more; drawn
    from 0 every frame was yellow to orange. From the card's map_baseline the ordinary surface is blue
    and the flaw red."""
    from inspector.overlay import colorize, heatmap_scale

    heatmap = np.full((32, 32), 0.8, np.float32)
    heatmap[12:20, 12:20] = 1.0  # a flaw at the threshold's level on a surface at its typical level
    scale = heatmap_scale(_score_unit_card(0.8), threshold=1.0)
    assert (scale.low, scale.high, scale.low_label) == (0.8, 1.0, "typical good surface")
    picture = colorize(heatmap, scale, (32, 32)).astype(int)  # BGR
    surface, flaw = picture[2, 2], picture[16, 16]
    assert surface[0] > 100 and surface[2] < 50  # blue
    assert flaw[2] > 100 and flaw[0] < 50  # red
    from_zero = colorize(heatmap, heatmap_scale(_score_unit_card(None), threshold=1.0), (32, 32)).astype(int)
    assert from_zero[2, 2, 2] > from_zero[2, 2, 0]  # without a baseline the same surface reads warm


def test_a_baseline_not_below_the_red_end_is_ignored_rather_than_inverting_the_colours():
    """An operator's threshold set under the good surface's level (or a strange card) draws from 0 again."""
    from inspector.overlay import heatmap_scale

    for baseline in (1.0, 1.5):
        scale = heatmap_scale(_score_unit_card(baseline), threshold=1.0)
        assert (scale.low, scale.high, scale.low_label) == (0.0, 1.0, "0")


def test_the_evidence_colour_bar_names_where_its_colours_start():
    from inspector.overlay import colour_bar, heatmap_scale

    with_baseline = colour_bar(420, heatmap_scale(_score_unit_card(0.8), threshold=1.0))
    from_zero = colour_bar(420, heatmap_scale(_score_unit_card(None), threshold=1.0))
    legend = slice(with_baseline.shape[0] - 16, None)
    left = (slice(None), slice(0, 140))
    # "typical good surface" is longer than "0": more of the legend's left part is written
    assert (with_baseline[legend][left] > 200).sum() > 4 * (from_zero[legend][left] > 200).sum() > 0
