"""Normal code memory: the latent_knn and latent_lof score components of the image and tabular GANomaly.

Normal data is often a mixture of distinct modes (protocols and services in traffic, several digits
or part variants on one line). An anomaly the decoder happens to reconstruct well still lands away
from every normal code, so distances from E(x) to a memory of normal training codes, stored in the
exported graph, make scores of their own:

  latent_knn  root mean squared difference to the nearest memory code: the classic nearest-neighbour
              detector's Euclidean distance up to a constant.
  latent_lof  the Local Outlier Factor (Breunig et al., 2000) of E(x) among the memory codes with k
              neighbours: the reachability distance to its neighbours relative to theirs. Modes of
              unequal spread (a tight cluster of 1s next to loose 2s) make a plain distance unfair:
              a digit 1 near the tight cluster of 7s is far by that cluster's standard but near by
              a global one. Equals scikit-learn's LocalOutlierFactor(novelty=True) (tested).

Neighbours are ranked by |m|^2 - 2 z.m (one matrix product, exportable); their distances are then
taken directly, because the expanded form cancels badly near zero. Each memory code's k-distance and
local reachability density are computed once, when the memory is built.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..torch_scoring import modes_kept

# scikit-learn's guard against duplicate codes: a reachability distance sum of zero
LRD_EPSILON = 1e-10
# memory rows ranked at once while the densities are prepared: bounds that (rows x memory) matrix
RANKED_ENTRIES = 1 << 24


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


def _ranking(codes: torch.Tensor, memory: torch.Tensor, memory_sq: torch.Tensor) -> torch.Tensor:
    """(N, memory) squared distances less |z|^2: the order of the memory codes by distance, cheaply."""
    return memory_sq - 2 * codes @ memory.t()


def _neighbours(codes: torch.Tensor, memory: torch.Tensor, memory_sq: torch.Tensor, k: int,
                skip_self_from: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (N, k) ascending, indices (N, k)) of the k nearest memory codes. With
    `skip_self_from`, codes are memory rows from that index on and never their own neighbour."""
    rank = _ranking(codes, memory, memory_sq)
    if skip_self_from is not None:
        rows = torch.arange(len(codes), device=codes.device)
        rank[rows, rows + skip_self_from] = float("inf")
    index = rank.topk(k, dim=1, largest=False).indices
    distance = (memory[index] - codes.unsqueeze(1)).pow(2).sum(dim=2).sqrt()
    distance, order = distance.sort(dim=1)
    return distance, index.gather(1, order)


class NearestCode(nn.Module):
    """codes (N, D) -> {"latent_knn": (N,)} and, with `lof_neighbors`, {"latent_lof": (N,)} too."""

    def __init__(self, memory: torch.Tensor, lof_neighbors: int | None = None):
        super().__init__()
        memory = memory.detach().float().clone()
        if lof_neighbors is not None and not 1 <= lof_neighbors < len(memory):
            raise ValueError(f"latent_lof with {lof_neighbors} neighbours needs more than that many memory codes, "
                             f"got {len(memory)} (fewer fitted items than score.lof_neighbors + 1)")
        self.lof_neighbors = lof_neighbors
        self.register_buffer("memory", memory)
        self.register_buffer("memory_sq", memory.pow(2).sum(dim=1))
        if lof_neighbors is not None:
            k_distance, lrd = self._memory_densities(lof_neighbors)
            self.register_buffer("k_distance", k_distance)
            self.register_buffer("lrd", lrd)

    @torch.no_grad()
    def _memory_densities(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each memory code's k-distance and local reachability density among the other codes
        (work grows with the square of the memory size: seconds for 16,384 codes)."""
        chunk = max(1, RANKED_ENTRIES // len(self.memory))
        found = [_neighbours(self.memory[i:i + chunk], self.memory, self.memory_sq, k, skip_self_from=i)
                 for i in range(0, len(self.memory), chunk)]
        distance = torch.cat([d for d, _ in found])
        index = torch.cat([i for _, i in found])
        k_distance = distance[:, -1].contiguous()
        reach = torch.maximum(k_distance[index], distance)
        return k_distance, 1.0 / (reach.mean(dim=1) + LRD_EPSILON)

    @property
    def flops_per_item(self) -> int:
        ranking = 2 * self.memory.numel()
        return ranking if self.lof_neighbors is None else ranking + 3 * self.lof_neighbors * self.memory.shape[1]

    def forward(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        dims = codes.shape[1]
        if self.lof_neighbors is None:
            nearest = self.memory[_ranking(codes, self.memory, self.memory_sq).argmin(dim=1)]
            return {"latent_knn": (codes - nearest).pow(2).mean(dim=1).sqrt()}
        distance, index = _neighbours(codes, self.memory, self.memory_sq, self.lof_neighbors)
        reach = torch.maximum(self.k_distance[index], distance).mean(dim=1) + LRD_EPSILON
        return {"latent_knn": distance[:, 0] / dims ** 0.5,
                "latent_lof": self.lrd[index].mean(dim=1) * reach}
