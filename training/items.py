"""What the training items are, decided once: image frames (with their input geometry) or feature windows.

The driver, the families and checkpoint selection ask this object how to batch, show and tile items
instead of testing `config.data.kind` themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from inspector.card import ImageInput

from .config import AugmentConfig, TrainConfig
from .frame_scores import model_inputs


@dataclass(frozen=True)
class ImageShape:
    """What a convolutional model is built for."""

    height: int
    width: int
    channels: int


@dataclass(frozen=True)
class TableShape:
    """What an MLP over feature windows is built for."""

    width: int


def random_crops(items: list[torch.Tensor], height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of tile-sized crops at random places of native-resolution frames (tiled models); for
    whole-frame models the items already have the input size and are just stacked."""
    crops = []
    for item in items:
        top = int(torch.randint(0, item.shape[-2] - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, item.shape[-1] - width + 1, (1,), generator=generator))
        crops.append(item[:, top:top + height, left:left + width])
    return torch.stack(crops)


def brightened(frames: torch.Tensor, gain: float, mean: float | torch.Tensor = 0.5,
               std: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Model-space frames (pixels in [0, 1] as x * std + mean) with every pixel value times `gain`,
    clipped at white as a camera clips. Frame standardising undoes a gain that clips nothing; a
    brighter frame's flattened highlights it cannot undo, so a model must have seen them to leave a
    brighter lamp unflagged (AugmentConfig.lighting)."""
    return ((frames * std + mean) * gain).clamp(0, 1).sub(mean).div(std)


def focus_sigmas(focus: float) -> tuple[float, float]:
    """The blurs train.augment.focus trains on: half of it and all of it (a memory drawn from frames
    blurred by 1 model pixel missed held-out frames blurred by 2, and one blurred by 2 those blurred by 1)."""
    return (focus / 2, focus)


def blurred(frames: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Frames (N, C, H, W) under a Gaussian blur of `sigma` pixels, one for all or one per frame (N,),
    reflected at the borders as OpenCV's GaussianBlur: a lens a little out of focus. A blur is linear
    and keeps the mean, so it is the same on model-space values as on the pixels."""
    sigmas = torch.as_tensor(sigma, dtype=frames.dtype).reshape(-1)
    radius = max(1, math.ceil(3 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=frames.dtype)
    kernels = torch.exp(-0.5 * (offsets / sigmas.clamp_min(1e-3)[:, None]) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).expand(len(frames), -1).to(frames.device)
    count, channels = frames.shape[:2]
    padded = torch.nn.functional.pad(frames, (radius,) * 4, mode="reflect")
    per_plane = kernels.repeat_interleave(channels, dim=0)  # (N * C, taps): each frame's kernel on its channels
    planes = padded.reshape(1, count * channels, *padded.shape[-2:])
    rows = torch.nn.functional.conv2d(planes, per_plane.view(-1, 1, 1, 2 * radius + 1), groups=count * channels)
    out = torch.nn.functional.conv2d(rows, per_plane.view(-1, 1, 2 * radius + 1, 1), groups=count * channels)
    return out.reshape(frames.shape)


def augment(batch: torch.Tensor, options: AugmentConfig, generator: torch.Generator,
            spec: ImageInput | None = None) -> torch.Tensor:
    """Random flips / quarter turns, per item (only label-preserving for parts without a fixed pose);
    with options.lighting, half of the items brightened by 1 + lighting (`spec`: the model space's
    pixel mean and std; default 0.5 and 0.5); with options.focus, half of them blurred by focus / 2 or
    focus pixels (focus_sigmas)."""
    if options.lighting:
        mean, std = (0.5, 0.5) if spec is None else (torch.tensor(spec.mean).view(-1, 1, 1),
                                                     torch.tensor(spec.std).view(-1, 1, 1))
        lit = torch.rand(len(batch), generator=generator) < 0.5  # drawn only with lighting: other runs keep their draws
        batch = torch.where(lit.view(-1, 1, 1, 1), brightened(batch, 1.0 + options.lighting, mean, std), batch)
    if options.focus:  # drawn only with focus, after lighting's draw: runs without it keep their draws
        levels = torch.tensor(focus_sigmas(options.focus), dtype=batch.dtype)
        soft = torch.rand(len(batch), generator=generator) < 0.5
        sigmas = levels[torch.randint(0, len(levels), (len(batch),), generator=generator)]
        batch = blurred(batch, torch.where(soft, sigmas, torch.zeros_like(sigmas)))
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


class ImageItems:
    """Frames in model space: whole-frame model inputs, or native frames that tiled models crop."""

    draws_grids = True

    def __init__(self, spec: ImageInput, options: AugmentConfig):
        self.spec = spec
        self.options = options

    def shape(self, items: np.ndarray) -> ImageShape:
        return ImageShape(self.spec.height, self.spec.width, self.spec.channels)

    def batch(self, picked: list[torch.Tensor], sampler: torch.Generator) -> torch.Tensor:
        crops = random_crops(picked, self.spec.height, self.spec.width, sampler)
        return augment(crops, self.options, sampler, self.spec)

    def shown(self, picked: list[torch.Tensor], seed: int) -> torch.Tensor:
        """The fixed batch the grids show: seeded crops, no augmentation."""
        return random_crops(picked, self.spec.height, self.spec.width, torch.Generator().manual_seed(seed))

    def inputs_per_item(self, items: np.ndarray) -> int:
        """Model inputs one item makes: its tiles for a tiled model, else one."""
        if self.spec.resize != "tile" or not len(items):
            return 1
        return max(1, len(model_inputs(items[:1], self.spec)[0]))

    def memory_inputs(self, fitted: np.ndarray, size: int, seed: int) -> np.ndarray:
        """Model inputs to draw a memory of normal codes from: the fitted items, or the tiles of a seeded
        subset of the fitted frames large enough for `size` tiles (tiling every frame would not fit)."""
        if self.spec.resize == "tile" and len(fitted) > 1:
            frames = -(-size // self.inputs_per_item(fitted))
            if len(fitted) > frames:
                fitted = fitted[np.sort(np.random.default_rng(seed).choice(len(fitted), frames, replace=False))]
        return model_inputs(fitted, self.spec)[0]


class TableItems:
    """Encoded feature windows: one model input each, batched as they are."""

    spec = None
    draws_grids = False

    def shape(self, items: np.ndarray) -> TableShape:
        return TableShape(int(items.shape[1]))

    def batch(self, picked: list[torch.Tensor], sampler: torch.Generator) -> torch.Tensor:
        return torch.stack(picked)

    def shown(self, picked: list[torch.Tensor], seed: int) -> torch.Tensor:
        return torch.stack(picked)

    def inputs_per_item(self, items: np.ndarray) -> int:
        return 1

    def memory_inputs(self, fitted: np.ndarray, size: int, seed: int) -> np.ndarray:
        return model_inputs(fitted, None)[0]


Items = ImageItems | TableItems


def items_of(config: TrainConfig) -> Items:
    """The kind of items a config trains on (the one place that reads data.kind for the training code)."""
    if config.data.kind == "table":
        return TableItems()
    return ImageItems(config.input.to_spec(), config.train.augment)
