"""DCGAN-style convolutional encoder and decoder shared by the GAN families.

The spatial plan adapts to the input: stride-2 4x4 convolutions halve both sides while both stay
even and the shorter side stays >= 4; a final convolution with the remaining (h, w) as kernel maps
to the latent vector. Input sides must be multiples of 16 (checked by the config), so any 32..512
size, square or not, gets at least four halvings.
"""

from __future__ import annotations

import torch
from torch import nn


def downsampling_plan(height: int, width: int) -> tuple[int, int, int]:
    """(number of halvings, final height, final width)."""
    n, h, w = 0, height, width
    while h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= 4:
        h, w, n = h // 2, w // 2, n + 1
    return n, h, w


class Encoder(nn.Module):
    """x (N, C, H, W) -> features (N, F, h, w) -> latent (N, latent_dim, 1, 1)."""

    def __init__(self, height: int, width: int, channels: int, base_width: int, latent_dim: int,
                 batch_norm: bool = True, spectral_norm: bool = False):
        super().__init__()
        n_down, h, w = downsampling_plan(height, width)
        wrap = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels, base_width, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, inplace=True)]
        width_now = base_width
        for _ in range(n_down - 1):
            layers.append(wrap(nn.Conv2d(width_now, width_now * 2, 4, 2, 1, bias=False)))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width_now * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            width_now *= 2
        self.features = nn.Sequential(*layers)
        self.to_latent = wrap(nn.Conv2d(width_now, latent_dim, (h, w), 1, 0, bias=False))
        self.feature_channels = width_now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.features(x))


class Decoder(nn.Module):
    """latent (N, latent_dim, 1, 1) -> image (N, C, H, W) in [-1, 1]."""

    def __init__(self, height: int, width: int, channels: int, base_width: int, latent_dim: int):
        super().__init__()
        n_down, h, w = downsampling_plan(height, width)
        width_now = base_width * 2 ** (n_down - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width_now, (h, w), 1, 0, bias=False),
            nn.BatchNorm2d(width_now),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n_down - 1):
            layers += [nn.ConvTranspose2d(width_now, width_now // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width_now // 2), nn.ReLU(inplace=True)]
            width_now //= 2
        layers += [nn.ConvTranspose2d(width_now, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def dcgan_init(module: nn.Module) -> None:
    """Weight init from the DCGAN paper (N(0, 0.02) convs, N(1, 0.02) batch-norm scales)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = getattr(m, "weight_orig", m.weight)
            nn.init.normal_(weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def local_mean(error_map: torch.Tensor, kernel: int) -> torch.Tensor:
    """Box-average an (N, 1, H, W) map: small defects stand out of pixel noise without being
    diluted by a global mean. Border windows average only valid pixels."""
    if kernel <= 1:
        return error_map
    return nn.functional.avg_pool2d(error_map, kernel, stride=1, padding=kernel // 2, count_include_pad=False)[
        ..., : error_map.shape[-2], : error_map.shape[-1]
    ]
