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
from ..features import EncodedRows, encode_lines
from .row_blocks import RowBlock
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
        default "<prefix>line N"; `entry_ids` (stream entries) are carried onto the items. Without
        either, each run of windows between bad rows is one block item (inspector.sources.row_blocks)."""
        first = self.lines + 1
        self.lines += len(lines)
        keep = [k for k, line in enumerate(lines) if line.strip()]
        if origins is None and entry_ids is None:
            return self._blocks(lines, keep, prefix, first)
        names = [origins[k] for k in keep] if origins is not None else [f"{prefix}line {first + k}" for k in keep]
        ids = [entry_ids[k] for k in keep] if entry_ids is not None else [None] * len(keep)
        encoded = self._encode([lines[k] for k in keep], names)
        outcome: list[object] = [None] * len(keep)
        for position, rejected in encoded.rejected:
            outcome[position] = rejected
        for m, position in enumerate(encoded.kept):
            outcome[position] = encoded.features[m]
        now = time.time()
        items = []
        name, next_seq = self.source.name, self.source.next_seq
        for origin, entry_id, what in zip(names, ids, outcome):
            if isinstance(what, ItemRejected):
                items.append(Item(name, next_seq(), now, origin, rejection=(what.reason, str(what)), entry_id=entry_id))
            else:
                window = self.windower.push(what)
                if window is not None:
                    items.append(Item(name, next_seq(), now, origin, features=window, entry_id=entry_id))
        return items

    def _encode(self, lines: list[str], origins) -> EncodedRows:
        encoded = encode_lines(lines, self.spec, self.format, origins)
        for column, count in encoded.unknown.items():
            self._on_unknown(self.source.name, column, count)
        return encoded

    def _blocks(self, lines: list[str], keep: list[int], prefix: str, first: int) -> list[Item]:
        """Rejections as single items; the windows of each run of good rows between them as one block."""
        line_of = first + np.asarray(keep, dtype=np.int64)  # the line number of each non-empty line
        encoded = self._encode([lines[k] for k in keep], _LineOrigins(prefix, line_of))
        kept = np.asarray(encoded.kept, dtype=np.int64)
        now = time.time()
        items: list[Item] = []
        start = 0
        for position, rejected in [*encoded.rejected, (None, None)]:
            stop = len(kept) if position is None else int(np.searchsorted(kept, position))
            if stop > start:
                self._add_block(items, encoded.features[start:stop], line_of[kept[start:stop]], prefix, now)
            start = stop
            if rejected is not None:
                items.append(Item(self.source.name, self.source.next_seq(), now, f"{prefix}line {line_of[position]}",
                                  rejection=(rejected.reason, str(rejected))))
        return items

    def _add_block(self, items: list[Item], rows: np.ndarray, line_numbers: np.ndarray, prefix: str, now: float) -> None:
        if self.windower.window == 1 and self.windower.stride == 1:
            windows, ends = rows, line_numbers
        else:
            completed = [(window, line) for row, line in zip(rows, line_numbers)
                         if (window := self.windower.push(row)) is not None]
            if not completed:
                return
            windows, ends = np.stack([w for w, _ in completed]), np.asarray([l for _, l in completed], np.int64)
        block = RowBlock(prefix, ends, self.source.next_seqs(len(ends)))
        items.append(Item(self.source.name, block.first_seq, now, block.origin(0), features=windows, rows=block))


class _LineOrigins:
    """The origins of a chunk's rows ("<prefix>line N"), made only for the few rows that are rejected."""

    def __init__(self, prefix: str, line_numbers: np.ndarray):
        self.prefix, self.line_numbers = prefix, line_numbers

    def __len__(self) -> int:
        return len(self.line_numbers)

    def __getitem__(self, k: int) -> str:
        return f"{self.prefix}line {self.line_numbers[k]}"
