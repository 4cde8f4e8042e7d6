"""AnoGAN family (f-AnoGAN): the WGAN-GP penalty, frozen generator and critic during encoder training,
and the (1 - lambda) * residual + lambda * feature-residual score through the exported model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inspector.errors import ConfigError
from inspector.scorer import Scorer
from training.config import validate_train_config
from training.data import load_train_good
from training.fit import fit, model_inputs
from training.models.anogan import AnoGANScoring, gradient_penalty
from training.torch_scoring import run_scoring
from training.train import CHECKPOINT
from training.train_anogan import GAN_PHASE_CHECKPOINT, train_anogan

from .conftest import tiny_config


class LinearCritic(nn.Module):
    """critic(x) = <w, x>: its input gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return {"critic": (x.flatten(1) * self.w.flatten()).sum(dim=1, keepdim=True)}


def test_gradient_penalty_on_a_linear_critic():
    w = torch.zeros(1, 2, 2)
    w[0, 0, 0], w[0, 1, 1] = 3.0, 4.0  # ||w|| = 5
    real, fake = torch.rand(6, 1, 2, 2), torch.rand(6, 1, 2, 2)
    assert gradient_penalty(LinearCritic(w), real, fake).item() == pytest.approx((5.0 - 1.0) ** 2)
    unit = torch.zeros(1, 2, 2)
    unit[0, 0, 1] = 1.0
    assert gradient_penalty(LinearCritic(unit), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def anogan_raw(piped_class, **extra):
    return tiny_config(piped_class, **{"model.family": "anogan", "anogan.gan_steps": 2, "anogan.encoder_steps": 3,
                                       "anogan.n_critic": 2, "score.weights": {"residual_mean": 0.7, "feature_residual": 0.3},
                                       **extra})


def test_encoder_training_leaves_generator_and_critic_unchanged(piped_class, tmp_path):
    config = validate_train_config(anogan_raw(piped_class), "tiny")
    images = load_train_good(piped_class, config.input.to_spec()).tensors[:16]
    train_anogan(config, images, tmp_path)
    after_gan = torch.load(tmp_path / GAN_PHASE_CHECKPOINT, weights_only=True)
    final = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    for key, value in after_gan["critic"].items():
        torch.testing.assert_close(final["critic"][key], value, rtol=0, atol=0)
    generator_keys = [k for k in after_gan["model"] if k.startswith("generator.")]
    encoder_keys = [k for k in after_gan["model"] if k.startswith("encoder.") and k.endswith("weight")]
    assert generator_keys and encoder_keys
    for key in generator_keys:
        torch.testing.assert_close(final["model"][key], after_gan["model"][key], rtol=0, atol=0)
    assert any(not torch.equal(final["model"][k], after_gan["model"][k]) for k in encoder_keys)


def test_the_exported_score_is_the_lambda_weighted_sum_of_residual_and_feature_residual(piped_class, tmp_path):
    config = validate_train_config(anogan_raw(piped_class), "tiny")
    result = fit(config, tmp_path, progress=False, evaluate_test=False)
    scorer = Scorer(result.model_path)
    assert scorer.card.family == "anogan"
    assert scorer.card.export.parity_max_abs_diff <= scorer.card.export.parity_tolerance
    spec = scorer.card.input
    test = load_train_good(piped_class, spec).tensors[:8]
    inputs, _ = model_inputs(test, spec)
    assert isinstance(result.scoring, AnoGANScoring)
    outputs = run_scoring(result.scoring, inputs)
    scales = scorer.card.score.scales
    expected = 0.7 * outputs["residual_mean"] / scales["residual_mean"] + 0.3 * outputs["feature_residual"] / scales["feature_residual"]
    onnx_scores, _ = scorer.score_tensor(inputs)
    np.testing.assert_allclose(onnx_scores, expected, rtol=1e-4)


def test_scores_must_fit_the_family():
    with pytest.raises(ConfigError, match="latent_distance is a GANomaly score"):
        validate_train_config({"data": {"path": "x"}, "model": {"family": "anogan"},
                               "score": {"weights": {"latent_distance": 1}}}, "c.yaml")
    with pytest.raises(ConfigError, match="feature_residual needs model.family anogan"):
        validate_train_config({"data": {"path": "x"}, "score": {"weights": {"feature_residual": 1}}}, "c.yaml")
