"""How score components share one unit before they are summed (training.frame_scores.component_scales)."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.card import ScoreDefinition
from inspector.scorer import combine_score
from training.config import validate_train_config
from training.frame_scores import component_scales


def held_out_outputs() -> dict[str, np.ndarray]:
    """Two components of the same typical size: one holds normal frames tightly, one is noisy."""
    rng = np.random.default_rng(0)
    return {"tight": 10.0 + 0.2 * rng.standard_normal(60), "noisy": 10.0 + 3.0 * rng.standard_normal(60)}


def test_median_fusion_makes_each_component_times_a_typical_normal():
    scales = component_scales(held_out_outputs(), ["tight", "noisy"])
    assert scales["tight"] == pytest.approx(10.0, abs=0.2) and scales["noisy"] == pytest.approx(10.0, abs=1.5)


def test_spread_fusion_lets_each_components_normal_variation_count_the_same():
    outputs = held_out_outputs()
    scales = component_scales(outputs, ["tight", "noisy"], "spread")
    assert scales["tight"] == pytest.approx(0.2, rel=0.35) and scales["noisy"] == pytest.approx(3.0, rel=0.35)
    # a defect that moves the tight component by 5 of its spreads outranks a normal frame one spread
    # up on the noisy one; the plain sum (21 against 23) would rank them the other way
    score = lambda tight, noisy: tight / scales["tight"] + noisy / scales["noisy"]  # noqa: E731
    assert score(10.0 + 5 * 0.2, 10.0) > score(10.0, 10.0 + 3.0)


def test_a_component_constant_on_normal_frames_gets_a_floor_not_an_infinite_weight():
    scales = component_scales({"flat": np.full(20, 4.0)}, ["flat"], "spread")
    assert scales["flat"] == pytest.approx(0.04)


def test_the_backbone_sums_in_spread_units_and_the_pixel_model_in_medians_unless_told(tmp_path):
    backbone = {"data": {"path": str(tmp_path)}, "input": {"height": 64, "width": 64, "resize": "stretch"},
                "model": {"backbone": "efficientnet_lite0"}}
    assert validate_train_config(backbone, "test").score.fusion == "spread"
    assert validate_train_config({"data": {"path": str(tmp_path)}}, "test").score.fusion == "median"
    stated = {**backbone, "score": {"fusion": "median"}}
    assert validate_train_config(stated, "test").score.fusion == "median"


def test_a_pooled_score_is_the_pooled_map_output_itself_and_needs_a_map_in_score_units():
    outputs = {"patch_knn": np.array([4.0, 8.0]), "patch_residual": np.array([2.0, 1.0]),
               "anomaly_top": np.array([0.7, 1.9])}
    summed = ScoreDefinition(weights={"patch_knn": 1.0, "patch_residual": 1.0},
                             scales={"patch_knn": 2.0, "patch_residual": 1.0}, map_in_score_units=True)
    np.testing.assert_allclose(combine_score(outputs, summed), [4.0, 5.0])  # the weighted sum of maxima
    pooled = summed.model_copy(update={"pooled_output": "anomaly_top"})
    np.testing.assert_allclose(combine_score(outputs, pooled), [0.7, 1.9])
    with pytest.raises(ValueError, match="map_in_score_units"):
        ScoreDefinition(weights={"residual_max": 1.0}, scales={"residual_max": 1.0}, pooled_output="anomaly_top")
