"""Redis Streams source: one consumer of a consumer group, so several inspectors share one stream.

Each entry is a traffic row (field `row`: a CSV line or a JSON object) or an encoded frame (field
`image`: PNG / JPEG bytes, with `camera` and `captured_at`). Delivery is at least once:

- entries are read with XREADGROUP (`>`: never delivered to the group) and each becomes one item
  (or one rejection) carrying its entry id, which the journal records;
- an entry is acknowledged (XACK) only after the item it produced (or a later item of this source,
  for rows that only filled a window) has been journaled;
- every `claim_interval_s` a consumer resets the idle time of the entries it holds, and claims with
  XAUTOCLAIM the entries idle for `claim_idle_s` on any other consumer (it died), and scores them; so are, at start, this consumer's own pending entries. Both count as
  redeliveries (`inspector_stream_redeliveries_total`): a crash after journaling but before XACK
  gives a duplicate, which the entry id in the journal reveals.

Replies are taken as Redis sends them (flat field lists, ids as bytes): redis-py's per-entry dicts
and tuples cost more than the scoring of a traffic row. Completion is tracked per delivered chunk,
not per item: items of a source are journaled in order, so when the last item of a chunk is
journaled, every entry before it is too.

Backpressure: emitting into a full queue blocks (policy block), so the source stops reading and the
stream holds the rest; the group's lag (entries not yet delivered) is a metric. A lost connection
(Redis restarted) is retried with backoff; the group is created again if the restart lost it.

Kafka would plug in the same way: a consumer in a consumer group, poll -> items with
"<partition>:<offset>" as entry ids, commit offsets only up to the last journaled item (see README).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Callable

import redis

from ..card import ImageInput, TabularInput
from ..config_sources import RedisStreamSource
from ..errors import ItemRejected
from ..image_files import decode_image
from ..settings import redact_url
from .base import Emit, Item, Source
from .rows import RowItems

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 1.0
STOP_DRAIN_S = 10.0  # at shutdown, how long to wait for queued entries to be journaled and acknowledged


class RedisStreamSourceThread(Source):
    def __init__(self, settings: RedisStreamSource, spec: ImageInput | TabularInput,
                 on_unknown: Callable[[str, str, int], None] | None = None,
                 on_redelivery: Callable[[str, int], None] | None = None,
                 on_lag: Callable[[str, int, int], None] | None = None, **callbacks):
        super().__init__(settings.name, **callbacks)
        self.settings = settings
        self._password = settings.auth.password(f"sources ({settings.name}).auth")
        self.consumer = settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._rows = RowItems(self, spec, settings.format, on_unknown) if isinstance(spec, TabularInput) else None
        self._max_pixels = settings.max_pixels or getattr(spec, "max_pixels", 50_000_000)
        self._on_redelivery = on_redelivery or (lambda source, n: None)
        self._on_lag = on_lag or (lambda source, lag, pending: None)
        # Entry ids handed to the pipeline and not yet acknowledged, in order, as chunks: a delivery up to
        # the entry of its last item, then the entries after it (rows that only began a window).
        self._delivered: deque[list[bytes]] = deque()
        self._journaled: list[list[bytes]] = []  # chunks whose last item was journaled, in order (filled by the pipeline)
        self._outstanding = 0  # chunks emitted whose last item is not journaled yet
        self._lock = threading.Lock()
        self._problem: str | None = None

    # --- the pipeline's side: an item was journaled --------------------------------------------
    def _chunk_done(self, chunk: list[bytes]) -> None:
        with self._lock:
            self._journaled.append(chunk)
            self._outstanding -= 1

    # --- the source thread ---------------------------------------------------------------------
    def produce(self, emit: Emit) -> None:
        delays = self.settings.reconnect.delays()
        first = True
        client = None
        while not self.stopping.is_set():
            try:
                client = self._connect()
                if first:
                    self._deliver(self._own_pending(client), emit, redelivered=True)
                    first = False
                delays = self.settings.reconnect.delays()
                self._consume(client, emit)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._down(f"cannot reach {redact_url(self.settings.url)} ({exc})")
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._down("the consumer group is gone (Redis restarted without it); creating it again")
                continue
            delay = next(delays)
            self.retrying_until = time.time() + delay
            self.stopping.wait(delay)
        self._drain_acks(client)

    def _connect(self) -> redis.Redis:
        s = self.settings
        client = redis.Redis.from_url(s.url, username=s.auth.username if self._password else None,
                                      password=self._password, socket_timeout=s.block_ms / 1000 + 5,
                                      socket_connect_timeout=5, health_check_interval=0)
        for command in ("XREADGROUP", "XAUTOCLAIM"):  # raw replies: see the module docstring
            client.set_response_callback(command, _raw_reply)
        try:
            client.xgroup_create(s.stream, s.group, id=s.start_id, mkstream=True)
            log.info("source %s: created consumer group %s on stream %s", self.name, s.group, s.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if self._problem is not None or not self.up:
            log.info("source %s: consuming %s as %s of group %s", self.name, s.stream, self.consumer, s.group)
        self._problem = None
        self.retrying_until = None
        self.set_up(True)
        return client

    def _consume(self, client: redis.Redis, emit: Emit) -> None:
        s = self.settings
        next_claim = time.monotonic()
        next_lag = time.monotonic()
        while not self.stopping.is_set():
            self._flush_acks(client)
            now = time.monotonic()
            if now >= next_claim:
                self._keep_held(client)
                self._deliver(self._claim(client), emit, redelivered=True)
                next_claim = now + s.claim_interval_s
            if now >= next_lag:
                self._report_lag(client)
                next_lag = now + LAG_INTERVAL_S
            response = client.xreadgroup(s.group, self.consumer, {s.stream: ">"}, count=s.count, block=s.block_ms)
            if not self._deliver(_entries(response), emit):
                return

    def _own_pending(self, client: redis.Redis) -> list:
        """Entries delivered to this consumer name before and never acknowledged (a restart with a fixed name)."""
        s = self.settings
        return _entries(client.xreadgroup(s.group, self.consumer, {s.stream: "0"}, count=100_000))

    def _keep_held(self, client: redis.Redis) -> None:
        """Reset the idle time of the entries this consumer holds (XCLAIM JUSTID to itself): a consumer
        that is slow but alive keeps its entries; only a silent one has them claimed by others."""
        with self._lock:
            held = [entry_id for chunk in self._delivered for entry_id in chunk]
        for start in range(0, len(held), 10_000):
            client.xclaim(self.settings.stream, self.settings.group, self.consumer, 0, held[start:start + 10_000],
                          justid=True)

    def _claim(self, client: redis.Redis) -> list:
        """XAUTOCLAIM every entry idle longer than claim_idle_s on any consumer (a dead one)."""
        s = self.settings
        claimed, start = [], "0-0"
        while True:
            reply = client.xautoclaim(s.stream, s.group, self.consumer, int(s.claim_idle_s * 1000), start, count=s.count)
            start, entries = reply[0], reply[1]
            if entries:  # rare: only entries of a consumer that went silent (ours were just renewed)
                with self._lock:
                    held = {entry_id for chunk in self._delivered for entry_id in chunk}
                claimed.extend(e for e in entries if e[0] not in held)
            if start in (b"0-0", "0-0"):
                return claimed

    def _report_lag(self, client: redis.Redis) -> None:
        for group in client.xinfo_groups(self.settings.stream):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.settings.group:
                self._on_lag(self.name, int(group.get("lag") or 0), int(group.get("pending") or 0))

    def _deliver(self, entries: list, emit: Emit, redelivered: bool = False) -> bool:
        """Turn raw entries ([id, [field, value, ...]]) into items and emit them in order; False when
        the pipeline is stopping."""
        if not entries:
            return True
        raw_ids = [entry[0] for entry in entries]
        ids = [entry_id.decode() for entry_id in raw_ids]
        fields = [entry[1] or () for entry in entries]  # a deleted entry still pending: None
        if redelivered:
            self._on_redelivery(self.name, len(ids))
            log.info("source %s: %d entries redelivered (pending on a stopped consumer, or on this one before "
                     "a restart)", self.name, len(ids))
        items = self._row_items(ids, fields) if self._rows is not None else self._frame_items(ids, fields)
        chunk, rest = raw_ids, []
        if items:
            cut = ids.index(items[-1].entry_id) + 1
            chunk, rest = raw_ids[:cut], raw_ids[cut:]
            items[-1].on_done = lambda item, result: self._chunk_done(chunk)
        with self._lock:
            for ids_part in (chunk, rest):
                if ids_part:
                    self._delivered.append(ids_part)
            self._outstanding += 1 if items else 0
        return emit(items)

    def _row_items(self, ids: list[str], fields: list) -> list[Item]:
        """Rows in entry order; an entry without the row field is rejected in its place, like a bad row."""
        key, stream = self.settings.field.encode(), self.settings.stream
        items: list[Item] = []
        lines, run = [], []
        for entry_id, values in zip(ids, fields):
            raw = values[1] if len(values) == 2 and values[0] == key else _value(values, key)
            if raw is not None:
                lines.append(raw.decode("utf-8", errors="replace"))
                run.append(entry_id)
                continue
            if lines:
                items += self._rows.items(lines, origins=[f"{stream} {e}" for e in run], entry_ids=run)
                lines, run = [], []
            items.append(Item(self.name, self.next_seq(), time.time(), f"{stream} {entry_id}", entry_id=entry_id,
                              rejection=("missing_field", f"entry {entry_id} has no field '{self.settings.field}'")))
        if lines:
            items += self._rows.items(lines, origins=[f"{stream} {e}" for e in run], entry_ids=run)
        return items

    def _frame_items(self, ids: list[str], fields: list) -> list[Item]:
        key = self.settings.field.encode()
        items = []
        for entry_id, flat in zip(ids, fields):
            values = dict(zip(flat[::2], flat[1::2]))
            camera = (values.get(b"camera") or b"").decode("utf-8", errors="replace")[:64] or self.settings.stream
            try:
                captured_at = float(values.get(b"captured_at") or time.time())
            except ValueError:
                captured_at = time.time()
            origin = f"{camera} {entry_id}"
            item = Item(self.name, self.next_seq(), captured_at, origin, entry_id=entry_id)
            data = values.get(key)
            try:
                if data is None:
                    raise ItemRejected("missing_field", f"entry {entry_id} has no field '{self.settings.field}'")
                item.image = decode_image(data, origin, self._max_pixels)
            except ItemRejected as rejected:
                item.rejection = (rejected.reason, str(rejected))
            items.append(item)
        return items

    # --- acknowledgements ----------------------------------------------------------------------
    def _flush_acks(self, client: redis.Redis | None) -> None:
        with self._lock:
            journaled, self._journaled = self._journaled, []
            chunks: list[list[bytes]] = []
            for done in journaled:  # items of this source are journaled in order: earlier chunks are done too
                while self._delivered:
                    chunks.append(self._delivered.popleft())
                    if chunks[-1] is done:
                        break
        if not chunks:
            return
        ready = [entry_id for chunk in chunks for entry_id in chunk]
        try:
            for start in range(0, len(ready), 10_000):
                client.xack(self.settings.stream, self.settings.group, *ready[start:start + 10_000])
        except Exception:
            with self._lock:  # not acknowledged: try again with the next flush
                self._journaled[:0] = [chunks[-1]]
                self._delivered.extendleft(reversed(chunks))
            raise

    def _drain_acks(self, client: redis.Redis | None) -> None:
        """At stop: acknowledge what the pipeline journals from the queue, for a while."""
        deadline = time.monotonic() + STOP_DRAIN_S
        while client is not None and time.monotonic() < deadline:
            try:
                self._flush_acks(client)
            except (redis.RedisError, OSError):
                break
            with self._lock:
                if not self._journaled and self._outstanding <= 0:
                    return
            time.sleep(0.02)

    def _down(self, reason: str) -> None:
        if self.up or reason != self._problem:
            log.warning("source %s: %s; retrying", self.name, reason)
        self._problem = reason
        self.set_up(False)


def _raw_reply(response, **options):
    """XREADGROUP / XAUTOCLAIM replies as the protocol parser gives them, without redis-py's reshaping."""
    return response


def _entries(response) -> list:
    """The [[id, [field, value, ...]], ...] of a raw XREADGROUP reply on one stream, which comes as
    {stream: entries} or [[stream, entries]] depending on the protocol version and parser."""
    if not response:
        return []
    pairs = response.items() if isinstance(response, dict) else response
    return [entry for _, entries in pairs for entry in entries]


def _value(flat, key: bytes) -> bytes | None:
    """The value of `key` in a flat [field, value, ...] list, or None."""
    for k in range(0, len(flat) - 1, 2):
        if flat[k] == key:
            return flat[k + 1]
    return None
