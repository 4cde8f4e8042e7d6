"""Capture-to-journal latency of the daemon at a real-time frame rate (issue 20, latency goal).

A 128 px Motion-JPEG video is played through a camera source with `realtime: true` (frames paced at
the file's frame rate, as a camera delivers them) at 25 and 100 frames/s; each frame's latency is its
journal line's time (taken as its batch is written) minus its capture time. Throughput hides this:
a daemon can keep up on average and still make one part wait for a batch to fill.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson

from benchmarks.results import section_header, section_main
from benchmarks.throughput import build_model, write_video
from inspector.config import parse_daemon_config
from inspector.daemon import Daemon

MARK_START, MARK_END = "<!-- latency:start -->", "<!-- latency:end -->"
RATES = (25.0, 100.0)
SIZE = 128


def latencies_ms(model: Path, video: Path, folder: Path, max_wait_ms: float) -> np.ndarray:
    journal = folder / "journal.jsonl"
    journal.unlink(missing_ok=True)
    config = parse_daemon_config({
        "model": {"path": str(model), "intra_op_threads": 1},
        "sources": [{"name": "cam", "kind": "camera", "uri": str(video), "realtime": True}],
        "batching": {"max_batch": 32, "max_wait_ms": max_wait_ms, "workers": 2}, "metrics": {"port": 0},
        "journal": {"path": str(journal)}, "evidence": {"dir": None}, "logging": {"status_interval_s": 0}}, "bench")
    daemon = Daemon(config, exit_when_done=True)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    thread.join()
    lines = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    return np.array([(datetime.fromisoformat(line["time"]).timestamp() - line["captured_at"]) * 1000 for line in lines])


def run(args) -> str:
    folder = Path(tempfile.mkdtemp(prefix="qi_latency_"))
    rows = []
    for width in args.widths:
        model, _, flops = build_model(folder, SIZE, width)
        for rate in RATES:
            video = write_video(folder, SIZE, int(rate * args.seconds), "MJPG", fps=rate)
            values = latencies_ms(model, video, folder, args.max_wait_ms)
            rows.append((width, flops, rate, len(values), np.percentile(values, 50), np.percentile(values, 99),
                         values.max()))
            print(rows[-1], flush=True)
    lines = section_header(MARK_START, "Latency to a verdict (real-time video)", "benchmarks.latency")
    lines += ["", f"{SIZE} px Motion-JPEG video, `realtime: true`, {args.seconds:g} s per run; the daemon with the 2-core "
              f"setting (2 workers x 1 thread, max batch 32, max_wait_ms {args.max_wait_ms:g}), no evidence. Latency = "
              "journal line time (millisecond resolution, taken when its batch is written) - capture time. "
              "Goal: p99 <= 50 ms at 100 frames/s.", "",
              "| model width | MFLOPs / frame | frames/s | frames | p50 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for width, flops, rate, count, p50, p99, worst in rows:
        lines.append(f"| {width} | {flops / 1e6:.0f} | {rate:g} | {count} | {p50:.1f} ms | {p99:.1f} ms | {worst:.1f} ms |")
    return "\n".join(lines + ["", MARK_END])


def add_arguments(parser) -> None:
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16], help="model base widths (16: the default)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
