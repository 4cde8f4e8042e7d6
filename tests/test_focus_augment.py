"""A lens a little out of focus need not be a defect: with train.augment.focus, training draws and
the patch memory include the normal frames blurred by half of it and all of it (model pixels), so a
normal frame photographed slightly soft stays as near to the memory as normal frames are. Pretrained
features of fine texture change under a blur of one pixel; without it a soft frame alarms."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from training.synthetic import normal_texture

from .test_memory_lighting import typical_frame_score


def textured_surfaces(count: int, seed: int) -> np.ndarray:
    """(count, 3, 64, 64) model-space frames of a surface with fine texture, which a blur changes."""
    rng = np.random.default_rng(seed)
    return np.stack([normal_texture(rng, 64).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
                     for _ in range(count)]).astype(np.float32)


def test_a_blur_is_opencvs_gaussian_and_a_sigma_of_zero_keeps_the_frame():
    from training.items import blurred

    frame = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    for sigma in (0.5, 1.0, 2.0):
        ours = blurred(torch.from_numpy(frame).permute(2, 0, 1)[None], sigma)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - cv2.GaussianBlur(frame, (0, 0), sigma)).max() < 1e-3  # reflected borders alike
    frames = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    each = blurred(frames, torch.tensor([0.0, 1.0, 2.0]))  # one sigma per frame
    assert torch.equal(each[0], frames[0])
    torch.testing.assert_close(each[2], blurred(frames[2:], 2.0)[0])
    torch.testing.assert_close(each[1], blurred(frames[1:2], 1.0)[0], atol=1e-3, rtol=0)  # a longer kernel's tail


def test_with_focus_about_half_the_training_draws_are_blurred_by_half_of_it_or_all_of_it():
    from training.config import AugmentConfig
    from training.items import augment, blurred

    frames = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    still = {"hflip": False, "vflip": False, "rot90": False, "lighting": 0.0}
    drawn = augment(frames, AugmentConfig(**still, focus=2.0), torch.Generator().manual_seed(0))
    by_sigma = {sigma: blurred(frames, sigma) for sigma in (0.0, 1.0, 2.0)}  # the frames as they are, and half and all of focus
    which = [[sigma for sigma, versions in by_sigma.items() if torch.allclose(d, versions[i], atol=1e-3)]
             for i, d in enumerate(drawn)]
    assert all(len(sigmas) == 1 for sigmas in which)  # each draw is its frame, blurred by 0, 1 or 2 px
    counts = {sigma: sum(s == [sigma] for s in which) for sigma in by_sigma}
    assert 20 <= counts[0.0] <= 44 and counts[1.0] > 5 and counts[2.0] > 5
    sharp = augment(frames, AugmentConfig(**still, focus=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(sharp, frames)


def test_the_lamp_draws_are_the_same_with_and_without_focus():
    """The blur is drawn after the lighting: a run keeps which draws are brightened when focus is set."""
    from training.config import AugmentConfig
    from training.items import augment, blurred, brightened

    frames = torch.linspace(-1, 0.8, 32 * 3 * 16 * 16).view(32, 3, 16, 16)
    still = {"hflip": False, "vflip": False, "rot90": False, "lighting": 0.3}
    lit_only = augment(frames, AugmentConfig(**still, focus=0.0), torch.Generator().manual_seed(0))
    with_focus = augment(frames, AugmentConfig(**still, focus=2.0), torch.Generator().manual_seed(0))
    lit = [bool(torch.equal(d, b)) for d, b in zip(lit_only, brightened(frames, 1.3))]
    versions = [lit_only] + [blurred(lit_only, sigma) for sigma in (1.0, 2.0)]
    kept = [any(torch.allclose(w, version[i], atol=1e-3) for version in versions) for i, w in enumerate(with_focus)]
    assert 0 < sum(lit) < len(frames) and all(kept)  # each draw is its lamp draw, blurred or not


def test_a_normal_frame_out_of_focus_stays_near_a_memory_that_saw_blurred_frames():
    pytest.importorskip("efficientnet_lite_pytorch")
    from training.backbone import StageFeatures
    from training.items import blurred
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

    features = PretrainedFeatures(StageFeatures(), "bgr").eval()
    fitted, held_out = textured_surfaces(24, seed=0), torch.from_numpy(textured_surfaces(6, seed=1))
    with torch.no_grad():
        features.fit_statistics(torch.from_numpy(fitted))
    sharp = patch_memory(features, fitted, 1024, seed=0, focus=0.0)
    focused = patch_memory(features, fitted, 1024, seed=0, focus=2.0)
    as_they_are = typical_frame_score(features, sharp, held_out)
    soft = {sigma: blurred(held_out, sigma) for sigma in (1.0, 2.0)}
    for sigma, frames in soft.items():
        without, with_blurred = typical_frame_score(features, sharp, frames), typical_frame_score(features, focused, frames)
        print(f"held-out normal frames: {as_they_are:.2f}; blurred by {sigma} px: {without:.2f} (memory of sharp "
              f"frames), {with_blurred:.2f} (memory with blurred frames)")
        assert without > 1.2 * as_they_are  # without: the soft lens alone looks like a defect
        assert with_blurred < 1.05 * as_they_are
    assert typical_frame_score(features, focused, held_out) < 1.05 * as_they_are  # the sharp frames stay near


def test_the_blurred_frames_are_one_more_share_of_the_memorys_pool_and_without_focus_it_is_drawn_as_before(caplog):
    pytest.importorskip("efficientnet_lite_pytorch")
    from training.backbone import StageFeatures
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

    features = PretrainedFeatures(StageFeatures(), "bgr").eval()
    frames = textured_surfaces(4, seed=3)  # 64 patches each: a pool of 8 x 16 = 128 takes 32 per frame and share
    pools = []
    for lighting, focus in ((0.0, 0.0), (0.3, 0.0), (0.3, 2.0)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training.models.feature_ganomaly"):
            patch_memory(features, frames, 16, seed=0, lighting=lighting, focus=focus)
        [line] = [r.getMessage() for r in caplog.records if "coreset of" in r.getMessage()]
        pools.append(int(line.split(" from ")[1].split()[0]))
    assert pools == [128, 256, 384]
    assert torch.equal(patch_memory(features, frames, 16, seed=0, lighting=0.3),
                       patch_memory(features, frames, 16, seed=0, lighting=0.3, focus=0.0))


def test_focus_is_off_unless_a_config_states_it(tmp_path):
    """Off by default: on the harder suite it cost 0.010 of mean image AUROC (RESULTS), which a line
    with its focus locked should not pay."""
    from training.config import validate_train_config

    backbone = {"name": "b", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
                "model": {"backbone": "efficientnet_lite0"}}
    assert validate_train_config(backbone, "test").train.augment.focus == 0.0
    assert validate_train_config({"name": "s", "data": {"path": str(tmp_path)}}, "test").train.augment.focus == 0.0
    assert validate_train_config({**backbone, "train": {"augment": {"focus": 2.0}}}, "test").train.augment.focus == 2.0
