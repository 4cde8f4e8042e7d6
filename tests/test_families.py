"""Model families are one class and one registry entry: a family written here, registered at run
time, is trained, resumed, selected and exported by the same driver as the shipped ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inspector.scorer import Scorer
from training.config import validate_train_config
from training.family import Family, Grid, Phase
from training.fit import fit
from training.models.scoring_module import ScoringModule
from training.models import registry

from .conftest import tiny_config


class PixelMeanScoring(ScoringModule):
    """Scores a frame by its squared distance from the learned mean frame."""

    def __init__(self, mean: nn.Parameter):
        super().__init__()
        self.mean = mean

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        error = (x - self.mean).pow(2).mean(dim=1, keepdim=True)
        return {"residual_mean": error.flatten(1).mean(dim=1), "anomaly_map": error}


class MeanFrameFamily(Family):
    """The least a family can be: one parameter (the mean normal frame) fitted by gradient steps."""

    loss_fields = ["distance", "diversity"]

    def __init__(self, config, items, shape, device):
        super().__init__(config, items, shape, device)
        self.holder = nn.Module()
        self.holder.mean = nn.Parameter(torch.zeros(1, shape.channels, shape.height, shape.width, device=device))

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"mean_frame": self.holder}

    @property
    def model(self) -> nn.Module:
        return self.holder

    def phases(self) -> list[Phase]:
        return [Phase("fit", self.config.train.steps)]

    def begin(self, phase: Phase) -> dict[str, torch.optim.Optimizer]:
        return {"opt": torch.optim.Adam(self.holder.parameters(), lr=0.1)}

    def step(self, phase, next_batch, sampler, optimizers) -> dict[str, float]:
        x = next_batch()
        loss = (x - self.holder.mean).pow(2).mean()
        optimizers["opt"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["opt"].step()
        return {"distance": loss.item(), "diversity": 1.0}

    def grids(self, phase, shown, epoch, total) -> dict[str, Grid]:
        return {"mean": Grid(self.holder.mean.detach().expand(len(shown), -1, -1, -1), f"epoch {epoch}: the mean frame")}

    def scoring(self, fitted: np.ndarray | None) -> ScoringModule:
        return PixelMeanScoring(self.holder.mean)


@pytest.fixture
def mean_frame_family(monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "mean_frame", registry.FamilyEntry(
        f"{__name__}:MeanFrameFamily", frozenset({"residual_mean"}), "the mean normal frame"))


def test_a_registered_family_trains_selects_and_exports_through_the_driver(mean_frame_family, piped_class, tmp_path):
    config = validate_train_config(tiny_config(piped_class, **{
        "model.family": "mean_frame", "score.weights": {"residual_mean": 1.0}, "train.steps": 6}), "tiny")
    result = fit(config, tmp_path, progress=False, evaluate_test=False)

    scorer = Scorer(result.model_path)
    scorer.self_test()
    assert scorer.card.family == "mean_frame" and scorer.card.training.steps == 6
    assert (tmp_path / "selection.json").exists() and (tmp_path / "losses.csv").read_text().count("\n") > 1
    assert list((tmp_path / "diagnostics").glob("mean_e*.png"))
    with pytest.raises(Exception, match="residual_max is not a score of model.family mean_frame"):
        validate_train_config(tiny_config(piped_class, **{"model.family": "mean_frame"}), "tiny")


def test_a_registered_family_resumes_exactly(mean_frame_family, piped_class, tmp_path):
    from training.data import load_train_good
    from training.driver import train

    config = validate_train_config(tiny_config(piped_class, **{
        "model.family": "mean_frame", "score.weights": {"residual_mean": 1.0}, "train.steps": 7}), "tiny")
    frames = load_train_good(piped_class, config.input.to_spec()).tensors[:24]
    straight = train(config, frames, tmp_path / "straight", progress=False)
    assert train(config, frames, tmp_path / "resumed", progress=False, stop_after_steps=4).interrupted
    resumed = train(config, frames, tmp_path / "resumed", resume=True, progress=False)
    torch.testing.assert_close(resumed.model.mean, straight.model.mean, rtol=0, atol=0)
