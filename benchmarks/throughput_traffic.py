"""Throughput of the traffic path: NSL-KDD lines over TCP and from a followed file through the daemon,
next to the raw scorer on pre-encoded rows (run by benchmarks.throughput; `--only traffic`).
"""

from __future__ import annotations

import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from benchmarks.throughput import ROOT, timed
from inspector.config import parse_daemon_config
from inspector.daemon import Daemon
from inspector.scorer import Scorer
from training.config import load_train_config
from training.export import export_with_parity, timing_card
from training.flops import count_flops

TRAFFIC_START, TRAFFIC_END = "<!-- throughput-traffic:start -->", "<!-- throughput-traffic:end -->"
TRAFFIC_REPEATS = 3


def traffic_model(folder: Path, score_config: str = "nsl_kdd.yaml") -> tuple[Path, list[str], int]:
    """An exported tabular GANomaly over the NSL-KDD features with the score section of
    configs/`score_config` (spec fitted on its normal rows; weights and memory untrained: speed does
    not depend on training), and KDDTest+ lines to send."""
    import gzip

    from training.models.memory import NearestCode
    from training.models.tabular import TabularGANomaly, TabularScoring
    from training.tabular import fit_spec, normal_mask, read_table

    config = load_train_config(ROOT / "configs" / "nsl_kdd.yaml")
    table = read_table(config.data.resolved_path, config.data.header, config.data.columns)
    mask = normal_mask(table, config.data.label, config.data.normal_values)
    spec = fit_spec(config, table, [row for row, normal in zip(table.rows, mask) if normal][:20000])
    torch.manual_seed(0)
    score = load_train_config(ROOT / "configs" / score_config).score
    weights = dict(score.weights)  # the shipped score: with latent_knn or latent_lof, a memory of memory_size codes
    nearest_code = None
    if "latent_knn" in weights or "latent_lof" in weights:
        nearest_code = NearestCode(torch.randn(score.memory_size, config.model.latent_dim),
                                   score.lof_neighbors if "latent_lof" in weights else None)
    scoring = TabularScoring(TabularGANomaly(spec.width, config.model.base_width, config.model.latent_dim),
                             with_latent="latent_distance" in weights, nearest_code=nearest_code).eval()
    card = timing_card("bench-traffic", "ganomaly", spec, weights, None)
    example = np.random.default_rng(0).normal(size=(8, spec.width)).astype(np.float32)
    flops = count_flops(scoring, torch.from_numpy(example))
    path = folder / f"traffic-{Path(score_config).stem}.onnx"
    export_with_parity(scoring, card, example, path, opset=17, tolerance=1e-3, flops=flops)
    with gzip.open(config.data.resolved_path.parent / "KDDTest+.txt.gz", "rt") as handle:
        lines = handle.read().splitlines()
    return path, lines, flops


def traffic_rows_per_second(model: Path, folder: Path, lines: list[str], n_rows: int, mode: str, max_batch: int) -> float:
    import socket

    payload = ("\n".join((lines * (n_rows // len(lines) + 1))[:n_rows]) + "\n").encode()
    source: dict = {"name": "bench", "kind": "traffic", "mode": mode}
    if mode == "tcp":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        source["listen"] = f"127.0.0.1:{port}"
    else:
        feed = folder / f"flows_{max_batch}.csv"
        feed.write_bytes(b"")
        source.update(path=str(feed), poll_interval_s=0.01)
    config = parse_daemon_config({
        "model": {"path": str(model), "intra_op_threads": 1}, "sources": [source],
        "batching": {"max_batch": max_batch, "max_wait_ms": 5}, "queue": {"size": 4096}, "metrics": {"port": 0},
        "journal": {"path": str(folder / f"journal_{mode}_{max_batch}.jsonl")}, "evidence": {"dir": None},
        "logging": {"status_interval_s": 0}}, "bench")
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    if mode == "tcp":
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(payload)
    else:
        with open(feed, "ab") as handle:
            handle.write(payload)
    while daemon.pipeline.items_done < n_rows:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    daemon.request_stop()
    thread.join()
    return n_rows / elapsed


def run_traffic(args) -> str:
    rows = []
    n_rows = 20_000 if args.quick else 300_000  # at 250k rows/s a shorter run is mostly its start
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, lines, flops = traffic_model(folder)
        scorer = Scorer(model, intra_op_threads=args.threads)
        from inspector.features import encode_rows, parse_csv_line

        spec = scorer.card.input
        encoded = encode_rows([parse_csv_line(l, spec) for l in lines[:4096]], spec).features
        raw = timed(lambda b: scorer.score_tensor(b), encoded, 2.0)
        knn_model, _, knn_flops = traffic_model(folder, "unsw_nb15.yaml")
        knn_scorer = Scorer(knn_model, intra_op_threads=args.threads)
        raw_knn = timed(lambda b: knn_scorer.score_tensor(b), encoded, 2.0)
        knn_memory = load_train_config(ROOT / "configs" / "unsw_nb15.yaml").score.memory_size
        for mode in ("tcp", "file"):
            for max_batch in (32, 1024, 4096):
                rates = sorted(traffic_rows_per_second(model, folder, lines, n_rows, mode, max_batch)
                               for _ in range(TRAFFIC_REPEATS))
                rows.append((mode, max_batch, rates))
                print(f"traffic {mode} max batch {max_batch}: {', '.join(f'{r:.0f}' for r in rates)} rows/s", flush=True)
    command = "python -m benchmarks.throughput " + " ".join(sys.argv[1:])
    out = [TRAFFIC_START, "## Throughput (network traffic)", "", f"Command: `{command.strip()}`  ",
           f"Machine: {platform.node()}, run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.  ",
           f"Model: tabular GANomaly over the {spec.width} NSL-KDD features ({flops / 1e3:.0f} kFLOPs/row); "
           f"KDDTest+ lines (W = 1) sent from one client on loopback, or appended to a followed file; "
           f"{n_rows:,} rows, each parsed, encoded, scored, journaled and counted in the metrics.", "",
           f"Raw scorer on pre-encoded rows (batch 4096): {raw[0]:,.0f} rows/s. The same model with the score of "
           f"configs/unsw_nb15.yaml (latent_knn: a nearest-code search over {knn_memory:,} codes, "
           f"{knn_flops / 1e3:.0f} kFLOPs/row): {raw_knn[0]:,.0f} rows/s.", "",
           f"Each path ran {TRAFFIC_REPEATS} times in a row; the median is the figure, the range shows the noise.", "",
           "| path | max batch | rows/s end to end (median) | range | share of raw scorer |", "|---|---|---|---|---|"]
    for mode, max_batch, rates in rows:
        median = float(np.median(rates))
        out.append(f"| {'TCP client' if mode == 'tcp' else 'followed file'} | {max_batch} | {median:,.0f} | "
                   f"{rates[0]:,.0f} – {rates[-1]:,.0f} | {median / raw[0]:.1%} |")
    out.append(TRAFFIC_END)
    return "\n".join(out)
