"""The pose check: which flips and turns of normal frames a backbone model trains on, decided from
held-out normal frames (training.pose_check)."""

import json

import cv2
import numpy as np
import pytest
import torch

from training.backbone import StageFeatures
from training.config import validate_train_config
from training.models.feature_ganomaly import PretrainedFeatures
from training.pose_check import POSE_FLAGS, describe_poses, flags_from_rises, pose_rises, with_decided_poses


def frames(kind: str, n: int, seed: int) -> torch.Tensor:
    """(n, 1, 96, 96) model-space frames: 'brushed' metal whose grain runs up and down (each column its
    own grey, blurred across), or 'blobs' with no direction at all."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "brushed":
            columns = cv2.GaussianBlur(rng.normal(0, 1, (1, 96)).astype(np.float32), (0, 0), 1.5)
            grain = np.repeat(columns, 96, axis=0)
        else:
            grain = cv2.GaussianBlur(rng.normal(0, 1, (96, 96)).astype(np.float32), (0, 0), 3)
        texture = grain / grain.std() + 0.1 * rng.normal(0, 1, (96, 96)).astype(np.float32)
        out.append(np.clip(0.5 + 0.15 * texture, 0, 1) * 2 - 1)
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


def rises(kind: str) -> dict[str, float]:
    bank, held_out = frames(kind, 8, seed=0), frames(kind, 10, seed=1)
    features = PretrainedFeatures(StageFeatures(), "gray", True, 0).eval()
    return pose_rises(features, features.fit_statistics(bank), held_out, top_share=0.01)


def test_grain_that_runs_one_way_is_flipped_in_training_but_never_turned():
    brushed = rises("brushed")
    assert brushed["quarter turn"] > 3  # turned, the grain runs across: nothing normal looks so
    assert max(brushed["horizontal flip"], brushed["vertical flip"], brushed["half turn"]) < 1
    assert flags_from_rises(brushed) == {"hflip": True, "vflip": True, "rot90": False}


def test_a_texture_with_no_direction_is_trained_in_every_pose():
    assert flags_from_rises(rises("blobs")) == {"hflip": True, "vflip": True, "rot90": True}


@pytest.mark.parametrize("measured, flags", [
    ({"horizontal flip": 0.2, "vertical flip": 0.3, "half turn": 0.4, "quarter turn": 0.3, "transpose": 0.5},
     {"hflip": True, "vflip": True, "rot90": True}),
    # a flip and a quarter turn make every pose of a square, the diagonal flip too: one abnormal pose
    # leaves the most poses that are all normal (two flips and the half turn they make)
    ({"horizontal flip": 0.2, "vertical flip": 0.3, "half turn": 0.4, "quarter turn": 0.3, "transpose": 1.5},
     {"hflip": True, "vflip": True, "rot90": False}),
    # two flips make a half turn: where it is abnormal, the flip that rises least
    ({"horizontal flip": 0.6, "vertical flip": 0.1, "half turn": 1.2}, {"hflip": False, "vflip": True, "rot90": False}),
    # a frame that is not square only gets half turns (training.items.augment)
    ({"horizontal flip": 4.0, "vertical flip": 1.0, "half turn": 0.9}, {"hflip": False, "vflip": False, "rot90": True}),
    ({"horizontal flip": 4.0, "vertical flip": 1.0, "half turn": 1.9},
     {"hflip": False, "vflip": False, "rot90": False}),
])
def test_the_flags_make_the_most_poses_that_are_all_normal(measured, flags):
    assert flags_from_rises(measured) == flags


def test_a_stated_flag_stays_and_the_undecided_ones_add_only_poses_that_are_normal():
    every = {"horizontal flip": 0.2, "vertical flip": 0.3, "half turn": 0.4, "quarter turn": 0.3, "transpose": 2.0}
    # turns stated: a flip beside them would make the diagonal flip, which is not normal here
    assert flags_from_rises(every, {"rot90": True}) == {"hflip": False, "vflip": False, "rot90": True}
    # a stated horizontal flip that is not normal stays; the vertical flip joins it, as the half turn the
    # two make is normal
    assert flags_from_rises({**every, "horizontal flip": 3.0}, {"hflip": True}) == {"hflip": True, "vflip": True,
                                                                                     "rot90": False}


def backbone(tmp_path, **augment) -> dict:
    return {"name": "p", "data": {"path": str(tmp_path)},
            "input": {"height": 96, "width": 96, "channels": 1, "color_order": "gray", "resize": "stretch"},
            "model": {"backbone": "efficientnet_lite0", "backbone_min_size": 0}, "train": {"augment": augment}}


def test_only_the_flags_a_backbone_config_leaves_unset_are_decided_and_the_record_says_how(tmp_path):
    config = validate_train_config(backbone(tmp_path, hflip=False), "test")
    assert (config.train.augment.hflip, config.train.augment.vflip, config.train.augment.rot90) == (False, None, None)
    decided, record = with_decided_poses(config, frames("brushed", 8, 0).numpy(), frames("brushed", 10, 1).numpy())
    poses = decided.train.augment
    assert (poses.hflip, poses.vflip, poses.rot90) == (False, True, False)
    assert record["decided"] == {"vflip": True, "rot90": False} and set(record["flags"]) == set(POSE_FLAGS)
    assert record["rises"]["quarter turn"] > 3 and record["held_out_frames"] == 10
    assert describe_poses(record) == ("vertical flips of held-out good images score like them as photographed: "
                                      "trained on; turns raise their scores: not trained on")
    assert describe_poses({**record, "decided": {"hflip": False, "vflip": False, "rot90": False}}) == (
        "horizontal flips, vertical flips and turns raise their scores: not trained on")
    json.dumps(record)  # it goes into selection.json


def test_without_held_out_frames_or_with_every_flag_stated_nothing_is_checked(tmp_path):
    config = validate_train_config(backbone(tmp_path), "test")
    decided, record = with_decided_poses(config, frames("blobs", 8, 0).numpy(), frames("blobs", 1, 1).numpy())
    assert (decided.train.augment.hflip, decided.train.augment.vflip, decided.train.augment.rot90) == (False,) * 3
    assert "photographed pose" in record["rule"]
    assert describe_poses(record) == ("horizontal flips, vertical flips and turns off: too few held-out good images "
                                      "to check them on")
    stated = validate_train_config(backbone(tmp_path, hflip=True, vflip=False, rot90=False), "test")
    assert with_decided_poses(stated, frames("blobs", 8, 0).numpy(), frames("blobs", 10, 1).numpy()) == (stated, None)
    scratch = validate_train_config({"name": "s", "data": {"path": str(tmp_path)}}, "test")  # from scratch: all on
    assert (scratch.train.augment.hflip, scratch.train.augment.vflip, scratch.train.augment.rot90) == (True,) * 3
    assert with_decided_poses(scratch, np.zeros((4, 3, 64, 64), np.float32), np.zeros((4, 3, 64, 64), np.float32)) \
        == (scratch, None)
