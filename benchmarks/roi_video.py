"""A 1920x1080 MJPEG video through the daemon, whole frames against a 640x480 region of interest (issue 20).

The model is the from-scratch tiled one `inspector train --data --frame-rate` trains for a PIPED
class (model.backbone: none, as every tile plan; a few steps: speed does not depend on the
weights). Every video frame shows one of the class's training photos, resized to 640x480, at the
region's place on a noisy conveyor. The daemon runs the video as fast as it can
(`realtime: false`) with the shipped batching, journaling every verdict; frames/s = frames journaled
/ wall time. Next to it, the frames/s the model alone allows for that many tiles per frame (model
inputs/s measured just before, as `inspector run --check` does), so the ratio shows what decoding,
cropping, tiling, the journal and the metrics cost.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from benchmarks.results import section_header, section_main
from benchmarks.throughput import daemon_fps
from inspector.frame_cost import frame_cost, measure_inputs_per_second, regions_cost
from inspector.image_files import list_images, read_image
from inspector.regions import Region
from inspector.scorer import Scorer

MARK_START, MARK_END = "<!-- roi-video:start -->", "<!-- roi-video:end -->"
FRAME = (1080, 1920)
ROI = Region(x=640, y=300, width=640, height=480)
PIPED_CLASS = "PA_BDP01_TL"


def write_line_video(path: Path, photos: list[Path], frames: int) -> Path:
    """MJPEG 1920x1080: the photos in turn at ROI on a noisy grey background."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (FRAME[1], FRAME[0]))
    parts = [cv2.resize(read_image(p), (ROI.width, ROI.height), interpolation=cv2.INTER_AREA) for p in photos[:8]]
    for index in range(frames):
        frame = rng.integers(90, 140, (*FRAME, 3), dtype=np.uint8)
        part = parts[index % len(parts)]
        frame[ROI.y:ROI.y + ROI.height, ROI.x:ROI.x + ROI.width] = part if part.ndim == 3 else part[:, :, None]
        writer.write(frame)
    writer.release()
    return path


def run(args) -> str:
    from training.cli import default_config, with_frame_plan
    from training.data import data_root
    from training.fit import fit

    data = data_root() / "piped" / PIPED_CLASS
    if not data.is_dir():
        raise SystemExit(f"{data}: not found (set QI_DATA)")
    work = Path(tempfile.mkdtemp(prefix="qi_roi_"))
    config = default_config(str(data), {"train.steps": 2, "selection.criterion": "last"}, tiles=True)
    model = fit(config, work / "run", progress=False, evaluate_test=False).model_path
    planned = with_frame_plan(config, args.frame_rate, f"{FRAME[1]}x{FRAME[0]}",  # prints the plan and its trade
                              f"{ROI.width}x{ROI.height}")
    fast = fit(planned, work / "planned", progress=False, evaluate_test=False).model_path
    video = write_line_video(work / "line_1080p.avi", list_images(data / "train" / "good"), args.frames)
    card = Scorer(model).card
    spec, flops = card.input, card.export.flops_per_item
    rows = []
    plan = (f"roi, the plan for {args.frame_rate:g} frames/s (tile scale {planned.input.tile_scale:g}, overlap "
            f"{planned.input.tile_overlap:g})")
    for label, path, roi in (("whole frame", model, []), ("roi, native tiles", model, [ROI]), (plan, fast, [ROI])):
        scorer = Scorer(path)
        rate = measure_inputs_per_second(scorer, seconds=args.seconds)
        cost = (regions_cost(scorer.card.input, *FRAME, roi, flops) if roi
                else frame_cost(scorer.card.input, *FRAME, flops))
        folder = work / f"daemon_{len(rows)}"
        folder.mkdir()
        fps = daemon_fps(path, folder, video, 32, 2, 1, [r.model_dump() for r in roi])
        rows.append((label, cost, rate / cost.inputs, fps))
        print(label, f"{fps:.2f} frames/s through the daemon, model alone {rate / cost.inputs:.2f}", flush=True)
    lines = section_header(MARK_START, "Regions of interest: 1080p video through the daemon", "benchmarks.roi_video")
    lines += ["", f"Default recipe's model for piped {PIPED_CLASS} ({spec.height} px tiles, overlap "
              f"{spec.tile_overlap:g}, {flops / 1e6:.0f} MFLOPs per tile), and the same recipe with the tile plan "
              f"`inspector train --frame-rate {args.frame_rate:g} --frame-size {FRAME[1]}x{FRAME[0]} --roi "
              f"{ROI.width}x{ROI.height}` chose here (measured through the daemon's pipeline); "
              f"{args.frames} MJPEG frames of 1920x1080, with the region at {ROI.describe()}, "
              "as fast as the daemon takes them (2 workers, 1 onnxruntime thread each, batches of 32), every verdict "
              "journaled. 'Model alone': model inputs/s on batches of 32 (one session, all threads) measured just before / "
              "tiles per frame; two daemon workers with one thread each can beat it.", "",
              "| scored | tiles per frame | GFLOPs per frame | daemon frames/s | model alone frames/s | daemon / model |",
              "|---|---|---|---|---|---|"]
    for label, cost, alone, fps in rows:
        lines.append(f"| {label} | {cost.inputs:,} | {cost.flops / 1e9:.1f} | {fps:.2f} | {alone:.2f} | "
                     f"{fps / alone:.0%} |")
    return "\n".join(lines + ["", MARK_END])


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=60, help="video frames (default 60)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to measure the model alone")
    parser.add_argument("--frame-rate", type=float, default=30.0, help="the rate the planned model is trained for")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
