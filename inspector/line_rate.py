"""Frames/s the daemon reaches on this machine for a model and a camera: measured, not estimated.

The model's own speed overstates a line's rate: each frame is also decoded, cropped to its regions,
tiled and journaled, and the thread that decodes shares the cores with the scoring workers (a
1920x1080 JPEG takes about 10 ms to decode here, as long as 30 of the default model's tiles). So
this runs the daemon's own pipeline for a few seconds: a source thread decoding a JPEG camera frame
of the given size (textured noise, a costly picture to decode) and preparing it, the scoring workers,
and the journal, and counts the frames journaled per second once it is warm.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from .active_model import ActiveModel
from .pipeline import Pipeline
from .regions import Region
from .scorer import Scorer
from .sinks.journal import JournalSink
from .sources.base import Item

WARM_UP_S = 0.5
MAX_WAIT_S = 60.0  # for one batch: a model far too slow for the frame still gets a (tiny) rate


def camera_jpeg(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An encoded JPEG frame of the camera's size with a camera-like texture (blurred noise)."""
    rng = np.random.default_rng(seed)
    frame = cv2.GaussianBlur(rng.integers(60, 200, (height, width, 3), dtype=np.uint8), (0, 0), 2)
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 frame
        raise RuntimeError("cannot encode a test frame")
    return encoded


def _next_batch_end(pipeline: Pipeline, done: int, not_before: float = 0.0) -> tuple[float, int]:
    """(time, items done) when the next batch after `done` items completes, not before `not_before`."""
    give_up = time.perf_counter() + MAX_WAIT_S
    while True:
        now, count = time.perf_counter(), pipeline.items_done
        if (count > done and now >= not_before) or now > give_up:
            return now, count
        time.sleep(0.002)


def line_frames_per_second(model: Path, height: int, width: int, regions: tuple[Region, ...] = (),
                           seconds: float = 2.0, workers: int = 2, intra_op_threads: int = 1,
                           max_batch: int = 32) -> float:
    """Frames/s through decode -> regions -> model input -> scoring workers -> journal, after a warm-up."""
    scorer = Scorer(model, intra_op_threads=intra_op_threads)
    encoded = camera_jpeg(height, width)
    with tempfile.TemporaryDirectory(prefix="qi_line_rate_") as folder:
        journal = JournalSink(Path(folder) / "journal.jsonl", 1 << 30, 0)
        pipeline = Pipeline(ActiveModel(scorer), [journal], max_batch, 5.0, workers=workers)
        emit = pipeline.add_source("camera", 2 * max_batch, "block", regions=regions)
        stop = threading.Event()

        def camera() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
                if not emit(Item("camera", seq, time.time(), f"frame {seq}", image=image)):
                    return

        source = threading.Thread(target=camera, name="line-rate-camera", daemon=True)
        scoring = threading.Thread(target=pipeline.run, args=(lambda: not stop.is_set(),),
                                   kwargs={"drain": False}, name="line-rate-scoring", daemon=True)
        source.start()
        scoring.start()
        time.sleep(WARM_UP_S)
        # from the end of one batch to the end of another, at least `seconds` apart: frames are done a
        # batch at a time, and a window that no batch ends in would read 0 frames/s
        started, done = _next_batch_end(pipeline, pipeline.items_done)
        ended, finished = _next_batch_end(pipeline, done, not_before=started + seconds)
        rate = (finished - done) / (ended - started)
        stop.set()  # Pipeline.run closes the pipeline: the camera's waiting emit returns
        scoring.join()
        source.join()
        journal.close()
    return rate
