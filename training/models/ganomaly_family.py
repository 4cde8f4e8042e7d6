"""The GANomaly family for the training driver: generator and discriminator, one step, its scorer.

Each step updates the generator (adversarial feature matching + contextual L1 + encoder L2), then
the discriminator (binary cross-entropy on real vs reconstructed). Stability options (config
section `stability`): spectral normalisation of the discriminator, one-sided label smoothing,
two-time-scale learning rates, gradient clipping, and re-initialising the discriminator when its
loss collapses below `discriminator_reset_below`, as the original GANomaly does.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..diagnostics import diversity_ratio
from ..family import Family, Grid, Phase, clip_gradients
from ..items import ImageShape, TableShape
from .blocks import dcgan_init
from .ganomaly import GANomaly, GANomalyDiscriminator, GANomalyScoring, GANomalyShape
from .losses import contextual_loss, discriminator_loss, encoder_loss, feature_matching_loss, smoothing_floor
from .scoring_module import ScoringModule
from .tabular import TabularDiscriminator, TabularGANomaly, TabularScoring

log = logging.getLogger(__name__)


def build_generator(shape: ImageShape | TableShape, base_width: int, latent_dim: int) -> nn.Module:
    """The encoder-decoder-encoder generator: convolutional for images, MLPs for feature windows."""
    if isinstance(shape, TableShape):
        return TabularGANomaly(shape.width, base_width, latent_dim)
    return GANomaly(GANomalyShape(shape.height, shape.width, shape.channels, base_width, latent_dim))


def build_discriminator(shape: ImageShape | TableShape, base_width: int, latent_dim: int,
                        spectral_norm: bool) -> nn.Module:
    if isinstance(shape, TableShape):
        return TabularDiscriminator(shape.width, base_width, spectral_norm)
    return GANomalyDiscriminator(GANomalyShape(shape.height, shape.width, shape.channels, base_width, latent_dim),
                                 spectral_norm)


def generator_scoring(config, shape, generator: nn.Module, nearest_code) -> ScoringModule:
    """The exportable scorer over an encoder-decoder-encoder generator, with the configured components."""
    with_latent = "latent_distance" in config.score.weights
    if isinstance(shape, TableShape):
        return TabularScoring(generator, with_latent=with_latent, nearest_code=nearest_code)
    # structure_max when scored, or as a candidate while the recipe chooses the score (training.score_choice)
    with_structure = "structure_max" in config.score.weights or config.score.choice == "self_check"
    return GANomalyScoring(generator, config.score.pool_kernel, config.score.residual, with_latent=with_latent,
                           nearest_code=nearest_code, with_structure=with_structure)


def ganomaly_optimizers(generator: nn.Module, discriminator: nn.Module, config) -> dict[str, torch.optim.Optimizer]:
    """Both in training mode, and their Adam optimisers (the discriminator's learning rate scaled by
    stability.discriminator_lr_factor)."""
    train = config.train
    betas = tuple(train.betas)
    generator.train()
    discriminator.train()
    return {"opt_g": torch.optim.Adam(generator.parameters(), lr=train.lr, betas=betas),
            "opt_d": torch.optim.Adam(discriminator.parameters(),
                                      lr=train.lr * config.stability.discriminator_lr_factor, betas=betas)}


def ganomaly_step(generator: nn.Module, discriminator: nn.Module, x: torch.Tensor,
                  contextual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], config,
                  optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, float], torch.Tensor]:
    """One GANomaly update of generator then discriminator on the batch `x` (pixels or features),
    the contextual loss being `contextual(x, reconstruction)`; returns the losses and the reconstruction."""
    weights, stability = config.loss, config.stability
    out = generator(x)
    fake = out["reconstruction"]
    loss_con = contextual(x, fake)
    loss_enc = encoder_loss(out["latent_in"], out["latent_out"])
    adversarial = weights.adversarial > 0
    loss_adv = feature_matching_loss(discriminator, x, fake) if adversarial else torch.zeros((), device=x.device)
    loss_g = weights.adversarial * loss_adv + weights.contextual * loss_con + weights.encoder * loss_enc
    optimizers["opt_g"].zero_grad(set_to_none=True)
    loss_g.backward()
    clip_gradients(generator, stability.grad_clip)
    optimizers["opt_g"].step()

    loss_d = torch.zeros((), device=x.device)
    if adversarial:
        loss_d = discriminator_loss(discriminator, x, fake, 1.0 - stability.label_smoothing)
        optimizers["opt_d"].zero_grad(set_to_none=True)
        loss_d.backward()
        clip_gradients(discriminator, stability.grad_clip)
        optimizers["opt_d"].step()
        if loss_d.item() < stability.discriminator_reset_below + smoothing_floor(stability.label_smoothing):
            dcgan_init(discriminator)
            log.info("discriminator re-initialised (loss %.2g)", loss_d.item())
    return {"discriminator": loss_d.item(), "adversarial": loss_adv.item(), "contextual": loss_con.item(),
            "encoder": loss_enc.item(), "generator": loss_g.item()}, fake


class GeneratorFamily(Family):
    """A family around an encoder-decoder-encoder generator, trained in one phase and scored by
    GANomalyScoring / TabularScoring (GANomaly, the autoencoder)."""

    def __init__(self, config, items, shape, device):
        super().__init__(config, items, shape, device)
        self.generator = build_generator(shape, config.model.base_width, config.model.latent_dim).to(device)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    @property
    def model(self) -> nn.Module:
        return self.generator

    def phases(self) -> list[Phase]:
        return [Phase("train", self.config.train.steps)]

    def grids(self, phase: Phase, shown: torch.Tensor, epoch: int, total: int) -> dict[str, Grid]:
        self.generator.eval()
        with torch.no_grad():
            reconstructions = self.generator(shown)["reconstruction"]
        self.generator.train()
        return {"reconstructions": Grid(shown, f"epoch {epoch} of {total}: real items over their reconstructions",
                                        reconstructions)}

    def scoring(self, fitted: np.ndarray | None) -> ScoringModule:
        return generator_scoring(self.config, self.shape, self.generator,
                                 self.nearest_code(self.generator.encoder, fitted))


class GANomalyFamily(GeneratorFamily):
    loss_fields = ["discriminator", "adversarial", "contextual", "encoder", "generator", "diversity"]

    def __init__(self, config, items, shape, device):
        super().__init__(config, items, shape, device)
        self.discriminator = build_discriminator(shape, config.model.base_width, config.model.latent_dim,
                                                 config.stability.spectral_norm).to(device)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    @property
    def selected_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def begin(self, phase: Phase) -> dict[str, torch.optim.Optimizer]:
        return ganomaly_optimizers(self.generator, self.discriminator, self.config)

    def step(self, phase: Phase, next_batch: Callable[[], torch.Tensor], sampler: torch.Generator,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        x = next_batch()
        logged, fake = ganomaly_step(self.generator, self.discriminator, x, contextual_loss, self.config, optimizers)
        return {**logged, "diversity": diversity_ratio(fake, x)}

    def postfix(self, phase: Phase, logged: dict[str, float]) -> dict[str, str]:
        return {"d": f"{logged['discriminator']:.3f}", "con": f"{logged['contextual']:.4f}",
                "enc": f"{logged['encoder']:.4f}"}
