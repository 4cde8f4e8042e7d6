"""The autoencoder family: the reference without a GAN. GANomaly's generator trained on the contextual
(L1 reconstruction) loss alone and scored like GANomaly; also the smallest example of a family (its
networks, phase, grids and scorer come from GeneratorFamily; it adds optimisers and one step).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..diagnostics import diversity_ratio
from ..family import Phase, clip_gradients
from .ganomaly_family import GeneratorFamily
from .losses import contextual_loss, encoder_loss


class AutoencoderFamily(GeneratorFamily):
    loss_fields = ["contextual", "encoder", "generator", "diversity"]

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
