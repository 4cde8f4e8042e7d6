"""Cross-fitted calibration: a threshold from an out-of-fold score of every normal training item.

The held-out split gives the threshold a fifth of the normal items (6 of 32 PIPED images), and an
upper confidence limit of a 99% quantile from that few sits far out in the tail: few false alarms,
most defects missed. With `calibration.folds: K` every normal item is split into K folds; for each,
a model of the same config is trained without that fold, to the step of the exported model's
weights, and scores it. Every fold model's outputs are put in the exported score's own unit (its
weights, its component scales from the held-out items, its heatmap pooling): the fold models have
the exported model's size, data and training, so their raw components are on its scale, and a
scale re-estimated on each fold's five or six items would add noise (a robust spread from six values
is a rough number). The K folds' frame scores pool into one sample of N out-of-fold normal scores,
and the quantile limit is taken on all N. The models themselves are only for calibration; they live
in run/folds/ and are not exported.

`calibration.folds: auto` (the default) cross-fits with AUTO_FOLDS folds only where it is needed and
affordable (plan_folds): where the held-out scores are too few for the limit to be one of them (the
tolerance limit then extrapolates the tail from a handful of values), and where the fold models fit
in what is left of train.budget_s: each timed like the exported model's training without its
selection rounds (fold models run none) but with the work those rounds did once that a fold model
does too (drawing its patch memory, computing the frozen outputs of the items it scores:
fold_seconds), and timed again as they train, so that they are given up (the held-out scores set
the threshold) once the rest would not fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from inspector.card import ScoreDefinition
from inspector.scorer import combine_score

from .calibrate import order_statistic_rank
from .config import TrainConfig
from .driver import train
from .frame_scores import frame_outputs, per_frame_max
from .items import items_of
from .run_folder import RunFolder

log = logging.getLogger(__name__)

AUTO_FOLDS = 5


@dataclass(frozen=True)
class FoldPlan:
    """How many folds the threshold is cross-fitted with (0: the held-out scores set it), and why."""

    folds: int
    reason: str

    def record(self) -> dict:
        return {"folds": self.folds, "reason": self.reason}


def plan_folds(config: TrainConfig, n_held_out: int, n_normal: int, fold_seconds: float,
               seconds_left: float | None) -> FoldPlan:
    """The folds for this run: the config's number, or for `auto` AUTO_FOLDS where the n_held_out
    scores cannot hold the target without extrapolating and AUTO_FOLDS models of `fold_seconds` each
    fit in `seconds_left` (None: no budget), else 0."""
    calibration = config.calibration
    if calibration.method != "quantile":
        return FoldPlan(0, f"calibration.method {calibration.method}: the labelled folder sets the threshold")
    if calibration.folds != "auto":
        return FoldPlan(calibration.folds, f"calibration.folds {calibration.folds} (config)")
    if config.export.precision == "int8":
        return FoldPlan(0, "export.precision int8 calibrates again on the quantized model's held-out scores")
    if order_statistic_rank(n_held_out, calibration.target_false_alarm_rate, calibration.confidence) is not None:
        return FoldPlan(0, f"the {n_held_out} held-out scores set the threshold without extrapolating")
    if n_normal < 2 * AUTO_FOLDS:
        return FoldPlan(0, f"{n_normal} normal items are too few for {AUTO_FOLDS} folds")
    cost = AUTO_FOLDS * fold_seconds
    if seconds_left is not None and cost > seconds_left:
        return FoldPlan(0, f"{AUTO_FOLDS} fold models would take about {cost:.0f} s and {seconds_left:.0f} s of "
                           "train.budget_s are left")
    left = "" if seconds_left is None else f" of the {seconds_left:.0f} s left"
    return FoldPlan(AUTO_FOLDS, f"{n_held_out} held-out scores are too few to set the threshold without "
                                f"extrapolating; {AUTO_FOLDS} fold models take about {cost:.0f} s{left}")


def fold_seconds(trained, n_normal: int, folds: int = AUTO_FOLDS) -> float:
    """About how long one fold model of a run like `trained` (a TrainResult) takes: its training
    without selection rounds, plus what the first round did once and a fold model does again: drawing
    its patch memory and computing the frozen outputs of its share of the normal items. Without them
    the estimate was optimistic: on kolektor_sdd 45 s against folds of about 77 s, of which 37 s
    drew the memory (a 30 s coreset) and 4 s scored its 52 frames; with them 83 s."""
    share = -(-n_normal // folds)
    return trained.seconds - trained.selection_seconds + trained.memory_seconds + share * trained.item_seconds


def fold_indices(n: int, folds: int, seed: int, how: str = "random") -> list[np.ndarray]:
    """K disjoint, sorted index sets covering range(n), from a seeded permutation, or with `how` "last"
    (data.holdout) K consecutive runs, so that an item's overlapping neighbours mostly share its fold."""
    if folds > n:
        raise ValueError(f"calibration.folds is {folds}, but there are only {n} normal items")
    order = np.random.default_rng(seed + 1).permutation(n) if how == "random" else np.arange(n)
    return [np.sort(chunk) for chunk in np.array_split(order, folds)]


def fold_config(config: TrainConfig, steps: int) -> TrainConfig:
    """The config of a calibration model: exactly `steps` steps (the exported model's), its last weights
    kept (no selection, so no extension), no grids."""
    return config.model_copy(update={
        "train": config.train.model_copy(update={"steps": steps, "max_blocks": 1}),
        "selection": config.selection.model_copy(update={"criterion": "last"}),
        "diagnostics": config.diagnostics.model_copy(update={"grids": 0}),
    })


def scores_in_unit(scoring, items: np.ndarray, spec, score: ScoreDefinition, top_share: float) -> np.ndarray:
    """Frame (or window) scores of `scoring` under the score definition `score`, as the exported
    model computes them: its heatmap in score units and pooled over the highest `top_share` where the
    definition says so. `spec` None: table windows."""
    if score.map_in_score_units:
        scoring.use_score_units(score)
    if score.pooled_output:
        scoring.pool_top(top_share)
    outputs, owner = frame_outputs(scoring, items, spec)
    return per_frame_max(np.asarray(combine_score(outputs, score)), owner)


@dataclass(frozen=True)
class OutOfFold:
    """The out-of-fold scores, or None and why the fold models were given up."""

    scores: np.ndarray | None
    why: str = ""


def out_of_fold_scores(config: TrainConfig, normal: np.ndarray, steps: int, run: RunFolder, score: ScoreDefinition,
                       folds: int, progress: bool = False, seconds_left: float | None = None) -> OutOfFold:
    """One score per normal item in the unit of `score` (the exported score), each from the model that
    did not see it. With `seconds_left`, the folds are timed as they go: once the ones still to train,
    each taking as long as those so far on average, would not fit, they are given up (the plan's
    estimate came from the exported model's training, and a loaded machine can be slower)."""
    items = items_of(config)
    scores = np.empty(len(normal))
    settings = fold_config(config, steps)
    started = time.perf_counter()
    for k, held in enumerate(fold_indices(len(normal), folds, config.train.seed, config.data.holdout)):
        fitted = np.setdiff1d(np.arange(len(normal)), held)
        log.info("calibration fold %d of %d: training on %d items, scoring %d", k + 1, folds, len(fitted), len(held))
        trained = train(settings, normal[fitted], RunFolder.create(run.root / "folds" / f"fold{k + 1}"),
                        progress=progress, stop_after_steps=steps, label=f"calibration fold {k + 1}/{folds}")
        scoring = trained.family.scoring(normal[fitted]).eval()
        scores[held] = scores_in_unit(scoring, normal[held], items.spec, score, config.score.map_top_share)
        elapsed = time.perf_counter() - started
        still = (folds - k - 1) * elapsed / (k + 1)
        if seconds_left is not None and k + 1 < folds and elapsed + still > seconds_left:
            return OutOfFold(None, f"{k + 1} fold model(s) took {elapsed:.0f} s and the other {folds - k - 1} would "
                                   f"take about {still:.0f} s more of the {seconds_left:.0f} s left")
    return OutOfFold(scores)
