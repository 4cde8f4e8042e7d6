"""MQTT output (paho-mqtt): one verdict message per decided item, for a reject gate or a line controller.

Topics, under `<prefix>/<line>` (the base):
  <base>/<source>/verdict  one JSON message per scored or rejected item, in journal order per source
  <base>/status            retained "online"; the broker publishes the retained last will "offline"
                           when the daemon vanishes, and the daemon publishes it when it stops
  <base>/model             retained summary of the active model, published again after a hot-swap
  <base>/command           (commands: true) payload "reload" asks for a model reload, as SIGHUP does

Scoring never waits for the broker: `handle` only appends to a bounded outbox (outbox.py). This
output's own thread connects, publishes in order with at most `max_inflight` messages awaiting
PUBACK, and releases a message only once the broker acknowledged it. A lost connection puts the
unacknowledged messages back in line and reconnects with backoff, on a fresh client, so nothing the
broker did not acknowledge is lost and paho never resends on its own; a message the broker received
but whose PUBACK was lost may arrive twice (QoS 1 is at least once; `seq` tells duplicates apart).
While the broker is away the outbox keeps the newest messages; drops are counted. The journal stays
the record of every decision.

Credentials come from a file or an environment variable and are never logged; a refused login is
one log line per outage ("not authorised", "bad user name or password").
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Callable

import orjson
import paho.mqtt.client as mqtt

from ..active_model import ActiveModel
from ..config_outputs import MqttSettings
from ..sources.base import Item
from .outbox import Message, Outbox
from .outbox_output import OutboxOutput
from .verdict import model_summary, verdict_message

log = logging.getLogger(__name__)


class MqttSink(OutboxOutput):
    name = "mqtt"

    def __init__(self, settings: MqttSettings, model: ActiveModel,
                 on_drop: Callable[[int], None] | None = None, on_state: Callable[[bool], None] | None = None,
                 on_reload: Callable[[], None] | None = None):
        self.settings = settings
        self._password = settings.auth.password("outputs.mqtt.auth")  # read once; a missing secret refuses start
        self._model = model
        self._on_reload = on_reload or (lambda: None)
        super().__init__(Outbox(settings.outbox.max_messages, settings.outbox.max_bytes, on_drop),
                         settings.drain_timeout_s, log, on_state, join_slack_s=settings.connect_timeout_s + 5)
        self.base = settings.base_topic
        self._lost = threading.Event()
        self._model_changed = threading.Event()
        self._model_changed.set()
        self._acked: list[int] = []
        self._ack_lock = threading.Lock()

    # --- the scorer's side ---------------------------------------------------------------------
    def handle(self, items: list[Item], results: list, inference_s: float) -> None:
        scorer = self._model.scorer
        line, thumbnail = self.settings.line, self.settings.thumbnail_px
        self.outbox.put([Message(f"{self.base}/{item.source}/verdict",
                                 orjson.dumps(verdict_message(item, result, scorer, line, thumbnail)))
                         for item, result in zip(items, results)])

    def model_changed(self) -> None:
        self._model_changed.set()
        self.outbox.ready.set()

    # --- the output's own thread ---------------------------------------------------------------
    def _run(self) -> None:
        delays = self.settings.reconnect.delays()
        while not self._stop.is_set() or (self.outbox and self._drain_left() > 0):
            client = self._connect()
            if client is None:
                self._stop.wait(next(delays) if not self._stop.is_set() else 0.2)
                continue
            delays = self.settings.reconnect.delays()
            finished = self._serve(client)
            client.loop_stop()
            if finished:
                break
            self.outbox.unsend_all()
            self._set_down("the connection to the broker was lost")
        self._report_undelivered()

    def _client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id or f"qinspector-{s.line}",
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        if s.auth.username:
            client.username_pw_set(s.auth.username, self._password)
        if s.tls is not None:
            client.tls_set(ca_certs=str(s.tls.ca_file), certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                           keyfile=str(s.tls.key_file) if s.tls.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(s.tls.insecure_skip_hostname_check)
        client.will_set(f"{self.base}/status", "offline", qos=1, retain=True)
        client.max_inflight_messages_set(s.max_inflight)
        client.on_publish = self._acknowledged
        client.on_disconnect = lambda *args: (self._lost.set(), self.outbox.ready.set())
        client.on_message = self._command
        return client

    def _connect(self) -> mqtt.Client | None:
        s = self.settings
        client = self._client()
        answered = threading.Event()
        answer: dict = {}

        def on_connect(client, userdata, flags, reason_code, properties):
            answer["code"] = reason_code
            answered.set()

        client.on_connect = on_connect
        self._lost.clear()
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._set_down(f"cannot reach the broker at {s.host}:{s.port} ({getattr(exc, 'strerror', None) or exc})")
            return None
        client.loop_start()
        if not answered.wait(s.connect_timeout_s) or answer["code"].is_failure:
            client.loop_stop()
            client.disconnect()
            reason = answer["code"] if answered.is_set() else f"no answer within {s.connect_timeout_s:g} s"
            self._set_down(f"the broker at {s.host}:{s.port} refused the connection ({reason})")
            return None
        client.publish(f"{self.base}/status", "online", qos=1, retain=True)
        self._model_changed.set()  # retained again on every connection: a restarted broker may have lost it
        if s.commands:
            client.subscribe(f"{self.base}/command", qos=1)
        self._set_up(self._connected_line())
        return client

    def _serve(self, client: mqtt.Client) -> bool:
        """Publish in order until the connection is lost (False) or the daemon stops and the outbox is done (True)."""
        in_flight: dict[int, Message] = {}
        with self._ack_lock:
            self._acked = []
        while not self._lost.is_set():
            self.outbox.ready.clear()
            if self._model_changed.is_set():
                self._model_changed.clear()
                client.publish(f"{self.base}/model", orjson.dumps(model_summary(self._model.scorer)), qos=1, retain=True)
            with self._ack_lock:
                acked, self._acked = self._acked, []
            for mid in acked:
                message = in_flight.pop(mid, None)
                if message is not None:
                    self.outbox.acknowledge(message)
            while len(in_flight) < self.settings.max_inflight:
                message = self.outbox.next_unsent()
                if message is None:
                    break
                info = client.publish(message.key, message.payload, qos=self.settings.qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self._lost.set()
                    break
                in_flight[info.mid] = message
            if self._stop.is_set() and (not len(self.outbox) or self._drain_left() <= 0):
                self._say_goodbye(client)
                return True
            self.outbox.ready.wait(0.05)
        return False

    def _say_goodbye(self, client: mqtt.Client) -> None:
        try:
            client.publish(f"{self.base}/status", "offline", qos=1, retain=True).wait_for_publish(2.0)
        except (RuntimeError, ValueError):
            pass
        client.disconnect()
        self.connected = False
        self.problem = "stopped"

    def _acknowledged(self, client, userdata, mid, reason_code, properties) -> None:
        with self._ack_lock:
            self._acked.append(mid)
        self.outbox.ready.set()

    def _command(self, client, userdata, message) -> None:
        payload = message.payload.decode("utf-8", errors="replace").strip().lower()
        if payload == "reload":
            log.info("mqtt: model reload requested on %s", message.topic)
            self._on_reload()
        else:
            log.warning("mqtt: unknown command %r on %s (known: reload)", payload[:40], message.topic)

    def _connected_line(self) -> str:
        s = self.settings
        return f"connected to {s.host}:{s.port}, publishing on {self.base}/<source>/verdict"
