"""What every output with an outbox shares (MQTT, Redis stream): its own sending thread, state for
/healthz and the metrics, one log line per outage, and a bounded drain at shutdown."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .outbox import Outbox


class OutboxOutput:
    name = "output"

    def __init__(self, outbox: Outbox, drain_timeout_s: float, log: logging.Logger,
                 on_state: Callable[[bool], None] | None = None, join_slack_s: float = 5.0):
        self.outbox = outbox
        self.connected = False
        self.problem: str | None = "not connected yet"
        self._drain_timeout_s = drain_timeout_s
        self._join_slack_s = join_slack_s
        self._log = log
        self._on_state = on_state or (lambda up: None)
        self._stop = threading.Event()
        self._drain_deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"output-{self.name}", daemon=True)

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def source_state(self, source: str, up: bool) -> None:
        pass  # verdicts only; source health is in /healthz and the metrics

    def model_changed(self) -> None:
        pass

    def pending(self) -> int:
        return len(self.outbox)

    def health(self) -> str | None:
        """None when connected, else why the output is degraded."""
        return None if self.connected else self.problem

    def close(self) -> None:
        """Deliver what is queued, within the drain timeout, then stop the thread."""
        self._drain_deadline = time.monotonic() + self._drain_timeout_s
        self._stop.set()
        self.outbox.ready.set()
        if self._thread.is_alive():
            self._thread.join(self._drain_timeout_s + self._join_slack_s)

    def _drain_left(self) -> float:
        return self._drain_deadline - time.monotonic()

    def _report_undelivered(self) -> None:
        if len(self.outbox):
            self._log.warning("%s: %d verdicts were not delivered before shutdown (the journal has them)",
                              self.name, len(self.outbox))

    def _set_up(self, message: str) -> None:
        self._log.info("%s: %s", self.name, message)
        self.connected, self.problem = True, None
        self._on_state(True)

    def _set_down(self, reason: str) -> None:
        if self.connected or reason != self.problem:  # one line per outage, not one per retry
            self._log.warning("%s: %s; verdicts wait in the outbox (newest %d kept)", self.name, reason,
                              self.outbox.max_messages)
        self.connected, self.problem = False, reason
        self._on_state(False)
