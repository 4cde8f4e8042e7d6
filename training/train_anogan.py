"""Training loop of the AnoGAN family (f-AnoGAN): plain PyTorch, two phases.

1. WGAN-GP: `n_critic` critic steps (Wasserstein loss + gradient penalty) per generator step,
   Adam(lr, betas=(0, 0.9)) as in Gulrajani et al.
2. izi_f encoder training with the generator and critic frozen: || x - G(E(x)) ||^2 plus
   `feature_weight` * || f(x) - f(G(E(x))) ||^2 on critic features.
Per-phase mean losses go to losses.csv; checkpoint_gan_phase.pt after phase 1 and checkpoint.pt at
the end are written atomically.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .models.anogan import AnoGAN, Critic, gradient_penalty
from .models.ganomaly import GANomalyShape
from .train import CHECKPOINT, LOSSES, atomic_torch_save, augment, random_crops, seed_everything


GAN_PHASE_CHECKPOINT = "checkpoint_gan_phase.pt"


@dataclass
class AnoGANResult:
    model: AnoGAN
    critic: Critic
    steps: int
    epochs: int
    seconds: float

    @property
    def generator(self) -> AnoGAN:  # the name fit() and the benchmark use for "the trained model"
        return self.model


def _batches(data: list[torch.Tensor], batch_size: int, config: TrainConfig, sampler: torch.Generator):
    while True:
        order = torch.randperm(len(data), generator=sampler).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            x = random_crops([data[i] for i in order[start:start + batch_size]], config.input.height,
                             config.input.width, sampler)
            yield augment(x, config, sampler)


def train_anogan(config: TrainConfig, images: np.ndarray, run_dir: Path, progress: bool = False) -> AnoGANResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    options = config.anogan
    shape = GANomalyShape(config.input.height, config.input.width, config.input.channels,
                          config.model.base_width, config.model.latent_dim)
    model, critic = AnoGAN(shape), Critic(shape, spectral_norm=options.spectral_norm)
    sampler = torch.Generator().manual_seed(config.train.seed)
    data = [torch.from_numpy(np.ascontiguousarray(item)) for item in images]
    batch_size = min(config.train.batch_size, len(data))
    batches = _batches(data, batch_size, config, sampler)
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=options.lr, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=options.lr * options.critic_lr_factor, betas=(0.0, 0.9))
    started = time.perf_counter()
    rows = []
    sums = {"critic": 0.0, "gradient_penalty": 0.0, "generator": 0.0}
    for step in range(1, options.gan_steps + 1):
        for _ in range(options.n_critic):
            real = next(batches)
            fake = model.generator(model.sample_latent(len(real), sampler)).detach()
            wasserstein = critic(fake)["critic"].mean() - critic(real)["critic"].mean()
            penalty = gradient_penalty(critic, real, fake, sampler)
            loss_c = wasserstein + options.gp_weight * penalty
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
        fake = model.generator(model.sample_latent(batch_size, sampler))
        loss_g = -critic(fake)["critic"].mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if options.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.generator.parameters(), options.grad_clip)
        opt_g.step()
        sums["critic"] += wasserstein.item()
        sums["gradient_penalty"] += penalty.item()
        sums["generator"] += loss_g.item()
    rows.append(["gan", options.gan_steps] + [f"{v / max(1, options.gan_steps):.6g}" for v in sums.values()] + [""])
    atomic_torch_save({"model": model.state_dict(), "critic": critic.state_dict(), "phase": "gan"},
                      run_dir / GAN_PHASE_CHECKPOINT)

    # Phase 2: the encoder learns to invert the frozen generator (izi_f).
    for module in (model.generator, critic):
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    opt_e = torch.optim.Adam(model.encoder.parameters(), lr=options.lr, betas=(0.5, 0.999))
    encoder_loss = 0.0
    for step in range(1, options.encoder_steps + 1):
        x = next(batches)
        reconstruction = model.generator(model.encode(x))
        loss = (x - reconstruction).pow(2).mean() + options.feature_weight * (
            critic(x)["features"] - critic(reconstruction)["features"]).pow(2).mean()
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_e.step()
        encoder_loss += loss.item()
    rows.append(["encoder", options.encoder_steps, "", "", "", f"{encoder_loss / max(1, options.encoder_steps):.6g}"])
    atomic_torch_save({"model": model.state_dict(), "critic": critic.state_dict(), "phase": "encoder"},
                      run_dir / CHECKPOINT)
    with (run_dir / LOSSES).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phase", "steps", "critic_wasserstein", "gradient_penalty", "generator", "encoder"])
        writer.writerows(rows)
    model.eval()
    steps = options.gan_steps + options.encoder_steps
    return AnoGANResult(model, critic, steps, max(1, steps * batch_size // max(1, len(data))),
                        time.perf_counter() - started)
