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
from training.data import load_train_good, split_holdout
from training.fit import fit, model_inputs
from training.items import items_of
from training.models.anogan import AnoGANScoring
from training.models.anogan_family import build_anogan
from training.models.losses import gradient_penalty
from training.driver import seed_everything, train
from training.run_folder import CHECKPOINT, GAN_PHASE_CHECKPOINT
from training.torch_scoring import run_scoring

from .conftest import selection_decisions, tiny_config


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
    train(config, images, tmp_path, progress=False)
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


@pytest.mark.parametrize("stop", [2, 6], ids=["in the GAN phase", "in the encoder phase"])
def test_an_interrupted_run_resumed_ends_with_the_weights_of_a_straight_run(piped_class, tmp_path, stop):
    config = validate_train_config(anogan_raw(piped_class, **{
        "anogan.gan_steps": 4, "anogan.encoder_steps": 4, "selection.evaluations": 2}), "tiny")
    images = load_train_good(piped_class, config.input.to_spec()).tensors
    fitted, held_out = images[:24], images[24:]  # 3 batches a permutation: stops fall inside one
    straight = train(config, fitted, tmp_path / "straight", validation=held_out, progress=False)
    interrupted = train(config, fitted, tmp_path / "resumed", validation=held_out, progress=False,
                        stop_after_steps=stop)
    assert interrupted.interrupted and interrupted.steps == stop
    resumed = train(config, fitted, tmp_path / "resumed", validation=held_out, resume=True, progress=False)

    assert not resumed.interrupted and resumed.steps == straight.steps == 8
    for name, module in straight.family.modules.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(resumed.family.modules[name].state_dict()[key], value, rtol=0, atol=0)
    assert selection_decisions(tmp_path / "resumed") == selection_decisions(tmp_path / "straight")


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


def test_an_anogan_model_can_score_where_its_code_lies_among_the_fitted_items_codes(piped_class, tmp_path):
    """latent_knn / latent_lof over E(x): the memory holds the encoder's codes of the fitted images
    (so a fitted image's own code is in it: distance 0), and ONNX scores the weighted sum."""
    config = validate_train_config(anogan_raw(piped_class, **{
        "input.resize": "stretch", "data.holdout_fraction": 0.25, "score.lof_neighbors": 5,
        "score.weights": {"residual_mean": 0.5, "latent_knn": 0.25, "latent_lof": 0.25}}), "tiny")
    result = fit(config, tmp_path, progress=False, evaluate_test=False)
    scorer = Scorer(result.model_path)
    assert scorer.card.export.parity_max_abs_diff <= scorer.card.export.parity_tolerance
    normal = load_train_good(piped_class, config.input.to_spec()).tensors
    fitted, held_out = split_holdout(len(normal), config.data.holdout_fraction, config.train.seed)
    with torch.no_grad():
        codes = result.scoring.model.encode(torch.from_numpy(normal[fitted]))
    torch.testing.assert_close(result.scoring.nearest_code.memory, codes.flatten(1))
    np.testing.assert_allclose(run_scoring(result.scoring, normal[fitted])["latent_knn"], 0, atol=1e-3)
    onnx_scores, _ = scorer.score_tensor(normal[held_out])
    scales = scorer.card.score.scales
    torch_outputs = run_scoring(result.scoring, normal[held_out])
    expected = sum(w * torch_outputs[name] / scales[name] for name, w in config.score.weights.items())
    np.testing.assert_allclose(onnx_scores, expected, rtol=1e-4)


def test_joint_reconstruction_trains_the_encoder_with_the_generator_only_when_asked(piped_class, tmp_path):
    """anogan.reconstruction_weight > 0: the GAN phase also fits E and G to reconstruct real images;
    at 0 (f-AnoGAN) the encoder keeps its initial weights until the encoder phase."""
    encoders = {}
    for weight in (0.0, 5.0):
        config = validate_train_config(anogan_raw(piped_class, **{"anogan.reconstruction_weight": weight}), "tiny")
        images = load_train_good(piped_class, config.input.to_spec()).tensors[:16]
        train(config, images, tmp_path / str(weight), progress=False)
        state = torch.load(tmp_path / str(weight) / GAN_PHASE_CHECKPOINT, weights_only=True)["model"]
        encoders[weight] = {k: v for k, v in state.items() if k.startswith("encoder.") and k.endswith("weight")}
    seed_everything(config.train.seed)
    initial = build_anogan(items_of(config).shape(images), config.model.base_width, config.model.latent_dim,
                           config.stability.spectral_norm)[0].state_dict()
    for key, value in encoders[0.0].items():
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0)
    assert any(not torch.equal(encoders[5.0][k], initial[k]) for k in encoders[5.0])


def test_scores_must_fit_the_family():
    with pytest.raises(ConfigError, match="latent_distance is not a score of model.family anogan.*scored by ganomaly and autoencoder"):
        validate_train_config({"data": {"path": "x"}, "model": {"family": "anogan"},
                               "score": {"weights": {"latent_distance": 1}}}, "c.yaml")
    with pytest.raises(ConfigError, match="feature_residual is not a score of model.family ganomaly.*scored by anogan"):
        validate_train_config({"data": {"path": "x"}, "score": {"weights": {"feature_residual": 1}}}, "c.yaml")


def test_latent_search_lowers_its_objective_with_more_steps_and_scores_like_the_card(piped_class, tmp_path):
    from training.latent_search import latent_search, search_objective_weights

    config = validate_train_config(anogan_raw(piped_class), "tiny")
    result = fit(config, tmp_path, progress=False, evaluate_test=False)
    score = Scorer(result.model_path).card.score
    inputs, _ = model_inputs(load_train_good(piped_class, config.input.to_spec()).tensors[:6], config.input.to_spec())
    w_residual, w_feature = search_objective_weights(score)
    assert w_feature / (w_residual + w_feature) > 0  # the card scores the feature residual: the search uses it too
    objective = {}
    for steps in (1, 30):
        out = latent_search(result.scoring, inputs, score, steps)
        assert set(out) == {"residual_mean", "residual_max", "feature_residual"}
        objective[steps] = float(np.mean(w_residual * out["residual_mean"] + w_feature * out["feature_residual"]))
    assert objective[30] < objective[1]


@pytest.mark.parametrize("memory", [False, True], ids=["residual score", "with latent_lof (memory rebuilt from the data)"])
def test_evaluate_with_latent_search_compares_it_with_the_single_pass(piped_class, tmp_path, memory):
    import json

    from inspector.cli import main

    extra = {"score.weights": {"residual_mean": 0.5, "latent_lof": 0.5}, "score.lof_neighbors": 5} if memory else {}
    config = validate_train_config(anogan_raw(piped_class, **extra), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    code = main(["evaluate", str(result.model_path), "--data", str(piped_class), "--latent-search", "3", "--limit", "6",
                 "--out", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "latent_search.json").read_text())
    assert report["items"] == 6 and report["steps"] == 3
    for name in ("single_pass", "latent_search"):
        assert report[name]["seconds"] > 0 and 0 <= report[name]["f1"] <= 1


def test_latent_search_with_a_memory_score_says_so_in_one_line_when_the_training_data_is_gone(piped_class, tmp_path, capsys):
    import shutil

    from inspector.cli import main

    data = tmp_path / "class"
    shutil.copytree(piped_class / "train", data / "train")
    config = validate_train_config(anogan_raw(data, **{"score.weights": {"residual_mean": 0.5, "latent_lof": 0.5},
                                                       "score.lof_neighbors": 5}), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    shutil.rmtree(data)
    assert main(["evaluate", str(result.model_path), "--data", str(piped_class), "--latent-search", "2", "--limit", "4",
                 "--out", str(tmp_path / "eval")]) != 0
    err = capsys.readouterr().err
    assert "rebuilds the memory of normal codes" in err and "Traceback" not in err


def test_latent_search_refuses_a_ganomaly_model(tiny_piped_run, piped_class, capsys):
    from inspector.cli import main

    assert main(["evaluate", str(tiny_piped_run.model_path), "--data", str(piped_class), "--latent-search", "3"]) != 0
    assert "latent search is for anogan models" in capsys.readouterr().err


def test_tabular_anogan_trains_on_normal_rows_exports_with_parity_and_ranks_attacks_higher(tmp_path):
    """A tiny f-AnoGAN on 4,000 normal NSL-KDD rows (the same slice the tabular GANomaly test uses)."""
    import gzip
    from pathlib import Path

    from sklearn.metrics import roc_auc_score

    from training.config import load_train_config
    from training.tabular import Table, make_windows

    from .conftest import DATA, require

    nsl = require(DATA / "nsl_kdd" / "KDDTrain+.txt.gz").parent
    config = load_train_config(Path(__file__).resolve().parents[1] / "configs" / "nsl_kdd.yaml", {
        "data.max_train": 4000, "data.test_paths": {}, "model.family": "anogan", "model.base_width": 64,
        "anogan.gan_steps": 100, "anogan.encoder_steps": 150, "anogan.n_critic": 2, "train.batch_size": 128,
        "train.threads": 1, "score.weights": {"residual_mean": 0.9, "feature_residual": 0.1}})
    result = fit(config, tmp_path, progress=False)
    scorer = Scorer(result.model_path)
    assert scorer.card.family == "anogan" and scorer.card.input.kind == "tabular"
    assert scorer.card.export.parity_max_abs_diff <= scorer.card.export.parity_tolerance
    spec = scorer.card.input
    with gzip.open(nsl / "KDDTest+.txt.gz", "rt") as handle:
        rows = [next(handle).rstrip("\n").split(",") for _ in range(5000)]
    test = make_windows(Table(spec.columns, rows).rows, spec, spec.columns.index("label"), ["normal"])
    scores = [r.raw for r in scorer.score_features(test.features)]
    # ~2,000 normal and ~3,000 attack rows: a random score's AUROC has a standard deviation of ~0.008.
    assert roc_auc_score(test.labels, scores) >= 0.8  # measured 0.93
