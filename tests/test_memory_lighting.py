"""A brighter lamp is not a defect: with a pretrained backbone, training draws and the patch memory
include the normal frames brightened (clipped at white, as a camera clips), so a normal frame 30%
brighter stays as near to the memory as normal frames are. Frame standardising alone cannot do
this: clipped highlights are a different picture."""

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
    from training.items import brightened
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

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
    """lighting 0 draws the same pool as the rows measured before it existed (seeded)."""
    from training.backbone import StageFeatures
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

    features = PretrainedFeatures(StageFeatures(), "bgr").eval()
    frames = bright_surfaces(6, seed=2)
    assert torch.equal(patch_memory(features, frames, 64, seed=0), patch_memory(features, frames, 64, seed=0, lighting=0.0))


def test_the_brightened_copies_come_on_top_of_the_pool_drawn_from_the_frames_as_they_are(caplog):
    """With lighting the coreset chooses from twice the patches: the frames as they are keep their
    whole share of the pool (sharing it halved them, and rare normal patches went uncovered)."""
    import logging

    from training.backbone import StageFeatures
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

    features = PretrainedFeatures(StageFeatures(), "bgr").eval()
    frames = bright_surfaces(4, seed=3)  # 64 patches each: a pool of 8 x 16 = 128 takes 32 per frame and gain
    pools = []
    for lighting in (0.0, 0.3):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training.models.feature_ganomaly"):
            patch_memory(features, frames, 16, seed=0, lighting=lighting)
        [line] = [r.getMessage() for r in caplog.records if "coreset of" in r.getMessage()]
        pools.append(int(line.split(" from ")[1].split()[0]))
    assert pools == [128, 256]


def test_lighting_is_on_by_default_with_a_backbone_and_off_for_from_scratch_models(tmp_path):
    from training.config import validate_train_config

    backbone = {"name": "b", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
                "model": {"backbone": "efficientnet_lite0"}}
    assert validate_train_config(backbone, "test").train.augment.lighting == 0.3
    assert validate_train_config({"name": "s", "data": {"path": str(tmp_path)}}, "test").train.augment.lighting == 0.0
    stated = {**backbone, "train": {"augment": {"lighting": 0.0}}}
    assert validate_train_config(stated, "test").train.augment.lighting == 0.0


def test_with_lighting_about_half_the_training_draws_are_brightened_and_clipped_at_white():
    from inspector.card import ImageInput
    from training.config import AugmentConfig
    from training.items import augment, brightened

    frames = torch.linspace(-1, 0.8, 64 * 3 * 32 * 32).view(64, 3, 32, 32)
    still = AugmentConfig(hflip=False, vflip=False, rot90=False, lighting=0.3)
    drawn = augment(frames, still, torch.Generator().manual_seed(0), ImageInput(height=32, width=32, channels=3, color_order="rgb"))
    lit = [bool(torch.equal(d, b)) for d, b in zip(drawn, brightened(frames, 1.3))]
    same = [bool(torch.equal(d, f)) for d, f in zip(drawn, frames)]
    assert all(a != b for a, b in zip(lit, same)) and 20 <= sum(lit) <= 44
    assert float(drawn.max()) == 1.0 and float(brightened(frames, 1.3).max()) == 1.0  # white stays white


def test_without_lighting_training_draws_only_flip_and_turn_the_frames():
    """From-scratch models (lighting 0): no draw is brightened, every item keeps its pixel values."""
    from training.config import AugmentConfig
    from training.items import augment

    frames = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    poses = {"hflip": True, "vflip": True, "rot90": True}
    for options in (AugmentConfig(**poses), AugmentConfig(**poses, lighting=0.0)):
        drawn = augment(frames, options, torch.Generator().manual_seed(0))
        assert all(torch.equal(d.flatten().sort().values, f.flatten().sort().values) for d, f in zip(drawn, frames))
        assert not torch.equal(drawn, frames)  # flipped and turned
    assert torch.equal(augment(frames, AugmentConfig(**poses), torch.Generator().manual_seed(0)),
                       augment(frames, AugmentConfig(**poses, lighting=0.0), torch.Generator().manual_seed(0)))


def test_a_backbone_models_flips_and_turns_are_left_to_its_frames_unless_the_config_states_them(tmp_path):
    """A flipped photo casts its shading from the other side, which no part on a line shows, while a
    loose flake lies in any pose: with a pretrained backbone the flips and turns a config leaves unset
    are undecided until the frames decide them (training.pose_check, tests/test_pose_check.py); each
    stated one is kept; from-scratch models keep them on, as their rows were measured."""
    from training.config import validate_train_config

    backbone = {"name": "b", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
                "model": {"backbone": "efficientnet_lite0"}}
    poses = lambda config: (config.train.augment.hflip, config.train.augment.vflip, config.train.augment.rot90)  # noqa: E731
    assert poses(validate_train_config(backbone, "test")) == (None, None, None)
    assert poses(validate_train_config({"name": "s", "data": {"path": str(tmp_path)}}, "test")) == (True, True, True)
    stated = {**backbone, "train": {"augment": {"rot90": True}}}
    assert poses(validate_train_config(stated, "test")) == (None, None, True)
    decided = {**backbone, "train": {"augment": {"hflip": True, "vflip": False, "rot90": False}}}
    saved = validate_train_config(decided, "test").model_dump(mode="json")  # a run folder's config.json, read back
    assert poses(validate_train_config(saved, "test")) == (True, False, False)
