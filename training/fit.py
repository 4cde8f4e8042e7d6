"""The whole job behind `inspector train`: train on normal images, calibrate, export, evaluate.

    train/good --split--> fit part (80%) ---------> GANomaly training loop
               `-------> held-out part (20%) ---> component scales + threshold (never test/)
    scoring module + card --> model.onnx (parity-checked) --> evaluation on test/ when present
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import inspector
from inspector.card import ModelCard, Provenance, ScoreDefinition
from inspector.preprocess import tiles_from_frame
from inspector.scorer import Scorer, combine_score

from .calibrate import calibrate
from .config import TrainConfig, expand_data_path
from .data import LoadedImages, load_test, load_train_good, mnist_one_class, split_holdout
from .evaluate import TestItem, evaluate, list_test_items, write_metrics
from .export import export_with_parity, replace_card
from .flops import count_flops
from .models.ganomaly import GANomalyScoring
from .torch_scoring import run_scoring
from .train import train_ganomaly

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
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


def load_training_data(config: TrainConfig) -> tuple[LoadedImages, list[TestItem] | None]:
    spec = config.input.to_spec()
    root = config.data.resolved_path
    if config.data.kind == "mnist":
        train, test = mnist_one_class(root, config.data.anomaly_digit, spec, config.data.max_train, config.train.seed)
        with np.load(root) as data:
            raw_test = data["x_test"]
        items = [TestItem(None, int(label), kind, None, raw_test[i])
                 for i, (label, kind) in enumerate(zip(test.labels, test.defect_types))]
        return train, items
    train = load_train_good(root, spec)
    if train.skipped:
        log.warning("%d unreadable training file(s) skipped", len(train.skipped))
    items = list_test_items(root) if (root / "test").is_dir() else None
    return train, items


PARITY_ITEMS = 64


def model_inputs(tensors: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for stored training tensors, and which frame each came from: the tensors
    themselves, or for tiled models the tiles of every native frame."""
    if spec.resize != "tile":
        return np.asarray(tensors, dtype=np.float32), np.arange(len(tensors))
    tiles = [tiles_from_frame(frame, spec)[0] for frame in tensors]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(tiles)])
    return np.concatenate(tiles), owner


def per_frame_max(scores: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """A frame scores as its worst tile (identity for untiled models)."""
    out = np.full(int(owner.max()) + 1, -np.inf)
    np.maximum.at(out, owner, scores)
    return out


def component_scales(outputs: dict[str, np.ndarray], names: list[str]) -> dict[str, float]:
    """Median of each component on held-out normal data: scores become 'times a typical normal'."""
    scales = {}
    for name in names:
        values = np.asarray(outputs[name], dtype=np.float64).reshape(-1)
        median = float(np.median(values))
        scales[name] = median if median > 0 else max(float(values.mean()), 1e-12)
    return scales


def _card(config: TrainConfig, spec, score: ScoreDefinition, calibration, trained) -> ModelCard:
    created = datetime.now(timezone.utc)
    return ModelCard(
        name=config.name, family=config.model.family,
        version=f"{config.version}+{created:%Y%m%dT%H%M%SZ}.{uuid.uuid4().hex[:6]}",  # unique even within a second
        input=spec, score=score, calibration=calibration,
        training=Provenance(data=str(config.data.resolved_path), steps=trained.steps, epochs=trained.epochs,
                            seed=config.train.seed, created=created.isoformat(timespec="seconds"),
                            train_seconds=round(trained.seconds, 2), package_version=inspector.__version__,
                            torch_version=torch.__version__, config=config.model_dump(mode="json")),
    )


def _export(config: TrainConfig, scoring, card: ModelCard, held_out: np.ndarray, run_dir: Path) -> ModelCard:
    flops = count_flops(scoring, torch.from_numpy(held_out[:1]))
    model_path = run_dir / MODEL_FILE
    card = export_with_parity(scoring, card, held_out[:PARITY_ITEMS], model_path, config.export.opset,
                              config.export.parity_tolerance, flops)
    log.info("exported %s (threshold %.4g, parity %.2g, %.1f MFLOPs/item) on %s", model_path,
             card.calibration.threshold, card.export.parity_max_abs_diff, flops / 1e6, platform.node())
    return card


def _prepare_run(config: TrainConfig, run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    return run_dir


def fit(config: TrainConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
        evaluate_test: bool = True) -> FitResult:
    if config.data.kind == "table":
        return fit_tabular(config, run_dir, resume=resume, progress=progress, evaluate_test=evaluate_test)
    run_dir = _prepare_run(config, run_dir)
    spec = config.input.to_spec()
    normal, test_items = load_training_data(config)
    fit_idx, hold_idx = split_holdout(len(normal), config.data.holdout_fraction, config.train.seed)
    log.info("training on %d normal images, %d held out for calibration", len(fit_idx), len(hold_idx))

    started = time.perf_counter()
    if config.model.family == "anogan":
        from .models.anogan import AnoGANScoring
        from .train_anogan import train_anogan

        trained = train_anogan(config, normal.tensors[fit_idx], run_dir, progress=progress)
        scoring = AnoGANScoring(trained.model, trained.critic, config.score.pool_kernel, config.score.residual).eval()
    else:
        trained = train_ganomaly(config, normal.tensors[fit_idx], run_dir, resume=resume, progress=progress)
        scoring = GANomalyScoring(trained.generator, config.score.pool_kernel, config.score.residual,
                                  with_latent="latent_distance" in config.score.weights).eval()

    held_out, owner = model_inputs(normal.tensors[hold_idx], spec)
    outputs = run_scoring(scoring, held_out, keep_maps=False)
    score = ScoreDefinition(weights=dict(config.score.weights),
                            scales=component_scales(outputs, list(config.score.weights)),
                            map_output="anomaly_map",
                            description=f"weighted sum of {sorted(config.score.weights)}, each divided by its "
                                        "median on held-out normal images; anomaly_map = locally averaged "
                                        f"{config.score.residual} residual (kernel {config.score.pool_kernel})")
    normal_scores = per_frame_max(combine_score(outputs, score), owner)
    validation = None
    if config.calibration.method == "f1_optimal":
        validation = load_test(expand_data_path(config.calibration.validation_path), spec)
        v_inputs, v_owner = model_inputs(validation.tensors, spec)
        v_out = run_scoring(scoring, v_inputs, keep_maps=False)
        validation = (per_frame_max(combine_score(v_out, score), v_owner), validation.labels)
    calibration = calibrate(normal_scores, config.calibration.target_false_alarm_rate, config.calibration.method,
                            *(validation or (None, None)))
    card = _export(config, scoring, _card(config, spec, score, calibration, trained), held_out, run_dir)
    model_path = run_dir / MODEL_FILE

    metrics = None
    if evaluate_test and test_items:
        metrics = evaluate(Scorer(model_path), test_items, run_dir, title=config.name)
        metrics["train_seconds"] = trained.seconds
        metrics["flops_per_item"] = card.export.flops_per_item
        card = card.with_updates(evaluation={k: metrics[k] for k in EVALUATION_SUMMARY_KEYS if k in metrics})
        replace_card(model_path, card)
    return FitResult(model_path, card, metrics, time.perf_counter() - started, trained.generator, scoring)


def fit_tabular(config: TrainConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
                evaluate_test: bool = True) -> FitResult:
    """Flow tables: fit the feature spec on normal rows, train the MLP GANomaly, calibrate on held-out
    normal windows, export, and evaluate every test table (metrics.json per test set)."""
    from .evaluate import evaluate_windows
    from .models.tabular import TabularScoring
    from .tabular import load_tabular

    run_dir = _prepare_run(config, run_dir)
    started = time.perf_counter()
    spec, normal, test_sets = load_tabular(config)
    fit_idx, hold_idx = split_holdout(len(normal), config.data.holdout_fraction, config.train.seed)
    log.info("training on %d normal windows of %d features, %d held out for calibration", len(fit_idx),
             spec.width, len(hold_idx))
    trained = train_ganomaly(config, normal[fit_idx], run_dir, resume=resume, progress=progress)
    scoring = TabularScoring(trained.generator, with_latent="latent_distance" in config.score.weights).eval()
    held_out = normal[hold_idx]
    outputs = run_scoring(scoring, held_out, batch_size=4096)
    score = ScoreDefinition(weights=dict(config.score.weights),
                            scales=component_scales(outputs, list(config.score.weights)), map_output=None,
                            description=f"weighted sum of {sorted(config.score.weights)}, each divided by its "
                                        "median on held-out normal windows")
    calibration = calibrate(combine_score(outputs, score), config.calibration.target_false_alarm_rate)
    card = _export(config, scoring, _card(config, spec, score, calibration, trained), held_out, run_dir)
    model_path = run_dir / MODEL_FILE
    metrics = None
    if evaluate_test and test_sets:
        scorer = Scorer(model_path)
        metrics = {name: evaluate_windows(scorer, test, run_dir / name, title=f"{config.name} {name}")
                   for name, test in test_sets.items()}
        first = metrics[next(iter(metrics))]
        card = card.with_updates(evaluation={k: first[k] for k in EVALUATION_SUMMARY_KEYS if k in first})
        replace_card(model_path, card)
        write_metrics(run_dir / "metrics.json", metrics)
    return FitResult(model_path, card, metrics, time.perf_counter() - started, trained.generator, scoring)
