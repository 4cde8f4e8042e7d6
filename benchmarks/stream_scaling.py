"""Stream scaling benchmark: traffic rows/s when 1, 2 and 4 inspector processes share one Redis stream
through a consumer group, next to the TCP source's rate measured in the same run and the same way.

    python -m benchmarks.stream_scaling            # about 3 minutes on 2 cores; needs Debian's redis-server
    python -m benchmarks.stream_scaling --quick

Each run fills a fresh stream with KDDTest+ lines (`row` field), then starts the consumers (each its
own `inspector run` process, one intra-op thread) on it; the rate is the rows journaled by all of them
over the time from the first journaled row to the last (parsed, encoded, scored, journaled, counted,
acknowledged). The reference is the same `inspector run` process with a TCP traffic source, fed by
one client from the benchmark's process and timed from its journal the same way, so both sides pay
the same process, metrics and journal costs. On a 2-core machine the consumers, Redis and the journal writes share the two cores:
more consumers than cores cannot add throughput here, but shows the cost of sharing; across hosts
each consumer brings its own cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from benchmarks.results import section_header, section_main
from benchmarks.servers import free_port, start_redis
from benchmarks.throughput_traffic import traffic_model

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


def start_inspector(folder: Path, name: str, model: Path, source: dict) -> tuple[subprocess.Popen, Path]:
    """One `inspector run` process with one source, as the consumers run; its journal's path."""
    journal = folder / f"{name}.jsonl"
    config = {"model": {"path": str(model), "intra_op_threads": 1}, "sources": [{"name": "flows", **source}],
              "batching": {"max_batch": 1024, "max_wait_ms": 5}, "queue": {"size": 4096},
              "metrics": {"port": free_port()}, "journal": {"path": str(journal), "max_bytes": 10**10},
              "evidence": {"dir": None}, "logging": {"status_interval_s": 0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(path)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, journal


def tcp_rate(model: Path, folder: Path, lines: list[str], n_rows: int) -> tuple[float, float]:
    """Rows/s of the TCP traffic source in an `inspector run` process, one client sending every row."""
    import socket

    port = free_port()
    process, journal = start_inspector(folder, f"tcp_{time.monotonic_ns()}", model,
                                       {"kind": "traffic", "mode": "tcp", "listen": f"127.0.0.1:{port}"})
    payload = ("\n".join((lines * (n_rows // len(lines) + 1))[:n_rows]) + "\n").encode()
    deadline = time.time() + 60
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    with client:
        client.sendall(payload)
    rate, _, cpu_per_row, _ = journals_rate([process], [journal], n_rows)
    return rate, cpu_per_row


def consumers_rate(model: Path, folder: Path, redis_server: subprocess.Popen, port: int, lines: list[str], n_rows: int,
                   consumers: int) -> tuple[float, list[int], float, float]:
    import redis

    stream = f"flows{consumers}_{time.monotonic_ns()}"
    fill(redis.Redis(port=port), stream, lines, n_rows)
    processes, journals = [], []
    for k in range(consumers):
        process, journal = start_inspector(folder, f"{stream}_{k}", model, {
            "kind": "redis_stream", "url": f"redis://127.0.0.1:{port}/0", "stream": stream, "consumer": f"c{k}",
            "count": 2000})
        processes.append(process)
        journals.append(journal)
    return journals_rate(processes, journals, n_rows, others=(redis_server.pid,))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def journals_rate(processes: list[subprocess.Popen], journals: list[Path], n_rows: int,
                  others: tuple[int, ...] = ()) -> tuple[float, list[int], float, float]:
    """Wait for `n_rows` journal lines in all, stop the processes, and return the rows per second from
    the first journaled row to the last, each journal's share, and the CPU seconds the inspectors and
    the `others` (the Redis server) spent per row while rows were being journaled."""
    deadline = time.time() + 600
    pids = [p.pid for p in processes]
    started = None
    while time.time() < deadline:
        done = sum(_count(j) for j in journals)
        if done and started is None:
            started = [cpu_seconds(pid) for pid in pids], [cpu_seconds(pid) for pid in others], done
        if done >= n_rows:
            break
        time.sleep(0.05)
    ended = [cpu_seconds(pid) for pid in pids], [cpu_seconds(pid) for pid in others]
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
    if sum(shares) < n_rows or started is None:
        raise RuntimeError(f"{len(journals)} inspectors journaled {sum(shares)} of {n_rows} rows")
    rows = n_rows - started[2]
    own, other = (sum(ended[k]) - sum(started[k]) for k in (0, 1))
    return sum(shares) / max(last - first, 1e-9), shares, own / rows, other / rows


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
                tcp.append(tcp_rate(model, folder, lines, n_rows))
                print(f"tcp: {tcp[-1][0]:.0f} rows/s", flush=True)
                for consumers in (1, 2, 4):
                    rows.append((consumers, *consumers_rate(model, folder, server, port, lines, n_rows, consumers)))
                    print(f"{consumers} consumer(s): {rows[-1][1]:.0f} rows/s, shares {rows[-1][2]}", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    tcp_median = float(np.median([rate for rate, _ in tcp]))
    tcp_cpu = float(np.median([cpu for _, cpu in tcp]))
    out = [*section_header(MARK_START, "Stream scaling (Redis Streams consumer group)", "benchmarks.stream_scaling",
                           f" ({CORES} cores)"),
           f"Model: the traffic table's tabular GANomaly ({flops / 1e3:.0f} kFLOPs/row); {n_rows:,} KDDTest+ rows per "
           f"run in a fresh stream; consumers are `inspector run` processes in one group (count 2000, max batch "
           f"1024, 1 intra-op thread). Reference: the TCP source in the same kind of "
           f"process, one client sending the same {n_rows:,} rows, timed from its journal the same way: "
           f"{tcp_median:,.0f} rows/s and {tcp_cpu * 1e6:.1f} µs of CPU per row (medians of {len(tcp)}).", "",
           f"{args.repeats} rounds; the median per setting is the figure. CPU per row is measured while rows "
           "are journaled (/proc), for the inspector processes together and for redis-server, which shares "
           "the two cores here and would run on its own host in a plant.", "",
           "| consumers | rows/s, all together (median) | range | per core | per consumer vs TCP source | "
           "inspector CPU µs/row (TCP source µs / this) | redis-server CPU µs/row | share of the rows per consumer |",
           "|---|---|---|---|---|---|---|---|"]
    for consumers in (1, 2, 4):
        these = sorted((r for r in rows if r[0] == consumers), key=lambda r: r[1])
        _, median, shares, own, other = these[len(these) // 2]
        share_text = " / ".join(f"{s / sum(shares):.0%}" for s in shares)
        out.append(f"| {consumers} | {median:,.0f} | {these[0][1]:,.0f} – {these[-1][1]:,.0f} | "
                   f"{median / min(consumers, CORES):,.0f} | {median / consumers / tcp_median:.0%} | "
                   f"{own * 1e6:.1f} ({tcp_cpu / own:.0%}) | {other * 1e6:.1f} | {share_text} |")
    out.append(MARK_END)
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
