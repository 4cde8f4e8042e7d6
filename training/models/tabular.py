"""GANomaly for feature vectors (flow-record windows): MLP encoder -> decoder -> encoder, MLP
discriminator; the same losses, output names and score components as the image model.

residual_mean is the mean squared error over features; residual_max the largest single-feature
squared error (one absurd field, e.g. a byte count, is an anomaly even if the rest is normal).
latent_knn is the distance (root mean squared difference, the classic kNN detector's Euclidean
distance up to a constant) between a window's code E(x) and the nearest code in a memory of
normal training windows stored in the graph: traffic is a mixture of many distinct normal
modes (protocols, services), and an attack that the decoder reconstructs well still lands away from
every normal code. The nearest code is found as the argmin of |m|^2 - 2 z.m (one matrix product, exportable, the
same for a window alone or in any batch).
The tabular AnoGAN-style variant belongs beside this module (issue "AnoGAN family").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mlp(sizes: list[int], final_activation: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(b), nn.LeakyReLU(0.2, inplace=True)]
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


class TabularGANomaly(nn.Module):
    def __init__(self, width: int, hidden: int = 128, latent_dim: int = 16):
        super().__init__()
        self.width = width
        self.encoder = mlp([width, hidden, hidden // 2, latent_dim])
        self.decoder = mlp([latent_dim, hidden // 2, hidden, width])
        self.encoder_reconstruction = mlp([width, hidden, hidden // 2, latent_dim])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        latent_in = self.encoder(x)
        reconstruction = self.decoder(latent_in)
        return {"reconstruction": reconstruction, "latent_in": latent_in,
                "latent_out": self.encoder_reconstruction(reconstruction)}


class TabularDiscriminator(nn.Module):
    """MLP without batch norm (so it also serves as a WGAN-GP critic, whose penalty is per sample);
    `logit` is the GANomaly discriminator's logit or the critic's value."""

    def __init__(self, width: int, hidden: int = 128, spectral_norm: bool = False):
        super().__init__()
        wrap = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        self.features = nn.Sequential(wrap(nn.Linear(width, hidden)), nn.LeakyReLU(0.2, inplace=True),
                                      wrap(nn.Linear(hidden, hidden // 2)), nn.LeakyReLU(0.2, inplace=True))
        self.classify = wrap(nn.Linear(hidden // 2, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {"features": features, "logit": self.classify(features)}


@torch.no_grad()
def latent_memory(generator: TabularGANomaly, windows: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """The encoder's codes of at most `size` normal windows (a seeded random subset when there are more)."""
    if len(windows) > size:
        windows = windows[np.sort(np.random.default_rng(seed).choice(len(windows), size, replace=False))]
    generator.eval()
    parameter = next(generator.parameters())
    codes = [generator.encoder(torch.from_numpy(np.ascontiguousarray(windows[i:i + 8192])).to(parameter.device)).cpu()
             for i in range(0, len(windows), 8192)]
    return torch.cat(codes).float()


class TabularScoring(nn.Module):
    """Exportable scorer: feature windows in, named score components out (no heatmap).
    With a `memory` of normal codes (latent_memory) it also outputs latent_knn."""

    def __init__(self, generator: TabularGANomaly, with_latent: bool = True, memory: torch.Tensor | None = None):
        super().__init__()
        self.generator = generator
        self.with_latent = with_latent
        self.memory: torch.Tensor | None
        self.memory_sq: torch.Tensor | None
        if memory is None:
            self.memory = self.memory_sq = None
        else:
            self.register_buffer("memory", memory.detach().float().clone())
            self.register_buffer("memory_sq", self.memory.pow(2).sum(dim=1))

    @property
    def flops_outside_layers(self) -> int:
        """The nearest-code search: one multiply-add per memory code and latent dimension."""
        return 0 if self.memory is None else 2 * self.memory.numel()

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.generator
        latent_in = g.encoder(features)
        reconstruction = g.decoder(latent_in)
        error = (features - reconstruction).pow(2)
        outputs = {}
        if self.with_latent:
            outputs["latent_distance"] = (latent_in - g.encoder_reconstruction(reconstruction)).pow(2).mean(dim=1)
        if self.memory is not None:
            # the expansion finds the nearest code; the distance is then taken directly, since the
            # expansion cancels badly near zero (and the square root would magnify that)
            expanded = self.memory_sq - 2 * latent_in @ self.memory.t()
            nearest = self.memory[expanded.argmin(dim=1)]
            outputs["latent_knn"] = (latent_in - nearest).pow(2).mean(dim=1).sqrt()
        outputs["residual_mean"] = error.mean(dim=1)
        outputs["residual_max"] = error.amax(dim=1)
        return outputs
