"""A synthetic line of plain parts: frames, a video of them and a model trained on them in seconds.

The daemon's end-to-end checks (tests, the soak benchmark) need a real model and real video whose
right answers are known: a grey part with sensor noise is normal, a black 10x10 patch is a defect,
unmistakable on purpose (they check plumbing, so the model must separate these with a huge margin).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FRAME_SHAPE = (48, 64)


def flat_part(rng: np.random.Generator, defect: bool = False) -> np.ndarray:
    """A plain grey part with sensor noise; a defect is a black 10x10 patch."""
    image = np.clip(rng.integers(110, 150) + rng.normal(0, 4, (*FRAME_SHAPE, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    if defect:
        y, x = rng.integers(8, 30), rng.integers(8, 46)
        image[y:y + 10, x:x + 10] = 10
    return image


def train_flat_model(folder: Path, standardise_frames: bool = True) -> Path:
    """40 flat parts in folder/data, a width-8 model trained on them for 40 steps in folder/run; its model.onnx.
    A fixed length (train.max_blocks 1) and the held-out threshold (calibration.folds 0): the tests and
    benchmarks that use it need a quick model of known cost, not the recipe's adaptive one, which
    extends while the self-check improves (7 blocks here) and cross-fits its threshold (5 more models).
    `standardise_frames` False: a model that follows the lamp (to make false alarms on purpose)."""
    from .config import validate_train_config
    from .fit import fit

    rng = np.random.default_rng(0)
    good = folder / "data" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(40):
        cv2.imwrite(str(good / f"{i:03d}.png"), flat_part(rng))
    config = validate_train_config({
        "name": "flat", "data": {"path": str(folder / "data")},
        "input": {"height": 32, "width": 32, "channels": 3, "color_order": "rgb", "standardise_frames": standardise_frames},
        "model": {"base_width": 8, "latent_dim": 16},
        "train": {"steps": 40, "max_blocks": 1, "batch_size": 16, "threads": 1},
        "score": {"weights": {"residual_max": 1.0}, "pool_kernel": 3}, "calibration": {"folds": 0}}, "flat")
    return fit(config, folder / "run", progress=False).model_path


def write_video(path: Path, n_frames: int, defect_every: int = 0, seed: int = 1, fps: float = 25.0) -> list[int]:
    """A lossless FFV1 video of flat parts; returns the 1-based indices of the defective frames."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (FRAME_SHAPE[1], FRAME_SHAPE[0]))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write an FFV1 video here")
    truth = []
    for index in range(1, n_frames + 1):
        defect = defect_every > 0 and index % defect_every == 0
        writer.write(flat_part(rng, defect))
        if defect:
            truth.append(index)
    writer.release()
    return truth
