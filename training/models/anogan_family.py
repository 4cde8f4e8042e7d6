"""The AnoGAN family (f-AnoGAN) for the training driver: two phases.

1. "gan", WGAN-GP: `n_critic` critic steps (Wasserstein loss + gradient penalty) per generator step,
   Adam(lr, betas=(0, 0.9)) as in Gulrajani et al. With `reconstruction_weight` > 0 each generator
   step also fits encoder and generator to reconstruct the real batch (weight * || x - G(E(x)) ||^2),
   so G learns the data's modes from a supervised signal as well as from the critic and E starts
   phase 2 as an inverse of G already (f-AnoGAN as published: 0).
2. "encoder", izi_f: the encoder learns to invert the frozen generator, || x - G(E(x)) ||^2 plus
   `feature_weight` * || f(x) - f(G(E(x))) ||^2 on critic features.
Stability options that apply to a Wasserstein critic: spectral normalisation, two-time-scale
learning rates, gradient clipping (label smoothing and re-initialisation are for BCE discriminators;
a critic's loss has no collapse floor). Checkpoint selection picks among encoder-phase epochs; the
weights after the GAN phase are kept in checkpoint_gan_phase.pt.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..diagnostics import diversity_ratio
from ..driver import atomic_torch_save
from ..family import Family, Grid, Phase, clip_gradients
from ..items import ImageShape, TableShape
from .anogan import AnoGAN, AnoGANScoring, Critic, LatentCode, TabularAnoGAN, TabularAnoGANScoring, TabularCritic
from .ganomaly import GANomalyShape
from .losses import gradient_penalty, izi_f_loss, wasserstein_critic_loss
from .scoring_module import ScoringModule


def build_anogan(shape: ImageShape | TableShape, base_width: int, latent_dim: int,
                 spectral_norm: bool) -> tuple[nn.Module, nn.Module]:
    """(generator + encoder, critic): convolutional for images, MLPs for feature windows."""
    if isinstance(shape, TableShape):
        return (TabularAnoGAN(shape.width, base_width, latent_dim),
                TabularCritic(shape.width, base_width, spectral_norm))
    geometry = GANomalyShape(shape.height, shape.width, shape.channels, base_width, latent_dim)
    return AnoGAN(geometry), Critic(geometry, spectral_norm=spectral_norm)


def anogan_scoring(config, shape, model: nn.Module, critic: nn.Module, nearest_code=None) -> ScoringModule:
    if isinstance(shape, TableShape):
        return TabularAnoGANScoring(model, critic, nearest_code)
    return AnoGANScoring(model, critic, config.score.pool_kernel, config.score.residual, nearest_code)


class AnoGANFamily(Family):
    loss_fields = ["critic_wasserstein", "gradient_penalty", "generator", "joint_reconstruction", "encoder",
                   "diversity"]

    def __init__(self, config, items, shape, device):
        super().__init__(config, items, shape, device)
        self.model_, self.critic = build_anogan(shape, config.model.base_width, config.model.latent_dim,
                                                config.stability.spectral_norm)
        self.model_.to(device)
        self.critic.to(device)
        self.fixed_z: torch.Tensor | None = None

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model_, "critic": self.critic}

    @property
    def selected_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model_}

    @property
    def model(self) -> nn.Module:
        return self.model_

    def phases(self) -> list[Phase]:
        options = self.config.anogan
        return [Phase("gan", options.gan_steps, options.n_critic, "generated samples"),
                Phase("encoder", options.encoder_steps)]

    def begin(self, phase: Phase) -> dict[str, torch.optim.Optimizer]:
        options, model = self.config.anogan, self.model_
        if phase.name == "gan":
            joint = list(model.encoder.parameters()) if options.reconstruction_weight > 0 else []
            return {"opt_g": torch.optim.Adam(list(model.generator.parameters()) + joint, lr=options.lr,
                                              betas=(0.0, 0.9)),
                    "opt_c": torch.optim.Adam(self.critic.parameters(),
                                              lr=options.lr * self.config.stability.discriminator_lr_factor,
                                              betas=(0.0, 0.9))}
        for module in (model.generator, self.critic):  # izi_f: only the encoder learns
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
        return {"opt_e": torch.optim.Adam(model.encoder.parameters(), lr=options.lr, betas=(0.5, 0.999))}

    def step(self, phase: Phase, next_batch: Callable[[], torch.Tensor], sampler: torch.Generator,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        if phase.name == "gan":
            return self._gan_step(next_batch, sampler, optimizers)
        x = next_batch()
        reconstruction = self.model_.generator(self.model_.encode(x))
        loss = izi_f_loss(self.critic, x, reconstruction, self.config.anogan.feature_weight)
        optimizers["opt_e"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["opt_e"].step()
        return {"encoder": loss.item(), "diversity": diversity_ratio(reconstruction, x)}

    def _gan_step(self, next_batch, sampler, optimizers) -> dict[str, float]:
        options, model, critic = self.config.anogan, self.model_, self.critic
        grad_clip = self.config.stability.grad_clip
        for _ in range(options.n_critic):
            real = next_batch()
            fake = model.generator(model.sample_latent(len(real), sampler).to(self.device)).detach()
            wasserstein = wasserstein_critic_loss(critic, real, fake)
            penalty = gradient_penalty(critic, real, fake, sampler)
            loss_c = wasserstein + options.gp_weight * penalty
            optimizers["opt_c"].zero_grad(set_to_none=True)
            loss_c.backward()
            clip_gradients(critic, grad_clip)
            optimizers["opt_c"].step()
        fake = model.generator(model.sample_latent(len(real), sampler).to(self.device))
        loss_g = -critic(fake)["critic"].mean()
        loss, logged = loss_g, {}
        if options.reconstruction_weight > 0:
            reconstruction_error = (real - model.generator(model.encode(real))).pow(2).mean()
            loss = loss + options.reconstruction_weight * reconstruction_error
            logged["joint_reconstruction"] = reconstruction_error.item()
        optimizers["opt_g"].zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, grad_clip)  # the encoder has gradients only in a joint start
        optimizers["opt_g"].step()
        return {"critic_wasserstein": wasserstein.item(), "gradient_penalty": penalty.item(), "generator": loss_g.item(),
                "diversity": diversity_ratio(fake, real), **logged}

    def postfix(self, phase: Phase, logged: dict[str, float]) -> dict[str, str]:
        if phase.name == "gan":
            return {"w": f"{-logged['critic_wasserstein']:.3f}", "gp": f"{logged['gradient_penalty']:.3f}"}
        return {"enc": f"{logged['encoder']:.4f}"}

    def grids(self, phase: Phase, shown: torch.Tensor, epoch: int, total: int) -> dict[str, Grid]:
        model = self.model_
        if phase.name == "gan":
            if self.fixed_z is None:
                seeded = torch.Generator().manual_seed(self.config.train.seed + 1)
                self.fixed_z = model.sample_latent(len(shown), seeded).to(self.device)
            model.generator.eval()
            with torch.no_grad():
                samples = model.generator(self.fixed_z)
            model.generator.train()
            return {"samples": Grid(samples, f"GAN phase, epoch {epoch} of {total}: samples from fixed codes",
                                    labels=("sample", ""))}
        model.encoder.eval()
        with torch.no_grad():
            reconstructions = model.generator(model.encode(shown))
        model.encoder.train()
        return {"reconstructions": Grid(shown, f"encoder phase, epoch {epoch}: real items over their reconstructions",
                                        reconstructions)}

    def end_phase(self, phase: Phase, run) -> None:
        if phase.name == "gan":
            atomic_torch_save({"model": self.model_.state_dict(), "critic": self.critic.state_dict(), "phase": "gan"},
                              run.gan_phase_checkpoint)

    def scoring(self, fitted: np.ndarray | None) -> ScoringModule:
        return anogan_scoring(self.config, self.shape, self.model_, self.critic,
                              self.nearest_code(LatentCode(self.model_), fitted))
