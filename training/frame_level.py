"""The level every frame is brought to before the model: the normal frames' typical pixel mean and contrast.

A line's lighting drifts (a lamp ages, the exposure changes, the sun through a window): every pixel
gets a gain and an offset. A model trained on pixels scores that as an anomaly on every frame (the
dev suite's brightness check: normal frames scaled by 0.7 or 1.3 alarmed at up to 100% without it).
With `input.standardise_frames`, training measures each of (a seeded sample of) the normal training
frames' pixel mean and standard deviation, exactly on the pixels the model input is made of
(inspector.preprocess.model_pixels), and records their medians as `input.frame_level`; the card
carries it, and the one preprocessing implementation maps every frame (training, evaluation, the
line) onto it. Only train/good is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.errors import ItemRejected
from inspector.image_files import read_image
from inspector.preprocess import frame_statistics, model_pixels

from .config import TrainConfig
from .data import training_image_paths

SAMPLE_FRAMES = 64


def measure_frame_level(paths: list[Path], spec, seed: int) -> tuple[float, float] | None:
    """Median pixel mean and standard deviation (0-1 units) of up to SAMPLE_FRAMES of the frames (seeded)."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:SAMPLE_FRAMES])
    statistics = []
    for index in pick:
        try:
            statistics.append(frame_statistics(model_pixels(read_image(paths[index], spec.max_pixels), spec)))
        except (ItemRejected, OSError):
            continue  # the loader skips and reports the same files
    if not statistics:
        return None
    mean, std = np.median(np.array(statistics), axis=0) / 255.0
    return round(float(mean), 6), round(float(min(1.0, max(std, 1e-3))), 6)


def with_frame_level(config: TrainConfig) -> TrainConfig:
    """The config with input.frame_level measured on train/good, when frames are standardised and it is
    not already known (a fine-tune or a resume keeps the parent's)."""
    if not config.input.standardise_frames or config.input.frame_level is not None or config.data.kind != "mvtec":
        return config
    level = measure_frame_level(training_image_paths(config.data.resolved_path), config.input.model_copy(
        update={"standardise_frames": False}).to_spec(), config.train.seed)
    return config.model_copy(update={"input": config.input.model_copy(update={"frame_level": level})})
