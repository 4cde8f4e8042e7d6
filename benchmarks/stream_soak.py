"""Stream soak: two consumers of one Redis stream at full rate for minutes; memory and completeness.

    python -m benchmarks.stream_soak --minutes 10

A producer keeps the group's backlog between 20,000 and 50,000 entries (so the consumers never wait)
and trims what the group has acknowledged; every 30 s the consumers' RSS is sampled. At the end the
producer stops, the consumers finish, and the entries published are compared with the items the
two consumers counted (their /metrics) and with what is still pending (must be 0).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.results import section_header, section_main
from benchmarks.servers import free_port, start_redis
from benchmarks.throughput_traffic import traffic_model

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- stream-soak:start -->", "<!-- stream-soak:end -->"


def decided(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name in ("inspector_items_scored_total", "inspector_items_rejected_total"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args) -> str:
    import redis

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, lines, _ = traffic_model(folder)
        server, port = start_redis(folder)
        client = redis.Redis(port=port)
        client.xgroup_create("flows", "inspectors", id="0", mkstream=True)
        consumers = []
        for k in range(2):
            metrics = free_port()
            config = {"model": {"path": str(model), "intra_op_threads": 1},
                      "sources": [{"name": "flows", "kind": "redis_stream", "url": f"redis://127.0.0.1:{port}/0",
                                   "stream": "flows", "consumer": f"c{k}", "count": 2000}],
                      "batching": {"max_batch": 1024, "max_wait_ms": 5}, "queue": {"size": 4096},
                      "metrics": {"port": metrics}, "evidence": {"dir": None},
                      "journal": {"path": str(folder / f"j{k}.jsonl"), "max_bytes": 50_000_000, "backups": 1},
                      "logging": {"status_interval_s": 0}}
            path = folder / f"c{k}.yaml"
            path.write_text(yaml.safe_dump(config))
            process = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(path)], cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            consumers.append((process, metrics))
        time.sleep(3)
        published, samples, rows = 0, [], [line for line in lines[:5000]]
        started = time.monotonic()
        next_sample = started
        try:
            while time.monotonic() - started < args.minutes * 60:
                group = client.xinfo_groups("flows")[0]
                if int(group.get("lag") or 0) < 20_000:
                    pipe = client.pipeline(transaction=False)
                    for line in rows * 6:
                        pipe.xadd("flows", {"row": line})
                    pipe.execute()
                    published += len(rows) * 6
                    pending = client.xpending("flows", "inspectors")
                    floor = pending["min"] if pending["pending"] else group["last-delivered-id"]
                    client.xtrim("flows", minid=floor, approximate=True)
                else:
                    time.sleep(0.05)
                if time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - started, [rss_mb(p.pid) for p, _ in consumers]))
                    print(f"{samples[-1][0]:.0f} s: {published} published, RSS {samples[-1][1]} MB", flush=True)
                    next_sample += 30
            deadline = time.time() + 120
            while time.time() < deadline and sum(decided(m) for _, m in consumers) < published:
                time.sleep(0.5)
            counted = sum(decided(m) for _, m in consumers)
            time.sleep(1)
            pending = client.xpending("flows", "inspectors")["pending"]
            samples.append((time.monotonic() - started, [rss_mb(p.pid) for p, _ in consumers]))
        finally:
            for process, _ in consumers:
                process.send_signal(signal.SIGTERM)
            codes = [process.wait(60) for process, _ in consumers]
            server.terminate()
            server.wait(10)
    elapsed = args.minutes * 60
    first, last = samples[0][1], samples[-1][1]
    return "\n".join([
        *section_header(MARK_START, "Stream soak (2 consumers, one Redis stream)", "benchmarks.stream_soak"), "",
        "| minutes | entries published | decided by the consumers | still pending | rows/s | RSS per consumer, first -> last sample (MB) | peak RSS (MB) | exit codes |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.minutes:g} | {published:,} | {counted:,.0f} | {pending} | {published / elapsed:,.0f} | "
        f"{' / '.join(f'{a:.0f} -> {b:.0f}' for a, b in zip(first, last))} | "
        f"{max(max(s[1]) for s in samples):.0f} | {codes} |",
        MARK_END])


def add_arguments(parser) -> None:
    parser.add_argument("--minutes", type=float, default=10)


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
