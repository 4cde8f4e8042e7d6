"""Lines of flow records -> items: parse, encode (the one tabular transform), window, number.

Shared by every source of traffic rows (a followed file, stdin, TCP clients, a Redis stream), so each
one rejects the same bad rows with the same reasons and windows rows the same way. Not thread-safe:
a source that feeds it from several threads holds its own lock around `items`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import numpy as np

from ..card import TabularInput
from ..errors import ItemRejected
from ..features import encode_lines
from .base import Item, Source


class Windower:
    """Turns the source's good rows into windows of `window` rows every `stride` rows."""

    def __init__(self, window: int, stride: int):
        self.window, self.stride = window, stride
        self.rows: deque = deque(maxlen=window)
        self.since_last = stride - 1  # the first full window is emitted at once

    def push(self, row: np.ndarray) -> np.ndarray | None:
        if self.window == 1 and self.stride == 1:  # per-record scoring: the row is the window
            return row
        self.rows.append(row)
        if len(self.rows) < self.window:
            return None
        self.since_last += 1
        if self.since_last < self.stride:
            return None
        self.since_last = 0
        return np.concatenate(self.rows)


class RowItems:
    def __init__(self, source: Source, spec: TabularInput, fmt: str,
                 on_unknown: Callable[[str, str, int], None] | None = None):
        self.source = source
        self.spec = spec
        self.format = fmt
        self.windower = Windower(spec.window, spec.stride)
        self._on_unknown = on_unknown or (lambda source, column, n: None)
        self.lines = 0

    def items(self, lines: list[str], prefix: str = "", origins: list[str] | None = None,
              entry_ids: list[str] | None = None) -> list[Item]:
        """One item per bad row (a rejection) and per completed window, in order. `origins` replace the
        default "<prefix>line N"; `entry_ids` (stream entries) are carried onto the items."""
        first = self.lines + 1
        self.lines += len(lines)
        keep = [k for k, line in enumerate(lines) if line.strip()]
        names = [origins[k] for k in keep] if origins is not None else [f"{prefix}line {first + k}" for k in keep]
        ids = [entry_ids[k] for k in keep] if entry_ids is not None else [None] * len(keep)
        encoded = encode_lines([lines[k] for k in keep], self.spec, self.format, names)
        name = self.source.name
        for column, count in encoded.unknown.items():
            self._on_unknown(name, column, count)
        outcome: list[object] = [None] * len(keep)
        for position, rejected in encoded.rejected:
            outcome[position] = rejected
        for m, position in enumerate(encoded.kept):
            outcome[position] = encoded.features[m]
        now = time.time()
        items = []
        next_seq = self.source.next_seq
        for origin, entry_id, what in zip(names, ids, outcome):
            if isinstance(what, ItemRejected):
                items.append(Item(name, next_seq(), now, origin, rejection=(what.reason, str(what)), entry_id=entry_id))
            else:
                window = self.windower.push(what)
                if window is not None:
                    items.append(Item(name, next_seq(), now, origin, features=window, entry_id=entry_id))
        return items
