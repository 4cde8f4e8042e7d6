"""How long training runs: blocks of train.steps while the self-check improves, within the time budget."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.config import SelectionConfig, validate_train_config
from training.cross_fit import fold_config
from training.data import load_train_good
from training.driver import train
from training.length import AT_MAXIMUM, BUDGET, MAX_BLOCKS, SELF_CHECK, TrainingLength
from training.selection import CheckpointSelector

from .conftest import selection_decisions, tiny_config

# 16 fitted images in batches of 8: two steps an epoch, so a block of train.steps=3 is 2 epochs = 4 steps
STEPS_PER_EPOCH = 2
BLOCK = 4


def _self_check_selector() -> CheckpointSelector:
    """A synthetic-defect selector whose history a test writes itself (no model is scored)."""
    return CheckpointSelector(SelectionConfig(criterion="synthetic_auroc"), {"residual_max": 1.0},
                              SimpleNamespace(height=32, width=32), 0, np.zeros((2, 1, 32, 32), np.float32),
                              {}, lambda: None, total_epochs=2)


def _config(piped_class, **overrides):
    return validate_train_config(tiny_config(piped_class, **{"train.steps": 3, **overrides}), "tiny")


def _images(piped_class, config):
    images = load_train_good(piped_class, config.input.to_spec()).tensors
    return images[:16], images[16:24]


def _length(run) -> tuple[dict, list[dict]]:
    selection = selection_decisions(run)
    return selection["training_length"], selection["evaluations"]


def test_another_block_follows_only_while_the_self_check_improves(piped_class, tmp_path, capsys):
    config = _config(piped_class, **{"train.max_blocks": 4, "train.budget_s": None})
    fitted, held_out = _images(piped_class, config)

    result = train(config, fitted, tmp_path, validation=held_out, progress=True)

    length, evaluations = _length(tmp_path)
    assert length["block_steps"] == BLOCK
    assert 2 <= length["blocks"] <= 4  # the first block always raises the best (there was none before it)
    assert result.steps == length["steps"] == length["blocks"] * BLOCK
    for block in range(1, length["blocks"] + 1):
        judged = [(e["step"], e.get("judged_value", e["value"]), e.get("judged_error", e["standard_error"]))
                  for e in evaluations]  # what checkpoints are judged by, and its error
        best, error = max(((v, err) for step, v, err in judged if step <= (block - 1) * BLOCK),
                          default=(-np.inf, 0.0), key=lambda pair: pair[0])
        improved = any(v > best + error for step, v, _ in judged if (block - 1) * BLOCK < step <= block * BLOCK)
        at_maximum = any(v >= 1.0 for step, v, _ in judged if step <= block * BLOCK)
        if block < length["blocks"]:
            assert improved, f"block {block + 1} was trained although block {block} did not raise the self-check " \
                             "beyond the best's standard error"
            assert not at_maximum, f"block {block + 1} was trained although the self-check had reached 1.0"
        elif length["stopped_by"] == SELF_CHECK:
            assert not improved
    assert length["stopped_by"] in (SELF_CHECK, AT_MAXIMUM, MAX_BLOCKS)
    assert length["stopped_by"] != MAX_BLOCKS or length["blocks"] == 4
    assert f"step {result.steps}/{result.steps} (100%)" in capsys.readouterr().err.splitlines()[-1]


def test_the_budget_ends_training_after_its_first_epoch_at_the_earliest(piped_class, tmp_path):
    config = _config(piped_class, **{"train.steps": 400, "train.max_blocks": 1})
    fitted, held_out = _images(piped_class, config)

    result = train(config, fitted, tmp_path, validation=held_out, progress=False, time_budget_s=0.0)

    length, evaluations = _length(tmp_path)
    assert result.steps == STEPS_PER_EPOCH
    assert length["stopped_by"] == BUDGET
    assert evaluations[-1]["step"] == STEPS_PER_EPOCH  # the cut weights were evaluated before export


def test_a_block_is_added_only_when_it_and_the_time_after_training_fit_the_budget():
    selector = _self_check_selector()
    length = TrainingLength(planned_steps=3, steps_per_epoch=2, max_blocks=8, selector=selector, budget_s=25.0)
    selector.history = [{"step": 4, "value": 0.7, "seconds": 1.0}]
    assert length.end_of_block(elapsed=10.0)  # 10 s + a 10 s block + 2 s kept for selection and calibration <= 25 s
    assert length.target == 2 * BLOCK
    selector.history.append({"step": 8, "value": 0.8, "seconds": 1.0})
    assert not length.end_of_block(elapsed=20.0)  # 20 + 10 + 2 > 25
    assert length.stopped_by == BUDGET
    assert length.out_of_time(elapsed=23.0) and not TrainingLength(3, 2, 8, selector, None).out_of_time(1e9)


def test_a_rise_within_the_best_self_checks_standard_error_adds_no_block():
    selector = _self_check_selector()
    length = TrainingLength(planned_steps=3, steps_per_epoch=2, max_blocks=8, selector=selector, budget_s=None)
    selector.history = [{"step": 4, "value": 0.60, "standard_error": 0.04, "seconds": 1.0}]
    assert length.end_of_block(elapsed=10.0)  # the first block always counts: there was no best before it
    selector.history.append({"step": 8, "value": 0.63, "standard_error": 0.04, "seconds": 1.0})
    assert not length.end_of_block(elapsed=20.0)  # 0.63 is within 0.60's error of 0.04: noise
    assert length.stopped_by == SELF_CHECK and length.target == 2 * BLOCK
    # what checkpoints are judged by (a backbone's GAN residual) counts, with its own error
    selector.history = [{"step": 4, "value": 0.90, "standard_error": 0.01, "judged_value": 0.55, "judged_error": 0.01},
                        {"step": 8, "value": 0.90, "standard_error": 0.01, "judged_value": 0.58, "judged_error": 0.01}]
    assert selector.improved_since(1)  # 0.58 > 0.55 + 0.01, though the exported score's value stayed


def test_a_self_check_at_1_ends_training_though_it_just_rose():
    """An AUROC of 1.0 cannot rise: another block would train with no measure of whether it helps."""
    selector = _self_check_selector()
    length = TrainingLength(planned_steps=3, steps_per_epoch=2, max_blocks=8, selector=selector, budget_s=None)
    selector.history = [{"step": 2, "value": 0.9, "seconds": 1.0}, {"step": 4, "value": 0.99, "seconds": 1.0}]
    assert length.end_of_block(elapsed=10.0)
    selector.history.append({"step": 8, "value": 1.0, "seconds": 1.0})
    assert not length.end_of_block(elapsed=20.0)
    assert length.stopped_by == AT_MAXIMUM and length.target == 2 * BLOCK


def test_a_run_resumed_inside_an_added_block_ends_like_a_straight_one(piped_class, tmp_path):
    config = _config(piped_class, **{"train.max_blocks": 3, "train.budget_s": None})
    fitted, held_out = _images(piped_class, config)

    straight = train(config, fitted, tmp_path / "straight", validation=held_out, progress=False)
    train(config, fitted, tmp_path / "resumed", validation=held_out, progress=False, stop_after_steps=BLOCK + 1)
    resumed = train(config, fitted, tmp_path / "resumed", validation=held_out, resume=True, progress=False)

    assert straight.steps == resumed.steps > BLOCK
    assert selection_decisions(tmp_path / "straight") == selection_decisions(tmp_path / "resumed")
    for a, b in zip(straight.generator.state_dict().values(), resumed.generator.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_steps_on_the_command_line_mean_exactly_that_many(piped_class):
    from training.cli import resolve_config
    from inspector.cli import build_parser

    stated = resolve_config(build_parser().parse_args(["train", "--data", str(piped_class), "--steps", "40"]))
    default = resolve_config(build_parser().parse_args(["train", "--data", str(piped_class)]))
    assert (stated.train.steps, stated.train.max_blocks) == (40, 1)
    assert (default.train.steps, default.train.max_blocks, default.train.budget_s) == (150, 8, 600.0)


def test_calibration_folds_train_to_the_exported_step_even_past_the_first_block(piped_class):
    folds = fold_config(_config(piped_class, **{"train.max_blocks": 8}), steps=37)
    assert (folds.train.steps, folds.train.max_blocks, folds.selection.criterion) == (37, 1, "last")


@pytest.mark.parametrize("field, value", [("train.max_blocks", 0), ("train.budget_s", 0)])
def test_a_length_setting_out_of_range_is_a_config_error(piped_class, field, value):
    from inspector.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _config(piped_class, **{field: value})


def test_the_time_kept_after_training_is_timed_on_rounds_after_the_first_one_time_work():
    """The first selection round also draws the patch memory and fills the frozen-output caches that
    later rounds and the calibration reuse: once later rounds exist, they set what is kept."""
    selector = _self_check_selector()
    length = TrainingLength(planned_steps=3, steps_per_epoch=2, max_blocks=8, selector=selector, budget_s=600.0)
    assert length.reserve_s() == 0.0
    selector.history = [{"step": 4, "value": 0.7, "seconds": 50.0}]
    assert length.reserve_s() == 100.0  # one round alone: it is all there is to go by
    # ... less the frozen outputs it computed and kept for later rounds (deeppcb: 227 s of which most)
    selector.history = [{"step": 4, "value": 0.7, "seconds": 50.0, "one_time_seconds": 45.0}]
    assert length.reserve_s() == 10.0
    selector.history += [{"step": 8, "value": 0.8, "seconds": 0.5}, {"step": 12, "value": 0.8, "seconds": 0.8}]
    assert length.reserve_s() == 1.6
