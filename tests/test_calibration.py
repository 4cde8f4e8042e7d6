"""Thresholds from normal data meet the configured false-alarm rate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inspector.card import ScoreDefinition
from training.calibrate import calibrate, f1_optimal_threshold, quantile_threshold


@pytest.mark.parametrize("target", [0.01, 0.05])
@pytest.mark.parametrize("distribution", ["lognormal", "gamma", "uniform"])
def test_quantile_threshold_meets_the_target_false_alarm_rate(target, distribution):
    rng = np.random.default_rng(42)
    draw = {"lognormal": lambda n: rng.lognormal(0.0, 0.5, n), "gamma": lambda n: rng.gamma(2.0, 1.0, n),
            "uniform": lambda n: rng.uniform(0, 1, n)}[distribution]
    holdout, fresh = draw(20_000), draw(200_000)  # fresh: new normal items from the same process
    plain_estimate = np.mean(fresh >= quantile_threshold(holdout, target, confidence=0.5))
    assert plain_estimate == pytest.approx(target, rel=0.15)
    upper_limit = np.mean(fresh >= quantile_threshold(holdout, target))  # default confidence 0.9
    assert 0.7 * target < upper_limit < plain_estimate


def test_small_holdout_extrapolates_the_tail_instead_of_taking_the_largest_score():
    """6 held-out images cannot resolve a 1% quantile: their maximum alone would alarm on ~1/7 of
    normal parts. The log-normal tail fit lands near the target in the typical (median) case."""
    rng = np.random.default_rng(0)
    fresh = rng.lognormal(0.0, 0.3, 200_000)
    rates, rates_of_max = [], []
    for _ in range(300):
        holdout = rng.lognormal(0.0, 0.3, 6)
        threshold = quantile_threshold(holdout, 0.01, confidence=0.5)
        rates.append(np.mean(fresh >= threshold))
        rates_of_max.append(np.mean(fresh >= holdout.max()))
    assert np.median(rates) < 0.02
    assert np.mean(rates) < 0.35 * np.mean(rates_of_max)


@pytest.mark.parametrize("n, draw", [(6, "lognormal"), (30, "lognormal"), (600, "gamma"), (5000, "uniform")])
def test_threshold_keeps_false_alarms_under_the_target_with_the_configured_confidence(n, draw):
    """Few scores (log-normal tolerance limit) and many (order statistic, any distribution): over
    repeated holdouts, the false-alarm rate is at or under the target in about `confidence` of them."""
    rng = np.random.default_rng(1)
    sample = {"lognormal": lambda size: rng.lognormal(0.0, 0.4, size), "gamma": lambda size: rng.gamma(2.0, 1.0, size),
              "uniform": lambda size: rng.uniform(0, 1, size)}[draw]
    true_quantile = np.quantile(sample(2_000_000), 0.99)
    for confidence in (0.5, 0.9):
        met = np.mean([quantile_threshold(sample(n), 0.01, confidence) >= true_quantile for _ in range(400)])
        assert met == pytest.approx(confidence, abs=0.06)


def test_calibration_records_method_target_and_quantiles():
    scores = np.linspace(1.0, 2.0, 1001)
    cal = calibrate(scores, 0.01, confidence=0.9)
    assert cal.method == "quantile" and cal.target_false_alarm_rate == 0.01 and cal.n_samples == 1001
    assert cal.confidence == 0.9
    assert 1.99 < cal.threshold < 1.997  # a little above the 99% point: its upper 90% confidence limit
    assert cal.quantiles["p50"] == pytest.approx(1.5) and cal.quantiles["max"] == 2.0


def test_f1_optimal_threshold_separates_labelled_validation_data():
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.9, 1.0, 1.2])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    assert f1_optimal_threshold(scores, labels) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_optimal_threshold(scores, np.zeros(7))


def test_calibration_refuses_non_finite_scores():
    with pytest.raises(ValueError, match="finite"):
        quantile_threshold(np.array([1.0, np.nan]), 0.01)


@pytest.mark.parametrize("label, score, expected", [(1, 2.0, "caught"), (1, 0.5, "missed"), (0, 1.0, "false alarm"),
                                                    (0, 0.99, "passed")])
def test_report_examples_name_what_the_threshold_did(label, score, expected):
    from training.evaluate import outcome

    assert outcome(label, score, threshold=1.0) == expected


def test_the_f1_ceiling_keeps_false_alarms_within_the_limit():
    from training.evaluate import best_f1_within_false_alarm_rate

    # 100 normals, 10 defects: 5 defects outrank every normal, the other 5 sit among the top normals
    normal = np.arange(100, dtype=float)
    defects = np.array([200, 201, 202, 203, 204, 98.5, 97.5, 96.5, 95.5, 50.0])
    scores, labels = np.r_[normal, defects], np.r_[np.zeros(100), np.ones(10)]
    # at most 2 false alarms: a threshold at 98.5 takes 6 defects and 1 normal (99), one at 97.5
    # 7 defects and 2 normals (99, 98): F1 = 14 / (7 + 2 + 10) beats 12 / (6 + 1 + 10)
    assert best_f1_within_false_alarm_rate(scores, labels, 0.02) == pytest.approx(14 / 19)
    assert best_f1_within_false_alarm_rate(scores, labels, 0.0) == pytest.approx(10 / 15)


def test_the_f1_ceiling_never_splits_tied_scores():
    from training.evaluate import best_f1_within_false_alarm_rate

    # a defect tied with two normals: a threshold takes all three or none of them
    scores = np.array([5.0, 5.0, 5.0, 1.0, 1.0])
    labels = np.array([1, 0, 0, 0, 0])
    assert best_f1_within_false_alarm_rate(scores, labels, 0.25) == 0.0
    assert best_f1_within_false_alarm_rate(scores, labels, 0.5) == pytest.approx(2 / 4)


def test_folds_partition_the_normal_items():
    from training.cross_fit import fold_indices

    folds = fold_indices(32, 5, seed=0)
    together = np.concatenate(folds)
    assert len(folds) == 5 and sorted(together.tolist()) == list(range(32))
    assert {len(f) for f in folds} <= {6, 7}
    with pytest.raises(ValueError, match="only 3 normal items"):
        fold_indices(3, 5, seed=0)


def test_data_holdout_last_holds_out_the_newest_items_and_cuts_folds_into_consecutive_runs():
    """Overlapping neighbours (frames of a moving web) stay on one side: the held-out items are the last
    ones in file-name order, each fold a run of consecutive items; random keeps the seeded draw."""
    from training.cross_fit import fold_indices
    from training.data import split_holdout

    fitted, held = split_holdout(90, 0.2, seed=0, how="last")
    assert held.tolist() == list(range(72, 90)) and fitted.tolist() == list(range(72))
    random_fitted, random_held = split_holdout(90, 0.2, seed=0)
    assert len(random_held) == 18 and random_held.tolist() != held.tolist()
    folds = fold_indices(32, 5, seed=0, how="last")
    assert [f.tolist() for f in folds] == [list(range(a, b)) for a, b in ((0, 7), (7, 14), (14, 20), (20, 26), (26, 32))]


def test_data_holdout_last_holds_out_the_newest_photos_of_a_camera_that_numbers_without_padding(tmp_path):
    """frame_9 was taken before frame_10: training reads photos in the camera's numbering, so 'last'
    holds out frame_9 and frame_10, not frame_8 and frame_9 as plain string order would."""
    import cv2

    from training.data import load_train_good, split_holdout
    from training.config import validate_train_config

    folder = tmp_path / "train" / "good"
    folder.mkdir(parents=True)
    for number in range(1, 11):
        cv2.imwrite(str(folder / f"frame_{number}.png"), np.full((32, 32), 20 * number, np.uint8))
    layout = {"height": 32, "width": 32, "channels": 1, "color_order": "gray"}
    config = validate_train_config({"name": "x", "data": {"path": str(tmp_path), "holdout": "last"}, "input": layout},
                                   "x.yaml")
    loaded = load_train_good(tmp_path, config.input.to_spec())
    assert [p.name for p in loaded.paths] == [f"frame_{n}.png" for n in range(1, 11)]
    _, held = split_holdout(len(loaded), 0.2, seed=0, how=config.data.holdout)
    assert [loaded.paths[i].name for i in held] == ["frame_9.png", "frame_10.png"]


def test_the_holdout_kind_is_checked_with_one_line(tmp_path):
    from inspector.errors import ConfigError
    from training.config import validate_train_config

    with pytest.raises(ConfigError, match="holdout") as error:
        validate_train_config({"name": "x", "data": {"path": str(tmp_path), "holdout": "newest"}}, "x.yaml")
    assert "\n" not in str(error.value) and "'random' or 'last'" in str(error.value)


def test_cross_fitted_threshold_comes_from_an_out_of_fold_score_of_every_normal_image(piped_class, tmp_path):
    from training.config import validate_train_config
    from training.cross_fit import out_of_fold_scores
    from training.data import load_train_good
    from training.fit import fit
    from training.run_folder import RunFolder

    from .conftest import tiny_config

    config = validate_train_config(tiny_config(piped_class, **{"calibration.folds": 4}), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    normal = load_train_good(piped_class, config.input.to_spec()).tensors
    calibration = result.card.calibration
    assert calibration.folds == 4 and calibration.n_samples == len(normal)
    assert sorted(p.name for p in (tmp_path / "run" / "folds").iterdir()) == ["fold1", "fold2", "fold3", "fold4"]

    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    record = selection["calibration"]
    assert (record["folds"], record["reason"]) == (4, "calibration.folds 4 (config)")
    # the out-of-fold scores the threshold came from, one per normal image
    assert len(record["normal_scores"]) == len(normal) and calibration.threshold == pytest.approx(
        calibrate(np.array(record["normal_scores"]), 0.01, confidence=0.9).threshold, rel=1e-5)
    step = [e["step"] for e in selection["evaluations"] if e["epoch"] == selection["selected_epoch"]][-1]
    # stop where the export did; scored in the exported score's own unit (weights, scales) from its card
    again = out_of_fold_scores(config, normal, step, RunFolder.create(tmp_path / "again"), result.card.score,
                               folds=4).scores
    assert again.shape == (len(normal),) and np.all(np.isfinite(again))
    expected = calibrate(again, config.calibration.target_false_alarm_rate, confidence=config.calibration.confidence)
    assert calibration.threshold == pytest.approx(expected.threshold, rel=1e-9)


def test_fold_models_that_run_past_the_time_left_are_given_up_after_the_first(piped_class, tmp_path, capsys):
    """The plan times a fold model like the exported one; a slower machine must not overrun the budget."""
    from training.config import validate_train_config
    from training.cross_fit import out_of_fold_scores
    from training.data import load_train_good
    from training.run_folder import RunFolder

    from .conftest import tiny_config

    config = validate_train_config(tiny_config(piped_class), "tiny")
    normal = load_train_good(piped_class, config.input.to_spec()).tensors
    score = ScoreDefinition(weights={"residual_max": 1.0}, scales={"residual_max": 1.0})
    run = RunFolder.create(tmp_path / "run")
    given_up = out_of_fold_scores(config, normal, 2, run, score, folds=4, seconds_left=0.01, progress=True)
    assert given_up.scores is None
    assert "ganomaly calibration fold 1/4: step 2/2" in capsys.readouterr().err  # its progress says which model
    assert given_up.why.startswith("1 fold model(s) took ") and "the other 3 would take about" in given_up.why
    assert [p.name for p in (run.root / "folds").iterdir()] == ["fold1"]
    assert out_of_fold_scores(config, normal, 2, run, score, folds=4, seconds_left=None).scores.shape == (len(normal),)


def test_a_fold_model_is_timed_as_the_exported_training_without_rounds_plus_its_memory_and_its_share_scored():
    """A fold model runs no selection rounds, but draws its own patch memory and computes the frozen
    outputs of the items it scores, work the exported model's first round did once."""
    from training.cross_fit import fold_seconds
    from training.driver import TrainResult

    # kolektor_sdd's numbers: 114 s of training, 74 s of it selection rounds, whose first drew the
    # memory in 35 s and computed frozen outputs at 0.1 s an item; 261 normal images
    trained = TrainResult(family=None, steps=312, epochs=24, seconds=114.0, selection_seconds=74.0,
                          memory_seconds=35.0, item_seconds=0.1)
    assert fold_seconds(trained, 261) == pytest.approx(114.0 - 74.0 + 35.0 + 53 * 0.1)  # 53 = 261 / 5, rounded up
    assert fold_seconds(trained, 261, folds=3) == pytest.approx(75.0 + 87 * 0.1)
    no_frozen_part = TrainResult(family=None, steps=312, epochs=24, seconds=114.0, selection_seconds=74.0)
    assert fold_seconds(no_frozen_part, 261) == pytest.approx(40.0)  # a from-scratch model: its steps alone


@pytest.mark.parametrize("folds", [1, -1, 21, 2.5, "often", True])
def test_a_number_of_folds_that_cannot_be_is_one_line_naming_what_can(folds):
    from inspector.errors import ConfigError
    from training.config import validate_train_config

    with pytest.raises(ConfigError) as refused:
        validate_train_config({"data": {"path": "x"}, "calibration": {"folds": folds}}, "cfg.yaml")
    assert str(refused.value) == (f"cfg.yaml: field 'calibration.folds': 'auto', 0 (the held-out scores) or a number "
                                  f"of folds from 2 to 20 (got {folds!r})")


def _plan(piped_class, n_held_out=6, n_normal=32, fold_seconds=10.0, seconds_left=600.0, **overrides):
    from training.config import validate_train_config
    from training.cross_fit import plan_folds

    from .conftest import tiny_config

    config = validate_train_config(tiny_config(piped_class, **{"calibration.folds": "auto", **overrides}), "tiny")
    return plan_folds(config, n_held_out, n_normal, fold_seconds, seconds_left)


def test_auto_cross_fits_where_the_held_out_scores_are_too_few_to_hold_the_target(piped_class):
    """6 held-out scores cannot place a 99% quantile: the threshold would extrapolate from them. With
    time left, five fold models give every one of the 32 normal images a score instead."""
    plan = _plan(piped_class)
    assert plan.folds == 5 and "6 held-out scores are too few" in plan.reason
    assert _plan(piped_class, seconds_left=None).folds == 5  # no budget: nothing to keep within


def test_auto_keeps_the_held_out_threshold_where_it_needs_no_extrapolation_or_time_is_short(piped_class):
    enough = _plan(piped_class, n_held_out=230, n_normal=1150)  # at 1% and 0.9 the 230th of 230 scores holds
    assert enough.folds == 0 and "without extrapolating" in enough.reason
    short = _plan(piped_class, fold_seconds=100.0, seconds_left=400.0)  # five folds of about 100 s
    assert short.folds == 0 and "about 500 s and 400 s of train.budget_s are left" in short.reason
    assert _plan(piped_class, n_normal=9).folds == 0  # under two items a fold
    assert _plan(piped_class, **{"calibration.method": "f1_optimal",
                                 "calibration.validation_path": str(piped_class / "test")}).folds == 0
    assert _plan(piped_class, **{"export.precision": "int8"}).folds == 0
    assert _plan(piped_class, **{"calibration.folds": 0}).folds == 0  # a stated number is kept as stated
    assert _plan(piped_class, n_held_out=230, n_normal=1150, **{"calibration.folds": 3}).folds == 3


def test_a_default_run_with_few_held_out_images_records_its_cross_fitted_threshold(piped_class, tmp_path):
    from training.config import validate_train_config
    from training.fit import fit

    from .conftest import tiny_config

    config = validate_train_config(tiny_config(piped_class, **{"calibration.folds": "auto"}), "tiny")
    assert config.calibration.folds == "auto" and validate_train_config(
        {"data": {"path": str(piped_class)}}, "default").calibration.folds == "auto"  # the default
    card = fit(config, tmp_path / "run", progress=False, evaluate_test=False).card
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert selection["calibration"]["folds"] == 5 and card.calibration.folds == 5
    assert card.calibration.n_samples == 32  # every normal image, not the 6 held out
    assert len(list((tmp_path / "run" / "folds").iterdir())) == 5


def test_normal_scores_that_all_tie_put_the_threshold_above_them_with_a_warning(caplog):
    """Blank photos score alike: a threshold equal to that score would alarm on every normal part
    (at or above alarms), so it sits just above it, and the log says why."""
    tied = np.full(12, 1.0)
    with caplog.at_level("WARNING", logger="training.calibrate"):
        calibration = calibrate(tied, 0.01)
    assert calibration.threshold > 1.0 and np.mean(tied >= calibration.threshold) == 0.0
    assert "every normal image scores the same" in caplog.text
    caplog.clear()
    calibrate(np.linspace(1.0, 2.0, 12), 0.01)  # scores that vary: no such warning
    assert "scores the same" not in caplog.text


def test_normal_scores_far_below_the_rest_do_not_raise_the_limit_of_the_upper_tail():
    """Only the upper tail sets a threshold: a few frames that score far below the others (a
    near-empty frame, a fold model that fits some frames unusually well) must not lift it. Seen on a
    PIPED class: 32 scores, median 30, largest 34, smallest 9, threshold 86 with all of them. A high
    score is the tail itself and stays in."""
    rng = np.random.default_rng(3)
    scores = rng.lognormal(np.log(30.0), 0.05, 32)
    with_low = np.concatenate([scores[:29], [9.0, 12.0, 15.0]])
    clean, low = quantile_threshold(scores, 0.01), quantile_threshold(with_low, 0.01)
    assert low <= clean * 1.05 and low < 1.3 * with_low.max()
    with_high = np.concatenate([scores[:29], [60.0, 80.0, 100.0]])
    assert quantile_threshold(with_high, 0.01) > 2 * clean  # kept: they widen the fitted tail
