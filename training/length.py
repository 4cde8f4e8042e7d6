"""How long the last training phase runs: blocks of steps while the self-check improves, within a budget.

A fixed number of steps is right for one data set and wrong for the next: 150 steps are 5 epochs
of 571 metal-surface images (the self-check still rising) and 40 epochs of 32 printed parts. So the
phase runs in blocks (train.steps each, rounded up to whole epochs) and another block follows only
while the one just trained raised the best selection value (the synthetic-defect self-check on
held-out normal images: no labels, never test/) by more than that best's standard error (a rise
within it is noise, as for choosing checkpoints) and left it below 1.0 (at 1.0 it cannot rise, so a
further block would train with nothing to tell whether it helped), up to train.max_blocks, and only
when one more block (timed like the last one) plus the time kept for what follows still fits the budget.

The time kept for what follows is twice the longest selection round: the final round when the
budget cuts a block short, and the calibration (it scores about as many held-out items). Export and
the frame-cost measurement come on top: the caller leaves them a fixed allowance.
"""

from __future__ import annotations

from .selection import CheckpointSelector

SELF_CHECK = "self-check stopped improving"
AT_MAXIMUM = "self-check at its maximum (1.0)"
BUDGET = "time budget"
MAX_BLOCKS = "train.max_blocks reached"
PLANNED = "planned steps (no self-check to extend by)"


def epochs_for(steps: int, steps_per_epoch: int) -> int:
    return -(-steps // max(1, steps_per_epoch))


class TrainingLength:
    """The step count of the last phase, extended block by block (see the module docstring).

    Times are seconds since the run started (so a resumed run, whose clock continues from the
    checkpoint's, keeps them)."""

    def __init__(self, planned_steps: int, steps_per_epoch: int, max_blocks: int, selector: CheckpointSelector,
                 budget_s: float | None):
        self.extendable = max_blocks > 1 and selector.criterion == "synthetic_auroc"
        self.block = epochs_for(planned_steps, steps_per_epoch) * steps_per_epoch if self.extendable else planned_steps
        self.target = self.block
        self.max_blocks = max_blocks
        self.selector = selector
        self.budget_s = budget_s
        self.block_started = 0.0
        self.block_first_evaluation = 0
        self.stopped_by: str | None = None

    @property
    def blocks(self) -> int:
        return -(-self.target // self.block)

    def reserve_s(self) -> float:
        """Seconds kept after training for the final selection round and the calibration."""
        return 2 * self.selector.round_seconds

    def out_of_time(self, elapsed: float) -> bool:
        """Whether training must end now to leave the reserve inside the budget."""
        if self.budget_s is not None and elapsed >= self.budget_s - self.reserve_s():
            self.stopped_by = BUDGET
            return True
        return False

    def left_s(self, elapsed: float) -> float | None:
        return None if self.budget_s is None else max(0.0, self.budget_s - self.reserve_s() - elapsed)

    def end_of_block(self, elapsed: float) -> bool:
        """At the last step of a block (its selection round done): extend by one block, or say why not."""
        block_seconds = elapsed - self.block_started
        if not self.extendable:
            self.stopped_by = PLANNED
        elif not self.selector.improved_since(self.block_first_evaluation):
            self.stopped_by = SELF_CHECK
        elif self.selector.at_maximum():
            self.stopped_by = AT_MAXIMUM
        elif self.blocks >= self.max_blocks:
            self.stopped_by = MAX_BLOCKS
        elif self.budget_s is not None and elapsed + block_seconds + self.reserve_s() > self.budget_s:
            self.stopped_by = BUDGET
        else:
            self.target += self.block
            self.block_started = elapsed
            self.block_first_evaluation = len(self.selector.history)
            return True
        return False

    def record(self, steps: int) -> dict:
        """What selection.json says about the length: blocks, steps, and what ended training."""
        return {"block_steps": self.block, "blocks": self.blocks, "max_blocks": self.max_blocks, "steps": steps,
                "training_budget_s": None if self.budget_s is None else round(self.budget_s, 1),
                "stopped_by": self.stopped_by}

    def state(self) -> dict:
        return {"target": self.target, "block": self.block, "block_started": self.block_started,
                "block_first_evaluation": self.block_first_evaluation}

    def load_state(self, state: dict | None) -> None:
        """Continue an extended run's plan; a run resumed with another length (train.steps or max_blocks
        changed, or a fixed length) follows its config instead."""
        if state and self.extendable and int(state.get("block", -1)) == self.block:
            self.target = int(state["target"])
            self.block_started = float(state["block_started"])
            self.block_first_evaluation = int(state["block_first_evaluation"])
