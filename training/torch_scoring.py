"""Run an exportable scoring module in torch over a tensor set (eval mode, no grad, in batches)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn


@contextmanager
def modes_kept(*modules: nn.Module) -> Iterator[None]:
    """Score in between training steps: on leaving, every submodule gets back its own train/eval
    mode (a frozen part of a model in training stays in eval mode)."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# images scored at once hold at most this many pixels: 256 tiles of 64x64, 4 frames of 512x512. A
# whole-frame model's activations (and a patch memory's distance matrix) grow with the pixels, and
# batches of hundreds of large frames spent most of their time allocating memory
PIXELS_PER_BATCH = 1 << 20


@torch.no_grad()
def run_scoring(module: nn.Module, tensors: np.ndarray, batch_size: int = 64,
                keep_maps: bool = True) -> dict[str, np.ndarray]:
    """Named outputs of `module` for (N, C, H, W) inputs (or feature windows), concatenated over batches."""
    if tensors.ndim == 4:
        batch_size = max(1, min(batch_size, PIXELS_PER_BATCH // (tensors.shape[-2] * tensors.shape[-1])))
    module.eval()
    parameter = next(module.parameters(), None)  # a model being trained on a GPU is scored there
    device = parameter.device if parameter is not None else torch.device("cpu")
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(tensors), batch_size):
        out = module(torch.from_numpy(np.ascontiguousarray(tensors[start:start + batch_size])).to(device))
        for name, value in out.items():
            if not keep_maps and value.dim() > 1:
                continue
            parts.setdefault(name, []).append(value.cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}
