"""The inspector daemon: wires config -> scorer, sources, pipeline, sinks, HTTP endpoint; owns the lifecycle.

SIGHUP or a new model file (atomic rename): hot-swap the model between batches (see reloader.py).
SIGTERM / SIGINT: stop the sources (each finishes the item it is reading), keep scoring until every
source thread has ended, drain the queues, flush the journal, exit 0. A second signal exits at once.
One bad item never stops the daemon: it is rejected, logged once, counted and journaled.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .active_model import ActiveModel
from .config import DaemonConfig
from .errors import ConfigError, InspectorError
from .pipeline import Pipeline
from .reloader import ModelReloader
from .scorer import Scorer
from .sinks.evidence import EvidenceSink
from .sinks.journal import JournalSink
from .sinks.metrics import Metrics, MetricsServer
from .source_kinds import build_source
from .sources.base import Source

log = logging.getLogger("inspector.daemon")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


_CONTROL = {code: f"\\x{code:02x}" for code in range(32) if code != 9} | {10: "\\n", 13: "\\r", 127: "\\x7f"}


class EscapeControlCharacters(logging.Filter):
    """A file name or a row is attacker-chosen: a newline in it must not start a forged log line.
    Control characters in the message become visible escapes; tracebacks (exc_info) are untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = message.translate(_CONTROL)
        if escaped != message or record.args:
            record.msg, record.args = escaped, None
        return True


def configure_logging(level: str, fmt: str) -> None:
    if fmt == "json":
        from .json_stderr import capture_stderr_as_json

        handler = logging.StreamHandler(capture_stderr_as_json())  # and every other stderr line as JSON
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(EscapeControlCharacters())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Daemon:
    def __init__(self, config: DaemonConfig, exit_when_done: bool = False):
        self.config = config
        self.exit_when_done = exit_when_done
        self.model = ActiveModel(self._load_scorer(config.model.path))
        self.metrics = Metrics(config.metrics.drift_window, config.journal.path.with_suffix(".drift.json"))
        self.metrics.set_model(self.model.scorer)
        self.model.subscribe(self.metrics.set_model)
        sinks = [JournalSink(config.journal.path, config.journal.max_bytes, config.journal.backups,
                             config.journal.fsync, model=self.model,
                             on_error=self._sink_error)]
        # with (source, seq), this run's start names an item uniquely: seq counts from 1 at every start
        self.run_id = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        review_sink = self._review_sink(config)
        if config.evidence.dir is not None:
            sinks.append(EvidenceSink(config.evidence.dir, config.evidence.max_files, config.evidence.max_bytes,
                                      self.model, on_error=self._sink_error,
                                      on_written=lambda source: self.metrics.evidence.labels(source).inc(),
                                      reserve_bytes=config.evidence.reserve_bytes,
                                      also=review_sink.sampling.wants if review_sink else None,
                                      frames=review_sink is not None))
        if review_sink is not None:
            sinks.append(review_sink)  # after the evidence sink: it stores the picture's name
        self.shadow = self._shadow_sink(config) if config.shadow is not None else None
        if self.shadow is not None:
            sinks.append(self.shadow)
        sinks.append(self.metrics)
        self.outputs = self._line_outputs(config)
        sinks.extend(self.outputs)
        self.journal = sinks[0]
        self.pipeline = Pipeline(self.model, sinks, config.batching.max_batch, config.batching.max_wait_ms,
                                 on_drop=self.metrics.count_drop, on_error=self._sink_error,
                                 workers=config.batching.workers)
        self.sources: list[Source] = []
        for settings in config.sources:
            self.metrics.register_source(settings.name)
            callbacks = {"on_state": self._source_state,
                         "on_reconnect": lambda name: self.metrics.reconnects.labels(name).inc(),
                         "on_finished": lambda name: self.metrics.source_finished.labels(name).set(1)}
            source = build_source(settings, self.model.scorer, self.metrics, config.journal.path, callbacks)
            source.emit = self.pipeline.add_source(settings.name, config.queue.size, settings.effective_policy,
                                                   config.queue.max_bytes, settings.regions)
            self.sources.append(source)
        try:
            self.server = MetricsServer(self.metrics, config.metrics.host, config.metrics.port, self.health)
        except OSError as exc:
            raise ConfigError(f"field 'metrics': cannot listen on {config.metrics.host}:{config.metrics.port} "
                              f"({exc.strerror or exc})") from None
        self.review_server = self._review_server(config, review_sink) if review_sink is not None else None
        self._stop = threading.Event()
        self._signals = 0
        self.reloader = ModelReloader(config.model.path, self.model, self._load_scorer,
                                      lambda result: self.metrics.reloads.labels(result).inc(),
                                      poll_s=config.model.watch_interval_s)

    def _line_outputs(self, config: DaemonConfig) -> list:
        """The per-part outputs to the line (MQTT, OPC UA); their libraries load only when configured."""
        outputs: list = []
        settings = config.outputs
        try:
            if settings.mqtt is not None:
                import paho.mqtt.client  # noqa: F401
            if settings.opcua is not None:
                import asyncua  # noqa: F401
            if settings.redis_stream is not None:
                import redis  # noqa: F401
        except ImportError as exc:
            extra = "scale" if exc.name == "redis" else "plant"
            raise ConfigError(f"field 'outputs': this output needs the '{extra}' extra ({exc.name} is not installed): "
                              f"pip install 'qinspector[{extra}]'") from None
        if settings.mqtt is not None:
            from .sinks.mqtt import MqttSink

            outputs.append(MqttSink(settings.mqtt, self.model, **self._output_callbacks("mqtt"),
                                    on_reload=(lambda: self.reloader.request()) if settings.mqtt.commands else None))
        if settings.opcua is not None:
            from .sinks.opcua import OpcUaSink

            outputs.append(OpcUaSink(settings.opcua, self.model, [s.name for s in config.sources],
                                     **self._output_callbacks("opcua")))
        if settings.redis_stream is not None:
            from .sinks.redis_stream import RedisStreamSink

            outputs.append(RedisStreamSink(settings.redis_stream, self.model, **self._output_callbacks("redis_stream")))
        for output in outputs:
            self.metrics.register_output(output.name)
            self.model.subscribe(lambda scorer, output=output: output.model_changed())
        return outputs

    def _review_sink(self, config: DaemonConfig):
        """The sink that offers anomalies (and a sample of near misses) to the review page, or None."""
        if config.review is None:
            return None
        from .review.sink import ReviewSampling, ReviewSink
        from .review.store import ReviewStore, ReviewStoreError

        try:
            store = ReviewStore(config.review.database)
            store.set_evidence_dir(config.evidence.dir)
        except ReviewStoreError as exc:
            raise ConfigError(f"field 'review.database': {exc}") from None
        sampling = ReviewSampling(config.review.near_threshold, config.review.sample_every)
        return ReviewSink(store, sampling, self.model, self.run_id, on_error=self._sink_error)

    def _shadow_sink(self, config: DaemonConfig):
        from .review.shadow import ShadowMetrics, ShadowSink

        try:
            candidate = self._load_scorer(config.shadow.model, own_threshold=True)
        except InspectorError as exc:
            raise ConfigError(f"field 'shadow.model': {exc}") from None
        metrics = ShadowMetrics(self.metrics.registry)
        for source in config.sources:
            metrics.register_source(source.name)
        journal = JournalSink(config.shadow.journal, config.journal.max_bytes, config.journal.backups,
                              on_error=self._sink_error, name="shadow")
        log.info("shadow: candidate %s %s scores beside the active model, journaled to %s", candidate.card.name,
                 candidate.card.version, config.shadow.journal)
        return ShadowSink(candidate, journal, self.model, self.run_id, metrics, on_error=self._sink_error)

    def _review_server(self, config: DaemonConfig, sink):
        from .review.app import Promotion, ReviewPage
        from .review.metrics import ReviewMetrics
        from .review.server import ReviewServer

        settings = config.review
        review_metrics = ReviewMetrics(self.metrics.registry, sink.store)
        for source in config.sources:
            review_metrics.register_source(source.name)
        promotion = None if self.shadow is None else Promotion(
            config.shadow.model, self.shadow.candidate.card.version, config.model.path, settings.database)
        try:
            page = ReviewPage(sink.store, config.evidence.dir, settings.page_size, settings.users_file,
                              settings.session_hours, tls=settings.tls is not None, on_review=review_metrics.reviewed,
                              promotion=promotion)
        except ValueError as exc:  # a malformed users file
            raise ConfigError(f"field 'review.users_file': {exc}") from None
        tls = settings.tls
        try:
            return ReviewServer(page.app(), settings.host, settings.port, tls.cert_file if tls else None,
                                tls.key_file if tls else None)
        except OSError as exc:
            raise ConfigError(f"field 'review': cannot listen on {settings.host}:{settings.port} "
                              f"({exc.strerror or exc})") from None

    def _source_state(self, name: str, up: bool) -> None:
        self.metrics.source_up.labels(name).set(1 if up else 0)
        for output in self.outputs:
            output.source_state(name, up)

    def _output_callbacks(self, name: str) -> dict:
        return {"on_drop": lambda n: self.metrics.sink_dropped.labels(name).inc(n),
                "on_state": lambda up: self.metrics.sink_connected.labels(name).set(1 if up else 0)}

    def _load_scorer(self, path: Path, own_threshold: bool = False) -> Scorer:
        """The active model (model.threshold, when set, overrides its card's), or with `own_threshold` a
        shadow candidate, judged by the threshold its own card carries."""
        m = self.config.model
        scorer = Scorer(path, threshold=None if own_threshold else m.threshold, intra_op_threads=m.intra_op_threads,
                        inter_op_threads=m.inter_op_threads, optimization=m.optimization, spinning=m.spinning)
        scorer.self_test()  # at start and before every hot-swap: a model that breaks the line never serves
        return scorer

    def _sink_error(self, sink: str) -> None:
        """Journal / evidence write failures (reported by the sinks) and unexpected sink exceptions."""
        self.metrics.sink_errors.labels(sink.lower().removesuffix("sink")).inc()

    def health(self) -> tuple[bool, dict]:
        now = time.time()
        states, reasons = {}, {}
        for s in self.sources:
            states[s.name], reason = s.state(now)
            if reason:
                reasons[s.name] = reason
        healthy = all(state in ("up", "finished", "retrying") for state in states.values())
        outputs = {output.name: output.health() or "ok" for output in self.outputs}
        degraded = any(state != "ok" for state in outputs.values())
        detail = {"status": "unhealthy" if not healthy else "degraded" if degraded else "ok",
                  "model": self.model.version, "sources": states}
        if reasons:
            detail["reasons"] = reasons
        if outputs:  # a line output that is down degrades the daemon but does not fail it: the journal has every decision
            detail["outputs"] = outputs
        return healthy, detail

    def request_stop(self, signum: int | None = None, frame=None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting immediately")
            os._exit(1)
        log.info("stopping: finishing queued items (send the signal again to exit at once)")
        self._stop.set()
        for source in self.sources:
            source.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reloader.request())

    def _keep_going(self) -> bool:
        all_finished = all(s.finished.is_set() for s in self.sources)
        if self._stop.is_set() or (self.exit_when_done and all_finished):
            return not all_finished  # keep batching until every source thread has handed over its last item
        return True

    def _status_line(self, started: float, last: dict) -> None:
        now = time.perf_counter()
        totals = self.metrics.totals
        items = totals["scored"] + totals["rejected"]
        rate = (items - last["items"]) / max(1e-9, now - last["time"])
        last.update(items=items, time=now)
        log.info("status: %d items (%.1f/s), %d anomalies, %d rejected, %d dropped, p99 latency %.1f ms, queued %d",
                 items, rate, totals["anomalies"], totals["rejected"], totals["dropped"],
                 self.metrics.latency_p99() * 1000, self.pipeline.pending())

    def run(self) -> int:
        self.server.start()
        self.metrics.up.set(1)
        host, port = self.server.address[:2]
        scorer = self.model.scorer
        log.info("model %s %s (threshold %.4g); metrics on http://%s:%d/metrics", scorer.card.name,
                 scorer.card.version, scorer.threshold, host, port)
        if self.review_server is not None:
            self.review_server.start()
            log.info("review page on %s", self.review_server.url)
        for output in self.outputs:
            output.start()
        for source in self.sources:
            source.start(source.emit)
        if self.config.model.watch_interval_s > 0:
            self.reloader.start()
        started = time.perf_counter()
        last = {"items": 0, "time": started}
        interval = self.config.logging.status_interval_s
        next_status = started + interval if interval else float("inf")
        depth_every = 0.5
        next_depth = started

        def keep_going() -> bool:
            nonlocal next_status, next_depth
            now = time.perf_counter()
            if now >= next_depth:
                for source in self.sources:
                    self.metrics.queue_depth.labels(source.name).set(self.pipeline.depth(source.name))
                for output in self.outputs:
                    self.metrics.sink_outbox.labels(output.name).set(output.pending())
                next_depth = now + depth_every
            if now >= next_status:
                self._status_line(started, last)
                next_status = now + interval
            return self._keep_going()

        try:
            self.pipeline.run(keep_going)
        finally:
            self.reloader.stop()
            for sink in self.pipeline.sinks:
                sink.close()
            for source in self.sources:
                self.metrics.queue_depth.labels(source.name).set(0)
            self._status_line(started, last)
            self.metrics.up.set(0)
            self.server.stop()
            if self.review_server is not None:
                self.review_server.stop()
        log.info("stopped after %d items", self.pipeline.items_done)
        return 0
