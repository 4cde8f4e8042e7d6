"""AnoGAN family, f-AnoGAN style: a WGAN-GP generator and critic trained on normal images, then an
encoder trained with both frozen (izi_f), so scoring is one forward pass instead of AnoGAN's
per-image latent search.

Scoring outputs (`AnoGANScoring`, exported to ONNX):
  residual_mean     mean squared pixel residual || x - G(E(x)) ||^2
  residual_max      max of the locally averaged residual map (small local defects)
  feature_residual  mean squared residual of critic features || f(x) - f(G(E(x))) ||^2
  anomaly_map       the locally averaged residual map (N, 1, H, W)
  latent_knn, latent_lof  with a memory of normal codes (`NearestCode`): where E(x) lies among the
                    encoder's codes of the fitted items, as for GANomaly
The AnoGAN score (1 - lambda) * residual + lambda * feature_residual is the card's weighted sum
of these components (weights {residual_mean: 1 - lambda, feature_residual: lambda}).

The tabular variant (flow-feature windows) has MLPs in the same roles and the same outputs except
the map: residual_max is the largest single-feature squared error there.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Decoder, Encoder, dcgan_init, local_mean
from .ganomaly import GANomalyShape, residual_map
from .memory import NearestCode
from .scoring_module import ScoringModule
from .tabular import TabularDiscriminator, mlp


class Critic(nn.Module):
    """WGAN critic: DCGAN convolutions without batch norm (the gradient penalty is per sample)."""

    def __init__(self, shape: GANomalyShape, spectral_norm: bool = False):
        super().__init__()
        self.body = Encoder(shape.height, shape.width, shape.channels, shape.base_width, 1, batch_norm=False,
                            spectral_norm=spectral_norm)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body.features(x)
        return {"features": features, "critic": self.body.to_latent(features).flatten(1)}


class AnoGAN(nn.Module):
    """Generator (z -> image) and encoder (image -> z); z is bounded by tanh as in f-AnoGAN."""

    def __init__(self, shape: GANomalyShape):
        super().__init__()
        self.shape = shape
        args = (shape.height, shape.width, shape.channels, shape.base_width, shape.latent_dim)
        self.generator = Decoder(*args)
        self.encoder = Encoder(*args)
        dcgan_init(self)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, self.shape.latent_dim, 1, 1, generator=generator) * 2 - 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        return {"latent": z, "reconstruction": self.generator(z)}


class LatentCode(nn.Module):
    """x -> E(x), the bounded code an AnoGAN model scores with (for building the memory of normal codes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)


class TabularCritic(TabularDiscriminator):
    """WGAN critic for feature windows (an MLP without batch norm)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {"features": features, "critic": self.classify(features)}


class TabularAnoGAN(nn.Module):
    """Generator (z -> feature window) and encoder (window -> z, tanh-bounded) as MLPs."""

    def __init__(self, width: int, hidden: int = 128, latent_dim: int = 16):
        super().__init__()
        self.width = width
        self.latent_dim = latent_dim
        self.generator = mlp([latent_dim, hidden // 2, hidden, width])
        self.encoder = mlp([width, hidden, hidden // 2, latent_dim])

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, self.latent_dim, generator=generator) * 2 - 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        return {"latent": z, "reconstruction": self.generator(z)}


class AnoGANScoring(ScoringModule):
    """Exportable single-pass scorer: encoder -> generator -> critic features -> components and map."""

    def __init__(self, model: AnoGAN, critic: Critic, pool_kernel: int = 9, residual: str = "l2",
                 nearest_code: NearestCode | None = None):
        super().__init__()
        self.model = model
        self.critic = critic
        self.pool_kernel = pool_kernel
        self.residual = residual
        self.nearest_code = nearest_code

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        code = self.model.encode(image)
        return self.components(image, self.model.generator(code), code)

    def components(self, image: torch.Tensor, reconstruction: torch.Tensor, code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score components of images against the reconstructions G(code) (code = E(x) in a single
        pass, the searched z in latent search); the memory components judge the code."""
        error = residual_map(image, reconstruction, self.residual)
        anomaly_map = local_mean(error, self.pool_kernel)
        feature_error = (self.critic(image)["features"] - self.critic(reconstruction)["features"]).pow(2)
        outputs = {
            "residual_mean": error.flatten(1).mean(dim=1),
            "residual_max": anomaly_map.flatten(1).amax(dim=1),
            "feature_residual": feature_error.flatten(1).mean(dim=1),
            "anomaly_map": anomaly_map,
        }
        return with_memory_components(outputs, self.nearest_code, code)


class TabularAnoGANScoring(ScoringModule):
    """Exportable single-pass scorer for feature windows: the same components, no map."""

    def __init__(self, model: TabularAnoGAN, critic: TabularCritic, nearest_code: NearestCode | None = None):
        super().__init__()
        self.model = model
        self.critic = critic
        self.nearest_code = nearest_code

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        code = self.model.encode(features)
        return self.components(features, self.model.generator(code), code)

    def components(self, features: torch.Tensor, reconstruction: torch.Tensor, code: torch.Tensor) -> dict[str, torch.Tensor]:
        error = (features - reconstruction).pow(2)
        feature_error = (self.critic(features)["features"] - self.critic(reconstruction)["features"]).pow(2)
        outputs = {"residual_mean": error.mean(dim=1), "residual_max": error.amax(dim=1),
                   "feature_residual": feature_error.mean(dim=1)}
        return with_memory_components(outputs, self.nearest_code, code)


def with_memory_components(outputs: dict[str, torch.Tensor], nearest_code: NearestCode | None,
                           code: torch.Tensor) -> dict[str, torch.Tensor]:
    return outputs if nearest_code is None else {**outputs, **nearest_code(code.flatten(1))}
