"""Model hot-swap: a new model file (atomic rename over the old one) or SIGHUP loads the model in the
background, validates it, and switches between batches.

Validation = everything `Scorer` checks at start-up (loadable ONNX, card present and of a known
format, card consistent with the graph) plus one inference on a neutral input, plus compatibility
with the running sources: the same input kind, and for traffic models the same feature spec (rows
already queued were encoded with it). A model that fails any check is refused with one log line
and a counted failure; the old model keeps serving. The pipeline reads the active scorer once per
batch, so no item is dropped or scored twice by a switch.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable


from .active_model import ActiveModel
from .card import TabularInput
from .errors import InspectorError
from .scorer import Scorer

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def validate_replacement(new: Scorer, old: Scorer) -> None:
    """Raise InspectorError when `new` cannot take over from `old` for the running sources (the new
    model itself passed Scorer.self_test when it was loaded)."""
    if type(new.card.input) is not type(old.card.input):
        raise InspectorError(f"{new.path}: a {new.card.input.kind} model cannot replace a {old.card.input.kind} model")
    if isinstance(new.card.input, TabularInput) and new.card.input != old.card.input:
        raise InspectorError(f"{new.path}: its feature spec differs from the running model's; restart the daemon to change it")


class ModelReloader:
    def __init__(self, path: Path, model: ActiveModel, make_scorer: Callable[[Path], Scorer],
                 on_result: Callable[[str], None], poll_s: float = 1.0):
        self.path = Path(path)
        self._model = model
        self._make = make_scorer
        self._on_result = on_result
        self.poll_s = poll_s
        self._requested = threading.Event()
        self._stop = threading.Event()
        self._seen = _signature(self.path)
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._requested.set()

    def request(self) -> None:
        """Reload now (SIGHUP); safe to call from a signal handler."""
        self._requested.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            forced = self._requested.wait(self.poll_s)
            self._requested.clear()
            if self._stop.is_set():
                return
            signature = _signature(self.path)
            if not forced and (signature is None or signature == self._seen):
                continue
            self._seen = signature
            self.reload()

    def reload(self) -> bool:
        old = self._model.scorer
        try:
            new = self._make(self.path)
            validate_replacement(new, old)
        except InspectorError as exc:
            log.error("model reload refused, %s keeps serving: %s", old.card.version, exc)
            self._on_result("refused")
            return False
        self._model.swap(new)
        log.info("model reloaded: %s %s -> %s (threshold %.4g)", new.card.name, old.card.version, new.card.version,
                 new.threshold)
        self._on_result("loaded")
        return True
