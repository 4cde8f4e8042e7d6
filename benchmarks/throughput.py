"""Throughput benchmark: onnxruntime through the scorer vs torch eager on the same weights, and the
daemon end to end on a video file; writes a table to RESULTS.md.

    python -m benchmarks.throughput                  # about 10 minutes on 2 cores
    python -m benchmarks.throughput --quick          # fewer repetitions

All figures of one table come from one run on one machine, so compare them as ratios (ONNX vs
torch, daemon vs raw scorer); the machine is shared and absolute numbers move with its load.
FLOPs per frame are given on every row: at ~200 GFLOP/s (a float32 matmul on these 2 cores) a
model of F FLOPs can never exceed 200e9 / F frames/s.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.results import write_section
from inspector.card import ImageInput
from inspector.config import parse_daemon_config
from inspector.daemon import Daemon
from inspector.scorer import Scorer
from training.export import export_with_parity, timing_card
from training.flops import count_flops
from training.models.ganomaly import GANomaly, GANomalyScoring, GANomalyShape

ROOT = Path(__file__).resolve().parents[1]

MARK_START, MARK_END = "<!-- throughput:start -->", "<!-- throughput:end -->"


def build_model(folder: Path, size: int, width: int, channels: int = 3) -> tuple[Path, torch.nn.Module, int]:
    """An exported GANomaly scoring graph of the given input size and width (weights: DCGAN init;
    speed does not depend on training)."""
    torch.manual_seed(0)
    scoring = GANomalyScoring(GANomaly(GANomalyShape(size, size, channels, width, 100)), pool_kernel=9,
                              residual="l2", with_latent=False).eval()
    spec = ImageInput(height=size, width=size, channels=channels, color_order="rgb" if channels == 3 else "gray",
                      mean=(0.5,) * channels, std=(0.5,) * channels, frame_level=0.5)  # exposure standardised
    card = timing_card(f"bench{size}w{width}", "ganomaly", spec, {"residual_max": 1.0}, "anomaly_map")
    example = np.random.default_rng(0).uniform(-1, 1, (4, channels, size, size)).astype(np.float32)
    flops = count_flops(scoring, torch.from_numpy(example))
    path = folder / f"bench_{size}_w{width}.onnx"
    export_with_parity(scoring, card, example, path, opset=17, tolerance=1e-3, flops=flops)
    return path, scoring, flops


def timed(fn, batch: np.ndarray, seconds: float) -> tuple[float, float, float]:
    """(items/s, p50 latency ms, p99 latency ms) of repeated calls on one batch."""
    for _ in range(3):
        fn(batch)
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < 20:
        t0 = time.perf_counter()
        fn(batch)
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return len(latencies) * len(batch) / total, 1000 * np.percentile(latencies, 50), 1000 * np.percentile(latencies, 99)


DAEMON_REPEATS = 3
# (workers, intra-op threads per run): the recommended setting on 2 cores first, then the single
# scoring thread with both cores inside onnxruntime.
DAEMON_SETTINGS = [(2, 1), (1, 2)]
CODECS = {"MJPG": "Motion JPEG, as USB and many IP cameras send", "FFV1": "FFV1, lossless"}


def write_video(folder: Path, size: int, frames: int, codec: str, fps: float = 25.0) -> Path:
    """Random-noise frames: the costliest content for any codec to decode (a worst case)."""
    video = folder / f"video_{size}_{codec}_{fps:g}fps.avi"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*codec), fps, (size, size))
    pool = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(16)]
    for i in range(frames):
        writer.write(pool[i % len(pool)])
    writer.release()
    return video


def decode_fps(video: Path) -> float:
    """Frames/s of reading the video with nothing else running: the ceiling of a daemon with one such source."""
    capture = cv2.VideoCapture(str(video))
    started, frames = time.perf_counter(), 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames / (time.perf_counter() - started)


def daemon_fps(model: Path, folder: Path, video: Path, max_batch: int, workers: int, intra_threads: int,
               roi: list[dict] | None = None) -> float:
    """Frames/s of the whole daemon (decode, preprocess, score, journal, metrics) on a video file
    (scored in the regions `roi`, when given)."""
    config = parse_daemon_config({
        "model": {"path": str(model), "intra_op_threads": intra_threads},
        "sources": [{"name": "bench", "kind": "camera", "uri": str(video), "realtime": False, "roi": roi or []}],
        "batching": {"max_batch": max_batch, "max_wait_ms": 5, "workers": workers}, "metrics": {"port": 0},
        "journal": {"path": str(folder / "journal.jsonl")}, "evidence": {"dir": None},
        "logging": {"status_interval_s": 0}}, "bench")
    daemon = Daemon(config, exit_when_done=True)
    started = time.perf_counter()
    thread = threading.Thread(target=daemon.run)
    thread.start()
    thread.join()
    elapsed = time.perf_counter() - started
    return daemon.pipeline.items_done / elapsed


def daemon_vs_raw(model: Path, scorer: Scorer, folder: Path, video: Path, workers: int, intra_threads: int,
                  seconds: float) -> tuple[float, float, float]:
    """Median daemon frames/s, median raw frames/s of `scorer` (batch 32, measured just before each
    daemon run) and the median of their per-run ratio: the machine's load moves both, the ratio less."""
    size = scorer.card.input.height
    batch = np.random.default_rng(1).uniform(-1, 1, (32, 3, size, size)).astype(np.float32)
    daemon, raw = [], []
    for _ in range(DAEMON_REPEATS):
        raw.append(timed(lambda b: scorer.score_tensor(b), batch, seconds)[0])
        daemon.append(daemon_fps(model, folder, video, 32, workers, intra_threads))
    ratios = [d / r for d, r in zip(daemon, raw)]
    return float(np.median(daemon)), float(np.median(raw)), float(np.median(ratios))


def run(args) -> str:
    torch.set_num_threads(args.threads)
    rows, knob_rows, daemon_rows = [], [], []
    seconds = 1.0 if args.quick else 3.0
    frames = 600 if args.quick else 3000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size, width in [(64, 16), (128, 16), (128, 8), (256, 8)]:
            model_path, module, flops = build_model(folder, size, width)
            scorer = Scorer(model_path, intra_op_threads=args.threads)
            for batch_size in (1, 8, 32):
                batch = np.random.default_rng(1).uniform(-1, 1, (batch_size, 3, size, size)).astype(np.float32)
                ort = timed(lambda b: scorer.score_tensor(b), batch, seconds)
                with torch.no_grad():
                    tch = timed(lambda b: module(torch.from_numpy(b)), batch, seconds)
                rows.append((size, width, flops, batch_size, ort, tch))
                print(f"{size}px w{width} b{batch_size}: onnx {ort[0]:.0f}/s torch {tch[0]:.0f}/s", flush=True)
            # The daemon on every model with the recommended setting; every setting and codec on the
            # 128 px width-8 model (the one the 1,000 frames/s goal is about).
            detailed = (size, width) == (128, 8)
            for codec in CODECS if detailed else ["MJPG"]:
                video = write_video(folder, size, frames, codec)
                decode = float(np.median([decode_fps(video) for _ in range(DAEMON_REPEATS)]))
                for workers, intra in DAEMON_SETTINGS if detailed else DAEMON_SETTINGS[:1]:
                    e2e, raw, ratio = daemon_vs_raw(model_path, scorer, folder, video, workers, intra, seconds)
                    daemon_rows.append((size, width, codec, workers, intra, e2e, raw, ratio, decode))
                    print(f"{size}px w{width} daemon {codec} {workers}x{intra}: {e2e:.0f}/s "
                          f"({ratio:.0%} of raw b32 {raw:.0f}/s; decoding alone {decode:.0f}/s)", flush=True)
        # What each runtime knob changes, on the 128 px width-8 model at batch 32.
        model_path, _, flops = build_model(folder, 128, 8)
        batch = np.random.default_rng(1).uniform(-1, 1, (32, 3, 128, 128)).astype(np.float32)
        for label, kwargs in [("optimisation all, 2 threads", {"intra_op_threads": 2}),
                              ("optimisation disabled, 2 threads", {"intra_op_threads": 2, "optimization": "disable"}),
                              ("optimisation basic, 2 threads", {"intra_op_threads": 2, "optimization": "basic"}),
                              ("optimisation all, 1 thread", {"intra_op_threads": 1})]:
            knob_scorer = Scorer(model_path, **kwargs)
            knob_rows.append((label, timed(lambda b: knob_scorer.score_tensor(b), batch, seconds)))
    return table(rows, knob_rows, daemon_rows, args)


def table(rows, knob_rows, daemon_rows, args) -> str:
    command = "python -m benchmarks.throughput " + " ".join(sys.argv[1:])
    lines = [MARK_START, "## Throughput (images)", "", f"Command: `{command.strip()}`  ",
             f"Machine: {platform.node()}, {args.threads} threads for both runtimes, torch {torch.__version__}, "
             f"run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.  ",
             "Model: the exported GANomaly scoring graph (encoder -> decoder -> residual map -> local mean -> max; "
             "no second encoder, as the default residual_max score does not use it). Inputs are preprocessed "
             "tensors.", "",
             "| input | width | MFLOPs/frame | batch | (a) ONNX Runtime frames/s | p50 ms | p99 ms | (b) torch eager frames/s "
             "| p50 ms | p99 ms | ONNX / torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, width, flops, batch, ort, tch in rows:
        lines.append(f"| {size}x{size} | {width} | {flops / 1e6:.0f} | {batch} | {ort[0]:.0f} | {ort[1]:.2f} | {ort[2]:.2f} "
                     f"| {tch[0]:.0f} | {tch[1]:.2f} | {tch[2]:.2f} | {ort[0] / tch[0]:.2f}x |")
    lines += ["", "(c) The daemon end to end: a video file (random-noise frames, the costliest content to decode) "
              "with `realtime: false`, max batch 32; every frame decoded, preprocessed (brought to the card's exposure "
              "level, as the default recipe's cards ask), scored, journaled and "
              "counted in the metrics (evidence off). Each setting ran "
              f"{DAEMON_REPEATS} times, each time right after a raw measurement of (a) at batch 32 with "
              f"{args.threads} threads; the figures are medians, the share is the median of the per-run ratios. "
              "Decoding alone: reading the same file with `cv2.VideoCapture` and nothing else running (its FFmpeg "
              "decoder may use both cores): the ceiling of a daemon with one such source.", "",
              "| input | width | video codec | workers x intra-op threads | daemon frames/s | raw scorer b32 frames/s "
              "| daemon / raw | decoding alone frames/s |", "|---|---|---|---|---|---|---|---|"]
    for size, width, codec, workers, intra, e2e, raw, ratio, decode in daemon_rows:
        lines.append(f"| {size}x{size} | {width} | {codec} ({CODECS[codec]}) | {workers} x {intra} | {e2e:.0f} "
                     f"| {raw:.0f} | {ratio:.0%} | {decode:.0f} |")
    lines += ["", "Runtime knobs (128x128, width 8, batch 32, ONNX Runtime):", "",
              "| setting | frames/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for label, (fps, p50, p99) in knob_rows:
        lines.append(f"| {label} | {fps:.0f} | {p50:.2f} | {p99:.2f} |")
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["images", "traffic"], help="run one part")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    if args.only != "images":
        from benchmarks.throughput_traffic import TRAFFIC_END, TRAFFIC_START, run_traffic

        traffic = run_traffic(args)
        write_section(args.out, traffic, TRAFFIC_START, TRAFFIC_END)
        print(traffic)
        if args.only == "traffic":
            return 0
    section = run(args)
    write_section(args.out, section, MARK_START, MARK_END)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
