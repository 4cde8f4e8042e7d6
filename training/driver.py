"""The training driver: one seeded, resumable loop for every model family (training.family).

The driver owns what every family shares: seeding and the device, the batches (a seeded permutation
per epoch, the last partial batch dropped), the losses log (one row per epoch of each phase),
sample grids at evenly spaced epochs, the checkpoint (written atomically at most every
`train.checkpoint_min_interval_s` at an epoch end, at the end, and when a run is stopped on purpose)
and exact resume: weights, optimisers, the sampler, the position in the current permutation, the
phase and the selection history are all in it, so an interrupted run continued with `--resume`
ends with the same weights, bit for bit, as a straight one. Checkpoint selection (training.selection)
evaluates the epochs of the last phase and restores the chosen weights before the run returns.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inspector.errors import InspectorError

from .config import TrainConfig
from .diagnostics import CollapseMonitor, EpochLossLog, evenly_spaced, plot_losses, write_grid
from .family import Family, Phase, family_for
from .items import Items, items_of
from .length import TrainingLength, epochs_for
from .progress import progress as progress_bar
from .run_folder import RunFolder
from .selection import CheckpointSelector

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def training_device(setting: str) -> torch.device:
    """The torch device for `train.device`; a clear error when CUDA is asked for and torch has none."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is 'cuda' but torch {torch.__version__} sees no CUDA device "
                         "(a CPU build of torch, or no GPU); use 'cpu' or 'auto'")
    return torch.device(setting)


def atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class BatchStream:
    """Batches from a seeded permutation of the items per epoch; a checkpoint keeps the permutation and
    the position in it, so a resumed run draws the very batches the straight run would have."""

    def __init__(self, data: list[torch.Tensor], batch_size: int, items: Items, sampler: torch.Generator,
                 device: torch.device):
        self.data, self.batch_size, self.items, self.sampler, self.device = data, batch_size, items, sampler, device
        self.order: torch.Tensor | None = None
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.order is None or self.position + self.batch_size > len(self.data):
            self.order, self.position = torch.randperm(len(self.data), generator=self.sampler), 0
        picked = [self.data[i] for i in self.order[self.position:self.position + self.batch_size].tolist()]
        self.position += self.batch_size
        return self.items.batch(picked, self.sampler).to(self.device)

    def state(self) -> dict:
        return {"order": self.order, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.order, self.position = state["order"], int(state["position"])


@dataclass
class TrainResult:
    family: Family  # its model holds the selected weights, on the CPU in eval mode
    steps: int
    epochs: int
    seconds: float
    interrupted: bool = False
    selected_step: int | None = None  # the step of the returned weights (checkpoint selection), or None: the last
    selection_seconds: float = 0.0  # of `seconds`, spent in checkpoint selection rounds
    # of those, work a model trained without rounds still does once: drawing a patch memory, and
    # per scored item its frozen outputs (CheckpointSelector.one_time_costs; 0 where there is none)
    memory_seconds: float = 0.0
    item_seconds: float = 0.0

    @property
    def model(self) -> nn.Module:
        return self.family.model

    @property
    def generator(self) -> nn.Module:
        return self.family.model


@dataclass
class _Position:
    phase: int = 0
    phase_step: int = 0
    step: int = 0


def load_weights(module: nn.Module, state: dict, whose: str, remedy: str) -> None:
    """Saved weights into a module, or one clear error where they were saved by other layers (e.g. a
    run trained by an earlier version of the model): `whose` names them, `remedy` says what to do."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise InspectorError(f"{whose} weights do not fit this model ({detail}); they were trained with other "
                             f"layers: {remedy}") from None


def train(config: TrainConfig, fitted: np.ndarray, run: RunFolder | Path, *, validation: np.ndarray | None = None,
          resume: bool = False, progress: bool = True, stop_after_steps: int | None = None,
          warm_start: dict[str, dict] | None = None, time_budget_s: float | None = None,
          label: str = "") -> TrainResult:
    """Train the configured family on normal items in model space ((C, H, W) float32 frames: model
    inputs, or native frames for tiled models; or feature windows). `validation` (held-out normal items
    of the same kind) feeds checkpoint selection. `stop_after_steps` stops the run there on purpose,
    checkpointed for `resume`. `warm_start`: module weights to start from instead of random ones
    ({module name: state dict}, e.g. a parent run's selected weights: fine-tuning); optimisers start fresh.
    `time_budget_s`: seconds for training and what follows it (training.length): the last phase ends
    early enough to leave time for a final selection round and the calibration (but not before its
    first epoch: an untrained model is no answer), and is extended beyond train.steps only when
    another block fits. Cut short, the weights then are evaluated once more by checkpoint selection,
    and the run counts as complete. `label` names the run in its progress bar beside the family
    (e.g. which calibration fold it is)."""
    run = RunFolder.create(run.root if isinstance(run, RunFolder) else run)
    if len(fitted) == 0:
        raise ValueError("no training items")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    device = training_device(config.train.device)
    items = items_of(config)
    family = family_for(config)(config, items, items.shape(fitted), device)
    family.prepare(fitted)
    sampler = torch.Generator().manual_seed(config.train.seed)
    data = [torch.from_numpy(np.ascontiguousarray(item)) for item in fitted]
    batch_size = min(config.train.batch_size, len(data))
    stream = BatchStream(data, batch_size, items, sampler, device)
    phases = family.phases()
    per_epoch = [max(1, len(data) // (batch_size * phase.batches_per_step)) for phase in phases]
    epochs = [epochs_for(phase.steps, n) for phase, n in zip(phases, per_epoch)]
    offsets = [sum(epochs[:i]) for i in range(len(phases))]
    selector = CheckpointSelector(config.selection, dict(config.score.weights), items.spec, config.train.seed,
                                  validation, family.selected_modules, lambda: family.scoring(fitted), epochs[-1],
                                  family.trained_components, config.score.fusion)
    length = TrainingLength(phases[-1].steps, per_epoch[-1], config.train.max_blocks, selector, time_budget_s)
    last = len(phases) - 1
    at, elapsed, saved = _Position(), 0.0, None
    if warm_start is not None and not (resume and run.checkpoint.exists()):
        for name, module in family.modules.items():
            if name not in warm_start:
                raise ValueError(f"warm start: no weights for the {config.model.family} module {name!r}")
            load_weights(module, warm_start[name], f"warm start: the parent run's {name}",
                         "train a new model (inspector train) instead of fine-tuning that one")
    if resume and run.checkpoint.exists():
        saved = torch.load(run.checkpoint, weights_only=True, map_location=device)
        for name, module in family.modules.items():
            load_weights(module, saved[name], f"--resume: {run.checkpoint}'s {name}",
                         "leave out --resume to start a new run there")
        sampler.set_state(saved["sampler"])
        stream.load_state(saved.get("stream", saved))  # earlier GANomaly checkpoints kept order/position on top
        at = _Position(int(saved.get("phase", 0)), int(saved.get("phase_step", saved["step"])), int(saved["step"]))
        elapsed = float(saved["seconds"])
        selector.load_state(saved.get("selection"))
        length.load_state(saved.get("length"))
        log.info("resumed from %s at step %d", run.checkpoint, at.step)
    losses = EpochLossLog(run.losses, ["phase", "epoch", "step"], family.loss_fields, append=resume and at.step > 0)
    index = torch.linspace(0, len(data) - 1, min(len(data), config.diagnostics.grid_items)).long().tolist()
    shown = items.shown([data[i] for i in index], config.train.seed).to(device)
    started = time.perf_counter() - elapsed
    last_checkpoint = time.perf_counter()
    optimizers: dict[str, torch.optim.Optimizer] = {}

    def save() -> None:
        atomic_torch_save({**{name: m.state_dict() for name, m in family.modules.items()},
                           **{name: o.state_dict() for name, o in optimizers.items()},
                           "family": config.model.family, "sampler": sampler.get_state(), "stream": stream.state(),
                           "phase": at.phase, "phase_step": at.phase_step, "step": at.step,
                           "seconds": time.perf_counter() - started, "selection": selector.state(),
                           "length": length.state()}, run.checkpoint)

    def phase_steps(index: int) -> int:
        return length.target if index == last else phases[index].steps

    def end_of_epoch(phase: Phase, epoch: int, collapse: CollapseMonitor) -> None:
        """The losses row, and on planned epochs the grids, the plot and a selection round."""
        label = offsets[at.phase] + epoch
        collapse.observe(losses.mean("diversity"), label)
        losses.flush(phase.name, label, at.step, seconds=time.perf_counter() - started)
        total = epochs[at.phase]  # of one block: grids are spread over each block of an extended phase
        if items.draws_grids and evenly_spaced((epoch - 1) % total + 1, total, config.diagnostics.grids):
            for kind, drawn in family.grids(phase, shown, epoch, total).items():
                below = None if drawn.paired_with is None else drawn.paired_with.cpu()
                write_grid(run.grid(kind, label), drawn.items.cpu(), config.input.color_order, below,
                           title=drawn.title, labels=drawn.labels)
            if at.phase_step < phase_steps(at.phase):  # a view while training runs; the final plot is drawn at the end
                plot_losses(run.losses, collapse_level=config.diagnostics.collapse_ratio)
        if at.phase == last and selector.due(epoch):
            selector.evaluate(epoch, at.step)

    bar = progress_bar(sum(phase_steps(i) for i in range(len(phases))), at.step,
                       f"{config.model.family} {label}".rstrip(), per_epoch[at.phase], progress)
    stopped = out_of_time = False
    for phase_index in range(at.phase, len(phases)):
        phase, spe = phases[phase_index], per_epoch[phase_index]
        if phase_index != at.phase:
            at = _Position(phase_index, 0, at.step)
        optimizers = family.begin(phase)
        if saved is not None and phase_index == int(saved.get("phase", 0)):
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(saved[name])
        collapse = CollapseMonitor(config.diagnostics.collapse_ratio, phase.collapse_of)
        while at.phase_step < phase_steps(phase_index):
            if stop_after_steps is not None and at.step >= stop_after_steps:
                stopped = True
                break
            if phase_index == last and at.phase_step >= spe and length.out_of_time(time.perf_counter() - started):
                out_of_time = True
                break
            logged = family.step(phase, stream.next, sampler, optimizers)
            at.phase_step += 1
            at.step += 1
            losses.add(**logged)
            bar.update(1)
            left = length.left_s(time.perf_counter() - started) if phase_index == last else None
            bar.set_postfix(**family.postfix(phase, logged), **({} if left is None else {"left": f"{left:.0f}s"}))
            if at.phase_step % spe == 0 or at.phase_step == phase_steps(phase_index):
                end_of_epoch(phase, epochs_for(at.phase_step, spe), collapse)
                if (phase_index == last and at.phase_step == length.target
                        and length.end_of_block(time.perf_counter() - started)):
                    bar.total += length.block
                    log.info("self-check still improving: training block %d (%d more steps)", length.blocks,
                             length.block)
                if time.perf_counter() - last_checkpoint >= config.train.checkpoint_min_interval_s:
                    save()
                    last_checkpoint = time.perf_counter()
        if stopped:
            losses.flush(phase.name, offsets[phase_index] + epochs_for(at.phase_step, spe), at.step,
                         seconds=time.perf_counter() - started)
            break
        if out_of_time:
            log.info("time budget of %.0f s reached after %d steps (%.0f s kept for selection and calibration)",
                     time_budget_s, at.step, length.reserve_s())
            epoch = epochs_for(at.phase_step, spe)
            if at.phase_step % spe:  # a partial epoch: its losses, and selection sees the last weights
                losses.flush(phase.name, offsets[phase_index] + epoch, at.step, seconds=time.perf_counter() - started)
            if selector.active and not any(e["step"] == at.step for e in selector.history):
                selector.evaluate(epoch, at.step)
        family.end_phase(phase, run)
    bar.close()
    save()
    if not stopped:
        plot_losses(run.losses, collapse_level=config.diagnostics.collapse_ratio)
        selector.restore_best(run.selection, length.record(at.step))
    for module in family.modules.values():
        module.cpu()
    family.model.eval()
    memory_seconds, item_seconds = selector.one_time_costs()
    return TrainResult(family, at.step, offsets[at.phase] + epochs_for(at.phase_step, per_epoch[at.phase]),
                       time.perf_counter() - started, interrupted=stopped,
                       selected_step=None if stopped else selector.selected_step,
                       selection_seconds=sum(e.get("seconds", 0.0) for e in selector.history),
                       memory_seconds=memory_seconds, item_seconds=item_seconds)
