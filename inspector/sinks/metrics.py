"""Prometheus metrics (prometheus-client) and the /metrics + /healthz HTTP endpoint.

Names follow Prometheus conventions: `inspector_` prefix, snake_case, base units (seconds),
`_total` counters, a `source` label on everything per source. Score histograms are of the
normalised score (1.0 = threshold), so one set of buckets fits every model.

Drift (`inspector_score_drift_psi{source}`): the population stability index of the last
`drift_window` normal-verdict scores of a source against its baseline (see inspector/drift.py).
Below 0.1 is stable, 0.1-0.25 a moderate shift, above 0.25 a real drift (lighting, camera,
material): recalibrate or retrain.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..drift import DriftMonitor
from ..scorer import ANOMALY, FeatureScores, Scorer
from ..sources.base import Item
from ..sources.row_blocks import rows_of
from .bulk_histogram import BulkHistogram

log = logging.getLogger(__name__)

SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    takes_row_blocks = True  # blocks of traffic rows come whole (inspector.sources.row_blocks)

    def __init__(self, drift_window: int = 500, drift_baseline: Path | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.scored = Counter("inspector_items_scored", "Items scored, by source and verdict", ["source", "verdict"], registry=r)
        self.anomalies = Counter("inspector_anomalies", "Items whose score reached the threshold", ["source"], registry=r)
        self.rejected = Counter("inspector_items_rejected", "Items that could not be scored, by reason", ["source", "reason"], registry=r)
        self.dropped = Counter("inspector_items_dropped", "Items dropped by backpressure (drop_oldest)", ["source"], registry=r)
        self.score = BulkHistogram("inspector_anomaly_score", "Normalised anomaly score (1.0 = threshold)", ["source"],
                                   buckets=SCORE_BUCKETS, registry=r)
        self.inference = Histogram("inspector_inference_latency_seconds", "Model inference time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inspector_batch_size", "Items per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.latency = BulkHistogram("inspector_end_to_end_latency_seconds", "Capture to journaled, per item",
                                     ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("inspector_queue_depth", "Items waiting in the source's queue", ["source"], registry=r)
        self.source_up = Gauge("inspector_source_up", "1 when the source delivers, 0 when down or finished", ["source"], registry=r)
        self.source_finished = Gauge("inspector_source_finished", "1 when the source ended normally (a video file)", ["source"], registry=r)
        self.reconnects = Counter("inspector_source_reconnects", "Attempts to reopen a lost source", ["source"], registry=r)
        self.model_info = Gauge("inspector_model_info", "The active model (value 1)", ["name", "version", "family"], registry=r)
        self.threshold = Gauge("inspector_model_threshold", "Active threshold in raw score units", registry=r)
        self.last_anomaly = Gauge("inspector_last_anomaly_timestamp_seconds", "When the last anomaly was scored", ["source"], registry=r)
        self.drift = Gauge("inspector_score_drift_psi", "Population stability index of recent normal scores vs the "
                           "source's baseline (its first scores under this model)", ["source"], registry=r)
        self.sink_errors = Counter("inspector_sink_errors", "Failed journal / evidence writes", ["sink"], registry=r)
        self.sink_dropped = Counter("inspector_sink_dropped", "Messages a line output dropped from its full outbox "
                                    "(its peer was away; the journal still has the decisions)", ["sink"], registry=r)
        self.sink_connected = Gauge("inspector_sink_connected", "1 while a line output is connected to its peer", ["sink"], registry=r)
        self.sink_outbox = Gauge("inspector_sink_outbox_messages", "Messages waiting in a line output's outbox", ["sink"], registry=r)
        self.redeliveries = Counter("inspector_stream_redeliveries", "Stream entries delivered again: claimed from a "
                                    "stopped consumer, or pending on this one at start", ["source"], registry=r)
        self.stream_lag = Gauge("inspector_stream_lag", "Entries of the stream not yet delivered to the consumer group", ["source"], registry=r)
        self.stream_pending = Gauge("inspector_stream_pending", "Entries delivered to the group and not yet acknowledged", ["source"], registry=r)
        self.evidence = Counter("inspector_evidence_written", "Evidence images written", ["source"], registry=r)
        self.unknown_categories = Counter("inspector_unknown_categories", "Traffic rows with a category unseen in training (unknown bucket)", ["source", "column"], registry=r)
        self.connections_refused = Counter("inspector_connections_refused", "TCP clients refused at the connection limit", ["source"], registry=r)
        self.reloads = Counter("inspector_model_reloads", "Model hot-swap attempts by result (loaded, refused)", ["result"], registry=r)
        self.up = Gauge("inspector_up", "1 while the daemon runs", registry=r)
        for sink in ("journal", "evidence"):
            self.sink_errors.labels(sink)
        for result in ("loaded", "refused"):
            self.reloads.labels(result)
        self._drift = DriftMonitor(drift_window, drift_baseline)
        self._by_source: dict[str, dict] = {}
        self._latencies: deque = deque(maxlen=2000)
        self._lock = threading.Lock()
        self.totals = {"scored": 0, "anomalies": 0, "rejected": 0, "dropped": 0}

    def register_source(self, name: str) -> None:
        for metric in (self.anomalies, self.dropped, self.reconnects, self.evidence):
            metric.labels(name)
        for verdict in ("normal", "anomaly"):
            self.scored.labels(name, verdict)
        self.score.touch(name)
        self.latency.touch(name)
        self.source_up.labels(name).set(0)
        self.source_finished.labels(name).set(0)
        self.queue_depth.labels(name).set(0)
        self.drift.labels(name).set(0)
        self._drift.add_source(name)

    def set_model(self, scorer: Scorer) -> None:
        self.model_info.clear()
        card = scorer.card
        self.model_info.labels(card.name, card.version, card.family).set(1)
        self.threshold.set(scorer.threshold)
        self._drift.set_model(card.version)
        for source in self._drift.sources:  # the old model's reading says nothing about the new one
            self.drift.labels(source).set(0)

    def register_output(self, sink: str) -> None:
        self.sink_errors.labels(sink)
        self.sink_dropped.labels(sink)
        self.sink_connected.labels(sink).set(0)
        self.sink_outbox.labels(sink).set(0)

    def count_drop(self, source: str) -> None:
        self.dropped.labels(source).inc()
        self.totals["dropped"] += 1

    def _children(self, source: str) -> dict:
        """Per-source metric children, looked up once: labels() takes a lock and a dict lookup per call."""
        children = self._by_source.get(source)
        if children is None:
            children = {"normal": self.scored.labels(source, "normal"), "anomaly": self.scored.labels(source, "anomaly"),
                        "anomalies": self.anomalies.labels(source), "last_anomaly": self.last_anomaly.labels(source)}
            self._by_source[source] = children
        return children

    def handle(self, items: list[Item], results: list, inference_s: float) -> None:
        """Per batch: counts and histogram updates grouped by source, one call each; a block of traffic
        rows adds its arrays (inspector.sources.row_blocks)."""
        now = time.perf_counter()
        wall = time.time()
        scored = 0
        # source -> latencies, normalised scores, anomaly flags: Python values of single items, arrays of blocks
        groups: dict[str, tuple[list, list, list, list]] = {}
        for item, result in zip(items, results):
            latencies, scores, anomalous, blocks = groups.setdefault(item.source, ([], [], [], []))
            if isinstance(result, FeatureScores):
                finite = result.finite
                blocks.append((np.full(len(result), now - item.enqueued), result.normalised[finite],
                               result.anomaly[finite]))
                scored += int(finite.sum())
                if not finite.all():
                    self.rejected.labels(item.source, "non_finite_score").inc(int((~finite).sum()))
                    self.totals["rejected"] += int((~finite).sum())
                continue
            latencies.extend([now - item.enqueued] * rows_of(item))  # a block can be rejected whole (inference_error)
            if result.rejected:
                self.rejected.labels(item.source, result.reason).inc(rows_of(item))
                self.totals["rejected"] += rows_of(item)
                continue
            scores.append(result.normalised)
            anomalous.append(result.verdict == ANOMALY)
            scored += 1
        if scored:
            self.inference.observe(inference_s)
            self.batch_size.observe(scored)
        for source, (latencies, scores, anomalous, blocks) in groups.items():
            children = self._children(source)
            latency = np.concatenate([np.asarray(latencies, np.float64), *(b[0] for b in blocks)])
            self.latency.observe_many((source,), latency)
            self._latencies.extend(latency[-self._latencies.maxlen:].tolist())
            normalised = np.concatenate([np.asarray(scores, np.float64), *(b[1] for b in blocks)])
            anomaly = np.concatenate([np.asarray(anomalous, bool), *(b[2] for b in blocks)])
            if not len(normalised):
                continue
            self.score.observe_many((source,), normalised)
            anomalies = int(anomaly.sum())
            if len(normalised) - anomalies:
                children["normal"].inc(len(normalised) - anomalies)
            if anomalies:
                children["anomaly"].inc(anomalies)
                children["anomalies"].inc(anomalies)
                children["last_anomaly"].set(wall)
            self.totals["scored"] += len(normalised)
            self.totals["anomalies"] += anomalies
            psi = self._drift.observe(source, normalised[~anomaly].tolist())
            if psi is not None:
                self.drift.labels(source).set(psi)

    def drift_reading(self, source: str) -> float | None:
        """The source's last drift PSI, or None before its baseline is complete."""
        return self._drift.latest.get(source)

    def latency_p99(self) -> float:
        values = list(self._latencies)
        return float(np.percentile(values, 99)) if values else math.nan

    def close(self) -> None:
        pass


IDLE_TIMEOUT_S = 5.0  # a connection that sends no complete request this long is closed


class _HTTPServer(ThreadingHTTPServer):
    """A listen backlog for bursts of scrapes (socketserver's default is 5: 200 at once timed out),
    and one quiet line, not a traceback, for a client that went away mid-request."""

    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics: request from %s:%s ended early (%s)", *client_address[:2], sys.exc_info()[1])


class MetricsServer:
    """/metrics (Prometheus text format) and /healthz (200 healthy / 503 not, JSON body)."""

    def __init__(self, metrics: Metrics, host: str, port: int, health: Callable[[], tuple[bool, dict]]):
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = IDLE_TIMEOUT_S  # idle keep-alive or half-sent requests do not hold a thread for ever

            def do_GET(self):  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    healthy, detail = health()
                    body, status, ctype = json.dumps(detail).encode(), 200 if healthy else 503, "application/json"
                else:
                    body, status, ctype = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002 - quiet: Prometheus scrapes every few seconds
                pass

        self.server = _HTTPServer((host, port), Handler)
        self.address = self.server.server_address
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
