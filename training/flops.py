"""Multiply-accumulate count of a model per item, reported as FLOPs (2 x MACs) next to every
throughput and accuracy figure: on a 2-core machine a model of F FLOPs can never exceed ~200e9 / F
items/s, so width and input size are product decisions."""

from __future__ import annotations

import torch
from torch import nn


def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    """FLOPs for one item, counting convolutions, transposed convolutions and linear layers, plus
    what any submodule declares as its `flops_per_item` (work outside layers, e.g. a nearest-code search)."""
    total = 0

    def hook(layer: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kernel_ops = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * output.numel() * kernel_ops
        elif isinstance(layer, nn.ConvTranspose2d):
            x = inputs[0]
            total += 2 * x.numel() * layer.out_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            total += 2 * output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()
            module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return int(total + sum(getattr(m, "flops_per_item", 0) for m in module.modules()))
