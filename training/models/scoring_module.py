"""The base of every family's exportable scorer.

A scorer maps a batch of items to named outputs (score components, and `anomaly_map` for images);
that is what is exported. Training asks a few more things of it: a copy to export without
training-time caches, whether its heatmap can be put in the score's units, whether it can add the
structure_max candidate, and what one-time work it did. The defaults here are those of a scorer that
has none of these, so training calls them on every family's scorer without asking which it is.
"""

from __future__ import annotations

from torch import nn


class ScoringModule(nn.Module):
    """forward(items) -> {component: (N,) tensor, "anomaly_map": (N, 1, H, W) for images}."""

    map_in_score_units = False  # after use_score_units, anomaly_map is the score's own weighted sum of maps

    def __init__(self):
        super().__init__()
        self.nearest_code = None  # a memory of normal latent codes (latent_knn, latent_lof), where a family keeps one
        self.frozen_cache = None  # while training: frozen outputs kept for later rounds (never exported)
        self.memory_build_seconds = 0.0  # one-time work of this scorer that later ones reuse (a patch memory drawn)

    def exportable(self) -> "ScoringModule":
        """The scorer to export and count (FLOPs): this one, or a copy without training-time caches."""
        return self

    def input_description(self, height: int, width: int) -> str:
        """For the card's score description: what happens to a height x width input before the network
        sees it, where anything does ("" here)."""
        return ""

    def use_score_units(self, score) -> None:
        """Put the heatmap in the units of `score` (a ScoreDefinition), where map_in_score_units says it can."""

    def keep_structure(self, kept: bool) -> None:
        """Whether structure_max is computed: a candidate while the score is chosen, exported only when chosen."""
