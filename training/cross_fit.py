"""Cross-fitted calibration: a threshold from an out-of-fold score of every normal training item.

The held-out split gives the threshold a fifth of the normal items (6 of 32 PIPED images), and an
upper confidence limit of a 99% quantile from that few sits far out in the tail: few false alarms,
most defects missed. With `calibration.folds: K` every normal item is split into K folds; for each,
a model of the same config is trained without that fold, to the step of the exported model's
weights, and scores it. Each fold's components are divided by their median on its own unseen fold,
which is the unit the exported model's score is in (its scales are medians on its unseen held-out
items), so the K folds' frame scores pool into one sample of N out-of-fold normal scores, and the
quantile limit is taken on all N. The models themselves are only for calibration; they live in
run/folds/ and are not exported.
"""

from __future__ import annotations

import logging

import numpy as np

from inspector.card import ScoreDefinition
from inspector.scorer import combine_score

from .config import TrainConfig
from .driver import train
from .frame_scores import component_scales, frame_outputs, per_frame_max
from .items import items_of
from .run_folder import RunFolder

log = logging.getLogger(__name__)


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """K disjoint, sorted index sets covering range(n), from a seeded permutation."""
    if folds > n:
        raise ValueError(f"calibration.folds is {folds}, but there are only {n} normal items")
    order = np.random.default_rng(seed + 1).permutation(n)
    return [np.sort(chunk) for chunk in np.array_split(order, folds)]


def fold_config(config: TrainConfig, steps: int) -> TrainConfig:
    """The config of a calibration model: exactly `steps` steps (the exported model's), its last weights
    kept (no selection, so no extension), no grids."""
    return config.model_copy(update={
        "train": config.train.model_copy(update={"steps": steps, "max_blocks": 1}),
        "selection": config.selection.model_copy(update={"criterion": "last"}),
        "diagnostics": config.diagnostics.model_copy(update={"grids": 0}),
    })


def out_of_fold_scores(config: TrainConfig, normal: np.ndarray, steps: int, run: RunFolder,
                       progress: bool = False) -> np.ndarray:
    """One score per normal item (frame score = worst tile), each from the model that did not see it."""
    folds = config.calibration.folds
    items = items_of(config)
    weights = dict(config.score.weights)
    scores = np.empty(len(normal))
    settings = fold_config(config, steps)
    for k, held in enumerate(fold_indices(len(normal), folds, config.train.seed)):
        fitted = np.setdiff1d(np.arange(len(normal)), held)
        log.info("calibration fold %d of %d: training on %d items, scoring %d", k + 1, folds, len(fitted), len(held))
        trained = train(settings, normal[fitted], RunFolder.create(run.root / "folds" / f"fold{k + 1}"),
                        progress=progress, stop_after_steps=steps)
        scoring = trained.family.scoring(normal[fitted]).eval()
        outputs, owner = frame_outputs(scoring, normal[held], items.spec)
        scales = component_scales(outputs, list(weights), config.score.fusion)
        definition = ScoreDefinition(weights=weights, scales=scales, map_output=None)
        scores[held] = per_frame_max(np.asarray(combine_score(outputs, definition)), owner)
    return scores
