"""Soak benchmark: daemons at full rate for a long time; memory, handles, threads and latency must stay flat.

    python -m benchmarks.soak --minutes 10          # the reported run
    python -m benchmarks.soak --minutes 1           # a quick check

One daemon (subprocess) scores a looping video as fast as it can (realtime false); a second one
scores a TCP traffic feed of NSL-KDD rows sent at a steady rate (a daemon serves one model, so an
image model and a traffic model run side by side, as they would on a shared host). Every 10 s the
script records RSS, open file descriptors and threads from /proc, and the p99 end-to-end latency of
the last interval from the /metrics histogram. At the end both get SIGTERM; items lost = sequence
numbers accepted but missing from the journal. Writes its table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from benchmarks.results import write_section
from benchmarks.servers import free_port, scrape
from training.data import data_root
from training.flat_parts import train_flat_model, write_video

ROOT = Path(__file__).resolve().parents[1]

MARK_START, MARK_END = "<!-- soak:start -->", "<!-- soak:end -->"


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    field = lambda name: int(next(l for l in status.splitlines() if l.startswith(name)).split()[1])
    return {"rss_mb": field("VmRSS:") / 1024, "threads": field("Threads:"), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def p99_from(before: dict, after: dict, source: str) -> float:
    """p99 (seconds) of the end-to-end latency observed between two scrapes, from bucket deltas."""
    buckets = []
    for (name, labels), value in after.items():
        d = dict(labels)
        if name == "inspector_end_to_end_latency_seconds_bucket" and d.get("source") == source:
            le = float(d["le"])
            buckets.append((le, value - before.get((name, labels), 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    for le, count in buckets:
        if count >= 0.99 * total:
            return le
    return float("inf")


IMAGE_WORKERS = 2  # the setting configs/line1.yaml recommends on 2 cores; the traffic daemon keeps 1


def start_daemon(folder: Path, model: Path, source: dict, port: int, workers: int = 1) -> tuple[subprocess.Popen, Path]:
    journal = folder / "journal.jsonl"
    config = {"model": {"path": str(model), "intra_op_threads": 1}, "sources": [source],
              "batching": {"max_batch": 32, "max_wait_ms": 5, "workers": workers}, "queue": {"size": 256},
              "metrics": {"port": port}, "journal": {"path": str(journal), "max_bytes": 200_000_000},
              "evidence": {"dir": str(folder / "evidence"), "max_files": 200}, "logging": {"status_interval_s": 60}}
    (folder / "line.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(folder / "line.yaml")],
                               stdout=open(folder / "daemon.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    for _ in range(300):
        try:
            scrape(port)
            return process, journal
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"daemon in {folder} did not start")


def traffic_model(folder: Path) -> Path:
    from training.config import load_train_config
    from training.fit import fit

    config = load_train_config(ROOT / "configs" / "nsl_kdd.yaml",
                               {"data.max_train": 5000, "data.test_paths": {}, "train.steps": 100, "train.threads": 1})
    return fit(config, folder / "run", progress=False).model_path


def feed(port: int, lines: list[str], rate: float, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as client:
        chunk = max(1, int(rate / 20))
        i = 0
        next_send = time.monotonic()
        while not stop.is_set():
            block = [lines[(i + k) % len(lines)] for k in range(chunk)]
            i += chunk
            client.sendall(("\n".join(block) + "\n").encode())
            next_send += chunk / rate
            time.sleep(max(0.0, next_send - time.monotonic()))


def journal_loss(journal: Path) -> tuple[int, int]:
    """(lines journaled, sequence numbers missing), over the journal and its rotated files."""
    seqs = []
    for path in [journal, *sorted(journal.parent.glob(journal.name + ".*"))]:
        seqs += [json.loads(l)["seq"] for l in path.read_text().splitlines() if l.strip()]
    return len(seqs), (max(seqs) - len(set(seqs))) if seqs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rows-per-second", type=float, default=2000.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    (work / "image").mkdir()
    (work / "traffic").mkdir()
    image_model = train_flat_model(work / "image_model")
    tab_model = traffic_model(work / "traffic_model")
    video = work / "line.avi"
    write_video(video, 500, defect_every=50)
    traffic_port = free_port()
    ports = {"image": free_port(), "traffic": free_port()}
    daemons = {
        "image": start_daemon(work / "image", image_model, {"name": "cam", "kind": "camera", "uri": str(video),
                                                              "realtime": False, "loop": True}, ports["image"],
                              workers=IMAGE_WORKERS),
        "traffic": start_daemon(work / "traffic", tab_model, {"name": "flows", "kind": "traffic", "mode": "tcp",
                                                               "listen": f"127.0.0.1:{traffic_port}"}, ports["traffic"]),
    }
    with gzip.open(data_root() / "nsl_kdd" / "KDDTest+.txt.gz", "rt") as handle:
        lines = handle.read().splitlines()
    stop = threading.Event()
    sender = threading.Thread(target=feed, args=(traffic_port, lines, args.rows_per_second, stop), daemon=True)
    sender.start()
    sources = {"image": "cam", "traffic": "flows"}
    samples = {k: [] for k in daemons}
    last = {k: scrape(ports[k]) for k in daemons}
    started = time.monotonic()
    while time.monotonic() - started < args.minutes * 60:
        time.sleep(10)
        for kind, (process, _) in daemons.items():
            now = scrape(ports[kind])
            samples[kind].append({"t": time.monotonic() - started, **proc_stats(process.pid),
                                  "p99_ms": 1000 * p99_from(last[kind], now, sources[kind])})
            last[kind] = now
        print(json.dumps({k: v[-1] for k, v in samples.items()}), flush=True)
    stop.set()
    sender.join(5)
    time.sleep(1)
    results = {}
    for kind, (process, journal) in daemons.items():
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        journaled, lost = journal_loss(journal)
        results[kind] = (code, journaled, lost)
    lines_out = [MARK_START, "## Soak", "", f"Command: `python -m benchmarks.soak {' '.join(sys.argv[1:])}`  ",
                 f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {args.minutes:g} minutes; image daemon on a looping "
                 f"video at full rate (realtime false, {IMAGE_WORKERS} scoring workers), traffic daemon on a TCP feed of {args.rows_per_second:,.0f} NSL-KDD "
                 "rows/s. Warm-up = the first sample (after 10 s). p99 latencies are the upper bounds of the "
                 "histogram buckets that hold them (buckets: 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500 ms, ...); the "
                 "image daemon runs flat out with a full queue, so its latency is queueing, by design of the test.", "",
                 "| daemon | items journaled | items lost | exit code | RSS MB warm-up / peak / end | end vs warm-up "
                 "| fds start / end | threads start / end | p99 latency ms first / median / last interval |",
                 "|---|---|---|---|---|---|---|---|---|"]
    for kind, rows in samples.items():
        code, journaled, lost = results[kind]
        rss = [r["rss_mb"] for r in rows]
        p99 = [r["p99_ms"] for r in rows]
        lines_out.append(
            f"| {kind} | {journaled:,} | {lost} | {code} | {rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} | "
            f"{(rss[-1] / rss[0] - 1):+.1%} | {rows[0]['fds']} / {rows[-1]['fds']} | {rows[0]['threads']} / {rows[-1]['threads']} | "
            f"{p99[0]:.1f} / {np.nanmedian(p99):.1f} / {p99[-1]:.1f} |")
    lines_out += ["", "p99 latency (ms) per 10 s interval: " + "; ".join(
        f"{kind}: " + ", ".join(f"{r['p99_ms']:.0f}" for r in rows) for kind, rows in samples.items()), MARK_END]
    section = "\n".join(lines_out)
    write_section(args.out, section, MARK_START, MARK_END)
    print(section)
    return 0 if all(r[0] == 0 and r[2] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
