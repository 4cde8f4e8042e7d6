"""The README's first command: synthetic parts -> train -> calibrate -> export -> evaluate -> stream.

Everything it needs is generated on the spot (no downloads), sized to finish in a few minutes on
two cores, and left in the output folder for the user to open: the data set, the run folder with
model.onnx and its report, a video of the line, the daemon's journal and evidence images.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from inspector.config import parse_daemon_config
from inspector.daemon import Daemon

from .config import validate_train_config
from .fit import fit
from .synthetic import DEFECT_KINDS, add_defect, normal_texture, write_dataset

DEMO_SIZE = 64
VIDEO_FRAMES = 1500  # enough for the drift gauge's 500-part baseline and readings after it
VIDEO_FPS = 100.0
DEFECT_SHARE = 0.05


def demo_config(data: Path, steps: int) -> dict:
    return {
        "name": "demo", "data": {"path": str(data)},
        "input": {"height": DEMO_SIZE, "width": DEMO_SIZE, "channels": 3, "color_order": "rgb"},
        "model": {"base_width": 8, "latent_dim": 64},
        "train": {"steps": steps, "max_blocks": 1, "batch_size": 16, "augment": {"hflip": True, "vflip": True, "rot90": True}},
        "score": {"weights": {"residual_max": 1.0}, "pool_kernel": 5},
        # the held-out threshold: five fold models would make a one-minute demo a seven-minute one
        "calibration": {"folds": 0},
    }


def write_line_video(path: Path, seed: int = 11) -> list[int]:
    """A video of parts passing the camera, ~5% defective; returns the 1-based defective frame numbers."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), VIDEO_FPS, (DEMO_SIZE, DEMO_SIZE))
    truth = []
    for index in range(1, VIDEO_FRAMES + 1):
        frame = normal_texture(rng, DEMO_SIZE)
        if rng.random() < DEFECT_SHARE:
            frame, _ = add_defect(rng, frame, DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))])
            truth.append(index)
        writer.write(frame)
    writer.release()
    return truth


def _port(preferred: int = 9108) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def stream_through_daemon(model: Path, out: Path) -> int:
    video = out / "line.avi"
    truth = write_line_video(video)
    port = _port()
    config = parse_daemon_config({
        "model": {"path": str(model)},
        "sources": [{"name": "line1", "kind": "camera", "uri": str(video), "realtime": True}],
        "metrics": {"port": port}, "journal": {"path": str(out / "journal" / "decisions.jsonl")},
        "evidence": {"dir": str(out / "evidence")}, "logging": {"status_interval_s": 0},
    }, "demo", check_files=True)
    for stale in (out / "journal" / "decisions.jsonl", *(out / "evidence").glob("*.png")):
        stale.unlink(missing_ok=True)
    logging.getLogger("inspector").setLevel(logging.WARNING)
    daemon = Daemon(config, exit_when_done=True)
    print(f"[4/4] streaming {VIDEO_FRAMES} frames of {video.name} ({len(truth)} defective) through the inspector; "
          f"metrics on http://127.0.0.1:{port}/metrics")
    runner = threading.Thread(target=daemon.run, name="demo-daemon")
    started = time.perf_counter()
    runner.start()
    while runner.is_alive():
        runner.join(0.5)
        totals = daemon.metrics.totals
        elapsed = time.perf_counter() - started
        print(f"\r      {totals['scored']:4d} frames  {totals['scored'] / elapsed:6.1f} fps  "
              f"{totals['anomalies']:3d} anomalies  p99 latency {daemon.metrics.latency_p99() * 1000:6.1f} ms",
              end="", flush=True)
    elapsed = time.perf_counter() - started
    print()
    lines = [json.loads(line) for line in (out / "journal" / "decisions.jsonl").read_text().splitlines()]
    flagged = {int(line["origin"].split()[-1]) for line in lines if line["verdict"] == "anomaly"}
    caught, missed = len(flagged & set(truth)), len(set(truth) - flagged)
    false_alarms = len(flagged - set(truth))
    print(f"      summary: {len(lines)} frames in {elapsed:.1f} s ({len(lines) / elapsed:.0f} fps, paced at the "
          f"video's {VIDEO_FPS:.0f} fps); defects caught {caught}/{len(truth)}, missed {missed}; "
          f"false alarms {false_alarms}/{len(lines) - len(truth)}")
    drift = daemon.metrics.drift_reading("line1")
    if drift is not None:
        state = "stable" if drift < 0.1 else "shifting" if drift < 0.25 else "drifted"
        print(f"      score drift (PSI of the last 500 normal parts against the first 500): {drift:.3f}, {state} "
              "(below 0.1 is stable; the InspectorScoreDrift alert fires above 0.25)")
    print(f"      journal: {out / 'journal' / 'decisions.jsonl'}   evidence: {out / 'evidence'} "
          f"({len(list((out / 'evidence').glob('*.png')))} images)")
    return 0


def run_demo(out: Path, steps: int) -> int:
    started = time.perf_counter()
    out = Path(out)
    data = write_dataset(out / "data", size=DEMO_SIZE)
    print(f"[1/4] generated synthetic parts in {data} (train/good: normal only; test/: good, speck, scratch, stain)")
    config = validate_train_config(demo_config(data, steps), "demo")
    print(f"[2/4] training GANomaly for {steps} steps on normal parts only, then calibrating and exporting ...")
    result = fit(config, out / "run")
    card, metrics = result.card, result.metrics or {}
    print(f"[3/4] model: {result.model_path}  threshold {card.calibration.threshold:.3g} "
          f"(at most {card.calibration.target_false_alarm_rate:.0%} false alarms with "
          f"{card.calibration.confidence:.0%} confidence, from {card.calibration.n_samples} held-out normal parts), "
          f"torch/onnx max diff {card.export.parity_max_abs_diff:.1e}")
    print(f"      test: image AUROC {metrics.get('image_auroc', float('nan')):.3f}, pixel AUROC "
          f"{metrics.get('pixel_auroc', float('nan')):.3f}, recall {metrics.get('recall', 0):.2f}, "
          f"false-alarm rate {metrics.get('false_alarm_rate', 0):.2f}")
    print(f"      report: {out / 'run' / 'report'} (roc.png, score_histogram.png, examples.png)")
    stream_through_daemon(result.model_path, out)
    print("      next: inspector run -c configs/line1.yaml   (the same line as a daemon, see README)")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
