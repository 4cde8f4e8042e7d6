"""Regions of interest: only the part's rectangle is scored; the heatmap and evidence stay whole frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.card import ImageInput
from inspector.frame_cost import frame_cost, regions_cost
from inspector.regions import Region
from inspector.scorer import Scorer
from training.flat_parts import FRAME_SHAPE, flat_part, train_flat_model

from .daemon_helpers import DaemonProcess, metric

PART_AT = Region(x=120, y=40, width=FRAME_SHAPE[1], height=FRAME_SHAPE[0])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat_model"))


def line_frame(rng: np.random.Generator, defect_on_part: bool = False, defect_beside: bool = False) -> np.ndarray:
    """A 160x240 camera frame: a checkered conveyor (nothing like a part) with the part at PART_AT."""
    frame = (np.indices((160, 240)).sum(axis=0) // 8 % 2 * 200 + 20).astype(np.uint8)[:, :, None].repeat(3, 2)
    frame[PART_AT.y:PART_AT.y + PART_AT.height, PART_AT.x:PART_AT.x + PART_AT.width] = flat_part(rng, defect_on_part)
    if defect_beside:
        frame[10:20, 10:20] = 10
    return frame


def test_a_frame_is_scored_in_its_region_only_and_its_heatmap_stays_in_frame_pixels(model):
    scorer = Scorer(model)
    rng = np.random.default_rng(3)
    good, bad = line_frame(rng), line_frame(rng, defect_on_part=True)
    whole, in_region, defective = scorer.score_images([good, good, bad], regions=[(), (PART_AT,), (PART_AT,)])
    assert whole.verdict == "anomaly"  # the conveyor is not a part: scored whole, the frame alarms
    assert in_region.verdict == "normal"
    assert defective.verdict == "anomaly"
    assert defective.heatmap.shape == good.shape[:2]
    outside = np.ones(good.shape[:2], bool)
    outside[PART_AT.y:PART_AT.y + PART_AT.height, PART_AT.x:PART_AT.x + PART_AT.width] = False
    assert float(np.abs(defective.heatmap[outside]).max()) == 0.0
    peak = np.unravel_index(np.argmax(defective.heatmap), defective.heatmap.shape)
    assert not outside[peak]


def test_the_worst_region_is_the_frame_score(model):
    scorer = Scorer(model)
    rng = np.random.default_rng(4)
    frame = line_frame(rng)
    second = Region(x=0, y=100, width=FRAME_SHAPE[1], height=FRAME_SHAPE[0])
    frame[second.y:second.y + second.height, second.x:second.x + second.width] = flat_part(rng, defect=True)
    one, both = scorer.score_images([frame, frame], regions=[(PART_AT,), (PART_AT, second)])
    alone = scorer.score_images([frame[second.y:second.y + second.height, second.x:second.x + second.width]])[0]
    assert one.verdict == "normal" and both.verdict == "anomaly"
    assert both.raw == pytest.approx(max(one.raw, alone.raw), rel=1e-5)


def test_a_region_past_the_frame_is_a_rejection_that_says_so(model):
    result = Scorer(model).score_images([np.zeros((100, 100, 3), np.uint8)], regions=[(PART_AT,)])[0]
    assert result.reason == "roi_outside_frame" and "reaches past the 100x100 frame" in result.message


def test_a_region_costs_what_a_frame_of_its_size_costs():
    spec = ImageInput(height=64, width=64, channels=3, color_order="rgb", resize="tile", tile_overlap=0.5,
                      mean=(0.5,) * 3, std=(0.5,) * 3)
    roi = Region(x=640, y=300, width=640, height=480)
    cost = regions_cost(spec, 1080, 1920, (roi,), 29_000_000)
    assert cost.inputs == frame_cost(spec, 480, 640, None).inputs == 19 * 14
    assert cost.inputs * 7 < frame_cost(spec, 1080, 1920, None).inputs
    assert "1920x1080 frames scored in 640x480 at (640, 300)" in cost.describe()


def test_the_daemon_scores_a_folder_source_in_its_region_and_keeps_whole_frames_as_evidence(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(6)
    for index in range(3):
        cv2.imwrite(str(inbox / f"good{index}.png"), line_frame(rng, defect_beside=index == 2))
    cv2.imwrite(str(inbox / "z_defect.png"), line_frame(rng, defect_on_part=True))
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.1, "poll_interval_s": 0.05,
                "roi": [PART_AT.model_dump()]}]
    with DaemonProcess(tmp_path / "daemon", model, sources) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="inbox", verdict="normal")
                        + metric(s, "inspector_items_scored_total", source="inbox", verdict="anomaly") >= 4)
        lines = {line["origin"]: line for line in daemon.journal_lines()}
        assert daemon.terminate() == 0
    assert {name: line["verdict"] for name, line in lines.items()} == {
        "good0.png": "normal", "good1.png": "normal", "good2.png": "normal", "z_defect.png": "anomaly"}
    pictures = sorted(daemon.evidence.glob("*.png"))
    assert len(pictures) == 1
    picture = cv2.imread(str(pictures[0]))
    assert picture.shape[0] > 160 and picture.shape[1] >= 2 * 240  # frame | overlay, both whole 240x160 frames


def test_regions_are_for_frames_and_a_stream_of_rows_refuses_them():
    from pydantic import ValidationError

    from inspector.config_sources import RedisStreamSource

    with pytest.raises(ValidationError, match="roi is for frames"):
        RedisStreamSource.model_validate({"name": "rows", "kind": "redis_stream", "stream": "s",
                                          "roi": [PART_AT.model_dump()]})
    frames = RedisStreamSource.model_validate({"name": "frames", "kind": "redis_stream", "stream": "s",
                                               "payload": "frames", "roi": [PART_AT.model_dump()]})
    assert frames.regions == (PART_AT,)
