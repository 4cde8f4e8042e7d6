"""GANomaly for feature vectors (flow-record windows): MLP encoder -> decoder -> encoder, MLP
discriminator; the same losses, output names and score components as the image model.

residual_mean is the mean squared error over features; residual_max the largest single-feature
squared error (one absurd field, e.g. a byte count, is an anomaly even if the rest is normal).
latent_knn: the distance from E(x) to the nearest normal training code (models/memory.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .memory import NearestCode
from .scoring_module import ScoringModule


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


class TabularScoring(ScoringModule):
    """Exportable scorer: feature windows in, named score components out (no heatmap).
    With a memory of normal codes (memory.NearestCode) it also outputs latent_knn (and latent_lof)."""

    def __init__(self, generator: TabularGANomaly, with_latent: bool = True, nearest_code: NearestCode | None = None):
        super().__init__()
        self.generator = generator
        self.with_latent = with_latent
        self.nearest_code = nearest_code

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.generator
        latent_in = g.encoder(features)
        reconstruction = g.decoder(latent_in)
        error = (features - reconstruction).pow(2)
        outputs = {}
        if self.with_latent:
            outputs["latent_distance"] = (latent_in - g.encoder_reconstruction(reconstruction)).pow(2).mean(dim=1)
        if self.nearest_code is not None:
            outputs.update(self.nearest_code(latent_in))
        outputs["residual_mean"] = error.mean(dim=1)
        outputs["residual_max"] = error.amax(dim=1)
        return outputs
