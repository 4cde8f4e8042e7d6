"""What a frame costs at the line's resolution, said before deployment (`inspector run --check`)."""

from __future__ import annotations

import re
import subprocess
import sys

from inspector.card import ImageInput
from inspector.frame_cost import frame_cost
from training.flat_parts import write_video


def test_a_1080p_frame_in_64_px_tiles_at_half_overlap_is_1947_model_runs():
    spec = ImageInput(height=64, width=64, channels=3, color_order="rgb", resize="tile", tile_overlap=0.5)
    cost = frame_cost(spec, 1080, 1920, flops_per_input=29_000_000)
    assert (cost.inputs, cost.flops) == (1947, 1947 * 29_000_000)
    assert cost.describe(2200.0) == ("1920x1080 frames: 1,947 tiles per frame, 56.46 GFLOPs; about 1.1 frames/s on "
                                     "this machine (2,200 model inputs/s measured)")


def test_a_resized_model_runs_once_per_frame_whatever_its_size():
    spec = ImageInput(height=128, width=128, channels=1, color_order="gray", resize="stretch")
    assert frame_cost(spec, 1080, 1920, flops_per_input=None).describe() == "1920x1080 frames: 1 model input per frame"


def test_check_states_each_cameras_frame_cost_and_the_frames_per_second_to_expect(tiny_tiled_run, tmp_path):
    video = tmp_path / "line.avi"
    write_video(video, 3)  # 64x48 frames
    config = tmp_path / "line.yaml"
    config.write_text(f"model: {{path: {tiny_tiled_run.model_path}}}\n"
                      f"sources:\n  - {{name: gate, kind: camera, uri: {video}}}\nmetrics: {{port: 0}}\n")
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "run", "-c", str(config), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[1]
    assert re.fullmatch(r"gate: 64x48 frames: 6 tiles per frame, [\d.]+ GFLOPs; about [\d,.]+ frames/s on this "
                        r"machine \([\d,]+ model inputs/s measured\); through the daemon's pipeline here [\d,.]+ "
                        r"frames/s \(64x48 JPEG frames decoded, 1 worker\(s\), journaled\)", line), line


def test_check_warns_about_each_region_of_other_proportions_than_the_training_photos(tiny_piped_run, tmp_path):
    """tiny_piped_run stretches square 128x128 photos: a square region passes, a 3:1 strip is warned about."""
    video = tmp_path / "line.avi"
    write_video(video, 3)  # 64x48 frames
    config = tmp_path / "line.yaml"
    config.write_text(f"model: {{path: {tiny_piped_run.model_path}}}\n"
                      f"sources:\n  - {{name: gate, kind: camera, uri: {video}, roi: [{{x: 0, y: 0, width: 40, "
                      f"height: 40}}, {{x: 0, y: 10, width: 60, height: 20}}]}}\nmetrics: {{port: 0}}\n")
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "run", "-c", str(config), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("gate (region 60x20 at (0, 10)): warning: 60x20 frames are "
                                                         "3.00x wider in proportion than the 128x128 training photos")
    assert "(the centred one: roi: [{x: 20, y: 10, width: 20, height: 20}])" in warnings[0]  # inside the region


def test_the_card_records_a_training_size_frames_cost_and_the_frames_per_second_measured(tiny_tiled_run):
    export = tiny_tiled_run.card.export
    frame = (export.frame_height, export.frame_width)
    spec = tiny_tiled_run.card.input
    assert frame_cost(spec, *frame, export.flops_per_item).inputs == export.inputs_per_frame > 1  # native PIPED frames
    assert export.frames_per_s > 0 and export.measured_on


def whole_frame_card(card, resize: str, photo: tuple[int, int] | None):
    """`card` as a whole-frame model's trained on photos of (height, width) `photo` (None: not recorded)."""
    spec = card.input.model_copy(update={"resize": resize, "height": 96, "width": 128})
    height, width = photo or (None, None)
    return card.with_updates(input=spec, export=card.export.model_copy(update={"photo_height": height,
                                                                               "photo_width": width}))


def test_a_camera_of_other_proportions_than_the_training_photos_is_warned_about_for_whole_frame_models(
        tiny_piped_run, tiny_tiled_run):
    from inspector.frame_cost import proportion_warning

    stretched = whole_frame_card(tiny_piped_run.card, "stretch", (480, 640))  # 4:3 photos
    assert proportion_warning(stretched, 1080, 1920) == (
        "1920x1080 frames are 1.33x wider in proportion than the 640x480 training photos: each is stretched to the "
        "model's 128x96 input, so parts look 1.33x narrower to the model than in training; set a region of "
        "interest of the photos' proportions around the part (the centred one: roi: [{x: 240, y: 0, width: 1440, "
        "height: 1080}]), or train on this camera's frames")
    square = proportion_warning(stretched, 1080, 1080)  # a square view of 4:3 parts
    assert "parts look 1.33x wider" in square and "roi: [{x: 0, y: 135, width: 1080, height: 810}]" in square
    assert "roi: [{x: 10, y: 145, width: 1080, height: 810}]" in proportion_warning(stretched, 1080, 1080, (10, 10))
    assert proportion_warning(stretched, 720, 960) is None  # the photos' proportions at another resolution
    assert proportion_warning(stretched, 1000, 1400) is None  # within 10%
    cropped = whole_frame_card(tiny_piped_run.card, "center_crop", (480, 640))
    assert proportion_warning(cropped, 1080, 1920) is None  # a centre crop keeps the parts' proportions
    assert proportion_warning(tiny_tiled_run.card, 1080, 1920) is None  # so do tiles
    assert proportion_warning(whole_frame_card(tiny_piped_run.card, "stretch", None), 1080, 1920) is None  # unknown


# Tile plans: a frame scaled before tiling, and the plan chosen for a line's frame rate

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from inspector.errors import ConfigError  # noqa: E402
from inspector.preprocess import prepare_image, stitch_tiles  # noqa: E402
from training.frame_plan import PLANS, choose_plan  # noqa: E402


def tiled(scale: float = 1.0, overlap: float = 0.5) -> ImageInput:
    return ImageInput(height=64, width=64, channels=3, color_order="rgb", resize="tile", tile_overlap=overlap,
                      tile_scale=scale)


def test_a_half_scale_plan_tiles_the_frame_shrunk_and_gives_the_heatmap_back_at_full_size():
    frame = np.random.default_rng(0).integers(0, 255, (128, 256, 3), dtype=np.uint8)
    tiles, layout = prepare_image(frame, tiled(0.5))
    assert len(tiles) == frame_cost(tiled(0.5), 128, 256, None).inputs == frame_cost(tiled(), 64, 128, None).inputs
    assert (layout.frame_height, layout.frame_width) == (64, 128)
    heatmap = stitch_tiles(np.ones((len(tiles), 64, 64), np.float32), layout)
    assert heatmap.shape == (128, 256)


def test_the_plan_for_a_line_is_the_most_detailed_one_that_meets_its_frame_rate():
    measured = []

    def model_alone(plan):  # a stand-in meter: 1,000 tiles/s and nothing else
        measured.append((plan.tile_scale, plan.tile_overlap))
        return 1000 / frame_cost(plan, 480, 640, None).inputs

    plan = choose_plan(tiled(), 480, 640, 30, model_alone)
    assert plan.meets_target and plan.frames_per_s >= 30
    more_detailed = PLANS[:PLANS.index((plan.tile_scale, plan.tile_overlap))]
    assert more_detailed and measured == [*more_detailed, (plan.tile_scale, plan.tile_overlap)]  # tried in order
    assert all(frame_cost(tiled(s, o), 480, 640, None).inputs > 1000 / 30 for s, o in more_detailed)
    said = plan.describe(480, 640, 30, (1080, 1920))
    assert said.startswith("frame plan for 640x480 regions of 1920x1080 frames at 30 frames/s") and "traded" in said
    native = choose_plan(tiled(), 480, 640, 1, model_alone)
    assert (native.tile_scale, native.tile_overlap) == PLANS[0] and "traded" not in native.describe(480, 640, 1)
    short = choose_plan(tiled(), 1080, 1920, 1000, lambda plan: 1.0)
    assert not short.meets_target and "region of interest" in short.describe(1080, 1920, 1000)


def test_the_line_rate_is_measured_through_the_daemons_pipeline_with_its_regions(tiny_tiled_run):
    from inspector.line_rate import line_frames_per_second
    from training.frame_plan import centred_region

    region = centred_region((240, 320), (96, 128))
    assert region[0].model_dump() == {"x": 96, "y": 72, "width": 128, "height": 96} and not centred_region((240, 320), None)
    whole = line_frames_per_second(tiny_tiled_run.model_path, 240, 320, seconds=0.5)
    cropped = line_frames_per_second(tiny_tiled_run.model_path, 240, 320, region, seconds=0.5)
    assert whole > 0 and cropped > 0  # frames decoded, scored and journaled (speed goals live in the benchmarks)


def test_frame_rate_options_refuse_what_cannot_work_in_one_sentence(tmp_path):
    from training.cli import frame_size, with_frame_plan
    from training.config import validate_train_config

    stretch = validate_train_config({"data": {"path": str(tmp_path)}, "input": {"resize": "stretch"}}, "test")
    with pytest.raises(ConfigError, match="chooses a tile plan"):
        with_frame_plan(stretch, 30, "640x480")
    with pytest.raises(ConfigError, match="expected WIDTHxHEIGHT"):
        frame_size("640 by 480", stretch)
    assert frame_size("640x480", stretch) == (480, 640)
    tiles = validate_train_config({"data": {"path": str(tmp_path)}}, "test")
    with pytest.raises(ConfigError, match="larger than the 640x480 frame"):
        with_frame_plan(tiles, 30, "640x480", "800x600")


def test_plans_are_timed_with_the_exposure_step_that_trained_cards_carry(piped_class, tmp_path):
    from inspector.scorer import Scorer
    from training.config import validate_train_config
    from training.frame_plan import pipeline_rate_meter

    from .conftest import tiny_config

    for standardise in (True, False):
        config = validate_train_config(tiny_config(piped_class, **{
            "input.resize": "tile", "input.standardise_frames": standardise}), "tiny")
        folder = tmp_path / str(standardise)
        folder.mkdir()
        assert pipeline_rate_meter(config, folder, (96, 128))(config.input.to_spec()) > 0
        (plan,) = folder.glob("plan_*.onnx")
        assert (Scorer(plan).card.input.frame_level is not None) == standardise


def test_the_speed_is_measured_in_runs_the_daemon_would_make_so_large_frames_do_not_exhaust_memory(piped_class, tmp_path):
    from inspector.frame_cost import measure_inputs_per_second
    from inspector.scorer import Scorer, inputs_per_run
    from training.config import validate_train_config
    from training.fit import fit

    from .conftest import tiny_config

    config = validate_train_config(tiny_config(piped_class, **{"input.height": 256, "input.width": 256}), "tiny")
    scorer = Scorer(fit(config, tmp_path / "run", progress=False, evaluate_test=False).model_path)
    runs = []
    score_tensor = scorer.score_tensor
    scorer.score_tensor = lambda batch: runs.append(len(batch)) or score_tensor(batch)  # what each run is given
    assert measure_inputs_per_second(scorer, batch=32, seconds=0.1) > 0
    assert inputs_per_run((3, 256, 256), 32) == 4 and set(runs) == {4}  # 32 frames of 256 px: 8 runs of 4, as scored
