"""The pretrained-feature reference of the image suite: no training, nothing tuned.

Every 8x8 patch of a frame is described by EfficientNet-Lite0's stage-3 and stage-4 features
(training.backbone.StageFeatures, 3x3 averaged); its anomaly value is the distance to the nearest
of BANK patch features drawn at random (seeded) from the normal training frames, and the frame's
score is the largest patch value. The threshold is set like the models' (training.calibrate, the
default target and confidence) on the same 20% of train/good held out, which the bank never sees,
so F1 and false-alarm rate are comparable with the trained rows. Frames enter at native size.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.brightness import brightness_false_alarms
from training.backbone import FEATURE_DIM, STRIDE, StageFeatures
from training.calibrate import calibrate
from training.config import CalibrationConfig
from training.data import list_images, split_holdout
from training.evaluate import image_metrics, list_test_items, pixel_auroc
from training.flops import count_flops

BANK = 30_000
HOLDOUT_FRACTION = 0.2


def rgb_tensor(frame: Path | np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) RGB in [0, 1] of an image file or a decoded BGR / gray frame; gray becomes three equal channels."""
    image = cv2.imread(str(frame), cv2.IMREAD_COLOR) if isinstance(frame, Path) else frame
    if image is None:
        raise OSError(f"{frame}: cannot be decoded")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float() / 255.0


def patch_features(extractor: StageFeatures, frame: Path | np.ndarray) -> torch.Tensor:
    """(h, w, FEATURE_DIM) features of one frame's patches."""
    with torch.no_grad():
        return extractor(rgb_tensor(frame))[0].permute(1, 2, 0).contiguous()


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance of every query row to its nearest bank row."""
    return torch.cat([torch.cdist(queries[i:i + chunk], bank).amin(dim=1) for i in range(0, len(queries), chunk)])


def frame_map(extractor: StageFeatures, bank: torch.Tensor, frame: Path | np.ndarray) -> np.ndarray:
    """Nearest-patch distances of a frame, upsampled to its size (the heatmap)."""
    features = patch_features(extractor, frame)
    h, w = features.shape[:2]
    distances = nearest_distances(features.view(-1, FEATURE_DIM), bank).view(h, w).numpy()
    return cv2.resize(distances, (w * STRIDE, h * STRIDE), interpolation=cv2.INTER_LINEAR)


def knn_reference_row(name: str, root: Path, seed: int = 0) -> dict:
    started = time.perf_counter()
    extractor = StageFeatures()
    normal = list_images(root / "train" / "good")
    fit_idx, hold_idx = split_holdout(len(normal), HOLDOUT_FRACTION, seed)
    patches = torch.cat([patch_features(extractor, normal[i]).view(-1, FEATURE_DIM) for i in fit_idx])
    pick = torch.from_numpy(np.random.default_rng(seed).permutation(len(patches))[:BANK])
    bank = patches[pick].contiguous()
    held_scores = np.array([frame_map(extractor, bank, normal[i]).max() for i in hold_idx])
    settings = CalibrationConfig()
    threshold = calibrate(held_scores, settings.target_false_alarm_rate, confidence=settings.confidence).threshold
    fitted_seconds = time.perf_counter() - started
    items = list_test_items(root)
    heatmaps = [frame_map(extractor, bank, item.path) for item in items]
    scores = np.array([heatmap.max() for heatmap in heatmaps])
    labels = np.array([item.label for item in items])
    metrics = image_metrics(scores, labels, threshold)
    first = rgb_tensor(items[0].path)
    patches_per_frame = (first.shape[-2] // STRIDE) * (first.shape[-1] // STRIDE)
    flops = count_flops(extractor, first) + 2 * patches_per_frame * len(bank) * FEATURE_DIM
    brightness = brightness_false_alarms(
        lambda frames: np.array([frame_map(extractor, bank, frame).max() for frame in frames]), root, threshold)
    return {"set": name, "variant": "knn_reference", "far_brightness": brightness, "score": f"nearest of {len(bank):,} patches",
            "image_auroc": metrics.get("image_auroc"), "average_precision": metrics.get("average_precision"),
            "f1": metrics["f1"], "false_alarm_rate": metrics["false_alarm_rate"],
            "pixel_auroc": pixel_auroc(items, heatmaps),
            "train_seconds": round(fitted_seconds, 2), "wall_seconds": round(time.perf_counter() - started, 1),
            "steps": 0, "epochs": 0, "mflops_per_frame": round(flops / 1e6, 1),
            "input": f"{first.shape[-1]}x{first.shape[-2]} native", "components": {}}
