"""Settings of the per-part outputs to the line (`outputs:` in the daemon config): MQTT and OPC UA.

The journal stays the source of truth; these outputs tell a reject gate or a PLC what to do with
each part, as fast as the network allows, and never hold scoring up (see inspector/sinks/mqtt.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .settings import Backoff, Credentials, check_redis_url, is_loopback
from .strict import Strict

TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class Outbox(Strict):
    """What an output keeps while its peer is away; beyond either bound the oldest messages are dropped
    (and counted). Messages already sent and awaiting acknowledgement are never dropped."""

    max_messages: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    max_bytes: Annotated[int, Field(ge=1024)] = 20_000_000


class Tls(Strict):
    ca_file: Path  # the CA that signed the broker's certificate
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    insecure_skip_hostname_check: bool = False

    @model_validator(mode="after")
    def _pair(self) -> "Tls":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(Strict):
    """One message per decided item on <prefix>/<line>/<source>/verdict (schema: deploy/mqtt/verdict.schema.json)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    prefix: str = "qinspector"
    line: str = "line1"
    client_id: str | None = None  # default: qinspector-<line>
    qos: Literal[0, 1] = 1
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 100  # sent but not yet acknowledged (QoS 1)
    outbox: Outbox = Outbox()
    reconnect: Backoff = Backoff(initial_s=0.2, max_s=10.0)
    thumbnail_px: Annotated[int, Field(ge=0, le=1024)] = 0  # > 0: a JPEG thumbnail (longest side) in each message
    commands: bool = False  # subscribe to <prefix>/<line>/command: payload "reload" hot-swaps the model
    drain_timeout_s: Annotated[float, Field(ge=0, le=600)] = 5.0  # at shutdown, time to deliver what is queued
    auth: Credentials = Credentials()
    tls: Tls | None = None

    @field_validator("prefix", "line")
    @classmethod
    def _topic_level(cls, value: str) -> str:
        if not TOPIC_LEVEL.match(value):
            raise ValueError("topic levels are 1-63 letters, digits, '_', '.', '-' (no '/', '+' or '#')")
        return value

    @property
    def base_topic(self) -> str:
        return f"{self.prefix}/{self.line}"


class OpcUaSettings(Strict):
    """An OPC UA server with one object per source (last verdict, score, sequence, counts, source up)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 4840
    namespace: str = "urn:qinspector"
    line: str = "line1"
    auth: Credentials = Credentials()  # required unless host is a loopback address

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> "OpcUaSettings":
        if not is_loopback(self.host) and not self.auth.has_user:
            raise ValueError(f"host {self.host} is not a loopback address: anonymous access is refused there, "
                             "set auth.username and auth.password_file (or password_env)")
        return self

    @field_validator("line")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TOPIC_LEVEL.match(value):
            raise ValueError("line names are 1-63 letters, digits, '_', '.', '-'")
        return value


class RedisStreamOutput(Strict):
    """Verdicts appended (XADD) to a Redis stream, for downstream consumers that read it as a group."""

    url: str = "redis://127.0.0.1:6379/0"
    auth: Credentials = Credentials()
    stream: str = "qinspector:verdicts"
    line: str = "line1"
    maxlen: Annotated[int, Field(ge=0)] = 1_000_000  # trim to about this many entries (0 = never)
    outbox: Outbox = Outbox()
    reconnect: Backoff = Backoff(initial_s=0.2, max_s=10.0)
    drain_timeout_s: Annotated[float, Field(ge=0, le=600)] = 5.0

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        return check_redis_url(url)


class OutputSettings(Strict):
    mqtt: MqttSettings | None = None
    opcua: OpcUaSettings | None = None
    redis_stream: RedisStreamOutput | None = None
