"""A brighter lamp is not a defect: the backbone's patch memory has seen the normal frames brightened
(clipped at white, as a camera clips), so a normal frame 30% brighter stays as near to it as normal
frames are. Frame standardising alone cannot do this: clipped highlights are a different picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.synthetic import normal_texture

pytest.importorskip("efficientnet_lite_pytorch")


def bright_surfaces(count: int, seed: int) -> np.ndarray:
    """(count, 3, 64, 64) model-space frames of a light surface: many pixels clip at 1.3 x brightness."""
    rng = np.random.default_rng(seed)
    frames = [np.clip(normal_texture(rng, 64).astype(np.float32) * 1.15, 0, 255) for _ in range(count)]
    return np.stack([f.transpose(2, 0, 1) / 127.5 - 1 for f in frames]).astype(np.float32)


def typical_frame_score(features, memory, frames: torch.Tensor) -> float:
    """The median over frames of a frame's largest patch distance to the memory (patch_knn's score)."""
    from training.models.feature_ganomaly import PatchMemory

    with torch.no_grad():
        return float(PatchMemory(memory)(features(frames)).flatten(1).amax(dim=1).median())


def test_a_normal_frame_under_a_brighter_lamp_stays_near_a_memory_that_saw_brightened_frames():
    from training.backbone import StageFeatures
    from training.config import ScoreConfig
    from training.models.feature_ganomaly import PretrainedFeatures, brightened, patch_memory

    assert ScoreConfig().memory_lighting == 0.3
    features = PretrainedFeatures(StageFeatures(), "bgr").eval()
    fitted, held_out = bright_surfaces(24, seed=0), torch.from_numpy(bright_surfaces(6, seed=1))
    clipped = float((brightened(held_out, 1.3) >= 1).float().mean())
    assert clipped > 0.2  # the picture really changes: highlights flatten at white
    with torch.no_grad():
        features.fit_statistics(torch.from_numpy(fitted))
    plain = patch_memory(features, fitted, 1024, seed=0, lighting=0.0)
    lit = patch_memory(features, fitted, 1024, seed=0, lighting=0.3)
    as_they_are = typical_frame_score(features, plain, held_out)
    brighter_plain = typical_frame_score(features, plain, brightened(held_out, 1.3))
    brighter_lit = typical_frame_score(features, lit, brightened(held_out, 1.3))
    print(f"held-out normal frames: {as_they_are:.2f}; 1.3 x brighter: {brighter_plain:.2f} (memory of the frames "
          f"as they are), {brighter_lit:.2f} (memory with brightened frames)")
    assert brighter_plain > 1.4 * as_they_are  # without: the lamp alone looks like a defect
    assert brighter_lit < 1.2 * as_they_are
    assert typical_frame_score(features, lit, held_out) < 1.05 * as_they_are  # and the frames as they are stay near


def test_without_lighting_the_memory_is_drawn_as_before():
    """memory_lighting 0 draws the same pool as the rows measured before it existed (seeded)."""
    from training.backbone import StageFeatures
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

    features = PretrainedFeatures(StageFeatures(), "bgr").eval()
    frames = bright_surfaces(6, seed=2)
    assert torch.equal(patch_memory(features, frames, 64, seed=0), patch_memory(features, frames, 64, seed=0, lighting=0.0))
