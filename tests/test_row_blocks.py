"""Blocks of traffic rows (the fast path): a chunk's good rows travel, score and are journaled as one
item, and every row still gets what it would get alone: its sequence number, origin, features,
rejection reason, journal line and counts. Each fast step is checked against the row-by-row one."""

from __future__ import annotations

import dataclasses

import orjson
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.active_model import ActiveModel
from inspector.pipeline import Pipeline
from inspector.scorer import Scorer, ScoreResult
from inspector.sinks.journal import JournalSink
from inspector.sinks.metrics import Metrics
from inspector.sources.base import Source
from inspector.sources.row_blocks import expand, rows_of
from inspector.sources.rows import RowItems
from training.config import validate_train_config
from training.tabular import Table, fit_spec

from .test_traffic import kdd_test_lines

COLUMNS = ["duration", "proto", "bytes", "rate", "label"]
BAD_LINES = {"wrong_column_count": "1,tcp,100", "non_numeric": "1,tcp,lots,0.5,normal",
             "non_finite": "1,tcp,nan,0.5,normal", "bad_csv": '1,"tcp,5,0.5,normal'}


def small_spec(window: int, stride: int):
    rows = [[str(i % 5), ["tcp", "udp"][i % 2], str(10 ** (i % 4)), f"{0.1 * (i % 10):.1f}", "normal"] for i in range(40)]
    config = validate_train_config({"name": "t", "data": {"kind": "table", "path": "x.csv", "label": "label"},
                                    "features": {"categorical": ["proto"], "window": window, "stride": stride}}, "t")
    return fit_spec(config, Table(COLUMNS, rows), rows)


def good_line(i: int) -> str:
    return f"{i % 7},{['tcp', 'udp', 'gre'][i % 3]},{i * 13},{(i % 10) / 10},normal"


lines_strategy = st.lists(st.one_of(st.integers(0, 1000).map(good_line), st.sampled_from(sorted(BAD_LINES.values())),
                                    st.just(""), st.just("   ")), max_size=60)


def one_by_one(spec, chunks: list[list[str]], prefix: str):
    """The row-by-row path: every line its own item (explicit origins turn blocks off)."""
    rows, out, first = RowItems(Source("t"), spec, "csv"), [], 1
    for lines in chunks:
        out += rows.items(lines, origins=[f"{prefix}line {first + k}" for k in range(len(lines))])
        first += len(lines)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(lines_strategy, min_size=1, max_size=4), window=st.sampled_from([(1, 1), (3, 1), (3, 2)]))
def test_blocks_carry_exactly_the_rows_and_rejections_of_the_row_by_row_path(chunks, window):
    spec = small_spec(*window)
    source = Source("t")
    rows = RowItems(source, spec, "csv")
    items = [item for lines in chunks for item in rows.items(lines, "10.0.0.1:5 ")]
    expected = one_by_one(spec, chunks, "10.0.0.1:5 ")
    got, _ = expand(items, [None] * len(items))
    assert [(i.seq, i.origin, i.rejection and i.rejection[0]) for i in got] == \
           [(i.seq, i.origin, i.rejection and i.rejection[0]) for i in expected]
    for a, b in zip(got, expected):
        assert (a.features is None) == (b.features is None)
        if a.features is not None:
            np.testing.assert_array_equal(a.features, b.features)
    assert sum(rows_of(i) for i in items) == len(expected)
    assert all(i.rows is None for i in items if i.rejection is not None)  # bad rows stay single, in order


@pytest.fixture(scope="module")
def nsl(nsl_model):
    scorer = Scorer(nsl_model, intra_op_threads=1)
    lines = kdd_test_lines(400)
    lines[57] = "not,a,flow"  # one bad row splits the chunk into two blocks around it
    items = RowItems(Source("tcp"), scorer.card.input, "csv").items(lines, "127.0.0.1:40000 ")
    return scorer, items


def scored(scorer: Scorer, items):
    results = []
    for item in items:
        if item.rows is not None:
            results.append(scorer.score_feature_arrays(item.features))
        else:
            results.append(ScoreResult.rejection(*item.rejection) if item.rejection is not None else
                           scorer.score_features(item.features[None])[0])
    return results


def journal_lines(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_the_journal_writes_a_block_as_the_lines_its_rows_would_write_alone(nsl, tmp_path):
    scorer, items = nsl
    assert [rows_of(i) for i in items] == [57, 1, 342]
    results = scored(scorer, items)
    results[2].raw[10] = results[2].normalised[10] = np.nan  # a row the model scored non-finite
    results[2].finite[10] = results[2].anomaly[10] = False
    model = ActiveModel(scorer)
    fast, slow = JournalSink(tmp_path / "fast.jsonl", 1 << 30, 1, model=model), JournalSink(tmp_path / "slow.jsonl", 1 << 30, 1, model=model)
    fast.handle(items, results, 0.01)
    slow.handle(*expand(items, results), 0.01)
    a, b = journal_lines(tmp_path / "fast.jsonl"), journal_lines(tmp_path / "slow.jsonl")
    assert len(a) == len(b) == 400 and fast.lines_written == 400
    assert [line["seq"] for line in a] == list(range(1, 401))
    for x, y in zip(a, b):
        for key in ("score", "normalised"):
            assert x.pop(key, None) == pytest.approx(y.pop(key, None), abs=1e-6)  # both rounded to 6 decimals
        x.pop("time"), y.pop("time"), x.pop("latency_ms"), y.pop("latency_ms")
        assert x == y
    assert a[57]["verdict"] == "rejected" and a[57]["reason"] == "wrong_column_count"
    assert a[68]["verdict"] == "rejected" and a[68]["reason"] == "non_finite_score"
    assert a[0]["origin"] == "127.0.0.1:40000 line 1" and a[399]["origin"] == "127.0.0.1:40000 line 400"
    assert {line["verdict"] for line in a} == {"normal", "anomaly", "rejected"}


def test_metrics_count_a_block_as_its_rows(nsl):
    scorer, items = nsl
    results = scored(scorer, items)
    fast, slow = Metrics(drift_window=50), Metrics(drift_window=50)
    for metrics in (fast, slow):
        metrics.register_source("tcp")
    fast.handle(items, results, 0.01)
    slow.handle(*expand(items, results), 0.01)
    assert fast.totals == slow.totals and fast.totals["scored"] == 399 and fast.totals["rejected"] == 1
    assert 0 < fast.totals["anomalies"] < 399
    histograms = [{(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics.registry.collect()
                   for s in m.samples if not s.name.endswith("_created")
                   and ("inspector_anomaly_score" in s.name or "inspector_items" in s.name)}
                  for metrics in (fast, slow)]
    assert histograms[0] == histograms[1]
    assert fast.drift_reading("tcp") == pytest.approx(slow.drift_reading("tcp"))


def fresh(items):
    """Copies to queue: the pipeline lets go of an item's features once it is done."""
    return [dataclasses.replace(item) for item in items]


class Recorder:
    def __init__(self):
        self.batches = []

    def handle(self, items, results, inference_s):
        self.batches.append(list(zip(items, results)))

    def close(self):
        pass


def test_the_batcher_cuts_blocks_at_max_batch_and_sinks_without_block_support_see_single_rows(nsl, tmp_path):
    scorer, items = nsl
    recorder = Recorder()
    journal = JournalSink(tmp_path / "journal.jsonl", 1 << 30, 1)
    pipeline = Pipeline(ActiveModel(scorer), [journal, recorder], max_batch=64, max_wait_ms=0)
    emit = pipeline.add_source("tcp", size=1000, policy="block")
    assert emit(fresh(items)) and pipeline.depth("tcp") == 400  # the queue counts rows, not blocks
    while pipeline.pending():
        pipeline.process(pipeline.next_batch(0))
    assert pipeline.items_done == 400
    assert all(len(batch) <= 64 for batch in recorder.batches)
    seen = [item for batch in recorder.batches for item, _ in batch]
    assert [item.seq for item in seen] == list(range(1, 401)) and all(item.rows is None for item in seen)
    assert all(item.journaled for item in seen)
    assert [line["seq"] for line in journal_lines(tmp_path / "journal.jsonl")] == list(range(1, 401))
    one = scorer.score_features(items[2].features[5:6])[0]  # the same row scored alone
    row = next(result for item, result in zip(seen, [r for b in recorder.batches for _, r in b]) if item.seq == 64)
    assert row.raw == pytest.approx(one.raw, rel=1e-5)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.sampled_from([b"a,b", b"x" * 9, "\u00fc".encode(), b"\n", b"\n", b"\n", b"\r", b"\xff"]),
                    max_size=30).map(b"".join),
       cuts=st.lists(st.integers(0, 200), max_size=6))
def test_the_line_reader_splits_any_byte_stream_like_a_line_by_line_reader(data, cuts):
    """Lines of at most 8 bytes; longer ones are dropped and counted, wherever the chunks are cut."""
    from inspector.sources.traffic import _LineReader

    reader, lines, too_long, at = _LineReader(8), [], 0, 0
    for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
        got, long = reader.feed(data[at:cut])
        lines += got
        too_long += long
        at = cut
    complete = data.split(b"\n")[:-1]
    assert lines == [piece.decode("utf-8", errors="replace") for piece in complete if len(piece) <= 8]
    assert too_long == sum(len(piece) > 8 for piece in complete) + (len(data.split(b"\n")[-1]) > 8)


def test_a_block_larger_than_the_queue_waits_in_pieces_so_the_queue_bound_holds(nsl):
    """A 342-row block into a 100-row queue: queued 100 rows at a time, the source waiting for room."""
    import threading

    scorer, items = nsl
    pipeline = Pipeline(ActiveModel(scorer), [], max_batch=50, max_wait_ms=0)
    emit = pipeline.add_source("tcp", size=100, policy="block")
    done = threading.Event()
    threading.Thread(target=lambda: (emit(fresh(items)), done.set()), daemon=True).start()
    peak = 0
    while not (done.is_set() and not pipeline.pending()):
        peak = max(peak, pipeline.depth("tcp"))
        batch = pipeline.next_batch(0.05)
        if batch:
            pipeline.process(batch)
    assert pipeline.items_done == 400 and peak <= 100
