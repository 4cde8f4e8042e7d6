"""Redis stream output: every verdict appended (XADD, field `verdict`: the JSON of
deploy/mqtt/verdict.schema.json) to one stream, in journal order per source, so downstream systems
consume results as a consumer group, the way the inspectors consume their input.

As for MQTT, scoring only appends to a bounded outbox; this output's thread sends it in pipelined
chunks and releases messages once Redis has answered. Redis away: the newest messages wait, older
ones are dropped and counted; reconnect with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import orjson
import redis

from ..active_model import ActiveModel
from ..config_outputs import RedisStreamOutput
from ..settings import redact_url
from ..sources.base import Item
from .outbox import Message, Outbox
from .outbox_output import OutboxOutput
from .verdict import verdict_message

log = logging.getLogger(__name__)

CHUNK = 500


class RedisStreamSink(OutboxOutput):
    name = "redis_stream"

    def __init__(self, settings: RedisStreamOutput, model: ActiveModel,
                 on_drop: Callable[[int], None] | None = None, on_state: Callable[[bool], None] | None = None):
        self.settings = settings
        self._password = settings.auth.password("outputs.redis_stream.auth")
        self._model = model
        super().__init__(Outbox(settings.outbox.max_messages, settings.outbox.max_bytes, on_drop),
                         settings.drain_timeout_s, log, on_state, join_slack_s=10)

    def handle(self, items: list[Item], results: list, inference_s: float) -> None:
        scorer = self._model.scorer
        self.outbox.put([Message(self.settings.stream, orjson.dumps(verdict_message(item, result, scorer, self.settings.line)))
                         for item, result in zip(items, results)])

    def _run(self) -> None:
        s = self.settings
        client = redis.Redis.from_url(s.url, username=s.auth.username if self._password else None,
                                      password=self._password, socket_timeout=5, socket_connect_timeout=5)
        delays = s.reconnect.delays()
        while True:
            done = self._stop.is_set() and (not len(self.outbox) or time.monotonic() > self._drain_deadline)
            if done:
                break
            batch = []
            while len(batch) < CHUNK and (message := self.outbox.next_unsent()) is not None:
                batch.append(message)
            if not batch:
                self.outbox.ready.wait(0.05)
                self.outbox.ready.clear()
                continue
            try:
                pipe = client.pipeline(transaction=False)
                for message in batch:
                    pipe.xadd(message.key, {"verdict": message.payload}, maxlen=s.maxlen or None, approximate=True)
                pipe.execute()
            except (redis.RedisError, OSError) as exc:
                self.outbox.unsend_all()
                self._set_down(f"cannot write to {redact_url(s.url)} ({exc})")
                self._stop.wait(next(delays))
                continue
            for message in batch:
                self.outbox.acknowledge(message)
            if not self.connected:
                delays = s.reconnect.delays()
                self._set_up(f"writing verdicts to {s.stream} on {redact_url(s.url)}")
        self._report_undelivered()
