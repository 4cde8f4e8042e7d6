"""Stream scaling benchmark: traffic rows/s when 1, 2 and 4 inspector processes share one Redis stream
through a consumer group, next to the TCP source's rate measured in the same run.

    python -m benchmarks.stream_scaling            # about 3 minutes on 2 cores; needs Debian's redis-server
    python -m benchmarks.stream_scaling --quick

Each run fills a fresh stream with KDDTest+ lines (`row` field), then starts the consumers (each its
own `inspector run` process, one intra-op thread) on it; the rate is the rows journaled by all of them
over the time from the first journaled row to the last (parsed, encoded, scored, journaled, counted,
acknowledged). On a 2-core machine the consumers, Redis and the journal writes share the two cores:
more consumers than cores cannot add throughput here, but shows the cost of sharing; across hosts
each consumer brings its own cores.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from benchmarks.results import section_main
from benchmarks.servers import free_port, start_redis
from benchmarks.throughput import traffic_model, traffic_rows_per_second

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- stream-scaling:start -->", "<!-- stream-scaling:end -->"
CORES = 2


def fill(client, stream: str, lines: list[str], n_rows: int) -> None:
    rows = (lines * (n_rows // len(lines) + 1))[:n_rows]
    for start in range(0, n_rows, 5000):
        pipe = client.pipeline(transaction=False)
        for line in rows[start:start + 5000]:
            pipe.xadd(stream, {"row": line})
        pipe.execute()


def consumers_rate(model: Path, folder: Path, port: int, lines: list[str], n_rows: int, consumers: int) -> tuple[float, list[int]]:
    import redis

    stream = f"flows{consumers}_{time.monotonic_ns()}"
    fill(redis.Redis(port=port), stream, lines, n_rows)
    processes, journals = [], []
    for k in range(consumers):
        journal = folder / f"{stream}_{k}.jsonl"
        config = {"model": {"path": str(model), "intra_op_threads": 1},
                  "sources": [{"name": "flows", "kind": "redis_stream", "url": f"redis://127.0.0.1:{port}/0",
                               "stream": stream, "consumer": f"c{k}", "count": 2000}],
                  "batching": {"max_batch": 1024, "max_wait_ms": 5}, "queue": {"size": 4096},
                  "metrics": {"port": free_port()}, "journal": {"path": str(journal), "max_bytes": 10**10}, "evidence": {"dir": None},
                  "logging": {"status_interval_s": 0}}
        path = folder / f"{stream}_{k}.yaml"
        path.write_text(yaml.safe_dump(config))
        journals.append(journal)
        processes.append(subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(path)], cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.time() + 600
    while time.time() < deadline and sum(_count(j) for j in journals) < n_rows:
        time.sleep(0.2)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(60)
    first, last, shares = float("inf"), 0.0, []
    for journal in journals:
        times = [json.loads(line)["time"] for line in journal.read_text().splitlines()] if journal.exists() else []
        shares.append(len(times))
        if times:
            stamps = [datetime.fromisoformat(t).timestamp() for t in (times[0], times[-1])]
            first, last = min(first, stamps[0]), max(last, stamps[1])
    if sum(shares) < n_rows:
        raise RuntimeError(f"{consumers} consumers journaled {sum(shares)} of {n_rows} rows")
    return sum(shares) / max(last - first, 1e-9), shares


def _count(journal: Path) -> int:
    if not journal.exists():
        return 0
    with open(journal, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def run(args) -> str:
    n_rows = 60_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, lines, flops = traffic_model(folder)
        server, port = start_redis(folder)
        try:
            tcp, rows = [], []
            for _ in range(args.repeats):
                tcp.append(traffic_rows_per_second(model, folder, lines, n_rows // 3, "tcp", 1024))
                print(f"tcp: {tcp[-1]:.0f} rows/s", flush=True)
                for consumers in (1, 2, 4):
                    rate, shares = consumers_rate(model, folder, port, lines, n_rows, consumers)
                    rows.append((consumers, rate, shares))
                    print(f"{consumers} consumer(s): {rate:.0f} rows/s, shares {shares}", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    tcp_rate = float(np.median(tcp))
    command = "python -m benchmarks.stream_scaling " + " ".join(sys.argv[1:])
    out = [MARK_START, "## Stream scaling (Redis Streams consumer group)", "", f"Command: `{command.strip()}`  ",
           f"Machine: {platform.node()} ({CORES} cores), run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.  ",
           f"Model: the traffic table's tabular GANomaly ({flops / 1e3:.0f} kFLOPs/row); {n_rows:,} KDDTest+ rows per "
           f"run in a fresh stream; consumers are `inspector run` processes in one group (count 2000, max batch "
           f"1024, 1 intra-op thread). Reference: the TCP source, one client, max batch 1024, "
           f"{tcp_rate:,.0f} rows/s (median of {len(tcp)}, in-process daemon).", "",
           f"{args.repeats} rounds; the median per setting is the figure.", "",
           "| consumers | rows/s, all together (median) | range | per core | per consumer vs TCP source | share of the rows per consumer |",
           "|---|---|---|---|---|---|"]
    for consumers in (1, 2, 4):
        these = [(rate, shares) for c, rate, shares in rows if c == consumers]
        rates = sorted(rate for rate, _ in these)
        median = float(np.median(rates))
        shares = these[len(these) // 2][1]
        share_text = " / ".join(f"{s / sum(shares):.0%}" for s in shares)
        out.append(f"| {consumers} | {median:,.0f} | {rates[0]:,.0f} – {rates[-1]:,.0f} | "
                   f"{median / min(consumers, CORES):,.0f} | {median / consumers / tcp_rate:.0%} | {share_text} |")
    out.append(MARK_END)
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
