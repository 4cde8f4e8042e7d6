"""GAN training users can see and trust: stability options reach the models, the run folder shows
losses, grids and a mode-collapse indicator, and the exported checkpoint is chosen on held-out
normal data only -- never on test/."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from inspector.card import ImageInput
from training.config import validate_train_config
from training.data import load_train_good, split_holdout
from training.diagnostics import CollapseMonitor, diversity_ratio, evenly_spaced
from training.driver import train
from training.family import clip_gradients
from training.fit import fit
from training.items import random_crops
from training.models.losses import smoothing_floor
from training.models.scoring_module import ScoringModule
from training.run_folder import CHECKPOINT, LOSSES, SELECTION_LOG
from training.frame_scores import copy_outputs, frame_outputs
from training.selection import (DEFECT_REGION, SYNTHETIC_COPIES, CheckpointSelector, synthetic_copies,
                                synthetic_defects)

from .conftest import tiny_config


def test_diversity_ratio_is_zero_for_identical_items_and_one_for_the_real_batch_itself():
    real = torch.rand(8, 3, 16, 16)
    assert diversity_ratio(real, real) == pytest.approx(1.0)
    assert diversity_ratio(real[:1].expand(8, -1, -1, -1), real) == pytest.approx(0.0)


def test_evenly_spaced_events_include_the_last_and_never_exceed_the_count():
    assert [i for i in range(1, 11) if evenly_spaced(i, 10, 3)] == [4, 7, 10]
    assert [i for i in range(1, 4) if evenly_spaced(i, 3, 10)] == [1, 2, 3]
    assert not any(evenly_spaced(i, 10, 0) for i in range(1, 11))


def piped_crops(piped_class, n=16, size=32):
    config = validate_train_config(tiny_config(piped_class), "tiny")
    frames = load_train_good(piped_class, config.input.to_spec()).tensors[:n]
    return random_crops([torch.from_numpy(f) for f in frames], size, size, torch.Generator().manual_seed(0))


def test_collapse_indicator_fires_on_a_constant_generator_and_not_on_a_trained_one(piped_class, tmp_path, caplog):
    config = validate_train_config(tiny_config(piped_class, **{"train.steps": 30}), "tiny")
    images = load_train_good(piped_class, config.input.to_spec()).tensors
    with caplog.at_level(logging.WARNING, logger="training.diagnostics"):
        generator = train(config, images, tmp_path, progress=False).generator
    assert "mode collapse" not in caplog.text
    logged = [float(line.split(",")[7]) for line in (tmp_path / LOSSES).read_text().splitlines()[1:]]
    assert min(logged) > config.diagnostics.collapse_ratio
    real = piped_crops(piped_class)
    monitor = CollapseMonitor(config.diagnostics.collapse_ratio, "reconstructions")
    generator.train()  # as during training: batch statistics
    with caplog.at_level(logging.WARNING, logger="training.diagnostics"), torch.no_grad():
        healthy = monitor.check(generator(real)["reconstruction"], real, epoch=1)
        assert healthy > config.diagnostics.collapse_ratio and monitor.warnings == 0
        nn.init.zeros_(generator.decoder.net[-2].weight)  # the last transposed conv: tanh(0) for every input
        collapsed = monitor.check(generator(real)["reconstruction"], real, epoch=2)
    assert collapsed == pytest.approx(0.0, abs=1e-9)
    assert monitor.warnings == 1 and "mode collapse suspected at epoch 2" in caplog.text


@pytest.mark.parametrize("family", ["ganomaly", "anogan"])
def test_the_run_folder_shows_losses_per_epoch_a_plot_and_image_grids(piped_class, tmp_path, family):
    extra = {"train.steps": 6, "diagnostics.grids": 2}
    if family == "anogan":
        extra.update({"model.family": "anogan", "anogan.gan_steps": 4, "anogan.n_critic": 2, "anogan.encoder_steps": 4,
                      "score.weights": {"residual_mean": 1.0}})
    config = validate_train_config(tiny_config(piped_class, **extra), "tiny")
    images = load_train_good(piped_class, config.input.to_spec()).tensors
    train(config, images, tmp_path, progress=False)
    rows = (tmp_path / LOSSES).read_text().splitlines()
    header = rows[0].split(",")
    assert "diversity" in header and len(rows) >= 3
    diversity = [float(r.split(",")[header.index("diversity")]) for r in rows[1:]]
    assert all(np.isfinite(diversity))
    plot = cv2.imread(str(tmp_path / "losses.png"))
    assert plot is not None and plot.shape[0] > 100
    grids = sorted(p.name for p in (tmp_path / "diagnostics").glob("*.png"))
    kinds = {"ganomaly": {"reconstructions"}, "anogan": {"samples", "reconstructions"}}[family]
    assert {name.split("_e")[0] for name in grids} == kinds
    assert len(grids) <= 2 * len(kinds)  # diagnostics.grids per phase, not one per epoch
    assert all(cv2.imread(str(tmp_path / "diagnostics" / g)) is not None for g in grids)


def test_stability_options_reach_the_discriminator_and_its_optimiser(piped_class, tmp_path):
    config = validate_train_config(tiny_config(piped_class, **{
        "stability": {"spectral_norm": True, "label_smoothing": 0.1, "discriminator_lr_factor": 4.0, "grad_clip": 1.0}}),
        "tiny")
    images = load_train_good(piped_class, config.input.to_spec()).tensors
    train(config, images, tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert any(k.endswith("weight_orig") for k in state["discriminator"])  # spectral normalisation
    lr_d, lr_g = state["opt_d"]["param_groups"][0]["lr"], state["opt_g"]["param_groups"][0]["lr"]
    assert lr_d == pytest.approx(4.0 * lr_g)  # two-time-scale update rule


def test_gradient_clipping_bounds_the_update_norm():
    layer = nn.Linear(10, 10)
    (1000 * layer(torch.ones(4, 10)).sum()).backward()
    clip_gradients(layer, 1.0)
    norm = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    assert norm == pytest.approx(1.0, rel=1e-5)


def test_a_smoothed_discriminator_is_reset_at_its_own_loss_floor_not_at_zero():
    """With real targets 0.9 a perfect discriminator's BCE is 0.5 * H(0.9), never 0."""
    bce = nn.BCEWithLogitsLoss()
    best_real = bce(torch.logit(torch.tensor([0.9])), torch.tensor([0.9])).item()
    perfect = 0.5 * (best_real + bce(torch.tensor([-40.0]), torch.tensor([0.0])).item())
    assert smoothing_floor(0.1) == pytest.approx(perfect, rel=1e-6)
    assert smoothing_floor(0.0) == 0.0


def test_synthetic_defects_change_one_patch_of_each_frame_and_nothing_else():
    frames = np.random.default_rng(0).uniform(-1, 1, (6, 3, 64, 48)).astype(np.float32)
    defective = synthetic_defects(frames, patch_side=32, seed=1)
    for before, after in zip(frames, defective):
        changed = np.argwhere(np.any(before != after, axis=0))
        assert len(changed)
        (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
        assert bottom - top < 32 // 3 + 1 and right - left < 32 // 3 + 1
        assert after.min() >= -1 and after.max() <= 1


def defect_sides(height: int, width: int) -> list[int]:
    """The longer side of the changed box of each synthetic copy of random (height x width) frames."""
    frames = np.random.default_rng(0).uniform(-1, 1, (6, 1, height, width)).astype(np.float32)
    spec = ImageInput(height=height, width=width, channels=1, color_order="gray")
    sides = []
    for before, after in zip(np.concatenate([frames] * SYNTHETIC_COPIES), synthetic_copies(frames, spec, seed=4)):
        changed = np.argwhere(np.any(before != after, axis=0))
        sides.append(int((changed.max(axis=0) - changed.min(axis=0) + 1).max()))
    return sides


def test_a_whole_frame_gets_defects_of_a_few_backbone_patches_not_a_third_of_the_frame():
    """Sized against a 512 px frame the patches were 64-170 px: every copy stood out and the self-check
    read 1.0. The region a defect is sized against is capped (DEFECT_REGION: 12-32 px defects); a
    64 px tile keeps its own 8-21 px."""
    assert DEFECT_REGION == 96
    whole = defect_sides(512, 384)
    assert 11 <= min(whole) and max(whole) <= 32 and max(whole) - min(whole) >= 10
    tile = defect_sides(64, 64)
    assert 7 <= min(tile) and max(tile) <= 21


def test_a_synthetic_defect_is_as_plain_on_a_flat_surface_as_on_a_busy_one():
    """Its contrast is counted in its own frame's standard deviations (half to twice), so a dark, flat
    surface gets faint defects and a high-contrast one strong ones: the self-check asks the same of both."""
    rng = np.random.default_rng(3)
    for spread in (0.06, 0.12, 0.25):
        frames = rng.normal(0, spread, (40, 1, 64, 64)).astype(np.float32)
        defective = synthetic_defects(frames, patch_side=64, seed=2)
        noise_patches = [(after - before)[before != after] for before, after in zip(frames[1::2], defective[1::2])]
        contrast = np.array([change.std() for change in noise_patches]) / spread
        assert 0.4 < contrast.min() and contrast.max() < 2.5 and 0.8 < np.median(contrast) < 1.25
    # a flat frame still gets a defect (MIN_FRAME_SPREAD)
    flat = np.zeros((2, 1, 32, 32), np.float32)
    assert np.abs(synthetic_defects(flat, patch_side=32, seed=0) - flat).max() > 0.02


def test_a_synthetic_copy_is_scored_like_every_tile_of_it_although_only_the_touched_tiles_run(tiny_tiled_run,
                                                                                              piped_class):
    spec = tiny_tiled_run.card.input
    frames = load_train_good(piped_class, spec).tensors[:3]
    copies = synthetic_copies(frames, spec, seed=5)
    normal, normal_owner = frame_outputs(tiny_tiled_run.scoring, frames, spec)
    every_tile, owner = frame_outputs(tiny_tiled_run.scoring, copies, spec)
    ran = []
    counting = tiny_tiled_run.scoring.register_forward_hook(lambda module, args, out: ran.append(len(args[0])))
    try:
        touched, touched_owner = copy_outputs(tiny_tiled_run.scoring, frames, normal, normal_owner, copies, spec)
    finally:
        counting.remove()
    assert np.array_equal(owner, touched_owner) and touched.keys() == every_tile.keys()
    for name in every_tile:
        np.testing.assert_allclose(touched[name], every_tile[name], rtol=1e-5, atol=1e-6)
    assert 0 < sum(ran) < len(owner) / 2  # a 128x128 frame has 49 tiles of 32 px at half overlap


def held_out_frames(config, piped_class):
    normal = load_train_good(piped_class, config.input.to_spec()).tensors
    fit_idx, hold_idx = split_holdout(len(normal), config.data.holdout_fraction, config.train.seed)
    return normal[fit_idx], normal[hold_idx]


@pytest.mark.parametrize("criterion", ["synthetic_auroc", "validation_loss"])
def test_the_exported_weights_are_the_latest_within_one_standard_error_of_the_best(piped_class, tmp_path, criterion):
    config = validate_train_config(tiny_config(piped_class, **{
        "train.steps": 12, "selection": {"criterion": criterion, "evaluations": 4}}), "tiny")
    result = fit(config, tmp_path, progress=False, evaluate_test=False)
    log = json.loads((tmp_path / SELECTION_LOG).read_text())
    evaluations = log["evaluations"]
    assert log["criterion"] == criterion and len(evaluations) == 4
    top = max(evaluations, key=lambda e: e["value"])
    assert top["standard_error"] > 0 and log["best_value"] == top["value"]
    chosen = [e for e in evaluations if e["value"] >= top["value"] - top["standard_error"]][-1]
    assert (log["selected_epoch"], log["selected_value"]) == (chosen["epoch"], chosen["value"])
    if criterion == "synthetic_auroc":  # every score component's own self-check is on record, round by round
        assert all(set(config.score.weights) <= set(e["components"]) for e in evaluations)
        assert log["selected_components"] == chosen["components"]
        assert log["selected_component_shifts"] == chosen["component_shifts"]  # and how far each moved the copies
        assert set(chosen["component_shifts"]) == set(chosen["components"])
        if len(config.score.weights) == 1:  # a score of one component self-checks as that component alone
            (name,) = config.score.weights
            assert all(e["components"][name] == pytest.approx(e["value"]) for e in evaluations)
    else:
        assert "components" not in evaluations[0] and "selected_components" not in log
        assert "selected_component_shifts" not in log
    # Re-measuring the exported generator gives the selected value: the best weights were restored.
    _, held_out = held_out_frames(config, piped_class)
    again = CheckpointSelector(config.selection, config.score.weights, config.input.to_spec(), config.train.seed,
                               held_out, {"generator": result.generator},
                               lambda: result.scoring, total_epochs=1)
    assert again.measure() == pytest.approx(log["selected_value"], abs=1e-6)


@pytest.fixture
def class_with_sealed_test(piped_class, tmp_path):
    """A copy of a PIPED class whose test/ folder cannot be read (and is watched: see below)."""
    root = tmp_path / "part"
    shutil.copytree(piped_class / "train", root / "train")
    shutil.copytree(piped_class / "test" / "good", root / "test" / "good")
    os.chmod(root / "test", 0)
    yield root
    os.chmod(root / "test", 0o755)


@pytest.mark.parametrize("family", ["ganomaly", "anogan", "ganomaly tiled, int8 export"])
def test_checkpoint_selection_never_reads_test(class_with_sealed_test, tmp_path, family):
    """test/ is unreadable (mode 000) and every open / listing under it is recorded by an audit
    hook, which also catches reads a superuser's permissions would allow."""
    sealed = str(class_with_sealed_test / "test")
    touched: list[str] = []

    def audit(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and str(args[0]).startswith(sealed):
            touched.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    # the default length rule (blocks while the self-check improves) and the frame level are part of what is proven
    extra = {"train.steps": 8, "train.max_blocks": 3, "input.standardise_frames": True,
             "selection": {"criterion": "synthetic_auroc", "evaluations": 3}}
    if family == "anogan":
        extra.update({"model.family": "anogan", "anogan.gan_steps": 3, "anogan.n_critic": 2, "anogan.encoder_steps": 6})
    elif "int8" in family:  # quantization ranges and the int8 threshold come from held-out normal images too
        extra.update({"input.resize": "tile", "input.tile_overlap": 0.5, "export.precision": "int8"})
    config = validate_train_config(tiny_config(class_with_sealed_test, **extra), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    sealed = "\0"  # stop recording: the hook stays installed for the rest of the session
    assert result.model_path.is_file()
    selection = json.loads((tmp_path / "run" / SELECTION_LOG).read_text())
    assert selection["selected_epoch"] is not None and selection["training_length"]["blocks"] >= 2
    assert touched == []


class ConstantScore(ScoringModule):
    """A scorer that cannot tell anything apart: every item gets the same score."""

    def forward(self, image):
        ones = torch.ones(len(image))
        return {"residual_max": ones, "residual_mean": ones}


def test_auroc_standard_error_follows_hanley_and_mcneil():
    from training.selection import auroc_standard_error

    # A = 0.5, 10 and 10 items: Q1 = Q2 = 1/3, variance = (1/4 + 9/12 + 9/12) / 100
    assert auroc_standard_error(0.5, 10, 10) == pytest.approx(np.sqrt(0.0175))
    assert auroc_standard_error(0.9, 64, 256) < auroc_standard_error(0.9, 6, 24) < auroc_standard_error(0.6, 6, 24)


def test_noise_alone_never_undoes_training(piped_class, tmp_path):
    """Scripted criterion values (value, standard error) at four epochs: an earlier peak is kept only
    when the later weights fall more than one standard error below it."""
    config = validate_train_config(tiny_config(piped_class), "tiny")
    _, held_out = held_out_frames(config, piped_class)

    def chosen(values):
        model = nn.Linear(1, 1)
        selector = CheckpointSelector(config.selection, config.score.weights, config.input.to_spec(), config.train.seed,
                                      held_out, {"model": model}, ConstantScore, total_epochs=len(values))
        for epoch, value in enumerate(values, start=1):
            selector.measure_with_error = lambda value=value: value
            selector.evaluate(epoch, epoch)
        selector.restore_best(tmp_path / SELECTION_LOG)
        return json.loads((tmp_path / SELECTION_LOG).read_text())["selected_epoch"]

    assert chosen([(0.80, 0.05), (0.90, 0.05), (0.88, 0.05), (0.86, 0.05)]) == 4  # all within noise of 0.90
    assert chosen([(0.80, 0.05), (0.90, 0.05), (0.88, 0.05), (0.70, 0.05)]) == 3  # the last fell clearly
    assert chosen([(0.95, 0.01), (0.90, 0.01), (0.99, 0.01), (0.97, 0.01)]) == 3  # a precise criterion decides
    assert chosen([(0.61, 0.04), (0.61, 0.04), (0.61, 0.04), (0.61, 0.04)]) == 4  # ties keep the longest training


def test_where_part_of_the_score_is_frozen_checkpoints_are_judged_by_the_trained_part(piped_class, tmp_path):
    """A backbone's patch memory is the same in every checkpoint: the sum's self-check can drift down
    within its noise while the GAN residual, the part the checkpoints differ in, improves."""
    config = validate_train_config(tiny_config(piped_class), "tiny")
    _, held_out = held_out_frames(config, piped_class)
    weights = {"patch_knn": 1.0, "patch_residual": 1.0}
    script = [((0.96, 0.01), (0.62, 0.04)), ((0.95, 0.01), (0.70, 0.04)), ((0.94, 0.01), (0.76, 0.04)),
              ((0.93, 0.01), (0.75, 0.04))]  # (the sum's, the residual's) value and standard error

    def record(judged_by):
        selector = CheckpointSelector(config.selection, weights, config.input.to_spec(), config.train.seed, held_out,
                                      {"model": nn.Linear(1, 1)}, ConstantScore, total_epochs=4, judged_by=judged_by)
        for epoch, (whole, residual) in enumerate(script, start=1):
            def measure(whole=whole, residual=residual):
                selector.last_judged = residual if selector.judged_by else None
                return whole
            selector.measure_with_error = measure
            selector.evaluate(epoch, epoch)
        assert selector.improved_since(1) == bool(judged_by)  # training goes on while the judged part rises
        selector.restore_best(tmp_path / SELECTION_LOG)
        return json.loads((tmp_path / SELECTION_LOG).read_text())

    whole = record(())
    assert whole["selected_epoch"] == 2 and "judged_by" not in whole
    judged = record(("patch_residual",))
    assert judged["judged_by"] == ["patch_residual"]
    assert judged["selected_epoch"] == 4  # within one standard error of the residual's best (0.76)
    assert judged["selected_value"] == 0.93  # what the exported score's self-check says at those weights
    assert [e["judged_value"] for e in judged["evaluations"]] == [0.62, 0.70, 0.76, 0.75]


def test_training_warns_when_even_synthetic_defects_are_not_separated(piped_class, tmp_path, caplog):
    config = validate_train_config(tiny_config(piped_class), "tiny")
    _, held_out = held_out_frames(config, piped_class)
    model = nn.Linear(1, 1)
    selector = CheckpointSelector(config.selection, config.score.weights, config.input.to_spec(), config.train.seed,
                                  held_out, {"model": model}, ConstantScore, total_epochs=1)
    assert selector.evaluate(epoch=1, step=1) == pytest.approx(0.5)
    with caplog.at_level(logging.WARNING, logger="training.selection"):
        selector.restore_best(tmp_path / SELECTION_LOG)
    assert "expect weak detection" in caplog.text
