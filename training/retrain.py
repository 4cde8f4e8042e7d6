"""`inspector retrain`: fine-tune a run on the frames operators marked false alarm, then calibrate and export.

    parent run: config.json, checkpoint.pt (selected weights) ------------------> warm start
    train/good (the parent's split: same fit / held-out parts)  --+
    reviewed false alarms' frames + new good photos (own split) --+--> fit part (new frames oversampled)
                                                                  `--> held-out part --> threshold
    -> threshold lowered, if needed, to catch the defects operators confirmed (never to a held-out normal)
    -> candidate run folder: model.onnx whose card names its parent and the reviews it learned from

The new frames are few beside the original training set, so they are repeated in the fit part until
they make up about a quarter of it: a short fine-tune then sees each of them many times. The number
of steps is what the time budget allows (the driver ends the run when it is spent).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from inspector.card import ImageInput, Lineage, ModelCard
from inspector.errors import InspectorError
from inspector.review.store import ReviewStore, ReviewStoreError
from inspector.scorer import ANOMALY, Scorer

from .config import TrainConfig, as_it_trained, fields_it_predates, read_run_config, validate_train_config
from .data import config_split, load_images, load_train_good
from .fit import calibrate_and_export, train_family
from .export import replace_card
from .recalibrate import good_image_paths, model_of
from .run_folder import RunFolder
from .unusual_normals import NormalPhotos
from .selection import held_out_sample, synthetic_check

log = logging.getLogger(__name__)

NEW_SHARE = 0.25  # the new frames' share of the fit part after repetition
MAX_REPEAT = 50
MIN_STEPS = 500
MAX_STEPS = 100_000


@dataclass
class Retrained:
    run: RunFolder
    card: ModelCard
    parent: ModelCard
    false_alarms: int  # reviewed false-alarm frames learned
    missing_frames: int  # reviewed, but their frame is gone (evidence retention) or was never written
    good_images: int
    steps: int
    seconds: float
    kept: dict[tuple[str, str], object]  # fields the parent's config.json predates, at the values it trained with


def parent_recipe(run: Path) -> tuple[TrainConfig, dict[tuple[str, str], object]]:
    """The parent run's config as it trained (a backbone run written before a field whose default has
    changed gets the value it trained with: training.config.BACKBONE_FIELDS_SINCE), and those fields."""
    path = run / "config.json"
    if not path.is_file():
        raise InspectorError(f"{run}: not a run folder (no config.json); give the folder `inspector train --out` wrote")
    raw = read_run_config(path)
    kept = fields_it_predates(raw)  # before as_it_trained fills them in
    return validate_train_config(as_it_trained(raw), str(path)), kept


def parent_config(run: Path) -> TrainConfig:
    return parent_recipe(run)[0]


def parent_weights(run: Path) -> dict[str, dict]:
    """The parent's exported weights: the checkpoint's modules, with the ones selection chose in their place."""
    path = run / "checkpoint.pt"
    if not path.is_file():
        raise InspectorError(f"{path}: missing; retraining starts from the run's trained weights")
    saved = torch.load(path, weights_only=True, map_location="cpu")
    weights = {name: value for name, value in saved.items() if isinstance(value, dict)}
    weights.update(((saved.get("selection") or {}).get("best_state")) or {})
    return weights


def reviewed_frames(database: Path, label: str, verdict: str | None = None) -> tuple[list[Path], list[int], int]:
    """Frames of the items whose current label is `label` (and whose verdict was `verdict`, when given):
    (existing paths, their item ids, how many have no frame any more)."""
    if not database.is_file():
        raise InspectorError(f"{database}: no review database there")
    try:
        store = ReviewStore(database)
    except ReviewStoreError as exc:
        raise InspectorError(str(exc)) from None
    found, missing = store.labelled_frames(label, verdict)
    store.close()
    return [path for _, path in found], [item["id"] for item, _ in found], missing


def keep_confirmed_defects(run: RunFolder, card: ModelCard, scoring, held_out: np.ndarray, defects: list[Path],
                           seed: int, max_items: int) -> ModelCard:
    """Lower the held-out threshold to catch the confirmed defects the active model caught, as many as can
    be caught without a held-out normal image scoring at or above it: the operator's labels count where a
    few dozen held-out images make the quantile's upper confidence limit loose. The card says so."""
    if not defects:
        return card
    scores = np.array([r.raw for r in Scorer(run.model).score_files(defects, heatmaps=False) if not r.rejected])
    calibration = card.calibration
    floor = calibration.quantiles.get("max", 0.0)  # the highest held-out normal score
    missed = scores[scores < calibration.threshold]
    catchable = missed[missed > floor]
    if not len(catchable):  # the threshold stays; the card still says how many confirmed defects it was held to
        counted = card.with_updates(lineage=card.lineage.model_copy(update={"confirmed_defects": len(scores)}))
        replace_card(run.model, counted)
        return counted
    threshold = float(catchable.min())
    recall = (synthetic_check(scoring, held_out_sample(held_out, max_items, seed), card.input, card.score, threshold,
                              seed)[0] if scoring else None)
    updated = card.with_updates(
        calibration=calibration.model_copy(update={"threshold": threshold, "method": "quantile_and_reviews",
                                                   "synthetic_recall": recall}),
        lineage=card.lineage.model_copy(update={"confirmed_defects": len(scores),
                                                "held_out_threshold": calibration.threshold}))
    replace_card(run.model, updated)
    log.info("threshold %.4g -> %.4g: the lowest score among %d confirmed defects (highest held-out normal %.4g)",
             calibration.threshold, threshold, len(scores), floor)
    return updated


def _join(*parts: np.ndarray) -> np.ndarray:
    """Items of several arrays in one: stacked when they share a shape, an object array otherwise (tiles)."""
    items = [item for part in parts for item in part]
    if len({item.shape for item in items}) <= 1:
        return np.stack(items) if items else parts[0][:0]
    joined = np.empty(len(items), dtype=object)
    joined[:] = items
    return joined


def planned_steps(parent: ModelCard) -> int:
    """The most steps a fine-tune may take; the time budget usually ends it first."""
    return int(min(MAX_STEPS, max(MIN_STEPS, 10 * parent.training.steps)))


def retrain(run_dir: Path, reviews: Path, good: list[Path], out: Path | None = None, budget_s: float = 180.0,
            progress: bool = True) -> Retrained:
    started = time.perf_counter()
    parent = Scorer(model_of(run_dir)).card
    config, kept = parent_recipe(run_dir)
    if config.data.kind != "mvtec" or not isinstance(parent.input, ImageInput):
        raise InspectorError(f"{run_dir}: retraining from reviews works on models trained on a folder of photos; "
                             f"this run trained on data.kind {config.data.kind}")
    frames, review_ids, missing = reviewed_frames(reviews, "false_alarm")
    confirmed, _, _ = reviewed_frames(reviews, "defect", verdict=ANOMALY)  # what the active model caught
    extra = good_image_paths(good) if good else []
    if not frames and not extra:
        raise InspectorError(f"{reviews}: no frame reviewed as false alarm to learn from"
                             + (f" ({missing} reviewed, their frames are gone)" if missing else "")
                             + "; review some on the page, or give --good DIR")
    spec = config.input.to_spec()
    normal = load_train_good(config.data.resolved_path, spec)
    new = load_images(frames + extra, spec)
    if not len(new):
        raise InspectorError("none of the reviewed frames or new photos could be read")
    fit_idx, hold_idx = config_split(config, len(normal))  # the parent's split: its held-out stay unseen
    if len(new) >= 2:
        new_fit, new_hold = config_split(config, len(new), seed_offset=1)
    else:
        new_fit, new_hold = np.arange(len(new)), np.arange(0)
    repeat = max(1, min(MAX_REPEAT, math.ceil(NEW_SHARE / (1 - NEW_SHARE) * len(fit_idx) / max(1, len(new_fit)))))
    fitted = _join(normal.tensors[fit_idx], *([new.tensors[new_fit]] * repeat))
    held_out = _join(normal.tensors[hold_idx], new.tensors[new_hold])
    steps = planned_steps(parent)
    raw = config.model_dump(mode="json")
    raw["train"]["steps"] = steps
    raw["train"]["max_blocks"] = 1  # `steps` is already the most a fine-tune takes; its budget ends it
    raw["calibration"]["folds"] = 0  # a fine-tune within a budget: calibrated on the held-out part only
    tuned = validate_train_config(raw, f"{run_dir}/config.json (fine-tune)")
    created = datetime.now(timezone.utc)
    run = RunFolder.create(out or run_dir / f"retrained-{created:%Y%m%dT%H%M%SZ}")
    run.config.write_text(tuned.model_dump_json(indent=2))
    log.info("fine-tuning %s for %.0f s (at most %d steps) on %d normal + %d new frames (%d reviewed false alarms, %d new photos; "
             "new frames repeated x%d), %d + %d held out", run_dir, budget_s, steps, len(fit_idx), len(new_fit), len(frames),
             len(extra), repeat, len(hold_idx), len(new_hold))
    trained, scoring = train_family(tuned, fitted, held_out, run, resume=False, progress=progress,
                                    warm_start=parent_weights(run_dir), time_budget_s=budget_s)
    lineage = Lineage(parent=parent.version, change="retrained", created=created.isoformat(timespec="seconds"),
                      new_good_images=len(extra), reviews_database=str(reviews.resolve()),
                      false_alarm_reviews=review_ids)
    photos = NormalPhotos(normal.paths + new.paths, np.concatenate([hold_idx, len(normal) + new_hold]))
    card = calibrate_and_export(tuned, run, trained, scoring, held_out, _join(normal.tensors, new.tensors), progress,
                                lineage=lineage, photos=photos)
    card = keep_confirmed_defects(run, card, scoring, held_out, confirmed, config.train.seed, tuned.selection.max_items)
    return Retrained(run, card, parent, len(frames), missing, len(extra), trained.steps, time.perf_counter() - started,
                     kept)
