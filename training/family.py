"""What a model family supplies to the training driver, and how a family is found by `model.family`.

A family owns its models, its optimisers, one optimisation step per phase and what it draws at the
end of an epoch; the driver (training.driver) owns everything around them: seeding, batches, the
losses log, checkpoints and exact resume, checkpoint selection and the progress bar. Adding a family
is one module under training/models/ with a `Family` subclass and one entry in
training.models.registry.FAMILIES.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .items import Items
from .models.memory import NearestCode, latent_memory
from .models.registry import BACKBONE_FAMILY, FAMILIES
from .models.scoring_module import ScoringModule


@dataclass(frozen=True)
class Phase:
    """One stage of training: `steps` optimisation steps, each drawing `batches_per_step` batches."""

    name: str
    steps: int
    batches_per_step: int = 1
    collapse_of: str = "reconstructions"  # what the diversity ratio of this phase measures


@dataclass
class Grid:
    """An image grid of a training moment: `items` in rows, each followed by its `paired_with` row."""

    items: torch.Tensor
    title: str
    paired_with: torch.Tensor | None = None
    labels: tuple[str, str] = ("real", "recon.")


class Family(ABC):
    """A model family as the driver sees it. `modules` and the optimisers `begin` returns are what a
    checkpoint saves; the last phase is the one checkpoint selection evaluates."""

    loss_fields: list[str]

    def __init__(self, config: TrainConfig, items: Items, shape, device: torch.device):
        self.config, self.items, self.shape, self.device = config, items, shape, device

    @property
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose weights a checkpoint keeps, by name."""

    @property
    def selected_modules(self) -> dict[str, nn.Module]:
        """The weights checkpoint selection snapshots and restores (the ones the last phase trains)."""
        return self.modules

    @property
    @abstractmethod
    def model(self) -> nn.Module:
        """The trained model (what the run returns besides its scoring module)."""

    @property
    def trained_components(self) -> tuple[str, ...]:
        """Score components checkpoint selection judges by (training.selection): none where training
        moves the whole score; the trained ones where part of it is frozen."""
        return ()

    @abstractmethod
    def phases(self) -> list[Phase]:
        """The phases in order."""

    @abstractmethod
    def begin(self, phase: Phase) -> dict[str, torch.optim.Optimizer]:
        """Set modes and frozen weights for `phase` and return its optimisers by name."""

    @abstractmethod
    def step(self, phase: Phase, next_batch: Callable[[], torch.Tensor], sampler: torch.Generator,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One optimisation step on batches from `next_batch` (random draws from `sampler`, which a
        checkpoint keeps); returns the losses to log (names from loss_fields)."""

    def prepare(self, fitted: np.ndarray) -> None:
        """Before the first step: statistics of the fitted items the family needs (none by default).
        Whatever it sets lives in `modules`, so a resumed or warm-started run restores it."""

    def grids(self, phase: Phase, shown: torch.Tensor, epoch: int, total: int) -> dict[str, Grid]:
        """Grids to draw at a planned epoch end of `phase` (epoch of total in that phase), given the fixed
        batch of real items `shown`, by kind."""
        return {}

    def postfix(self, phase: Phase, logged: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {}

    def end_phase(self, phase: Phase, run) -> None:
        """After a phase's last step (e.g. a checkpoint of that phase's weights)."""

    @abstractmethod
    def scoring(self, fitted: np.ndarray | None) -> ScoringModule:
        """The exportable scoring module over the current weights (training.models.scoring_module: what
        training asks of it besides its outputs); memory components keep codes of `fitted`."""

    def nearest_code(self, encoder: nn.Module, fitted: np.ndarray | None) -> NearestCode | None:
        """The memory of normal codes (`encoder`'s codes of a subset of the fitted items) when the score
        uses latent_knn or latent_lof, else None. Any family with an encoder can score them."""
        return nearest_code_module(self.config, self.items, encoder, fitted)


def nearest_code_module(config: TrainConfig, items: Items, encoder: nn.Module,
                        fitted: np.ndarray | None) -> NearestCode | None:
    weights = config.score.weights
    if "latent_knn" not in weights and "latent_lof" not in weights:
        return None
    if fitted is None:
        raise ValueError("score components latent_knn and latent_lof need the fitted items for their memory of "
                         "normal codes")
    inputs = items.memory_inputs(fitted, config.score.memory_size, config.train.seed)
    memory = latent_memory(encoder, inputs, config.score.memory_size, config.train.seed)
    memory = memory.to(next(encoder.parameters()).device)  # a model under training may sit on a GPU
    return NearestCode(memory, config.score.lof_neighbors if "latent_lof" in weights else None)


def family_class(name: str) -> type[Family]:
    module, _, cls = FAMILIES[name].family.partition(":")
    return getattr(importlib.import_module(module), cls)


def family_for(config: TrainConfig) -> type[Family]:
    """The family class a config trains: `model.family`, on pretrained features when `model.backbone` is set."""
    if config.model.backbone != "none":
        module, _, cls = BACKBONE_FAMILY.partition(":")
        return getattr(importlib.import_module(module), cls)
    return family_class(config.model.family)


def clip_gradients(module: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
