"""Training loop of the AnoGAN family (f-AnoGAN), images or feature windows: plain PyTorch, two phases.

1. WGAN-GP: `n_critic` critic steps (Wasserstein loss + gradient penalty) per generator step,
   Adam(lr, betas=(0, 0.9)) as in Gulrajani et al. With `reconstruction_weight` > 0 each generator
   step also fits encoder and generator to reconstruct the real batch (weight * || x - G(E(x)) ||^2),
   so G learns the data's modes from a supervised signal as well as from the critic and E starts
   phase 2 as an inverse of G already (f-AnoGAN as published: 0).
2. izi_f encoder training with the generator and critic frozen: || x - G(E(x)) ||^2 plus
   `feature_weight` * || f(x) - f(G(E(x))) ||^2 on critic features.
Stability options (config section `stability`) that apply to a Wasserstein critic: spectral
normalisation, two-time-scale learning rates, gradient clipping (label smoothing and
re-initialisation are for BCE discriminators; a critic's loss has no collapse floor).

Diagnostics: one losses.csv row per epoch of each phase (an epoch = one pass of critic batches in
phase 1, of encoder batches in phase 2) with the diversity ratio of generated samples (phase 1) or
reconstructions (phase 2); sample grids from fixed latent codes and reconstruction grids at evenly
spaced epochs; losses.png. Checkpoint selection (config `selection`) picks among encoder-phase
epochs. checkpoint_gan_phase.pt after phase 1 and checkpoint.pt (the selected weights) at the end
are written atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .progress import progress as progress_bar
from .diagnostics import CollapseMonitor, EpochLossLog, diversity_ratio, evenly_spaced, grid_path, plot_losses, write_grid
from .models.anogan import LatentCode, anogan_scoring, build_anogan, gradient_penalty
from .selection import CheckpointSelector
from .train import (CHECKPOINT, LOSSES, atomic_torch_save, augment, clip_gradients, epochs_for, nearest_code_module,
                    random_crops, seed_everything, training_device)

log = logging.getLogger(__name__)

GAN_PHASE_CHECKPOINT = "checkpoint_gan_phase.pt"
ANOGAN_LOSS_FIELDS = ["critic_wasserstein", "gradient_penalty", "generator", "joint_reconstruction", "encoder",
                      "diversity"]


@dataclass
class AnoGANResult:
    model: nn.Module
    critic: nn.Module
    steps: int
    epochs: int
    seconds: float

    @property
    def generator(self) -> nn.Module:  # the name fit() and the benchmark use for "the trained model"
        return self.model


def _batches(data: list[torch.Tensor], batch_size: int, config: TrainConfig, sampler: torch.Generator):
    tabular = config.data.kind == "table"
    while True:
        order = torch.randperm(len(data), generator=sampler).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            picked = [data[i] for i in order[start:start + batch_size]]
            if tabular:
                yield torch.stack(picked)
            else:
                yield augment(random_crops(picked, config.input.height, config.input.width, sampler), config, sampler)


def train_anogan(config: TrainConfig, images: np.ndarray, run_dir: Path, progress: bool = False,
                 validation: np.ndarray | None = None) -> AnoGANResult:
    """Train on normal items in model space (images, native frames for tiled models, or feature
    windows); `validation` (held-out normal items) feeds checkpoint selection."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    options, stability = config.anogan, config.stability
    tabular = config.data.kind == "table"
    device = training_device(config.train.device)
    model, critic = build_anogan(config, images.shape[1] if tabular else None)
    model.to(device)
    critic.to(device)
    sampler = torch.Generator().manual_seed(config.train.seed)
    data = [torch.from_numpy(np.ascontiguousarray(item)) for item in images]
    if not data:
        raise ValueError("no training items")
    batch_size = min(config.train.batch_size, len(data))
    batches = _batches(data, batch_size, config, sampler)
    joint = options.reconstruction_weight > 0
    opt_g = torch.optim.Adam(list(model.generator.parameters()) + (list(model.encoder.parameters()) if joint else []),
                             lr=options.lr, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=options.lr * stability.discriminator_lr_factor, betas=(0.0, 0.9))
    started = time.perf_counter()
    losses = EpochLossLog(run_dir / LOSSES, ["phase", "epoch", "step"], ANOGAN_LOSS_FIELDS)
    color_order = config.input.color_order

    # Fixed real items and latent codes for the grids.
    shown_index = torch.linspace(0, len(data) - 1, min(len(data), config.diagnostics.grid_items)).long().tolist()
    picked = [data[i] for i in shown_index]
    shown = torch.stack(picked) if tabular else random_crops(picked, config.input.height, config.input.width,
                                                             torch.Generator().manual_seed(config.train.seed))
    fixed_z = model.sample_latent(len(shown), torch.Generator().manual_seed(config.train.seed + 1)).to(device)

    gan_per_epoch = max(1, len(data) // (batch_size * options.n_critic))
    gan_epochs = epochs_for(options.gan_steps, gan_per_epoch)
    enc_per_epoch = max(1, len(data) // batch_size)
    enc_epochs = epochs_for(options.encoder_steps, enc_per_epoch)
    bar = progress_bar(options.gan_steps + options.encoder_steps, 0, "anogan", gan_per_epoch, progress)

    # Phase 1: WGAN-GP.
    sample_collapse = CollapseMonitor(config.diagnostics.collapse_ratio, "generated samples")
    for step in range(1, options.gan_steps + 1):
        for _ in range(options.n_critic):
            real = next(batches).to(device)
            fake = model.generator(model.sample_latent(len(real), sampler).to(device)).detach()
            wasserstein = critic(fake)["critic"].mean() - critic(real)["critic"].mean()
            penalty = gradient_penalty(critic, real, fake, sampler)
            loss_c = wasserstein + options.gp_weight * penalty
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            clip_gradients(critic, stability.grad_clip)
            opt_c.step()
        fake = model.generator(model.sample_latent(batch_size, sampler).to(device))
        loss_g = -critic(fake)["critic"].mean()
        loss, joint_logged = loss_g, {}
        if joint:
            reconstruction_error = (real - model.generator(model.encode(real))).pow(2).mean()
            loss = loss + options.reconstruction_weight * reconstruction_error
            joint_logged["joint_reconstruction"] = reconstruction_error.item()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, stability.grad_clip)  # the encoder has gradients only in a joint start
        opt_g.step()
        losses.add(critic_wasserstein=wasserstein.item(), gradient_penalty=penalty.item(), generator=loss_g.item(),
                   diversity=diversity_ratio(fake, real), **joint_logged)
        bar.update(1)
        if step % gan_per_epoch == 0 or step == options.gan_steps:
            epoch = -(-step // gan_per_epoch)
            diversity = sample_collapse.observe(losses.mean("diversity"), epoch)
            losses.flush("gan", epoch, step, seconds=time.perf_counter() - started)
            if not tabular and evenly_spaced(epoch, gan_epochs, config.diagnostics.grids):
                model.generator.eval()
                with torch.no_grad():
                    samples = model.generator(fixed_z).cpu()
                model.generator.train()
                write_grid(grid_path(run_dir, "samples", epoch), samples, color_order, labels=("sample", ""),
                           title=f"GAN phase, epoch {epoch} of {gan_epochs}: samples from fixed codes")
            bar.set_postfix(w=f"{-wasserstein.item():.3f}", gp=f"{penalty.item():.3f}", div=f"{diversity:.2f}")
    atomic_torch_save({"model": model.state_dict(), "critic": critic.state_dict(), "phase": "gan"},
                      run_dir / GAN_PHASE_CHECKPOINT)

    # Phase 2: the encoder learns to invert the frozen generator (izi_f).
    for module in (model.generator, critic):
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    selector = CheckpointSelector(config, validation, {"model": model},
                                  lambda: anogan_scoring_with_memory(config, model, critic, images), enc_epochs)
    reconstruction_collapse = CollapseMonitor(config.diagnostics.collapse_ratio, "reconstructions")
    opt_e = torch.optim.Adam(model.encoder.parameters(), lr=options.lr, betas=(0.5, 0.999))
    for step in range(1, options.encoder_steps + 1):
        x = next(batches).to(device)
        reconstruction = model.generator(model.encode(x))
        loss = (x - reconstruction).pow(2).mean() + options.feature_weight * (
            critic(x)["features"] - critic(reconstruction)["features"]).pow(2).mean()
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_e.step()
        losses.add(encoder=loss.item(), diversity=diversity_ratio(reconstruction, x))
        bar.update(1)
        if step % enc_per_epoch == 0 or step == options.encoder_steps:
            epoch = -(-step // enc_per_epoch)
            diversity = reconstruction_collapse.observe(losses.mean("diversity"), gan_epochs + epoch)
            losses.flush("encoder", gan_epochs + epoch, options.gan_steps + step, seconds=time.perf_counter() - started)
            if not tabular and evenly_spaced(epoch, enc_epochs, config.diagnostics.grids):
                model.encoder.eval()
                with torch.no_grad():
                    reconstructions = model.generator(model.encode(shown.to(device))).cpu()
                model.encoder.train()
                write_grid(grid_path(run_dir, "reconstructions", gan_epochs + epoch), shown, color_order, reconstructions,
                           title=f"encoder phase, epoch {epoch}: real items over their reconstructions")
            if selector.due(epoch):
                selector.evaluate(epoch, options.gan_steps + step)
            bar.set_postfix(enc=f"{loss.item():.4f}", div=f"{diversity:.2f}")
    bar.close()
    selector.restore_best(run_dir)
    atomic_torch_save({"model": model.state_dict(), "critic": critic.state_dict(), "phase": "encoder"},
                      run_dir / CHECKPOINT)
    plot_losses(run_dir / LOSSES, collapse_level=config.diagnostics.collapse_ratio)
    model.cpu().eval()
    critic.cpu()
    steps = options.gan_steps + options.encoder_steps
    return AnoGANResult(model, critic, steps, gan_epochs + enc_epochs, time.perf_counter() - started)


def anogan_scoring_with_memory(config: TrainConfig, model: nn.Module, critic: nn.Module, fitted: np.ndarray) -> nn.Module:
    """The exportable scorer, with the memory of the `fitted` items' codes when the config scores
    latent_knn or latent_lof."""
    return anogan_scoring(config, model, critic, nearest_code_module(config, LatentCode(model), fitted))
