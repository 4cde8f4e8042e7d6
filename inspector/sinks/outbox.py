"""A bounded, ordered outbox for an output whose peer can be slow or away (an MQTT broker, a stream).

The scorer's side only appends (`put`), which never blocks on the network. The output's own thread
takes messages in order (`next_unsent`), marks them sent, and removes them once the peer has
acknowledged them (`acknowledge`). Bounds are in messages and bytes; beyond either, the oldest
messages not yet sent are dropped and counted, so the newest decisions are the ones that survive an
outage. After a lost connection, `unsend_all` puts every unacknowledged message back in line, in order.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable


@dataclass(slots=True)
class Message:
    key: str  # topic or stream
    payload: bytes
    acked: bool = False
    sent: bool = False
    meta: dict = field(default_factory=dict)


class Outbox:
    def __init__(self, max_messages: int, max_bytes: int, on_drop: Callable[[int], None] | None = None):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_drop = on_drop or (lambda n: None)
        self._queue: deque[Message] = deque()
        self._sent = 0  # messages at the front of the queue that are sent and await acknowledgement
        self._bytes = 0
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set when something was put or acknowledged
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, messages: list[Message]) -> None:
        dropped = 0
        with self._lock:
            for message in messages:
                self._queue.append(message)
                self._bytes += len(message.payload)
            while (len(self._queue) > self.max_messages or self._bytes > self.max_bytes) and len(self._queue) > self._sent:
                victim = self._queue[self._sent]  # the oldest message not in flight
                del self._queue[self._sent]
                self._bytes -= len(victim.payload)
                dropped += 1
            self.dropped += dropped
        if dropped:
            self._on_drop(dropped)
        self.ready.set()

    def next_unsent(self) -> Message | None:
        with self._lock:
            if self._sent >= len(self._queue):
                return None
            message = self._queue[self._sent]
            message.sent = True
            self._sent += 1
            return message

    def acknowledge(self, message: Message) -> None:
        """Mark one sent message delivered; the delivered front of the queue is released."""
        with self._lock:
            message.acked = True
            while self._queue and self._queue[0].acked:
                released = self._queue.popleft()
                self._bytes -= len(released.payload)
                self._sent -= 1
        self.ready.set()

    def unsend_all(self) -> int:
        """The connection is gone: every unacknowledged message goes back in line, in order."""
        with self._lock:
            for message in list(self._queue)[: self._sent]:
                message.sent = False
            count, self._sent = self._sent, 0
            return count

    def in_flight(self) -> int:
        return self._sent
