"""Label-free checkpoint selection: which weights of a run get exported, judged on held-out normal
data only (the 20% of train/good also used for calibration; test/ is never read).

synthetic_auroc  the configured score must rank held-out normal frames below copies of the same
                 frames carrying a synthetic defect (SYNTHETIC_COPIES per frame): half get a
                 cut-paste patch (a piece of the frame moved elsewhere, brightness shifted; Li et al.,
                 CutPaste, 2021), half a Gaussian-noise patch. Patches are 1/8 to 1/3 of the model
                 input side, so they are local at tile scale. The criterion is the AUROC of that
                 separation; on ties the earlier epoch is kept (less fitted to the few normal images).
validation_loss  the lowest mean reconstruction error (residual_mean) on held-out normal items.
last             no evaluation: the final weights.
Evaluations happen at `evaluations` evenly spaced epoch ends; the best state is kept in memory
(and in the GANomaly checkpoint, so `--resume` keeps it) and restored before export.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from inspector.card import ScoreDefinition
from inspector.scorer import combine_score

from .config import TrainConfig
from .diagnostics import evenly_spaced
from .frame_scores import component_scales, frame_outputs, per_frame_max

log = logging.getLogger(__name__)

SELECTION_LOG = "selection.json"
SYNTHETIC_COPIES = 4
WEAK_SEPARATION = 0.6  # below this best synthetic AUROC, training warns (a label-free sign of a weak model)


def synthetic_defects(frames: np.ndarray, patch_side: int, seed: int) -> np.ndarray:
    """Copies of (N, C, H, W) model-space frames in [-1, 1], each with one synthetic defect patch."""
    rng = np.random.default_rng(seed)
    out = frames.copy()
    _, _, height, width = frames.shape
    for i, frame in enumerate(out):
        side = int(rng.integers(max(2, patch_side // 8), max(3, patch_side // 3) + 1))
        ph, pw = min(side, height), min(side, width)
        top, left = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        if i % 2 == 0:  # cut-paste: a piece of the same frame, moved and brightened or darkened
            src_top, src_left = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
            patch = frames[i, :, src_top:src_top + ph, src_left:src_left + pw] + rng.choice([-0.3, 0.3])
        else:  # noise patch
            patch = frame[:, top:top + ph, left:left + pw] + rng.normal(0, 0.5, (frame.shape[0], ph, pw))
        frame[:, top:top + ph, left:left + pw] = np.clip(patch, -1, 1)
    return out


class CheckpointSelector:
    """Evaluates the run's weights at planned epoch ends and remembers the best.

    `modules` are the weights to snapshot and restore (by name); `make_scoring` builds the scoring
    module over the live weights (GANomalyScoring, AnoGANScoring, TabularScoring ...)."""

    def __init__(self, config: TrainConfig, validation: np.ndarray | None, modules: dict[str, nn.Module],
                 make_scoring: Callable[[], nn.Module], total_epochs: int):
        self.criterion = config.selection.criterion if validation is not None else "last"  # nothing held out
        self.modules = modules
        self.make_scoring = make_scoring
        self.total_epochs = max(1, total_epochs)
        self.evaluations = config.selection.evaluations
        self.weights = dict(config.score.weights)
        self.spec = config.input.to_spec() if config.data.kind != "table" else None
        self.history: list[dict] = []
        self.best_value = -np.inf
        self.best_state: dict | None = None
        self.best_epoch: int | None = None
        if self.criterion == "last":
            return
        if len(validation) < 2:
            raise ValueError("checkpoint selection needs at least 2 held-out normal items")
        keep = np.random.default_rng(config.train.seed).permutation(len(validation))[:config.selection.max_items]
        self.normal = np.ascontiguousarray(validation[np.sort(keep)], dtype=np.float32)
        if self.criterion == "synthetic_auroc":
            self.defective = synthetic_defects(np.concatenate([self.normal] * SYNTHETIC_COPIES),
                                               min(self.spec.height, self.spec.width), config.train.seed).astype(np.float32)

    @property
    def active(self) -> bool:
        return self.criterion != "last"

    def due(self, epoch: int) -> bool:
        return self.active and evenly_spaced(epoch, self.total_epochs, self.evaluations)

    def measure(self) -> float:
        """The criterion on the current weights (higher is better)."""
        from sklearn.metrics import roc_auc_score

        modes = [(m, m.training) for module in self.modules.values() for m in module.modules()]
        try:
            scoring = self.make_scoring()
            normal, owner = frame_outputs(scoring, self.normal, self.spec)
            if self.criterion == "validation_loss":
                return -float(np.mean(normal["residual_mean"]))
            definition = ScoreDefinition(weights=self.weights, scales=component_scales(normal, list(self.weights)),
                                         map_output=None)
            defective, defective_owner = frame_outputs(scoring, self.defective, self.spec)
            normal_scores = per_frame_max(combine_score(normal, definition), owner)
            defective_scores = per_frame_max(combine_score(defective, definition), defective_owner)
            labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(defective_scores))]
            scores = np.nan_to_num(np.r_[normal_scores, defective_scores], nan=np.inf)
            return float(roc_auc_score(labels, scores))
        finally:  # back to each submodule's own mode (a frozen generator stays in eval mode)
            for module, training in modes:
                module.training = training

    def evaluate(self, epoch: int, step: int) -> float:
        value = self.measure()
        self.history.append({"epoch": epoch, "step": step, "value": value})
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = {name: copy.deepcopy(m.state_dict()) for name, m in self.modules.items()}
        log.info("selection: %s = %.4f at epoch %d (best %.4f at epoch %s)", self.criterion, value, epoch,
                 self.best_value, self.best_epoch)
        return value

    def restore_best(self, run_dir: Path) -> None:
        """Load the best weights into the modules and write selection.json (criterion, every evaluation)."""
        if not self.active:
            return
        if self.best_state is not None:
            for name, module in self.modules.items():
                module.load_state_dict(self.best_state[name])
        (run_dir / SELECTION_LOG).write_text(json.dumps({
            "criterion": self.criterion, "selected_epoch": self.best_epoch, "selected_value": self.best_value,
            "evaluations": self.history, "held_out_items": len(self.normal)}, indent=2))
        log.info("selected epoch %s by %s (%.4f)", self.best_epoch, self.criterion, self.best_value)
        if self.criterion == "synthetic_auroc" and self.best_value < WEAK_SEPARATION:
            log.warning("at its best epoch the model separates synthetic defects from held-out normal images with "
                        "AUROC %.2f only (0.5 = chance): expect weak detection; consider more steps, another "
                        "input size or the other model family", self.best_value)

    def state(self) -> dict:
        return {"history": self.history, "best_value": float(self.best_value), "best_epoch": self.best_epoch,
                "best_state": self.best_state}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.history = list(state["history"])
            self.best_value, self.best_epoch = float(state["best_value"]), state["best_epoch"]
            self.best_state = state["best_state"]
