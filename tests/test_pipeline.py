"""Backpressure policies of the pipeline, with the real scorer: block loses nothing, drop_oldest
keeps the newest items and counts what it dropped; every queue is bounded."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inspector.active_model import ActiveModel
from inspector.pipeline import Pipeline
from inspector.scorer import Scorer
from inspector.sources.base import Item

from .daemon_helpers import flat_part, train_flat_model


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return Scorer(train_flat_model(tmp_path_factory.mktemp("flat")), intra_op_threads=1)


class Recorder:
    def __init__(self):
        self.items, self.results = [], []

    def handle(self, items, results, inference_s):
        self.items += items
        self.results += results

    def close(self):
        pass


def _frames(n):
    rng = np.random.default_rng(0)
    return [flat_part(rng) for _ in range(n)]


def test_drop_oldest_keeps_the_newest_items_and_counts_drops(scorer):
    drops = []
    recorder = Recorder()
    pipeline = Pipeline(ActiveModel(scorer), [recorder], max_batch=8, max_wait_ms=0, on_drop=drops.append)
    emit = pipeline.add_source("cam", size=4, policy="drop_oldest")
    for seq, frame in enumerate(_frames(10), start=1):
        assert emit(Item("cam", seq, 0.0, f"frame {seq}", image=frame))
    assert pipeline.depth("cam") == 4 and drops == ["cam"] * 6
    pipeline.process(pipeline.next_batch(0))
    assert [item.seq for item in recorder.items] == [7, 8, 9, 10]


def test_block_policy_is_lossless_and_bounded(scorer):
    recorder = Recorder()
    pipeline = Pipeline(ActiveModel(scorer), [recorder], max_batch=4, max_wait_ms=1)
    emit = pipeline.add_source("folder", size=2, policy="block")
    peak = []

    def produce():
        for seq, frame in enumerate(_frames(40), start=1):
            emit(Item("folder", seq, 0.0, f"f{seq}", image=frame))
            peak.append(pipeline.depth("folder"))

    producer = threading.Thread(target=produce)
    producer.start()
    pipeline.run(lambda: producer.is_alive())
    producer.join()
    assert [item.seq for item in recorder.items] == list(range(1, 41))
    assert max(peak) <= 2


def test_several_workers_score_at_once_and_sinks_see_batches_in_queue_order(scorer):
    recorder = Recorder()
    pipeline = Pipeline(ActiveModel(scorer), [recorder], max_batch=3, max_wait_ms=1, workers=3)
    emit = pipeline.add_source("folder", size=4, policy="block")
    frames = _frames(60)

    def produce():
        for seq, frame in enumerate(frames, start=1):
            emit(Item("folder", seq, 0.0, f"f{seq}", image=frame))

    producer = threading.Thread(target=produce)
    producer.start()
    pipeline.run(lambda: producer.is_alive())
    producer.join()
    assert [item.seq for item in recorder.items] == list(range(1, 61))
    assert pipeline.items_done == 60
    alone = scorer.score_images(frames)
    assert [r.raw for r in recorder.results] == [r.raw for r in alone]


def test_rejected_items_travel_with_the_batch_and_callbacks_run_after_sinks(scorer):
    recorder = Recorder()
    done = []
    pipeline = Pipeline(ActiveModel(scorer), [recorder], max_batch=8, max_wait_ms=0)
    emit = pipeline.add_source("mix", size=8, policy="block")
    frame = _frames(1)[0]
    emit(Item("mix", 1, 0.0, "good", image=frame, on_done=lambda i, r: done.append((i.origin, len(recorder.items)))))
    emit(Item("mix", 2, 0.0, "bad", rejection=("decode_failed", "bad: corrupt")))
    emit(Item("mix", 3, 0.0, "gray", image=frame[:, :, 0]))
    pipeline.process(pipeline.next_batch(0))
    kinds = [r.reason if r.rejected else r.verdict for r in recorder.results]
    assert kinds == ["normal", "decode_failed", "wrong_channels"]
    assert done == [("good", 3)]  # the completion callback ran after the sinks saw the whole batch
