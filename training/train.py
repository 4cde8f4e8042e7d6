"""The GANomaly training loop: plain PyTorch, seeded, resumable.

Each step updates the generator (adversarial feature matching + contextual L1 + encoder L2), then
the discriminator (binary cross-entropy on real vs reconstructed), and re-initialises the
discriminator when its loss collapses below `discriminator_reset_below`, as the original GANomaly
does. Per-epoch mean losses go to `losses.csv`; the run folder holds `checkpoint.pt`, written
atomically at the end of an epoch (at most every `checkpoint_min_interval_s`) and at the end.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .config import TrainConfig
from .models.blocks import dcgan_init
from .models.ganomaly import GANomaly, GANomalyDiscriminator, GANomalyShape
from .models.tabular import TabularDiscriminator, TabularGANomaly

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.csv"
LOSS_FIELDS = ["epoch", "step", "discriminator", "adversarial", "contextual", "encoder", "generator", "seconds"]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def build_models(config: TrainConfig, feature_width: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator: convolutional for images, MLPs for feature windows of `feature_width`."""
    if config.data.kind == "table":
        if feature_width is None:
            raise ValueError("tabular models need the feature width")
        return (TabularGANomaly(feature_width, config.model.base_width, config.model.latent_dim),
                TabularDiscriminator(feature_width, config.model.base_width))
    shape = GANomalyShape(config.input.height, config.input.width, config.input.channels,
                          config.model.base_width, config.model.latent_dim)
    return GANomaly(shape), GANomalyDiscriminator(shape)


def reinitialise(module: nn.Module) -> None:
    """Fresh weights for a collapsed discriminator: DCGAN init for conv nets, PyTorch defaults otherwise."""
    if isinstance(module, GANomalyDiscriminator):
        dcgan_init(module)
        return
    for layer in module.modules():
        if hasattr(layer, "reset_parameters") and layer is not module:
            layer.reset_parameters()


def random_crops(items: list[torch.Tensor], height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of tile-sized crops at random places of native-resolution frames (tiled models); for
    whole-frame models the items already have the input size and are just stacked."""
    crops = []
    for item in items:
        top = int(torch.randint(0, item.shape[-2] - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, item.shape[-1] - width + 1, (1,), generator=generator))
        crops.append(item[:, top:top + height, left:left + width])
    return torch.stack(crops)


def augment(batch: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flips / quarter turns, per item. Only label-preserving for parts without a fixed pose."""
    options = config.train.augment
    if not (options.hflip or options.vflip or options.rot90):
        return batch
    out = []
    draws = torch.rand(len(batch), 3, generator=generator)
    turns = torch.randint(0, 4, (len(batch),), generator=generator)
    for item, draw, turn in zip(batch, draws, turns):
        if options.hflip and draw[0] < 0.5:
            item = item.flip(-1)
        if options.vflip and draw[1] < 0.5:
            item = item.flip(-2)
        if options.rot90:  # quarter turns keep a square input square; other shapes get half turns
            quarter = int(turn) if item.shape[-1] == item.shape[-2] else 2 * (int(turn) % 2)
            item = torch.rot90(item, quarter, dims=(-2, -1))
        out.append(item)
    return torch.stack(out)


def atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    generator: nn.Module
    steps: int
    epochs: int
    seconds: float


class _LossLog:
    """Accumulates step losses and appends one CSV row per epoch."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.sums: dict[str, float] = {}
        self.count = 0
        if not (resume and path.exists()):
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(LOSS_FIELDS)

    def add(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def flush(self, epoch: int, step: int, seconds: float) -> None:
        if not self.count:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([epoch, step] + [f"{means.get(k, float('nan')):.6g}" for k in LOSS_FIELDS[2:-1]]
                                   + [f"{seconds:.2f}"])
        self.sums, self.count = {}, 0


def train_ganomaly(config: TrainConfig, images: np.ndarray, run_dir: Path, resume: bool = False,
                   progress: bool = True) -> TrainResult:
    """Train on normal images in model space ((C, H, W) float32 items: model inputs, or native frames
    for tiled models); returns the generator in eval mode."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    tabular = config.data.kind == "table"
    generator, discriminator = build_models(config, images.shape[1] if tabular else None)
    betas = tuple(config.train.betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.train.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.train.lr, betas=betas)
    sampler = torch.Generator().manual_seed(config.train.seed)
    step, epoch, elapsed = 0, 0, 0.0
    order, position = None, 0  # the current epoch's permutation and how far into it we are
    checkpoint_path = run_dir / CHECKPOINT
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sampler.set_state(state["sampler"])
        step, epoch, elapsed = int(state["step"]), int(state["epoch"]), float(state["seconds"])
        order, position = state["order"], int(state["position"])
        log.info("resumed from %s at step %d", checkpoint_path, step)
    losses_log = _LossLog(run_dir / LOSSES, resume and step > 0)

    data = [torch.from_numpy(np.ascontiguousarray(item)) for item in images]
    n = len(data)
    if n == 0:
        raise ValueError("no training images")
    batch_size = min(config.train.batch_size, n)
    weights = config.loss
    bce = nn.BCEWithLogitsLoss()
    ganomaly = config.model.family == "ganomaly"
    adversarial = ganomaly and weights.adversarial > 0
    encoder_weight = weights.encoder if ganomaly else 0.0
    generator.train()
    discriminator.train()
    started = time.perf_counter() - elapsed
    last_checkpoint = time.perf_counter()

    def save() -> None:
        atomic_torch_save({
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "sampler": sampler.get_state(),
            "step": step, "epoch": epoch, "seconds": time.perf_counter() - started,
            "order": order, "position": position,
        }, checkpoint_path)

    bar = tqdm(total=config.train.steps, initial=step, disable=not progress, desc="train", unit="step", leave=False)
    while step < config.train.steps:
        if order is None or position + batch_size > n:
            if order is not None:  # an epoch just ended
                epoch += 1
                losses_log.flush(epoch, step, time.perf_counter() - started)
                if time.perf_counter() - last_checkpoint >= config.train.checkpoint_min_interval_s:
                    save()
                    last_checkpoint = time.perf_counter()
            order, position = torch.randperm(n, generator=sampler), 0
        picked = [data[i] for i in order[position:position + batch_size].tolist()]
        position += batch_size
        if tabular:
            x = torch.stack(picked)
        else:
            x = random_crops(picked, config.input.height, config.input.width, sampler)
            x = augment(x, config, sampler)
        out = generator(x)
        fake = out["reconstruction"]

        # Generator: match discriminator features, reconstruct, keep latent codes consistent.
        loss_con = (fake - x).abs().mean()
        loss_enc = (out["latent_out"] - out["latent_in"]).pow(2).mean()
        if not adversarial:
            loss_adv = torch.zeros(())
        else:
            real_features = discriminator(x)["features"].detach()
            loss_adv = (discriminator(fake)["features"] - real_features).pow(2).mean()
        loss_g = weights.adversarial * loss_adv + weights.contextual * loss_con + encoder_weight * loss_enc
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        # Discriminator: real vs reconstructed (skipped for a plain autoencoder, adversarial weight 0).
        loss_d = torch.zeros(())
        if adversarial:
            logits_real = discriminator(x)["logit"]
            logits_fake = discriminator(fake.detach())["logit"]
            loss_d = 0.5 * (bce(logits_real, torch.ones_like(logits_real))
                            + bce(logits_fake, torch.zeros_like(logits_fake)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            if loss_d.item() < config.train.discriminator_reset_below:
                dcgan_init(discriminator)

        step += 1
        losses = {"discriminator": loss_d.item(), "adversarial": loss_adv.item(), "contextual": loss_con.item(),
                  "encoder": loss_enc.item(), "generator": loss_g.item()}
        losses_log.add(losses)
        bar.update(1)
        bar.set_postfix(d=f"{losses['discriminator']:.3f}", con=f"{losses['contextual']:.4f}",
                        enc=f"{losses['encoder']:.4f}")
    bar.close()
    if position + batch_size > n:  # the last step finished an epoch
        epoch += 1
        order, position = None, 0
        losses_log.flush(epoch, step, time.perf_counter() - started)
    else:  # stopped inside an epoch: its losses so far get a row of their own, labelled with that epoch
        losses_log.flush(epoch + 1, step, time.perf_counter() - started)
    save()
    generator.eval()
    return TrainResult(generator, step, epoch, time.perf_counter() - started)

