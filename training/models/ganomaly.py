"""GANomaly (Akcay et al., 2018): encoder -> decoder -> encoder generator plus a DCGAN discriminator.

Training losses (weights configurable, defaults 1 / 50 / 1):
  adversarial: feature matching, || f(x) - f(G(x)) ||^2 on discriminator features
  contextual:  || x - G(x) ||_1
  encoder:     || E(x) - E'(G(x)) ||^2

Scoring outputs (`GANomalyScoring`, the module that is exported to ONNX):
  latent_distance  mean (E(x) - E'(G(x)))^2            -- the paper's score
  residual_mean    mean of the per-pixel error          -- global reconstruction error
  residual_max     max of the locally averaged error    -- small local defects (specks, cracks)
  structure_max    max of 1 - SSIM between the input and its reconstruction (7x7 windows; Bergmann et
                   al., 2019: structure, not intensity, on textured surfaces) -- a candidate of the
                   recipe's score choice, exported only when scored or to be chosen
  latent_knn       distance of E(x) to the nearest normal training code (with a memory, memory.py)
  latent_lof       local outlier factor of E(x) among the normal training codes (memory.py)
  anomaly_map      the locally averaged error map (N, 1, H, W), the heatmap
Which combination is the anomaly score is the card's decision, chosen by the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import Decoder, Encoder, dcgan_init, local_mean
from .memory import NearestCode
from .scoring_module import ScoringModule


@dataclass(frozen=True)
class GANomalyShape:
    height: int
    width: int
    channels: int
    base_width: int = 16
    latent_dim: int = 100


class GANomaly(nn.Module):
    """The generator: forward returns the reconstruction and both latent codes by name."""

    def __init__(self, shape: GANomalyShape):
        super().__init__()
        self.shape = shape
        args = (shape.height, shape.width, shape.channels, shape.base_width, shape.latent_dim)
        self.encoder = Encoder(*args)
        self.decoder = Decoder(*args)
        self.encoder_reconstruction = Encoder(*args)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        latent_in = self.encoder(x)
        reconstruction = self.decoder(latent_in)
        latent_out = self.encoder_reconstruction(reconstruction)
        return {"reconstruction": reconstruction, "latent_in": latent_in, "latent_out": latent_out}


class GANomalyDiscriminator(nn.Module):
    """DCGAN discriminator; forward returns its features (for feature matching) and the logit."""

    def __init__(self, shape: GANomalyShape, spectral_norm: bool = False):
        super().__init__()
        self.body = Encoder(shape.height, shape.width, shape.channels, shape.base_width, 1, spectral_norm=spectral_norm)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body.features(x)
        return {"features": features, "logit": self.body.to_latent(features).flatten(1)}


def residual_map(x: torch.Tensor, reconstruction: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel reconstruction error, averaged over channels: (N, 1, H, W)."""
    diff = x - reconstruction
    error = diff.abs() if kind == "l1" else diff.pow(2)
    return error.mean(dim=1, keepdim=True)


STRUCTURE_WINDOW = 7  # Bergmann et al. used 11 px windows on 128 px crops; the default tile is 64 px


class BoxMean(nn.Module):
    """Mean of every window x window neighbourhood of (N, channels, height, width) maps, border windows
    over their pixels inside the map (as avg_pool2d with count_include_pad=False), computed as a
    depthwise convolution: on the CPU several times faster than the pooling kernel. Kernel and border
    counts are buffers, so the ONNX export sees fixed shapes."""

    def __init__(self, channels: int, height: int, width: int, window: int = STRUCTURE_WINDOW):
        super().__init__()
        self.channels, self.pad = channels, window // 2
        self.register_buffer("kernel", torch.ones(channels, 1, window, window), persistent=False)
        counts = nn.functional.conv2d(torch.ones(1, 1, height, width), torch.ones(1, 1, window, window), padding=self.pad)
        self.register_buffer("counts", counts, persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(maps, self.kernel, padding=self.pad, groups=self.channels) / self.counts


def structure_map(x: torch.Tensor, reconstruction: torch.Tensor, box: BoxMean | None = None) -> torch.Tensor:
    """Per-pixel structural dissimilarity (1 - SSIM) / 2 in [0, 1] over STRUCTURE_WINDOW-pixel windows,
    averaged over channels: (N, 1, H, W). Inputs in [-1, 1], taken to [0, 1] first: SSIM's luminance
    term assumes intensities >= 0 (around 0 it would call any offset total dissimilarity). Unlike the
    squared residual it scores a change of local contrast and correlation more than an intensity offset.
    `box`: the BoxMean over 5 x channels maps of this size (made here when not given)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    box = box or BoxMean(5 * x.shape[1], x.shape[-2], x.shape[-1]).to(x.device)
    x, y = (x + 1) / 2, (reconstruction + 1) / 2
    mu_x, mu_y, xx, yy, xy = box(torch.cat([x, y, x * x, y * y, x * y], dim=1)).chunk(5, dim=1)
    var_x, var_y, covariance = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ((1 - ssim) / 2).mean(dim=1, keepdim=True)


class GANomalyScoring(ScoringModule):
    """Exportable scorer: image batch in, named score components and the anomaly map out."""

    def __init__(self, generator: GANomaly, pool_kernel: int = 9, residual: str = "l2", with_latent: bool = True,
                 nearest_code: NearestCode | None = None, with_structure: bool = False):
        super().__init__()
        if residual not in ("l1", "l2"):
            raise ValueError(f"residual must be 'l1' or 'l2', got {residual!r}")
        self.generator = generator
        self.pool_kernel = pool_kernel
        self.residual = residual
        self.with_latent = with_latent  # the second encoder costs a third of the FLOPs: export it only if scored
        self.nearest_code = nearest_code
        self.with_structure = with_structure  # structure_max: a few more pooled maps; only when scored or a candidate
        shape = generator.shape
        self.box = BoxMean(5 * shape.channels, shape.height, shape.width)

    def keep_structure(self, kept: bool) -> None:
        self.with_structure = kept

    @property
    def flops_per_item(self) -> int:
        """structure_max's work outside layers (for training.flops, which counts 2 FLOPs a multiply-add):
        five box means of window^2 multiply-adds per pixel and channel, and about 35 element-wise
        operations per pixel and channel (the SSIM terms, the division by the border counts)."""
        if not self.with_structure:
            return 0
        shape = self.generator.shape
        return shape.height * shape.width * shape.channels * (2 * 5 * STRUCTURE_WINDOW ** 2 + 35)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        generator = self.generator
        latent_in = generator.encoder(image)
        reconstruction = generator.decoder(latent_in)
        error = residual_map(image, reconstruction, self.residual)
        anomaly_map = local_mean(error, self.pool_kernel)
        outputs = {}
        if self.with_latent:
            latent_out = generator.encoder_reconstruction(reconstruction)
            outputs["latent_distance"] = (latent_in - latent_out).pow(2).flatten(1).mean(dim=1)
        if self.nearest_code is not None:
            outputs.update(self.nearest_code(latent_in.flatten(1)))
        outputs["residual_mean"] = error.flatten(1).mean(dim=1)
        outputs["residual_max"] = anomaly_map.flatten(1).amax(dim=1)
        if self.with_structure:
            outputs["structure_max"] = structure_map(image, reconstruction, self.box).flatten(1).amax(dim=1)
        outputs["anomaly_map"] = anomaly_map
        return outputs
