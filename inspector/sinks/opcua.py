"""OPC UA server (asyncua): the line's last verdicts as variables a PLC or SCADA reads or subscribes to.

Address space (namespace `outputs.opcua.namespace`, string node ids, so a PLC program can name them):
  Objects/<line>/Model                 Name, Version, Family, Threshold          ns=<i>;s=<line>.Model.<Variable>
  Objects/<line>/<source>              one object per configured source:      ns=<i>;s=<line>.<source>.<Variable>
      LastVerdict (String: normal | anomaly | rejected), LastScore, LastNormalisedScore (Double; NaN when
      rejected), LastSequence (UInt64, the journal's seq), ResultId (String "<source>:<seq>"), CreationTime
      (DateTime of capture), LastEvidence (String), ItemsDecided, AnomalyCount, RejectedCount (UInt64),
      SourceUp (Boolean)

Names follow OPC 40100 (Machine Vision) where a concept matches (ResultId, CreationTime); its types,
state machine, methods and recipe management are not implemented: the nodes are plain base-type
variables. Values are written once per scored batch from that batch's last item of each source
(counts are exact totals), on the server's own asyncio loop in its own thread: scoring only hands
the values over and never waits for a client.

Anonymous access is allowed only when the server listens on a loopback address (the config refuses
anything else without a user); with a user configured, anonymous sessions are refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
from datetime import datetime, timezone
from typing import Callable

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from ..active_model import ActiveModel
from ..config_outputs import OpcUaSettings
from ..errors import ConfigError
from ..sources.base import Item

log = logging.getLogger(__name__)
logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO lines describe its own start-up, hundreds of them

UINT64, DOUBLE, STRING, BOOLEAN, DATETIME = (ua.VariantType.UInt64, ua.VariantType.Double, ua.VariantType.String,
                                              ua.VariantType.Boolean, ua.VariantType.DateTime)
SOURCE_VARIABLES = {"LastVerdict": ("", STRING), "LastScore": (math.nan, DOUBLE), "LastNormalisedScore": (math.nan, DOUBLE),
                    "LastSequence": (0, UINT64), "ResultId": ("", STRING), "LastEvidence": ("", STRING),
                    "CreationTime": (datetime(1970, 1, 1, tzinfo=timezone.utc), DATETIME),
                    "ItemsDecided": (0, UINT64), "AnomalyCount": (0, UINT64), "RejectedCount": (0, UINT64),
                    "SourceUp": (False, BOOLEAN)}
MODEL_VARIABLES = {"Name": STRING, "Version": STRING, "Family": STRING, "Threshold": DOUBLE}


class _OneUser:
    """asyncua user manager: exactly one user name and password (compared in constant time)."""

    def __init__(self, username: str, password: str):
        self.username, self.password = username, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.username and password is not None and hmac.compare_digest(password, self.password):
            return User(role=UserRole.User, name=username)
        return None


class OpcUaSink:
    name = "opcua"

    def __init__(self, settings: OpcUaSettings, model: ActiveModel, sources: list[str],
                 on_state: Callable[[bool], None] | None = None, **_unused):
        self.settings = settings
        self._password = settings.auth.password("outputs.opcua.auth")
        self._model = model
        self._on_state = on_state or (lambda up: None)
        self._totals = {name: {"ItemsDecided": 0, "AnomalyCount": 0, "RejectedCount": 0} for name in sources}
        self._pending: dict[str, dict] = {}  # source -> variable values not yet written
        self._lock = threading.Lock()
        self._model_changed = True
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="output-opcua", daemon=True)
        self._thread.start()
        self._started.wait(60)
        if self._failure is not None:
            raise ConfigError(f"field 'outputs.opcua': cannot serve on {settings.host}:{settings.port} "
                              f"({getattr(self._failure, 'strerror', None) or self._failure})")
        self.connected = True

    # --- the scorer's side ---------------------------------------------------------------------
    def start(self) -> None:
        pass  # serving since construction: a port that cannot be bound refuses the daemon's start

    def handle(self, items: list[Item], results: list, inference_s: float) -> None:
        with self._lock:
            for item, result in zip(items, results):
                totals = self._totals.setdefault(item.source, {"ItemsDecided": 0, "AnomalyCount": 0, "RejectedCount": 0})
                totals["ItemsDecided"] += 1
                values = self._pending.setdefault(item.source, {})
                if not result.rejected:
                    totals["AnomalyCount"] += result.verdict == "anomaly"
                    values.update(LastVerdict=result.verdict, LastScore=float(result.raw),
                                  LastNormalisedScore=float(result.normalised))
                else:
                    totals["RejectedCount"] += 1
                    values.update(LastVerdict="rejected", LastScore=math.nan, LastNormalisedScore=math.nan)
                values.update(LastSequence=item.seq, ResultId=f"{item.source}:{item.seq}", LastEvidence=item.evidence or "",
                              CreationTime=datetime.fromtimestamp(item.captured_at, timezone.utc), **totals)
        self._poke()

    def source_state(self, source: str, up: bool) -> None:
        with self._lock:
            self._pending.setdefault(source, {})["SourceUp"] = up
        self._poke()

    def model_changed(self) -> None:
        self._model_changed = True
        self._poke()

    def pending(self) -> int:
        return len(self._pending)

    def health(self) -> str | None:
        return None if self._thread.is_alive() else "the OPC UA server stopped"

    def close(self) -> None:
        self._closing = True
        self._poke()
        self._thread.join(10)

    def _poke(self) -> None:
        if self._wake is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop has just closed
                pass

    # --- the server's own thread -----------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor or logged
            if not self._started.is_set():
                self._failure = exc
            else:
                log.exception("opcua: the server stopped")
        finally:
            self._started.set()
            self._loop.close()

    async def _main(self) -> None:
        s = self.settings
        server = Server(user_manager=_OneUser(s.auth.username, self._password or "") if s.auth.has_user else None)
        await server.init()
        server.set_endpoint(f"opc.tcp://{s.host}:{s.port}/qinspector/")
        server.set_server_name(f"qinspector {s.line}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.UserNameIdentityToken] if s.auth.has_user else [ua.AnonymousIdentityToken])
        ns = await server.register_namespace(s.namespace)
        line = await server.nodes.objects.add_object(ua.NodeId(s.line, ns), ua.QualifiedName(s.line, ns))
        self._nodes: dict[str, dict] = {}
        model = await line.add_object(ua.NodeId(f"{s.line}.Model", ns), ua.QualifiedName("Model", ns))
        self._model_nodes = {name: await model.add_variable(ua.NodeId(f"{s.line}.Model.{name}", ns),
                                                            ua.QualifiedName(name, ns), ua.Variant("" if kind == STRING else 0.0, kind))
                             for name, kind in MODEL_VARIABLES.items()}
        for source in self._totals:
            await self._add_source(line, ns, source)
        self._ns, self._line = ns, line
        self._wake = asyncio.Event()
        async with server:
            log.info("opcua: serving opc.tcp://%s:%d/qinspector/ (%s)", s.host, s.port,
                     "user and password required" if s.auth.has_user else "anonymous, loopback only")
            self._started.set()
            while not self._closing:
                await self._wake.wait()
                self._wake.clear()
                await self._write_pending()
            await self._write_pending()

    async def _add_source(self, line, ns: int, source: str) -> None:
        obj = await line.add_object(ua.NodeId(f"{self.settings.line}.{source}", ns), ua.QualifiedName(source, ns))
        self._nodes[source] = {name: await obj.add_variable(ua.NodeId(f"{self.settings.line}.{source}.{name}", ns),
                                                            ua.QualifiedName(name, ns), ua.Variant(value, kind))
                               for name, (value, kind) in SOURCE_VARIABLES.items()}

    async def _write_pending(self) -> None:
        if self._model_changed:
            self._model_changed = False
            scorer = self._model.scorer
            card = scorer.card
            for name, value in (("Name", card.name), ("Version", card.version), ("Family", card.family),
                                ("Threshold", float(scorer.threshold))):
                await self._model_nodes[name].write_value(ua.Variant(value, MODEL_VARIABLES[name]))
        with self._lock:
            pending, self._pending = self._pending, {}
        for source, values in pending.items():
            if source not in self._nodes:
                await self._add_source(self._line, self._ns, source)
            nodes = self._nodes[source]
            for name, value in values.items():
                await nodes[name].write_value(ua.Variant(value, SOURCE_VARIABLES[name][1]))
