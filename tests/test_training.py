"""The GANomaly model and the training loop: named outputs, geometry, checkpoints, resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from training.config import validate_train_config
from training.data import load_train_good
from training.models.ganomaly import GANomaly, GANomalyDiscriminator, GANomalyScoring, GANomalyShape
from training.driver import train
from training.run_folder import CHECKPOINT, LOSSES

from .conftest import tiny_config


@pytest.mark.parametrize("height, width, channels", [(32, 32, 1), (64, 96, 3), (256, 256, 1), (48, 80, 3)])
def test_ganomaly_handles_sizes_from_32_to_256_square_or_not(height, width, channels):
    shape = GANomalyShape(height, width, channels, base_width=4, latent_dim=8)
    x = torch.rand(2, channels, height, width) * 2 - 1
    out = GANomaly(shape).eval()(x)
    assert set(out) == {"reconstruction", "latent_in", "latent_out"}
    assert out["reconstruction"].shape == x.shape
    assert out["latent_in"].shape == out["latent_out"].shape == (2, 8, 1, 1)
    assert GANomalyDiscriminator(shape)(x)["logit"].shape == (2, 1)
    scores = GANomalyScoring(GANomaly(shape).eval(), pool_kernel=4)(x)
    assert scores["anomaly_map"].shape == (2, 1, height, width)
    assert {k: v.shape for k, v in scores.items() if k != "anomaly_map"} == {
        "latent_distance": (2,), "residual_mean": (2,), "residual_max": (2,)}


def test_scoring_in_eval_mode_is_independent_of_batch_company():
    shape = GANomalyShape(32, 32, 1, base_width=4, latent_dim=8)
    model = GANomalyScoring(GANomaly(shape)).eval()
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        together = model(x)["latent_distance"]
        alone = torch.cat([model(x[i:i + 1])["latent_distance"] for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7)


def test_input_size_not_a_multiple_of_16_is_a_config_error():
    from inspector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"field 'input.height'.*multiple of 16"):
        validate_train_config({"data": {"path": "x"}, "input": {"height": 100}}, "cfg.yaml")


def test_training_writes_losses_and_checkpoint_and_resume_continues_exactly(piped_class, tmp_path):
    raw = tiny_config(piped_class, **{"train.steps": 6, "train.augment": {"hflip": True, "rot90": True}})
    config = validate_train_config(raw, "tiny")
    images = load_train_good(piped_class, config.input.to_spec()).tensors[:16]

    straight = train(config, images, tmp_path / "straight", progress=False)
    half = validate_train_config({**raw, "train": {**raw["train"], "steps": 3}}, "tiny")
    train(half, images, tmp_path / "resumed", progress=False)
    resumed = train(config, images, tmp_path / "resumed", resume=True, progress=False)

    assert straight.steps == resumed.steps == 6
    for a, b in zip(straight.generator.state_dict().values(), resumed.generator.state_dict().values()):
        torch.testing.assert_close(a, b)
    state = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert state["step"] == 6
    straight_rows = list(csv.DictReader((tmp_path / "straight" / LOSSES).open()))
    resumed_rows = list(csv.DictReader((tmp_path / "resumed" / LOSSES).open()))
    # 16 images / batch 8: two steps an epoch; the interrupted epoch 2 is logged in two parts
    assert [(int(r["epoch"]), int(r["step"])) for r in straight_rows] == [(1, 2), (2, 4), (3, 6)]
    assert [(int(r["epoch"]), int(r["step"])) for r in resumed_rows] == [(1, 2), (2, 3), (2, 4), (3, 6)]
    assert all(np.isfinite(float(r["contextual"])) for r in resumed_rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_one_clear_error(piped_class, tmp_path):
    config = validate_train_config(tiny_config(piped_class, **{"train.device": "cuda"}), "tiny")
    with pytest.raises(ValueError, match="train.device is 'cuda' but torch .* sees no CUDA device"):
        train(config, np.zeros((8, 3, 32, 32), np.float32), tmp_path, progress=False)
    auto = validate_train_config(tiny_config(piped_class, **{"train.device": "auto"}), "tiny")
    assert train(auto, np.zeros((8, 3, 32, 32), np.float32), tmp_path / "auto", progress=False).steps == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["ganomaly", "anogan"])
def test_a_model_trained_on_the_gpu_comes_back_on_the_cpu_and_exports(piped_class, tmp_path, family):
    from training.fit import fit

    overrides = {"train.device": "cuda", "model.family": family, "anogan.gan_steps": 4, "anogan.encoder_steps": 4}
    config = validate_train_config(tiny_config(piped_class, **overrides), "tiny")
    result = fit(config, tmp_path, progress=False, evaluate_test=False)
    assert result.model_path.is_file() and result.card.export.parity_max_abs_diff <= result.card.export.parity_tolerance
    assert all(p.device.type == "cpu" for p in result.scoring.parameters())


def test_the_memory_components_remember_the_fitted_images_and_export_with_parity(piped_class, tmp_path):
    """An image model scoring latent_knn and latent_lof: checkpoint selection scores them during
    training, the memory holds the codes of the fitted images only (a fitted image sits at distance ~0
    from it, a held-out one does not), and the export passes the torch-vs-onnxruntime parity check."""
    from inspector.scorer import Scorer
    from training.data import split_holdout
    from training.fit import fit

    config = validate_train_config(tiny_config(piped_class, **{
        "score.weights": {"latent_knn": 1.0, "latent_lof": 1.0}, "score.lof_neighbors": 3, "selection.evaluations": 2,
        "data.holdout_fraction": 0.25}), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    images = load_train_good(piped_class, config.input.to_spec()).tensors
    fit_idx, hold_idx = split_holdout(len(images), 0.25, config.train.seed)
    scorer = Scorer(result.model_path)
    assert f"nearest of {len(fit_idx)} normal training codes" in scorer.card.score.description
    assert "local outlier factor of the image's code among them, 3 neighbours" in scorer.card.score.description
    _, outputs = scorer.score_tensor(images)
    fitted, held_out = outputs["latent_knn"][fit_idx], outputs["latent_knn"][hold_idx]
    assert np.all(fitted < 1e-6)  # float rounding between torch (memory) and onnxruntime (query) only
    assert np.median(held_out) > 100 * max(np.median(fitted), 1e-9)
    assert np.all(np.isfinite(outputs["latent_lof"])) and np.all(outputs["latent_lof"] > 0)
    assert (result.model_path.parent / "selection.json").exists()


def test_a_tiled_memory_tiles_only_as_many_frames_as_it_needs(piped_class):
    """latent_knn on a tiled model draws its memory from the tiles of a seeded subset of frames
    (enough for memory_size tiles), not from every tile of every fitted frame."""
    from training.frame_scores import model_inputs
    from training.items import items_of

    config = validate_train_config(tiny_config(piped_class, **{"input.resize": "tile"}), "tiny")
    spec = config.input.to_spec()
    memory_inputs = items_of(config).memory_inputs
    frames = load_train_good(piped_class, spec).tensors[:8]
    per_frame = len(model_inputs(frames[:1], spec)[0])
    assert per_frame > 1
    assert len(memory_inputs(frames, size=3 * per_frame - 1, seed=0)) == 3 * per_frame
    assert np.array_equal(memory_inputs(frames, size=10**6, seed=0), model_inputs(frames, spec)[0])
