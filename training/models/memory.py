"""Nearest normal code: the latent_knn score component shared by the image and tabular GANomaly.

Normal data is often a mixture of distinct modes (protocols and services in traffic, several digits
or part variants on one line). An anomaly the decoder happens to reconstruct well still lands away
from every normal code, so the distance from E(x) to the nearest of a memory of normal training
codes, stored in the exported graph, is a score of its own. The nearest code is found as the argmin
of |m|^2 - 2 z.m (one matrix product, exportable); its distance is then taken directly, because the
expanded form cancels badly near zero. The result, a root mean squared difference, is the classic
nearest-neighbour detector's Euclidean distance up to a constant.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..torch_scoring import modes_kept


@torch.no_grad()
def latent_memory(encoder: nn.Module, items: np.ndarray, size: int, seed: int, batch_size: int = 1024) -> torch.Tensor:
    """The encoder's flattened codes of at most `size` normal model inputs (a seeded random subset
    when there are more), on the CPU."""
    if len(items) > size:
        items = items[np.sort(np.random.default_rng(seed).choice(len(items), size, replace=False))]
    device = next(encoder.parameters()).device
    with modes_kept(encoder):
        encoder.eval()
        codes = [encoder(torch.from_numpy(np.ascontiguousarray(items[i:i + batch_size], dtype=np.float32)).to(device))
                 .flatten(1).cpu() for i in range(0, len(items), batch_size)]
    return torch.cat(codes).float()


class NearestCode(nn.Module):
    """codes (N, D) -> (N,) root mean squared difference to the nearest memory code."""

    def __init__(self, memory: torch.Tensor):
        super().__init__()
        self.register_buffer("memory", memory.detach().float().clone())
        self.register_buffer("memory_sq", self.memory.pow(2).sum(dim=1))

    @property
    def flops_per_item(self) -> int:
        return 2 * self.memory.numel()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        nearest = self.memory[(self.memory_sq - 2 * codes @ self.memory.t()).argmin(dim=1)]
        return (codes - nearest).pow(2).mean(dim=1).sqrt()
