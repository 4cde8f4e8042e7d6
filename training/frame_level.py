"""The brightness every frame is brought to before the model: the normal frames' typical pixel mean.

A line's exposure drifts (a lamp ages, the shutter or aperture is changed, daylight through a
window): every pixel gets a gain, and a model trained on pixels scores that as an anomaly on every
frame (the PIPED classes' brightness check: normal frames scaled by 0.7 or 1.3 alarmed at up to 100%
without this). With `input.standardise_frames`, training measures the pixel mean of (a seeded sample
of) the normal training frames, exactly on the pixels the model input is made of
(inspector.preprocess.model_pixels), and records the median as `input.frame_level`; the card
carries it, and the one preprocessing brings every frame (training, evaluation, the line) to it.
Only train/good is read.

A pretrained-backbone model that standardises frames itself (`model.standardise_frames`, inside its
graph: each frame's own dark and bright level) gets no level: a gain is undone there already, and the
step before it misjudged the gain where a brighter lamp clips highlights (the mean of the unclipped
pixels is the mean of the darker ones), handing the backbone a frame off by that error. On elpv_mono's
held-out normal frames (train/good only), the patch memory's distance alone alarmed on 9 of 60 at
1.3x brightness with the step, 3 of 60 without it (2 of 60 at 1.0x in both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.errors import ItemRejected
from inspector.image_files import read_image
from inspector.preprocess import frame_mean, model_pixels

from .config import TrainConfig
from .data import training_image_paths

SAMPLE_FRAMES = 64


def measure_frame_level(paths: list[Path], spec, seed: int) -> float | None:
    """Median pixel mean (0-1 units) of up to SAMPLE_FRAMES of the frames (seeded)."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:SAMPLE_FRAMES])
    means = []
    for index in pick:
        try:
            means.append(frame_mean(model_pixels(read_image(paths[index], spec.max_pixels), spec)))
        except (ItemRejected, OSError):
            continue  # the loader skips and reports the same files
    if not means:
        return None
    return round(float(min(1.0, max(np.median(means) / 255.0, 1e-3))), 6)


def levels_frames(config: TrainConfig) -> bool:
    """Whether frames are brought to a level before the model: asked for, and not already done inside
    the model (a backbone standardising each frame itself, see the module docstring)."""
    inside = config.model.backbone != "none" and config.model.standardise_frames
    return config.input.standardise_frames and not inside


def with_frame_level(config: TrainConfig) -> TrainConfig:
    """The config with input.frame_level measured on train/good, when frames are brought to a level
    (levels_frames) and it is not already known (a fine-tune or a resume keeps the parent's)."""
    if not levels_frames(config) or config.input.frame_level is not None or config.data.kind != "mvtec":
        return config
    level = measure_frame_level(training_image_paths(config.data.resolved_path), config.input.model_copy(
        update={"standardise_frames": False}).to_spec(), config.train.seed)
    return config.model_copy(update={"input": config.input.model_copy(update={"frame_level": level})})
