"""Line outputs benchmark: capture-to-delivery latency of MQTT verdicts at real-time frame rates, and
what an MQTT output costs the daemon's throughput when its broker is up, and when it is dead.

    python -m benchmarks.line_outputs            # about 2 minutes on 2 cores; needs Debian's mosquitto
    python -m benchmarks.line_outputs --quick

Latency: a video paced at its frame rate (`realtime: true`, 128 x 128 frames, the throughput table's
model) streams through `inspector run` in its own process; a paho subscriber on loopback stamps each
verdict on arrival, and latency = arrival - captured_at (the source's wall clock when it read the
frame): decode, preprocess, score, journal, then MQTT through Mosquitto to the subscriber.
Throughput: the same video read as fast as possible by an in-process daemon, with no output, with
MQTT to a live broker and with MQTT to a port where nothing listens; runs alternate, medians reported.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from benchmarks.results import section_header, section_main
from benchmarks.servers import free_port, start_mosquitto
from benchmarks.throughput import build_model
from inspector.config import parse_daemon_config
from inspector.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- line-outputs:start -->", "<!-- line-outputs:end -->"
SIZE = 128


def write_video(path: Path, frames: int, fps: float) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (SIZE, SIZE))
    pool = [np.clip(128 + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(16)]
    for i in range(frames):
        writer.write(pool[i % len(pool)])
    writer.release()
    return path


def latency_run(model: Path, folder: Path, port: int, fps: float, frames: int) -> np.ndarray:
    import paho.mqtt.client as mqtt

    video = write_video(folder / f"paced_{fps:g}.avi", frames, fps)
    arrivals: list[tuple[float, float]] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{fps:g}")
    subscriber.on_message = lambda c, u, m: arrivals.append((time.time(), json.loads(m.payload)["captured_at"]))
    subscriber.connect("127.0.0.1", port)
    subscriber.subscribe("qinspector/+/+/verdict", qos=1)
    subscriber.loop_start()
    config = {"model": {"path": str(model), "intra_op_threads": 1},
              "sources": [{"name": "cam0", "kind": "camera", "uri": str(video), "realtime": True}],
              "batching": {"max_batch": 8, "max_wait_ms": 2, "workers": 2}, "metrics": {"port": free_port()},
              "journal": {"path": str(folder / f"journal_{fps:g}.jsonl")}, "evidence": {"dir": None},
              "logging": {"status_interval_s": 0}, "outputs": {"mqtt": {"port": port, "line": "bench"}}}
    path = folder / f"paced_{fps:g}.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(path), "--exit-when-done"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + frames / fps + 60
    while len(arrivals) < frames and time.time() < deadline:
        time.sleep(0.05)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)
    subscriber.loop_stop()
    subscriber.disconnect()
    if len(arrivals) < frames:
        raise RuntimeError(f"only {len(arrivals)} of {frames} verdicts arrived at {fps:g} frames/s")
    skip = int(fps)  # the first second: the process and its sessions warming up
    return np.array([arrival - captured for arrival, captured in arrivals[skip:]])


def throughput_run(model: Path, folder: Path, video: Path, frames: int, outputs: dict) -> float:
    """Frames/s from the first decided frame to the last (start-up and shutdown left out: they are fixed
    costs of the process, and the shutdown waits on polling intervals)."""
    config = parse_daemon_config({
        "model": {"path": str(model), "intra_op_threads": 1},
        "sources": [{"name": "cam0", "kind": "camera", "uri": str(video), "realtime": False}],
        "batching": {"max_batch": 32, "max_wait_ms": 5, "workers": 2}, "metrics": {"port": 0},
        "journal": {"path": str(folder / "journal_fast.jsonl")}, "evidence": {"dir": None},
        "logging": {"status_interval_s": 0}, "outputs": outputs}, "bench")
    daemon = Daemon(config, exit_when_done=True)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    while daemon.pipeline.items_done == 0 and thread.is_alive():
        time.sleep(0.001)
    started, first = time.perf_counter(), daemon.pipeline.items_done
    while daemon.pipeline.items_done < frames and thread.is_alive():
        time.sleep(0.001)
    rate = (daemon.pipeline.items_done - first) / (time.perf_counter() - started)
    thread.join()
    return rate


def run(args) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, _, flops = build_model(folder, SIZE, 8)
        broker, port = start_mosquitto(folder)
        try:
            latencies = {}
            for fps in (25.0, 100.0):
                frames = int(fps * (6 if args.quick else 20))
                latencies[fps] = latency_run(model, folder, port, fps, frames)
                print(f"{fps:g} frames/s: p50 {np.percentile(latencies[fps], 50) * 1000:.1f} ms, "
                      f"p99 {np.percentile(latencies[fps], 99) * 1000:.1f} ms", flush=True)
            fast_frames = 2000 if args.quick else 6000
            video = write_video(folder / "fast.avi", fast_frames, 25.0)
            settings = {"none": {}, "live broker": {"mqtt": {"port": port, "line": "fast"}},
                        "dead broker": {"mqtt": {"port": free_port(), "line": "dead", "drain_timeout_s": 0}}}
            rates: dict[str, list[float]] = {name: [] for name in settings}
            for _ in range(args.repeats):
                for name, outputs in settings.items():
                    rates[name].append(throughput_run(model, folder, video, fast_frames, outputs))
                    print(f"{name}: {rates[name][-1]:.0f} frames/s", flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    out = [*section_header(MARK_START, "Line outputs (MQTT)", "benchmarks.line_outputs"),
           f"Model: the throughput table's {SIZE} x {SIZE} GANomaly, width 8 ({flops / 1e6:.0f} MFLOPs/frame); "
           "Mosquitto 2 on loopback, QoS 1; daemon with 2 scoring workers, 1 intra-op thread each.", "",
           "Capture to delivery: a paced MJPEG video through `inspector run` in its own process, a subscriber "
           "stamping each verdict on arrival (the first second left out: start-up).", "",
           "| frames/s (real time) | verdicts | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for fps, values in latencies.items():
        ms = values * 1000
        out.append(f"| {fps:g} | {len(values)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | "
                   f"{ms.max():.1f} |")
    out += ["", f"Scoring as fast as the video decodes ({args.repeats} alternating runs each, median): an MQTT output "
            "whose broker is dead only fills its bounded outbox.", "",
            "| MQTT output | frames/s (median) | range | vs no output |", "|---|---|---|---|"]
    base = float(np.median(rates["none"]))
    for name, values in rates.items():
        median = float(np.median(values))
        out.append(f"| {name} | {median:,.0f} | {min(values):,.0f} – {max(values):,.0f} | {median / base:.2f} |")
    out.append(MARK_END)
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
