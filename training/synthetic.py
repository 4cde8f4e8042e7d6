"""A procedural defect data set for the demo and the tests: no downloads, any size, reproducible.

Normal parts are a woven-fibre texture (smoothed noise plus faint fibres on a tinted background, a
little like the PIPED plastic surfaces); defects are dark specks, scratches and bright stains, each
with its pixel mask. The output uses the MVTec layout, so every tool reads it like a real data set.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECT_KINDS = ("speck", "scratch", "stain")


def normal_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A BGR uint8 texture: tinted base, low-frequency shading, fine grain and a few faint fibres."""
    base = np.array([150, 170, 180], np.float32) + rng.normal(0, 6, 3)
    shading = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 8)
    shading *= 12 / (shading.std() + 1e-6)
    grain = cv2.GaussianBlur(rng.normal(0, 10, (size, size)).astype(np.float32), (0, 0), 0.8)
    image = base[None, None, :] + (shading + grain)[:, :, None]
    fibres = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(2, 6)):
        p = rng.integers(0, size, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(size * 0.1, size * 0.3)
        q = (p + length * np.array([np.cos(angle), np.sin(angle)])).astype(int)
        cv2.line(fibres, tuple(int(v) for v in p), tuple(int(v) for v in q), 1.0, 1, cv2.LINE_AA)
    image -= 10 * fibres[:, :, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def add_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (defective image, uint8 mask with 255 on the defect)."""
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], np.uint8)
    centre = tuple(int(v) for v in rng.integers(size // 6, size - size // 6, 2))
    out = image.astype(np.float32)
    if kind == "speck":
        radius = max(2, int(size * rng.uniform(0.03, 0.06)))
        cv2.circle(mask, centre, radius, 255, -1, cv2.LINE_AA)
        colour = np.array([35, 40, 45], np.float32)
        alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 1.0)[:, :, None]
        out = out * (1 - alpha) + colour * alpha
    elif kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = size * rng.uniform(0.3, 0.6)
        d = (length / 2 * np.array([np.cos(angle), np.sin(angle)])).astype(int)
        p, q = (centre[0] - d[0], centre[1] - d[1]), (centre[0] + d[0], centre[1] + d[1])
        cv2.line(mask, p, q, 255, max(2, size // 40), cv2.LINE_AA)
        alpha = mask.astype(np.float32)[:, :, None] / 255
        out = out * (1 - 0.7 * alpha) + 20 * 0.7 * alpha
    else:  # stain
        axes = (int(size * rng.uniform(0.06, 0.12)), int(size * rng.uniform(0.04, 0.08)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 2.0)[:, :, None]
        out = out * (1 - 0.8 * alpha) + np.array([60, 160, 240], np.float32) * 0.8 * alpha
    return np.clip(out, 0, 255).astype(np.uint8), ((mask > 127) * 255).astype(np.uint8)


def write_dataset(root: Path, n_train: int = 120, n_test_good: int = 30, n_test_defect: int = 10,
                  size: int = 64, seed: int = 0) -> Path:
    """Write an MVTec-layout set: train/good, test/good, test/<kind>, ground_truth/<kind> masks."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder in ["train/good", "test/good"] + [f"test/{k}" for k in DEFECT_KINDS] + [f"ground_truth/{k}" for k in DEFECT_KINDS]:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:04d}.png"), normal_texture(rng, size))
    for i in range(n_test_good):
        cv2.imwrite(str(root / "test/good" / f"{i:04d}.png"), normal_texture(rng, size))
    for kind in DEFECT_KINDS:
        for i in range(n_test_defect):
            image, mask = add_defect(rng, normal_texture(rng, size), kind)
            cv2.imwrite(str(root / "test" / kind / f"{i:04d}.png"), image)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:04d}_mask.png"), mask)
    return root
