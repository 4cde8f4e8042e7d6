"""The whole job behind `inspector train`: train on normal images, calibrate, export, evaluate.

    train/good --split--> fit part (80%) ---------> GANomaly training loop
               `-------> held-out part (20%) ---> component scales + threshold (never test/)
    scoring module + card --> model.onnx (parity-checked) --> evaluation on test/ when present
"""

from __future__ import annotations

import logging
import os
import platform
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import inspector
from inspector.card import Calibration, Lineage, ModelCard, Provenance, ScoreDefinition
from inspector.errors import ConfigError, InspectorError
from inspector.frame_cost import frame_cost, measure_inputs_per_second
from inspector.scorer import Scorer, combine_score

from .calibrate import calibrate
from .cross_fit import FoldPlan, fold_seconds, out_of_fold_scores, plan_folds
from .config import TrainConfig, expand_data_path
from .data import LoadedImages, config_split, first_training_image, load_test, load_train_good, mnist_one_class
from .driver import train
from .evaluate import TestItem, evaluate, list_test_items, write_metrics
from .export import export_with_parity, replace_card
from .flops import count_flops
from .frame_level import with_frame_level
from .frame_scores import component_scales, frame_outputs, map_baseline, model_inputs, per_frame_max, scale_description
from .items import Items, items_of
from .pose_check import with_decided_poses
from .quantize import export_int8
from .run_folder import RunFolder
from .score_choice import choose_score, record_chosen_value
from .selection import held_out_sample, synthetic_check
from .torch_scoring import run_scoring
from .unusual_normals import NormalPhotos, note_unusual_normals

log = logging.getLogger(__name__)

EVALUATION_SUMMARY_KEYS = ("image_auroc", "auroc", "average_precision", "f1", "recall", "false_alarm_rate", "pixel_auroc",
                           "n_normal", "n_anomalous")


@dataclass
class FitResult:
    model_path: Path
    card: ModelCard
    metrics: dict | None
    train_seconds: float
    generator: torch.nn.Module
    scoring: torch.nn.Module | None = None  # the torch module that was exported (for parity checks and analysis)


def load_training_data(config: TrainConfig, with_test: bool = True) -> tuple[LoadedImages, list[TestItem] | None]:
    """Normal training images, and the test items when `with_test` (test/ is not touched otherwise)."""
    spec = config.input.to_spec()
    root = config.data.resolved_path
    if config.data.kind == "mnist":
        train, test = mnist_one_class(root, config.data.anomaly_digit, spec, config.data.max_train, config.train.seed)
        if not with_test:
            return train, None
        with np.load(root) as data:
            raw_test = data["x_test"]
        items = [TestItem(None, int(label), kind, None, raw_test[i])
                 for i, (label, kind) in enumerate(zip(test.labels, test.defect_types))]
        return train, items
    train = load_train_good(root, spec)
    if train.skipped:
        log.warning("%d unreadable training file(s) skipped", len(train.skipped))
    items = list_test_items(root) if with_test and (root / "test").is_dir() else None
    return train, items


PARITY_ITEMS = 64
EXPORT_ALLOWANCE_S = 15.0  # of train.budget_s, kept for the ONNX export, its parity check and the frame-cost timing
RECOMMENDED_NORMAL_IMAGES = 40  # about 8 held out at the default fraction: below, the threshold is a rough guess


def check_normal_count(n: int, config: TrainConfig) -> None:
    """Refuse a set too small to both train and calibrate; warn, in one sentence with what to do, below
    the recommended size."""
    folder = config.data.resolved_path / "train" / "good"
    if n < 2:
        raise InspectorError(f"{folder}: {n} readable normal image(s); training needs at least 2 (one to learn "
                             f"from, one to set the threshold) and works well from {RECOMMENDED_NORMAL_IMAGES}: "
                             f"photograph {RECOMMENDED_NORMAL_IMAGES - n} more good parts")
    if n < RECOMMENDED_NORMAL_IMAGES:
        held = max(1, int(round(n * config.data.holdout_fraction)))
        folds = config.calibration.folds
        threshold = {"auto": "on those or, cross-fitted where the time allows, on all of them",
                     0: "on those"}.get(folds, "on all of them, cross-fitted")
        log.warning("only %d normal images: checkpoints and the score are chosen on %d held-out image(s) and the "
                    "threshold is set %s, too few to do it reliably (the threshold tends to sit high: few alarms, "
                    "defects missed); photograph %d more good parts, or set calibration.confidence: 0.5 to trade a "
                    "lower threshold for more false alarms", n, held, threshold, RECOMMENDED_NORMAL_IMAGES - n)


def model_version(base: str, created: datetime) -> str:
    """`base` (the config's version) + creation time + a random suffix: unique even within a second."""
    return f"{base.split('+')[0]}+{created:%Y%m%dT%H%M%SZ}.{uuid.uuid4().hex[:6]}"


def _card(config: TrainConfig, spec, score: ScoreDefinition, calibration, trained) -> ModelCard:
    created = datetime.now(timezone.utc)
    return ModelCard(
        name=config.name, family=config.model.family,
        version=model_version(config.version, created),
        input=spec, score=score, calibration=calibration,
        # absolute: `inspector recalibrate` finds <data>/train/good from the card, run from any folder
        training=Provenance(data=str(config.data.resolved_path.absolute()), steps=trained.steps, epochs=trained.epochs,
                            seed=config.train.seed, created=created.isoformat(timespec="seconds"),
                            train_seconds=round(trained.seconds, 2), package_version=inspector.__version__,
                            torch_version=torch.__version__, config=config.model_dump(mode="json")),
    )


def _export(config: TrainConfig, scoring, card: ModelCard, held_out: np.ndarray, run: RunFolder) -> ModelCard:
    scoring = scoring.exportable()
    flops = count_flops(scoring, torch.from_numpy(held_out[:1]))
    model_path = run.model
    card = export_with_parity(scoring, card, held_out[:PARITY_ITEMS], model_path, config.export.opset,
                              config.export.parity_tolerance, flops)
    log.info("exported %s (threshold %.4g, parity %.2g, %.1f MFLOPs/item) on %s", model_path,
             card.calibration.threshold, card.export.parity_max_abs_diff, flops / 1e6, platform.node())
    return card


def _prepare_run(config: TrainConfig, run_dir: Path) -> RunFolder:
    run = RunFolder.create(run_dir)
    run.config.write_text(config.model_dump_json(indent=2))
    return run


def check_memory_size(config: TrainConfig, items: Items, fitted: np.ndarray) -> None:
    """Before any training: latent_lof needs more memory codes than neighbours, and a small set (or
    a large hold-out) may not give that many."""
    if "latent_lof" not in config.score.weights:
        return
    codes = min(config.score.memory_size, len(fitted) * items.inputs_per_item(fitted))
    if codes <= config.score.lof_neighbors:
        raise ConfigError(f"score.lof_neighbors is {config.score.lof_neighbors}, but the {len(fitted)} fitted items "
                          f"give only {codes} normal codes to compare with: lower score.lof_neighbors, or hold out "
                          "fewer items (data.holdout_fraction)")


def train_family(config: TrainConfig, fitted: np.ndarray, held_out: np.ndarray, run: RunFolder, resume: bool,
                 progress: bool, warm_start: dict | None = None, time_budget_s: float | None = None):
    """Train the configured model family (from `warm_start` weights when given); returns the training
    result and its exportable scoring module."""
    check_memory_size(config, items_of(config), fitted)
    trained = train(config, fitted, run, validation=held_out, resume=resume, progress=progress, warm_start=warm_start,
                    time_budget_s=time_budget_s)
    # the memory holds codes of the fitted items only: held-out distances stay those of unseen normals
    return trained, trained.family.scoring(fitted).eval()


def normal_scores_for_threshold(config: TrainConfig, held_out_scores: np.ndarray, normal: np.ndarray, trained,
                                run: RunFolder, score: ScoreDefinition, seconds_left: float | None,
                                progress: bool) -> tuple[np.ndarray, FoldPlan]:
    """The held-out items' scores, or where calibration.folds asks for it (training.cross_fit.plan_folds)
    the out-of-fold scores of every normal item in the unit of `score`; and the plan, which
    selection.json records with the scores. `seconds_left`: of train.budget_s, for the fold models (None: no budget)."""
    plan = plan_folds(config, len(held_out_scores), len(normal), fold_seconds(trained, len(normal)), seconds_left)
    log.info("calibration: %s", plan.reason)
    scores = np.asarray(held_out_scores, dtype=np.float64)
    if plan.folds:
        steps = trained.selected_step or trained.steps  # the exported weights' step: fold models stop there
        # folds a config states are trained whatever the time; `auto`'s stop when they would not fit
        deadline = seconds_left if config.calibration.folds == "auto" else None
        out_of_fold = out_of_fold_scores(config, normal, steps, run, score, plan.folds, progress, deadline)
        if out_of_fold.scores is None:
            log.warning("calibration: %s; the threshold is set on the %d held-out scores", out_of_fold.why,
                        len(held_out_scores))
            plan = FoldPlan(0, f"{plan.reason}, but {out_of_fold.why}")
        else:
            scores = out_of_fold.scores
    # the scores themselves too: what a threshold rule (or a changed one) is computed from
    run.record_selection("calibration", {**plan.record(), "normal_scores": [float(f"{v:.6g}") for v in scores]})
    return scores, plan


def self_checked(config: TrainConfig, run: RunFolder, scoring, held_out: np.ndarray, spec, score: ScoreDefinition,
                 calibration: Calibration, folds: FoldPlan) -> Calibration:
    """`calibration` with the exported score's self-check at its threshold (the share of synthetic
    defects or anomalies made from held-out items that it flags) and the cross-fitting record; the
    score's self-check AUROC goes into the run's score choice record. `spec`: None for windows."""
    sample = held_out_sample(held_out, config.selection.max_items, config.train.seed)
    recall, self_check = synthetic_check(scoring, sample, spec, score, calibration.threshold, config.train.seed)
    record_chosen_value(run, self_check)
    return calibration.model_copy(update={"synthetic_recall": recall, "folds": folds.folds or None})


def memory_description(scoring, item: str) -> str:
    nearest = scoring.nearest_code
    if nearest is None:
        return ""
    text = (f"; latent_knn = root mean squared difference between the {item}'s code and the nearest of "
            f"{len(nearest.memory)} normal training codes")
    if nearest.lof_neighbors is not None:
        text += f"; latent_lof = local outlier factor of the {item}'s code among them, {nearest.lof_neighbors} neighbours"
    return text


def pooled_score(config: TrainConfig, scoring, score: ScoreDefinition) -> ScoreDefinition:
    """The score as the mean of the highest score.map_top_share of the map in score units, where the
    scorer can pool its map (a backbone model) and the share is not 0."""
    share = config.score.map_top_share
    if share <= 0 or not hasattr(scoring, "pool_top"):
        return score
    return score.model_copy(update={
        "pooled_output": scoring.pool_top(share),
        "description": f"{score.description}; an image's score is the mean of the highest {share:.1%} of "
                       "anomaly_map (weights and scales as above), not the weighted sum of the maxima"})


def calibrate_and_export(config: TrainConfig, run: RunFolder, trained, scoring, held_out_frames: np.ndarray,
                         all_normal: np.ndarray, progress: bool, lineage: Lineage | None = None,
                         seconds_left: float | None = None, photos: NormalPhotos | None = None) -> ModelCard:
    """After training on images: the score (training.score_choice), component scales and threshold
    from the held-out normal frames (or cross-fitted over `all_normal`), the synthetic self-check, then
    model.onnx with its card. `seconds_left`: of train.budget_s, for what follows training (None: no budget).
    `photos`: the frames' files, to name the normal photos that score far above the rest."""
    started = time.perf_counter()
    config = choose_score(config, run)
    scoring.keep_structure("structure_max" in config.score.weights)  # a candidate not chosen is not exported
    spec = config.input.to_spec()
    held_out, owner = model_inputs(held_out_frames, spec)
    outputs = run_scoring(scoring, held_out, keep_maps=False)
    score_units = scoring.map_in_score_units  # a heatmap that sums the score's components reads against the threshold
    heatmap = ("the same weighted sum of the components' patch maps, at input size" if score_units else
               f"locally averaged {config.score.residual} residual (kernel {config.score.pool_kernel})")
    score = ScoreDefinition(weights=dict(config.score.weights),
                            scales=component_scales(outputs, list(config.score.weights), config.score.fusion),
                            map_output="anomaly_map", map_in_score_units=score_units,
                            description=f"weighted sum of {sorted(config.score.weights)}, each divided by its "
                                        f"{scale_description(config.score.fusion)} on held-out normal images; "
                                        f"anomaly_map = {heatmap}"
                                        + memory_description(scoring, "tile" if spec.resize == "tile" else "image")
                                        + scoring.input_description(spec.height, spec.width))
    if score_units:
        scoring.use_score_units(score)
        score = pooled_score(config, scoring, score)
        if score.pooled_output:  # its value exists in score units only
            outputs = run_scoring(scoring, held_out, keep_maps=False)
    score = score.model_copy(update={"map_baseline": map_baseline(scoring, held_out)})
    normal_scores = per_frame_max(combine_score(outputs, score), owner)
    validation = None
    if config.calibration.method == "f1_optimal":
        validation = load_test(expand_data_path(config.calibration.validation_path), spec)
        v_out, v_owner = frame_outputs(scoring, validation.tensors, spec)
        validation = (per_frame_max(combine_score(v_out, score), v_owner), validation.labels)
    left = None if seconds_left is None else max(0.0, seconds_left - (time.perf_counter() - started))
    normal_scores, folds = normal_scores_for_threshold(config, normal_scores, all_normal, trained, run, score, left,
                                                       progress)
    calibration = calibrate(normal_scores, config.calibration.target_false_alarm_rate, config.calibration.method,
                            *(validation or (None, None)), confidence=config.calibration.confidence)
    if photos is not None:
        note_unusual_normals(run, normal_scores, photos.scored(bool(folds.folds)), calibration.threshold)
    calibration = self_checked(config, run, scoring, held_out_frames, spec, score, calibration, folds)
    card = _card(config, spec, score, calibration, trained)
    if lineage is not None:
        card = card.with_updates(lineage=lineage)
    card = _export(config, scoring, card, held_out, run)
    if config.export.precision == "int8":
        card = export_int8(config, run, card, held_out_frames, config.selection.max_items)
    whole_photos = config.data.kind == "mvtec" and spec.resize != "tile"  # proportions matter (stretch, crop)
    first = first_training_image(config.data.resolved_path) if whole_photos else None
    return with_frame_cost(card, run, held_out_frames[0].shape[-2:], None if first is None else first.shape[:2])


def with_frame_cost(card: ModelCard, run: RunFolder, frame_size: tuple[int, int],
                    photo_size: tuple[int, int] | None = None) -> ModelCard:
    """Record what a training-size frame costs and the frames/s the exported model reaches here, and
    for a whole-frame model the training photos' own size (`photo_size`)."""
    height, width = (int(v) for v in frame_size)
    cost = frame_cost(card.input, height, width, card.export.flops_per_item)
    rate = measure_inputs_per_second(Scorer(run.model))
    photo_height, photo_width = photo_size or (None, None)
    export = card.export.model_copy(update={
        "frame_height": height, "frame_width": width, "inputs_per_frame": cost.inputs,
        "frames_per_s": round(rate / cost.inputs, 3), "measured_on": f"{platform.node()}, {os.cpu_count()} CPUs",
        "photo_height": photo_height, "photo_width": photo_width})
    card = card.with_updates(export=export)
    replace_card(run.model, card)
    log.info("cost: %s", cost.describe(rate))
    return card


def training_budget(config: TrainConfig, fit_started: float) -> float | None:
    """Seconds left of train.budget_s for training and what follows it, after loading (since
    `fit_started`) and with the export's allowance kept; None without a budget."""
    if config.train.budget_s is None:
        return None
    return max(0.0, config.train.budget_s - (time.perf_counter() - fit_started) - EXPORT_ALLOWANCE_S)


def fit(config: TrainConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
        evaluate_test: bool = True) -> FitResult:
    if config.data.kind == "table":
        return fit_tabular(config, run_dir, resume=resume, progress=progress, evaluate_test=evaluate_test)
    fit_started = time.perf_counter()
    config = with_frame_level(config)  # before config.json is written: the run records the level it used
    run = _prepare_run(config, run_dir)
    normal, test_items = load_training_data(config, with_test=evaluate_test)
    check_normal_count(len(normal), config)
    fit_idx, hold_idx = config_split(config, len(normal))
    log.info("training on %d normal images, %d held out for calibration and checkpoint selection", len(fit_idx),
             len(hold_idx))
    config, pose_record = with_decided_poses(config, normal.tensors[fit_idx], normal.tensors[hold_idx])
    if pose_record is not None:  # folds and a later fine-tune train in the pose decided here
        run.config.write_text(config.model_dump_json(indent=2))

    started = time.perf_counter()
    trained, scoring = train_family(config, normal.tensors[fit_idx], normal.tensors[hold_idx], run, resume, progress,
                                    time_budget_s=training_budget(config, fit_started))
    if pose_record is not None:  # after training, whose selection record starts selection.json afresh
        run.record_selection("pose", pose_record)
    card = calibrate_and_export(config, run, trained, scoring, normal.tensors[hold_idx], normal.tensors, progress,
                                seconds_left=training_budget(config, fit_started),
                                photos=NormalPhotos(normal.paths, hold_idx))
    model_path = run.model

    metrics = None
    if evaluate_test and test_items:
        metrics = evaluate(Scorer(model_path), test_items, run.root, title=config.name)
        metrics["train_seconds"] = trained.seconds
        metrics["flops_per_item"] = card.export.flops_per_item
        card = card.with_updates(evaluation={k: metrics[k] for k in EVALUATION_SUMMARY_KEYS if k in metrics})
        replace_card(model_path, card)
    return FitResult(model_path, card, metrics, time.perf_counter() - started, trained.generator, scoring.exportable())


def fit_tabular(config: TrainConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
                evaluate_test: bool = True) -> FitResult:
    """Flow tables: fit the feature spec on normal rows, train the MLP GANomaly (its length, checkpoint
    and score chosen by the self-check as for images, within the same budget), calibrate on held-out
    normal windows, export, and evaluate every test table (metrics.json per test set)."""
    from .evaluate import evaluate_windows
    from .tabular import load_tabular

    run = _prepare_run(config, run_dir)
    started = time.perf_counter()
    spec, normal, test_sets = load_tabular(config)
    fit_idx, hold_idx = config_split(config, len(normal))
    log.info("training on %d normal windows of %d features, %d held out for calibration", len(fit_idx),
             spec.width, len(hold_idx))
    held_out = normal[hold_idx]
    trained, scoring = train_family(config, normal[fit_idx], held_out, run, resume, progress,
                                    time_budget_s=training_budget(config, started))
    config = choose_score(config, run)
    outputs = run_scoring(scoring, held_out, batch_size=4096)
    score = ScoreDefinition(weights=dict(config.score.weights),
                            scales=component_scales(outputs, list(config.score.weights), config.score.fusion),
                            map_output=None,
                            description=f"weighted sum of {sorted(config.score.weights)}, each divided by its "
                                        f"{scale_description(config.score.fusion)} on held-out normal windows"
                                        + memory_description(scoring, "window"))
    normal_scores, folds = normal_scores_for_threshold(config, combine_score(outputs, score), normal, trained, run,
                                                       score, training_budget(config, started), progress)
    calibration = calibrate(normal_scores, config.calibration.target_false_alarm_rate,
                            confidence=config.calibration.confidence)
    calibration = self_checked(config, run, scoring, held_out, None, score, calibration, folds)
    card = _export(config, scoring, _card(config, spec, score, calibration, trained), held_out, run)
    model_path = run.model
    metrics = None
    if evaluate_test and test_sets:
        scorer = Scorer(model_path)
        metrics = {name: evaluate_windows(scorer, test, run.root / name, title=f"{config.name} {name}")
                   for name, test in test_sets.items()}
        first = metrics[next(iter(metrics))]
        card = card.with_updates(evaluation={k: first[k] for k in EVALUATION_SUMMARY_KEYS if k in first})
        replace_card(model_path, card)
        write_metrics(run.metrics, metrics)
    return FitResult(model_path, card, metrics, time.perf_counter() - started, trained.generator, scoring)
