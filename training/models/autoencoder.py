"""The autoencoder family: the reference without a GAN. GANomaly's generator trained on the
contextual (L1 reconstruction) loss alone, scored like GANomaly. It is also the smallest example
of a family: models, optimisers, one step, grids and the scorer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..diagnostics import diversity_ratio
from ..family import Family, Grid, Phase, clip_gradients
from .ganomaly_family import build_generator, generator_scoring, reconstruction_grid
from .losses import contextual_loss, encoder_loss


class AutoencoderFamily(Family):
    loss_fields = ["contextual", "encoder", "generator", "diversity"]

    def __init__(self, config, items, shape, device):
        super().__init__(config, items, shape, device)
        self.shape = shape
        self.generator = build_generator(shape, config.model.base_width, config.model.latent_dim).to(device)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    @property
    def model(self) -> nn.Module:
        return self.generator

    def phases(self) -> list[Phase]:
        return [Phase("train", self.config.train.steps)]

    def begin(self, phase: Phase) -> dict[str, torch.optim.Optimizer]:
        self.generator.train()
        train = self.config.train
        return {"opt_g": torch.optim.Adam(self.generator.parameters(), lr=train.lr, betas=tuple(train.betas))}

    def step(self, phase: Phase, next_batch: Callable[[], torch.Tensor], sampler: torch.Generator,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        x = next_batch()
        out = self.generator(x)
        loss_con = contextual_loss(x, out["reconstruction"])
        loss = self.config.loss.contextual * loss_con
        optimizers["opt_g"].zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.generator, self.config.stability.grad_clip)
        optimizers["opt_g"].step()
        return {"contextual": loss_con.item(), "generator": loss.item(),
                "encoder": encoder_loss(out["latent_in"], out["latent_out"]).item(),
                "diversity": diversity_ratio(out["reconstruction"], x)}

    def postfix(self, phase: Phase, logged: dict[str, float]) -> dict[str, str]:
        return {"con": f"{logged['contextual']:.4f}"}

    def grids(self, phase: Phase, shown: torch.Tensor, epoch: int, total: int) -> dict[str, Grid]:
        return {"reconstructions": reconstruction_grid(self.generator, shown,
                                                        f"epoch {epoch} of {total}: real items over their reconstructions")}

    def scoring(self, fitted: np.ndarray | None) -> nn.Module:
        return generator_scoring(self.config, self.shape, self.generator,
                                 self.nearest_code(self.generator.encoder, fitted))
