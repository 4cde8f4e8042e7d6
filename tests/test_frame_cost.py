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
                        r"machine \([\d,]+ model inputs/s measured\)", line), line


def test_the_card_records_a_training_size_frames_cost_and_the_frames_per_second_measured(tiny_tiled_run):
    export = tiny_tiled_run.card.export
    frame = (export.frame_height, export.frame_width)
    spec = tiny_tiled_run.card.input
    assert frame_cost(spec, *frame, export.flops_per_item).inputs == export.inputs_per_frame > 1  # native PIPED frames
    assert export.frames_per_s > 0 and export.measured_on
