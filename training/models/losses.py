"""Training losses of the families, as functions of model outputs (the driver and the steps stay plain).

GANomaly (Akcay et al., 2018): the generator minimises weighted adversarial feature matching,
contextual L1 and encoder L2; the discriminator binary cross-entropy on real vs reconstructed, with
one-sided label smoothing. AnoGAN (f-AnoGAN, Schlegl et al., 2019): a Wasserstein critic with
gradient penalty, then an izi_f encoder loss on pixels and critic features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def contextual_loss(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    return (reconstruction - x).abs().mean()


def encoder_loss(latent_in: torch.Tensor, latent_out: torch.Tensor) -> torch.Tensor:
    return (latent_out - latent_in).pow(2).mean()


def feature_matching_loss(discriminator: nn.Module, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """|| f(x) - f(G(x)) ||^2 on discriminator features; the real side is a constant target."""
    real_features = discriminator(x)["features"].detach()
    return (discriminator(fake)["features"] - real_features).pow(2).mean()


def discriminator_loss(discriminator: nn.Module, x: torch.Tensor, fake: torch.Tensor, real_target: float) -> torch.Tensor:
    """Binary cross-entropy, real items labelled `real_target` (1 - label smoothing), reconstructions 0."""
    bce = nn.functional.binary_cross_entropy_with_logits
    logits_real = discriminator(x)["logit"]
    logits_fake = discriminator(fake.detach())["logit"]
    return 0.5 * (bce(logits_real, torch.full_like(logits_real, real_target))
                  + bce(logits_fake, torch.zeros_like(logits_fake)))


def smoothing_floor(smoothing: float) -> float:
    """The least BCE loss a perfect discriminator reaches when real targets are 1 - s (0 without
    smoothing): half the binary entropy of s. A collapse is a loss near that floor, not near 0."""
    if smoothing <= 0:
        return 0.0
    return 0.5 * float(-(smoothing * np.log(smoothing) + (1 - smoothing) * np.log(1 - smoothing)))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): E[(|| grad_x critic(x_hat) ||_2 - 1)^2] on random interpolates."""
    alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator).to(real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mixed)["critic"]
    grads = torch.autograd.grad(score.sum(), mixed, create_graph=True)[0]
    return (grads.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def wasserstein_critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[critic(fake)] - E[critic(real)]: the negative Wasserstein estimate the critic minimises."""
    return critic(fake)["critic"].mean() - critic(real)["critic"].mean()


def izi_f_loss(critic: nn.Module, x: torch.Tensor, reconstruction: torch.Tensor, feature_weight: float) -> torch.Tensor:
    """|| x - G(E(x)) ||^2 + feature_weight * || f(x) - f(G(E(x))) ||^2 (f: critic features)."""
    return (x - reconstruction).pow(2).mean() + feature_weight * (
        critic(x)["features"] - critic(reconstruction)["features"]).pow(2).mean()
