"""Memory-bound soak: the shipped defaults under the heaviest inputs, RSS against the stated bound.

    python -m benchmarks.memory_bound --minutes 10     # the reported run
    python -m benchmarks.memory_bound --minutes 1      # a quick check

One `inspector run` process with the shipped defaults (queue.size 256, queue.max_bytes 256 MiB,
2 workers) and the from-scratch tiled model (64 px tiles, half overlap; trained on the demo's
synthetic parts) takes two sources at once: a 3840x2160 camera at 25 frames/s (a looping MJPEG file
paced in real time, drop_oldest as for a live camera) and a folder with 10,000 queued images.
Every 5 s the script records the daemon's RSS from /proc. The bound the README states is
(sources + workers) x queue.max_bytes + 450 MiB for the runtime and model.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import yaml

from benchmarks.drift import train_default
from benchmarks.results import section_header, section_main
from benchmarks.servers import free_port
from inspector.config import QueueSettings
from training.synthetic import normal_texture, write_dataset

MARK_START, MARK_END = "<!-- memory-bound:start -->", "<!-- memory-bound:end -->"
ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
FILES = 10_000
WORKERS = 2


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric_total(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def write_4k_video(path: Path, frames: int = 50) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (3840, 2160))
    rng = np.random.default_rng(0)
    base = cv2.resize(normal_texture(rng, 256), (3840, 2160))
    for k in range(frames):
        writer.write(np.roll(base, k * 7, axis=1))
    writer.release()


def write_files(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    tiles = [cv2.imencode(".png", normal_texture(rng, 128))[1].tobytes() for _ in range(20)]
    for k in range(n):
        (folder / f"part_{k:05d}.png").write_bytes(tiles[k % len(tiles)])


def run(args) -> str:
    budget = QueueSettings().max_bytes
    bound = (2 + WORKERS) * budget / MIB + 450
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = train_default(write_dataset(folder / "parts", size=64), folder / "model")
        video = folder / "line_4k.avi"
        write_4k_video(video)
        write_files(folder / "inbox", FILES)
        port = free_port()
        config = {"model": {"path": str(model), "intra_op_threads": 1},
                  "sources": [{"name": "cam4k", "kind": "camera", "uri": str(video), "realtime": True, "loop": True,
                               "policy": "drop_oldest"},
                              {"name": "inbox", "kind": "folder", "path": str(folder / "inbox")}],
                  "batching": {"workers": WORKERS}, "metrics": {"port": port},
                  "journal": {"path": str(folder / "journal" / "decisions.jsonl")},
                  "evidence": {"dir": str(folder / "evidence")}, "logging": {"status_interval_s": 0}}
        (folder / "line.yaml").write_text(yaml.safe_dump(config))
        daemon = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(folder / "line.yaml")],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(folder / "daemon.log", "w"))
        samples = []
        started = time.time()
        try:
            while time.time() - started < args.minutes * 60:
                time.sleep(5)
                if daemon.poll() is not None:
                    raise RuntimeError("the daemon exited: " + (folder / "daemon.log").read_text()[-2000:])
                samples.append((time.time() - started, rss_mib(daemon.pid)))
                print(f"{samples[-1][0]:5.0f} s  RSS {samples[-1][1]:7.0f} MiB", flush=True)
            scored = metric_total(port, "inspector_items_scored_total")
            rejected = metric_total(port, "inspector_items_rejected_total")
            dropped = metric_total(port, "inspector_items_dropped_total")
            left = len(list((folder / "inbox").glob("*.png")))
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(120)
        reasons = Counter((line["source"], line["reason"]) for line in map(json.loads, open(
            folder / "journal" / "decisions.jsonl")) if line["verdict"] == "rejected")
        example = next((json.loads(line)["error"] for line in open(folder / "journal" / "decisions.jsonl")
                        if '"too_large"' in line), "")
    peak = max(rss for _, rss in samples)
    late = [rss for t, rss in samples if t >= samples[-1][0] / 2]
    out = [*section_header(MARK_START, "Memory bound under the heaviest inputs", "benchmarks.memory_bound"),
           f"One daemon, shipped defaults (queue.max_bytes {budget / MIB:.0f} MiB, {WORKERS} workers), the default "
           "recipe's model (64 px tiles, half overlap): a 3840x2160 camera at 25 frames/s (looping MJPEG, paced, "
           f"drop_oldest) and a folder of {FILES:,} queued 128 px images, for {args.minutes:g} minutes.", "",
           "| stated bound (MiB) | peak RSS (MiB) | RSS over the second half, min - max (MiB) | scored | rejected | "
           "dropped | folder files left | exit code |",
           "|---|---|---|---|---|---|---|---|",
           f"| {bound:.0f} | {peak:.0f} | {min(late):.0f} - {max(late):.0f} | {scored:,.0f} | {rejected:,.0f} | "
           f"{dropped:,.0f} | {left:,} | {code} |", "",
           "Rejections by source and reason: " + (", ".join(f"{s} {r} {n:,}" for (s, r), n in sorted(reasons.items()))
                                                  or "none") + ".", *([f"Example: `{example}`"] if example else []),
           MARK_END]
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0)


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
