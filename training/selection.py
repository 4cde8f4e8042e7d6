"""Label-free checkpoint selection: which weights of a run get exported, judged on held-out normal
data only (the 20% of train/good also used for calibration; test/ is never read).

synthetic_auroc  the configured score must rank held-out normal frames below copies of the same
                 frames carrying a synthetic defect (SYNTHETIC_COPIES per frame): half get a
                 cut-paste patch (a piece of the frame moved elsewhere, brightness shifted; Li et al.,
                 CutPaste, 2021), half a Gaussian-noise patch, each of a contrast measured in the
                 frame's own standard deviations (DEFECT_CONTRAST). Patches are 1/8 to 1/3 of the
                 model input side, so they are local at tile scale. Feature windows (tables) get
                 swapped or shifted features instead (training.table_defects). The criterion is
                 the AUROC of that separation. Each round also records that AUROC for every score
                 component alone (`components`; `selected_components` at the exported weights):
                 the candidates a score could be chosen from, and what the benchmark compares with
                 real defects; and how far each moved the copies' scores (`component_shifts`,
                 `selected_component_shifts`: median_shift), which the score's weights come from.
                 Where part of the score is frozen (a pretrained backbone's patch memory), every
                 checkpoint has the same frozen part and differs only in the trained one, so
                 checkpoints are judged (and training extended, training.length) by the trained
                 components' self-check (`judged_by`, `judged_value`); `value` stays the whole
                 score's.
validation_loss  the lowest mean reconstruction error (residual_mean) on held-out normal items.
last             no evaluation: the final weights.
Evaluations happen at `evaluations` evenly spaced epoch ends. A criterion measured on a few dozen
held-out items is noisy, and the largest of several noisy values favours noise; so the exported
weights are the latest evaluated ones whose value is within one standard error of the best value
(the one-standard-error rule of Breiman et al.; AUROC standard error by Hanley & McNeil, 1982; the
mean's standard error for validation_loss). Training longer is never undone on noise alone. The
chosen state is kept in memory (and in the checkpoint, so `--resume` keeps it) and
restored before export.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from inspector.card import ScoreDefinition
from inspector.scorer import combine_score

from .config import SelectionConfig
from .diagnostics import evenly_spaced
from .frame_scores import component_scales, copy_outputs, frame_outputs, per_frame_max
from .table_defects import synthetic_windows
from .torch_scoring import modes_kept

log = logging.getLogger(__name__)

SYNTHETIC_COPIES = 4
# A synthetic defect's contrast in standard deviations of its own frame, drawn log-uniformly between
# these: from a step half the surface's own variation to twice it. Fixed steps (0.3 of the [-1, 1]
# range, noise of 0.5) were 3 to 5 frame deviations on a dark, flat surface (tire: 0.105) and under
# one on a binarised board (deeppcb: 0.92), so the self-check read 1.000 on the flat surfaces (the
# copies' median 25 robust spreads above the normal frames on tire) and could not compare
# checkpoints, lengths or score weights there. In the frame's own unit the check asks the same of
# every surface (on tire it still read 0.999, the copies 16 spreads out: its patches, then 1/8 to 1/3
# of a whole frame, were large beside tire's cuts; DEFECT_REGION caps them now; RESULTS).
DEFECT_CONTRAST = (0.5, 2.0)
# A synthetic defect's side is 1/8 to 1/3 of the model input's shorter side, but of at most this many
# pixels of it (12 to 32 px, one to four of the backbone's 8 px patches). Sized against a whole
# frame (models on pretrained features see frames of up to 512 px) the patches grew to 64-170 px:
# on tire and elpv_mono every copy then stood above every normal frame (self-check 1.000 and 0.998)
# and the check could no longer compare checkpoints, lengths or score weights there. With the cap,
# measured label-free on the held-out normal frames of the exported models of
# rows/backbone_memory_cached.jsonl (their final score, copies made in image space): tire
# 1.000 -> 0.978, elpv_mono 0.998 -> 0.981, elpv_poly 0.983 -> 0.901, glass_fibre 0.923 -> 0.729,
# kolektor_sdd 0.570 -> 0.545. A 64 px tile (from-scratch models) keeps its 8-21 px defects.
DEFECT_REGION = 96
MIN_FRAME_SPREAD = 0.05  # a flat frame's defects still differ from it (about 6 grey levels)
WEAK_SEPARATION = 0.6  # below this best synthetic AUROC, training warns (a label-free sign of a weak model)


def auroc_standard_error(auroc: float, n_negative: int, n_positive: int) -> float:
    """Standard error of an AUROC from n_negative and n_positive items (Hanley & McNeil, 1982)."""
    a = min(max(auroc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (n_positive * n_negative)
    return float(np.sqrt(max(variance, 0.0)))


def median_shift(normal: np.ndarray, defective: np.ndarray) -> float:
    """How far the synthetic copies' scores moved: the difference of the two medians, in robust spreads
    (1.4826 x the median absolute deviation) of the normal scores, the unit of score.fusion spread.
    For two normal distributions of one spread it is their d' (what sqrt(2) Phi^-1(AUROC) estimates
    too), but it does not saturate where the AUROC reaches 1: copies all above every normal frame
    by a little and by a lot read alike in an AUROC, not in a shift."""
    normal, defective = np.asarray(normal, np.float64), np.asarray(defective, np.float64)
    scale = component_scales({"score": normal}, ["score"], "spread")["score"]
    return float((np.median(np.nan_to_num(defective, nan=np.inf)) - np.median(normal)) / scale)


def synthetic_defects(frames: np.ndarray, patch_side: int, seed: int) -> np.ndarray:
    """Copies of (N, C, H, W) model-space frames in [-1, 1], each with one synthetic defect patch whose
    contrast (the cut-paste piece's brightness step, the noise's standard deviation) is a number of
    its own frame's standard deviations drawn from DEFECT_CONTRAST (see there)."""
    rng = np.random.default_rng(seed)
    out = frames.copy()
    _, _, height, width = frames.shape
    low, high = np.log(DEFECT_CONTRAST)
    for i, frame in enumerate(out):
        side = int(rng.integers(max(2, patch_side // 8), max(3, patch_side // 3) + 1))
        ph, pw = min(side, height), min(side, width)
        top, left = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        contrast = max(float(frames[i].std()), MIN_FRAME_SPREAD) * float(np.exp(rng.uniform(low, high)))
        if i % 2 == 0:  # cut-paste: a piece of the same frame, moved and brightened or darkened
            src_top, src_left = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
            patch = frames[i, :, src_top:src_top + ph, src_left:src_left + pw] + rng.choice([-1.0, 1.0]) * contrast
        else:  # noise patch
            patch = frame[:, top:top + ph, left:left + pw] + rng.normal(0, contrast, (frame.shape[0], ph, pw))
        frame[:, top:top + ph, left:left + pw] = np.clip(patch, -1, 1)
    return out


def synthetic_copies(frames: np.ndarray, spec, seed: int) -> np.ndarray:
    """SYNTHETIC_COPIES defective copies of each model-space frame, patches sized to the model input
    (at most DEFECT_REGION of it);
    for feature windows (spec None) swapped or shifted features (training.table_defects)."""
    if spec is None:
        return synthetic_windows(frames, SYNTHETIC_COPIES, seed)
    return synthetic_defects(np.concatenate([frames] * SYNTHETIC_COPIES), min(spec.height, spec.width, DEFECT_REGION),
                             seed).astype(np.float32)


def held_out_sample(frames: np.ndarray, max_items: int, seed: int) -> np.ndarray:
    """The held-out frames a self-check uses: a seeded subsample of at most `max_items`, in order (the
    same for every selection round and for the exported score's check)."""
    keep = np.random.default_rng(seed).permutation(len(frames))[:max_items]
    return frames[np.sort(keep)]


def synthetic_check(scoring: nn.Module, frames: np.ndarray, spec, score: ScoreDefinition, threshold: float,
                    seed: int) -> tuple[float | None, float | None]:
    """The exported score on held-out normal frames and their synthetic-defect copies: the share of
    copies at or above the threshold (a label-free estimate of what the calibrated threshold leaves of
    recall; real defects differ from these patches, so it is a guide, not a promise) and the AUROC of
    the separation (the self-check of that very score). (None, None) for frames of different sizes."""
    from sklearn.metrics import roc_auc_score

    if frames.dtype == object or not len(frames):
        return None, None
    normal, normal_owner = frame_outputs(scoring, frames, spec)
    outputs, owner = copy_outputs(scoring, frames, normal, normal_owner, synthetic_copies(frames, spec, seed), spec)
    defective = np.nan_to_num(per_frame_max(combine_score(outputs, score), owner), nan=np.inf)
    clean = np.nan_to_num(per_frame_max(combine_score(normal, score), normal_owner), nan=np.inf)
    auroc = float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(defective))], np.r_[clean, defective]))
    return float(np.mean(defective >= threshold)), auroc


class CheckpointSelector:
    """Evaluates the run's weights at planned epoch ends and remembers the best.

    `modules` are the weights to snapshot and restore (by name); `make_scoring` builds the scoring
    module over the live weights (GANomalyScoring, AnoGANScoring, TabularScoring ...)."""

    def __init__(self, settings: SelectionConfig, weights: dict[str, float], spec, seed: int,
                 validation: np.ndarray | None, modules: dict[str, nn.Module], make_scoring: Callable[[], nn.Module],
                 total_epochs: int, judged_by: tuple[str, ...] = (), fusion: str = "median"):
        """`settings`: the config's selection section; `weights`: the score's components; `spec`: the
        image input (None for feature windows); `validation`: held-out normal items; `judged_by`: the
        score components checkpoints are judged by where part of the score is frozen (see
        Family.trained_components; none: the whole score); `fusion`: how components share a unit, as
        the exported score's (training.frame_scores.component_scales)."""
        self.criterion = settings.criterion if validation is not None else "last"
        self.why_last = "nothing held out" if validation is None else "selection.criterion last"
        if self.criterion != "last" and len(validation) < 2:
            log.warning("checkpoint selection by %s needs at least 2 held-out normal items, %d held out: the last "
                        "weights are exported", self.criterion, len(validation))
            self.criterion = "last"
            self.why_last = f"{len(validation)} held-out item(s): too few to compare checkpoints"
        self.modules = modules
        self.make_scoring = make_scoring
        self.total_epochs = max(1, total_epochs)  # of one block (training.driver extends a run block by block)
        self.evaluations = settings.evaluations
        self.weights = dict(weights)
        self.fusion = fusion
        self.judged_by = tuple(c for c in judged_by if c in self.weights)
        self.last_judged: tuple[float, float] | None = None  # the latest round's (value, error) of judged_by
        # the latest round's work that later rounds reuse, in seconds, where there was any: all of it
        # (one_time_seconds), drawing the memory, and one item's frozen outputs (mean over those kept)
        self.last_one_time: dict[str, float] = {}
        self.spec = spec
        self.history: list[dict] = []
        self.best_value = -np.inf  # best_*: the chosen evaluation; top_*: the highest value and its error
        self.top_value, self.top_error = -np.inf, 0.0
        self.best_state: dict | None = None
        self.best_epoch: int | None = None
        self.last_components: dict[str, float] = {}  # the latest round's self-check of each score component alone
        self.last_shifts: dict[str, float] = {}  # and how far each moved the synthetic copies (median_shift)
        if self.criterion == "last":
            return
        self.normal = np.ascontiguousarray(held_out_sample(validation, settings.max_items, seed), dtype=np.float32)
        if self.criterion == "synthetic_auroc":
            self.defective = synthetic_copies(self.normal, self.spec, seed)

    @property
    def active(self) -> bool:
        return self.criterion != "last"

    def due(self, epoch: int) -> bool:
        """Whether `epoch` (counted from 1 over the whole phase) gets a selection round: `evaluations`
        evenly spaced ones in every block of total_epochs, each block's last epoch included."""
        return self.active and evenly_spaced((epoch - 1) % self.total_epochs + 1, self.total_epochs, self.evaluations)

    @property
    def round_seconds(self) -> float:
        """What one more selection round may cost: the longest round after the first; while there is
        no other, the first without its one-time work (0 before it). The first round draws a
        backbone model's patch memory and computes the frozen outputs for the held-out frames and
        their synthetic copies once, and later rounds and the calibration reuse them
        (training.models.frozen_cache; about 50 of 51 s on elpv_mono's 300 px frames, later rounds
        under 1 s). Counted whole, that work made the time kept for the last round and the
        calibration twice the first round: on deeppcb's 512 px frames 2 x 227 s of a 584 s budget,
        and training stopped after 30 steps."""
        seconds = [e.get("seconds", 0.0) for e in self.history]
        if len(seconds) == 1:
            return max(0.0, seconds[0] - self.history[0].get("one_time_seconds", 0.0))
        return max(seconds[1:] or [0.0])

    def one_time_costs(self) -> tuple[float, float]:
        """(seconds to draw the memory, seconds to compute one item's frozen outputs) as the first round
        measured them: work each selection round after it reuses, and which a model trained without
        rounds (a calibration fold) does once for the items it scores. (0, 0) where there is none."""
        first = next((e for e in self.history if "one_time_seconds" in e), {})
        return float(first.get("memory_seconds", 0.0)), float(first.get("item_seconds", 0.0))

    def improved_since(self, evaluations: int) -> bool:
        """Whether an evaluation after the first `evaluations` of the history beat the best before them
        (of what checkpoints are judged by) by more than that best's standard error: the rule that
        picks checkpoints counts a rise within one error as no better, and so does the rule that
        extends training (kolektor_sdd trained all 8 blocks on rises inside its noise, a standard error
        of about 0.045, and the blocks took the budget that cross-fitting the threshold needed)."""
        judged = [(e.get("judged_value", e["value"]), e.get("judged_error", e.get("standard_error", 0.0)))
                  for e in self.history]
        before, error = max(judged[:evaluations], default=(-np.inf, 0.0), key=lambda pair: pair[0])
        return any(value > before + error for value, _ in judged[evaluations:])

    def at_maximum(self) -> bool:
        """Whether a synthetic-defect self-check already reached 1.0, the AUROC's maximum: no later
        evaluation can set a new best, so a block trained for one would be trained blind."""
        return self.criterion == "synthetic_auroc" and any(
            e.get("judged_value", e["value"]) >= 1.0 for e in self.history)

    def measure(self) -> float:
        """The criterion on the current weights (higher is better)."""
        return self.measure_with_error()[0]

    def measure_with_error(self) -> tuple[float, float]:
        """The criterion on the current weights and its standard error."""
        from sklearn.metrics import roc_auc_score

        with modes_kept(*self.modules.values()):
            scoring = self.make_scoring()
            # one-time work: a memory drawn for this and later rounds, frozen outputs kept for them
            cache = scoring.frozen_cache
            kept_before = 0.0 if cache is None else cache.kept_seconds
            items_before = 0 if cache is None else len(cache.kept)
            normal, owner = frame_outputs(scoring, self.normal, self.spec)
            if self.criterion == "validation_loss":
                errors = np.asarray(normal["residual_mean"], dtype=np.float64)
                return -float(errors.mean()), float(errors.std(ddof=1) / np.sqrt(len(errors)))
            defective, defective_owner = copy_outputs(scoring, self.normal, normal, owner, self.defective, self.spec)
            labels = np.r_[np.zeros(len(self.normal)), np.ones(len(self.defective))]

            def separation(weights: dict[str, float]) -> tuple[float, float]:
                definition = ScoreDefinition(weights=weights, scales=component_scales(normal, list(weights), self.fusion),
                                             map_output=None)
                normal_scores = per_frame_max(combine_score(normal, definition), owner)
                defective_scores = per_frame_max(combine_score(defective, definition), defective_owner)
                auroc = float(roc_auc_score(labels, np.nan_to_num(np.r_[normal_scores, defective_scores], nan=np.inf)))
                return auroc, auroc_standard_error(auroc, len(normal_scores), len(defective_scores))

            kept = 0.0 if cache is None else cache.kept_seconds - kept_before
            items_kept = 0 if cache is None else len(cache.kept) - items_before
            self.last_one_time = {name: round(value, digits) for name, value, digits in (
                ("one_time_seconds", scoring.memory_build_seconds + kept, 3),
                ("memory_seconds", scoring.memory_build_seconds, 4),
                ("item_seconds", kept / items_kept if items_kept else 0.0, 4)) if value}
            if self.judged_by:
                self.last_judged = separation({c: self.weights[c] for c in self.judged_by})
            self.last_components, self.last_shifts = {}, {}
            for name in sorted(normal):  # each score component alone: the candidates a score is chosen from
                if np.ndim(normal[name]) != 1:
                    continue
                clean, marked = per_frame_max(normal[name], owner), per_frame_max(defective[name], defective_owner)
                self.last_components[name] = float(roc_auc_score(labels, np.nan_to_num(np.r_[clean, marked], nan=np.inf)))
                self.last_shifts[name] = median_shift(clean, marked)
            return separation(self.weights)

    def evaluate(self, epoch: int, step: int) -> float:
        started = time.perf_counter()
        self.last_components, self.last_shifts, self.last_judged, self.last_one_time = {}, {}, None, {}
        value, error = self.measure_with_error()
        entry = {"epoch": epoch, "step": step, "value": value, "standard_error": error,
                 "seconds": round(time.perf_counter() - started, 3),
                 **self.last_one_time,
                 **({"components": self.last_components} if self.last_components else {}),
                 **({"component_shifts": self.last_shifts} if self.last_shifts else {})}
        if self.last_judged is not None:
            entry["judged_value"], entry["judged_error"] = self.last_judged
        self.history.append(entry)
        judged, judged_error = self.last_judged or (value, error)
        if judged > self.top_value:
            self.top_value, self.top_error = judged, judged_error
        # the latest weights within one standard error of the best so far; a later, clearly better
        # evaluation moves the choice, so at the end it is the latest within one error of the best.
        # best_value stays the exported score's self-check at the chosen weights
        if judged >= self.top_value - self.top_error:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = {name: copy.deepcopy(m.state_dict()) for name, m in self.modules.items()}
        log.info("selection: %s = %.4f +- %.4f at epoch %d%s (best %.4f; chosen: epoch %s)", self.criterion, value,
                 error, epoch, "" if self.last_judged is None else f", {'+'.join(self.judged_by)} {judged:.4f}",
                 self.top_value, self.best_epoch)
        return value

    def restore_best(self, log_path: Path, training_length: dict | None = None) -> None:
        """Load the best weights into the modules and write selection.json (criterion, every evaluation,
        and how the training length was decided). Without selection the record says so and why: every
        run folder has one."""
        if not self.active:
            log_path.write_text(json.dumps({
                "criterion": "last", "rule": f"the final weights, nothing evaluated ({self.why_last})",
                "evaluations": [], **({"training_length": training_length} if training_length else {})}, indent=2))
            return
        if self.best_state is not None:
            for name, module in self.modules.items():
                module.load_state_dict(self.best_state[name])
        chosen = next((e for e in reversed(self.history) if e["epoch"] == self.best_epoch and "components" in e), {})
        components, shifts = chosen.get("components"), chosen.get("component_shifts")
        log_path.write_text(json.dumps({
            "criterion": self.criterion, "rule": "latest within one standard error of the best",
            **({"judged_by": list(self.judged_by)} if self.judged_by else {}),
            "selected_epoch": self.best_epoch, "selected_value": self.best_value, "best_value": self.top_value,
            "best_standard_error": self.top_error, "evaluations": self.history, "held_out_items": len(self.normal),
            **({"selected_components": components} if components else {}),
            **({"selected_component_shifts": shifts} if shifts else {}),
            **({"training_length": training_length} if training_length else {})}, indent=2))
        judged = f" of {'+'.join(self.judged_by)}" if self.judged_by else ""
        log.info("selected epoch %s by the %s%s (exported score's value there %.4f)", self.best_epoch, self.criterion,
                 judged, self.best_value)
        if self.criterion == "synthetic_auroc" and self.best_value < WEAK_SEPARATION:
            log.warning("at the exported weights the model separates synthetic defects from held-out normal images "
                        "with AUROC %.2f only (0.5 = chance): expect weak detection; consider more steps, another "
                        "input size or the other model family", self.best_value)

    @property
    def selected_step(self) -> int | None:
        """The training step of the chosen weights (None: nothing evaluated, the last weights stay)."""
        chosen = [e["step"] for e in self.history if e["epoch"] == self.best_epoch]
        return int(chosen[-1]) if chosen and self.best_state is not None else None

    def state(self) -> dict:
        return {"history": self.history, "best_value": float(self.best_value), "best_epoch": self.best_epoch,
                "best_state": self.best_state, "top_value": float(self.top_value), "top_error": self.top_error}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.history = list(state["history"])
            self.best_value, self.best_epoch = float(state["best_value"]), state["best_epoch"]
            self.best_state = state["best_state"]
            # checkpoints written before the one-standard-error rule: the chosen value was the top one
            self.top_value = float(state.get("top_value", self.best_value))
            self.top_error = float(state.get("top_error", 0.0))
