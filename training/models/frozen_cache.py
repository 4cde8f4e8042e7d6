"""Outputs of frozen layers, computed once per distinct input while a model on top of them trains.

A pretrained backbone (and a patch memory's nearest-neighbour search, whose memory is fixed once
drawn) never changes while the GAN on its features trains, yet every training step and every
selection round ran it again: on 2 cores that was about 90% of a backbone run (elpv_mono's 300 px
frames: about 1.4 s of a 1.5 s step, 40-50 s a selection round), and the 10-minute budget ended
training after 43-156 steps. The inputs recur: training draws the same whole frames every epoch
(as photographed or brightened, and under the flips and quarter turns a config states: at most 16
versions of each) and every selection round scores the same held-out frames and synthetic copies.
So each input item is keyed by a digest of its bytes and its outputs are kept, up to a byte limit;
beyond it they are computed and not kept. Exact: a frozen network in eval mode gives an item the
same output whatever batch it came in (up to float summation order).

Never part of an exported model: the family drops the training draws' cache when training ends, and
what is exported (and counted in FLOPs) is the scorer's cache-free copy (ScoringModule.exportable); the
held-out frames' cache lives on through the calibration, which scores those frames again.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import torch

Outputs = dict[str, torch.Tensor]
AVAILABLE_SHARE = 4  # a cache takes at most 1/this of the memory available when it is made


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory the kernel says are available without swapping (MemAvailable), or None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cache_limit(ceiling: int, available: int | None = None) -> int:
    """At most `ceiling` bytes, and at most a quarter of the memory available now: a small edge box
    that trains beside other work keeps what it needs (unknown availability: the ceiling)."""
    available = available_memory() if available is None else available
    return ceiling if available is None else max(0, min(ceiling, available // AVAILABLE_SHARE))


def item_key(item: torch.Tensor) -> bytes:
    """A digest of an item's shape, dtype and bytes."""
    data = item.detach().cpu().contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16)
    digest.update(repr((tuple(data.shape), str(data.dtype))).encode())
    return digest.digest()


class FrozenOutputs:
    """`compute` (a batch -> named per-item outputs, each with the batch as its first dimension) with
    its outputs kept per distinct input item, at most `max_bytes` of them (kept on the CPU)."""

    def __init__(self, compute: Callable[[torch.Tensor], Outputs], max_bytes: int):
        self.compute = compute
        self.max_bytes = max_bytes
        self.kept: dict[bytes, Outputs] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.kept_seconds = 0.0  # spent computing the outputs now kept: work a later call does not repeat

    def __call__(self, batch: torch.Tensor) -> Outputs:
        keys = [item_key(item) for item in batch]
        missing = [i for i, key in enumerate(keys) if key not in self.kept]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[bytes, Outputs] = {}
        if missing:
            started = time.perf_counter()
            with torch.no_grad():
                computed = self.compute(batch[missing])
            per_item = (time.perf_counter() - started) / len(missing)
            for row, i in enumerate(missing):
                outputs = {name: value[row].detach().cpu().clone() for name, value in computed.items()}
                fresh[keys[i]] = outputs
                size = sum(value.numel() * value.element_size() for value in outputs.values())
                if self.bytes + size <= self.max_bytes:
                    self.kept[keys[i]] = outputs
                    self.bytes += size
                    self.kept_seconds += per_item
        rows = [self.kept.get(key) or fresh[key] for key in keys]
        return {name: torch.stack([row[name] for row in rows]).to(batch.device) for name in rows[0]}
