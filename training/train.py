"""The GANomaly training loop: plain PyTorch, seeded, resumable.

Each step updates the generator (adversarial feature matching + contextual L1 + encoder L2), then
the discriminator (binary cross-entropy on real vs reconstructed). Stability options (config
section `stability`): spectral normalisation of the discriminator, one-sided label smoothing,
two-time-scale learning rates, gradient clipping, and re-initialising the discriminator when its
loss collapses below `discriminator_reset_below`, as the original GANomaly does.

Every epoch appends a row to `losses.csv` (mean losses and the diversity ratio of reconstructions,
see training.diagnostics); grids of reconstructions and `losses.png` are written at evenly spaced
epochs. The run folder holds `checkpoint.pt`, written atomically at the end of an epoch (at most
every `checkpoint_min_interval_s`) and at the end; it carries the checkpoint selector's state too.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inspector.errors import ConfigError

from .config import TrainConfig
from .progress import progress as progress_bar
from .diagnostics import CollapseMonitor, EpochLossLog, diversity_ratio, evenly_spaced, grid_path, plot_losses, write_grid
from .frame_scores import model_inputs
from .models.blocks import dcgan_init
from .models.ganomaly import GANomaly, GANomalyDiscriminator, GANomalyScoring, GANomalyShape
from .models.memory import NearestCode, latent_memory
from .models.tabular import TabularDiscriminator, TabularGANomaly, TabularScoring
from .selection import CheckpointSelector

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.csv"
LOSS_FIELDS = ["discriminator", "adversarial", "contextual", "encoder", "generator", "diversity"]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def build_models(config: TrainConfig, feature_width: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator: convolutional for images, MLPs for feature windows of `feature_width`."""
    if config.data.kind == "table":
        if feature_width is None:
            raise ValueError("tabular models need the feature width")
        return (TabularGANomaly(feature_width, config.model.base_width, config.model.latent_dim),
                TabularDiscriminator(feature_width, config.model.base_width, config.stability.spectral_norm))
    shape = GANomalyShape(config.input.height, config.input.width, config.input.channels,
                          config.model.base_width, config.model.latent_dim)
    return GANomaly(shape), GANomalyDiscriminator(shape, config.stability.spectral_norm)


def inputs_per_item(items: np.ndarray, spec) -> int:
    """Model inputs one item makes: its tiles for a tiled image model, else one (spec None: tables)."""
    if spec is None or spec.resize != "tile" or not len(items):
        return 1
    return max(1, len(model_inputs(items[:1], spec)[0]))


def memory_inputs(fitted: np.ndarray, spec, size: int, seed: int) -> np.ndarray:
    """Model inputs to draw the memory of normal codes from: the fitted items, or the tiles of a seeded subset
    of the fitted frames large enough for `size` tiles (tiling every frame of a big set would not fit)."""
    if spec is not None and spec.resize == "tile" and len(fitted) > 1:
        frames = -(-size // inputs_per_item(fitted, spec))
        if len(fitted) > frames:
            fitted = fitted[np.sort(np.random.default_rng(seed).choice(len(fitted), frames, replace=False))]
    return model_inputs(fitted, spec)[0]


def check_memory_size(config: TrainConfig, fitted: np.ndarray) -> None:
    """Before any training: latent_lof needs more memory codes than neighbours, and a small set (or
    a large hold-out) may not give that many."""
    if "latent_lof" not in config.score.weights:
        return
    spec = None if config.data.kind == "table" else config.input.to_spec()
    codes = min(config.score.memory_size, len(fitted) * inputs_per_item(fitted, spec))
    if codes <= config.score.lof_neighbors:
        raise ConfigError(f"score.lof_neighbors is {config.score.lof_neighbors}, but the {len(fitted)} fitted items "
                          f"give only {codes} normal codes to compare with: lower score.lof_neighbors, or hold out "
                          "fewer items (data.holdout_fraction)")


def nearest_code_module(config: TrainConfig, encoder: nn.Module, fitted: np.ndarray | None) -> NearestCode | None:
    """The memory of normal codes (`encoder`'s codes of a subset of the `fitted` items) when the config
    scores latent_knn or latent_lof, else None. Any family with an encoder can score them."""
    weights = config.score.weights
    if "latent_knn" not in weights and "latent_lof" not in weights:
        return None
    if fitted is None:
        raise ValueError("score components latent_knn and latent_lof need the fitted items for their memory of "
                         "normal codes")
    inputs = memory_inputs(fitted, None if config.data.kind == "table" else config.input.to_spec(),
                           config.score.memory_size, config.train.seed)
    memory = latent_memory(encoder, inputs, config.score.memory_size, config.train.seed)
    memory = memory.to(next(encoder.parameters()).device)  # a model under training may sit on a GPU
    return NearestCode(memory, config.score.lof_neighbors if "latent_lof" in weights else None)


def scoring_module(config: TrainConfig, generator: nn.Module, fitted: np.ndarray | None = None) -> nn.Module:
    """The exportable scorer over a GANomaly generator (image or tabular), with the components the config
    scores; latent_knn and latent_lof keep the codes of (a subset of) the `fitted` items."""
    with_latent = "latent_distance" in config.score.weights
    nearest_code = nearest_code_module(config, generator.encoder, fitted)
    if config.data.kind == "table":
        return TabularScoring(generator, with_latent=with_latent, nearest_code=nearest_code)
    return GANomalyScoring(generator, config.score.pool_kernel, config.score.residual, with_latent=with_latent,
                           nearest_code=nearest_code)


def training_device(setting: str) -> torch.device:
    """The torch device for `train.device`; a clear error when CUDA is asked for and torch has none."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is 'cuda' but torch {torch.__version__} sees no CUDA device "
                         "(a CPU build of torch, or no GPU); use 'cpu' or 'auto'")
    return torch.device(setting)


def clip_gradients(module: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)


def epochs_for(steps: int, steps_per_epoch: int) -> int:
    return -(-steps // max(1, steps_per_epoch))


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


def train_ganomaly(config: TrainConfig, images: np.ndarray, run_dir: Path, resume: bool = False,
                   progress: bool = True, validation: np.ndarray | None = None) -> TrainResult:
    """Train on normal images in model space ((C, H, W) float32 items: model inputs, or native frames
    for tiled models) or feature windows; `validation` (held-out normal items of the same kind) feeds
    checkpoint selection. Returns the selected generator in eval mode."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    tabular = config.data.kind == "table"
    stability = config.stability
    device = training_device(config.train.device)
    generator, discriminator = build_models(config, images.shape[1] if tabular else None)
    generator.to(device)
    discriminator.to(device)
    betas = tuple(config.train.betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.train.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.train.lr * stability.discriminator_lr_factor,
                             betas=betas)
    sampler = torch.Generator().manual_seed(config.train.seed)
    data = [torch.from_numpy(np.ascontiguousarray(item)) for item in images]
    n = len(data)
    if n == 0:
        raise ValueError("no training images")
    batch_size = min(config.train.batch_size, n)
    total_epochs = epochs_for(config.train.steps, n // batch_size)
    selector = CheckpointSelector(config, validation, {"generator": generator},
                                  lambda: scoring_module(config, generator, images), total_epochs)
    step, epoch, elapsed = 0, 0, 0.0
    order, position = None, 0  # the current epoch's permutation and how far into it we are
    checkpoint_path = run_dir / CHECKPOINT
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True, map_location=device)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        sampler.set_state(state["sampler"])
        step, epoch, elapsed = int(state["step"]), int(state["epoch"]), float(state["seconds"])
        order, position = state["order"], int(state["position"])
        selector.load_state(state.get("selection"))
        log.info("resumed from %s at step %d", checkpoint_path, step)
    losses_log = EpochLossLog(run_dir / LOSSES, ["epoch", "step"], LOSS_FIELDS, append=resume and step > 0)

    # A fixed batch of real items for the reconstruction grids.
    picked = [data[i] for i in torch.linspace(0, n - 1, min(n, config.diagnostics.grid_items)).long().tolist()]
    shown = torch.stack(picked) if tabular else random_crops(picked, config.input.height, config.input.width,
                                                             torch.Generator().manual_seed(config.train.seed))
    collapse = CollapseMonitor(config.diagnostics.collapse_ratio, "reconstructions")
    diversity = float("nan")
    weights = config.loss
    bce = nn.BCEWithLogitsLoss()
    ganomaly = config.model.family == "ganomaly"
    adversarial = ganomaly and weights.adversarial > 0
    encoder_weight = weights.encoder if ganomaly else 0.0
    real_target = 1.0 - stability.label_smoothing
    generator.train()
    discriminator.train()
    started = time.perf_counter() - elapsed
    last_checkpoint = time.perf_counter()

    def save() -> None:
        atomic_torch_save({
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "sampler": sampler.get_state(),
            "step": step, "epoch": epoch, "seconds": time.perf_counter() - started,
            "order": order, "position": position, "selection": selector.state(),
        }, checkpoint_path)

    def end_of_epoch(label: int) -> None:
        """Diversity check, the losses row, and on planned epochs a grid, the plot and a selection round."""
        nonlocal diversity
        diversity = collapse.observe(losses_log.mean("diversity"), label)
        losses_log.flush(label, step, seconds=time.perf_counter() - started)
        if not tabular and evenly_spaced(label, total_epochs, config.diagnostics.grids):
            generator.eval()
            with torch.no_grad():
                reconstructions = generator(shown.to(device))["reconstruction"].cpu()
            generator.train()
            write_grid(grid_path(run_dir, "reconstructions", label), shown, config.input.color_order, reconstructions,
                       title=f"epoch {label} of {total_epochs}: real items over their reconstructions")
            if label < total_epochs:  # a view while training runs; the final plot is drawn once, at the end
                plot_losses(run_dir / LOSSES, collapse_level=config.diagnostics.collapse_ratio)
        if selector.due(label):
            selector.evaluate(label, step)

    bar = progress_bar(config.train.steps, step, "train", n // batch_size, progress)
    while step < config.train.steps:
        if order is None or position + batch_size > n:
            if order is not None:  # an epoch just ended
                epoch += 1
                end_of_epoch(epoch)
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
        x = x.to(device)
        out = generator(x)
        fake = out["reconstruction"]

        # Generator: match discriminator features, reconstruct, keep latent codes consistent.
        loss_con = (fake - x).abs().mean()
        loss_enc = (out["latent_out"] - out["latent_in"]).pow(2).mean()
        if not adversarial:
            loss_adv = torch.zeros((), device=device)
        else:
            real_features = discriminator(x)["features"].detach()
            loss_adv = (discriminator(fake)["features"] - real_features).pow(2).mean()
        loss_g = weights.adversarial * loss_adv + weights.contextual * loss_con + encoder_weight * loss_enc
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        clip_gradients(generator, stability.grad_clip)
        opt_g.step()

        # Discriminator: real vs reconstructed (skipped for a plain autoencoder, adversarial weight 0).
        loss_d = torch.zeros((), device=device)
        if adversarial:
            logits_real = discriminator(x)["logit"]
            logits_fake = discriminator(fake.detach())["logit"]
            loss_d = 0.5 * (bce(logits_real, torch.full_like(logits_real, real_target))
                            + bce(logits_fake, torch.zeros_like(logits_fake)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            clip_gradients(discriminator, stability.grad_clip)
            opt_d.step()
            if loss_d.item() < stability.discriminator_reset_below + _smoothing_floor(stability.label_smoothing):
                dcgan_init(discriminator)
                log.info("discriminator re-initialised at step %d (loss %.2g)", step + 1, loss_d.item())

        step += 1
        losses = {"discriminator": loss_d.item(), "adversarial": loss_adv.item(), "contextual": loss_con.item(),
                  "encoder": loss_enc.item(), "generator": loss_g.item(), "diversity": diversity_ratio(fake, x)}
        losses_log.add(**losses)
        bar.update(1)
        bar.set_postfix(d=f"{losses['discriminator']:.3f}", con=f"{losses['contextual']:.4f}",
                        enc=f"{losses['encoder']:.4f}", div=f"{diversity:.2f}")
    bar.close()
    if position + batch_size > n:  # the last step finished an epoch
        epoch += 1
        order, position = None, 0
        end_of_epoch(epoch)
    else:  # stopped inside an epoch: its losses so far get a row of their own, labelled with that epoch
        end_of_epoch(epoch + 1)
    save()
    plot_losses(run_dir / LOSSES, collapse_level=config.diagnostics.collapse_ratio)
    selector.restore_best(run_dir)
    generator.cpu().eval()
    return TrainResult(generator, step, epoch, time.perf_counter() - started)


def _smoothing_floor(smoothing: float) -> float:
    """The least BCE loss a perfect discriminator reaches when real targets are 1 - s (0 without
    smoothing): half the binary entropy of s. A collapse is a loss near that floor, not near 0."""
    if smoothing <= 0:
        return 0.0
    return 0.5 * float(-(smoothing * np.log(smoothing) + (1 - smoothing) * np.log(1 - smoothing)))
