"""Blocks of traffic rows: many rows of one source carried, scored and journaled as one queue item.

At hundreds of thousands of rows per second a Python object per row (an Item, a ScoreResult, a dict
for the journal line) costs more than parsing, encoding and scoring the row together. A traffic
source therefore queues each run of consecutive good windows as one Item whose `rows` is a RowBlock
(`features` then holds all its windows, (n, width)); the scorer returns a FeatureScores of arrays
for it, and the journal and the metrics handle the block with array operations. Each row keeps its
own sequence number, origin and journal line, exactly as if it had travelled alone. A sink that does
not declare `takes_row_blocks` gets the rows one by one (`expand`), so every sink sees the same
decisions whichever way they travelled. Bad rows stay single rejection items between blocks, in order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..scorer import FeatureScores, ScoreResult
from .base import Item


@dataclass(slots=True)
class RowBlock:
    """Consecutive windows of one source: sequence numbers first_seq.., origins "<prefix>line N"."""

    origin_prefix: str
    line_numbers: np.ndarray  # int64: per window, the line that completed it
    first_seq: int

    def __len__(self) -> int:
        return len(self.line_numbers)

    def origin(self, k: int) -> str:
        return f"{self.origin_prefix}line {int(self.line_numbers[k])}"


def rows_of(item: Item) -> int:
    """How many rows (and journal lines) an item stands for."""
    return 1 if item.rows is None else len(item.rows)


def split(item: Item, k: int) -> tuple[Item, Item]:
    """A block item cut after its first k rows (the batcher's max_batch counts rows)."""
    block = item.rows
    head = dataclasses.replace(item, features=item.features[:k],
                               rows=RowBlock(block.origin_prefix, block.line_numbers[:k], block.first_seq))
    tail = dataclasses.replace(item, seq=block.first_seq + k, origin=block.origin(k), features=item.features[k:],
                               rows=RowBlock(block.origin_prefix, block.line_numbers[k:], block.first_seq + k))
    return head, tail


def expand(items: list[Item], results: list) -> tuple[list[Item], list[ScoreResult]]:
    """The batch with every block as its rows, one Item and one ScoreResult each."""
    if all(item.rows is None for item in items):
        return items, results
    out_items: list[Item] = []
    out_results: list[ScoreResult] = []
    for item, result in zip(items, results):
        block = item.rows
        if block is None:
            out_items.append(item)
            out_results.append(result)
            continue
        for k in range(len(block)):
            out_items.append(Item(item.source, block.first_seq + k, item.captured_at, block.origin(k),
                                  features=None if item.features is None else item.features[k],
                                  journaled=item.journaled, enqueued=item.enqueued))
        out_results.extend(result.results() if isinstance(result, FeatureScores) else [result] * len(block))
    return out_items, out_results
