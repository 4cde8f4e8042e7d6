"""Shared fixtures: the real data folder (skip with a reason when absent) and tiny trained models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("QI_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("QI_DATA", str(DATA))
PIPED_CLASS = DATA / "piped" / "PA_BDP01_TL"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set QI_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def piped_class() -> Path:
    return require(PIPED_CLASS)


def tiny_config(data: Path, **overrides) -> dict:
    """A model small enough to train in a few seconds: the point is the plumbing, not accuracy."""
    raw = {
        "name": "tiny", "data": {"path": str(data)},
        # frames as they come: tests that recompute scores from images loaded by hand need no level;
        # the tiny_*_run fixtures below and tests/test_preprocess.py cover exposure standardising
        "input": {"height": 32, "width": 32, "channels": 3, "color_order": "rgb", "resize": "stretch",
                  "standardise_frames": False},
        "model": {"base_width": 8, "latent_dim": 16},
        "train": {"steps": 4, "max_blocks": 1, "batch_size": 8, "threads": 1},
        "score": {"weights": {"residual_max": 1.0}, "pool_kernel": 3},
        "calibration": {"folds": 0},  # the held-out threshold: cross-fitting has its own tests
    }
    from training.config import apply_overrides

    return apply_overrides(raw, overrides)


@pytest.fixture(scope="session")
def tiny_piped_run(piped_class, tmp_path_factory):
    """A tiny GANomaly trained on a real PIPED class, exported with its card (no test evaluation)."""
    from training.config import validate_train_config
    from training.fit import fit

    config = validate_train_config(tiny_config(piped_class, **{"input.standardise_frames": True}), "tiny")
    run = tmp_path_factory.mktemp("tiny_piped")
    return fit(config, run, progress=False, evaluate_test=False)


@pytest.fixture(scope="session")
def tiny_tiled_run(piped_class, tmp_path_factory):
    """Same, scored at native resolution in 32x32 tiles."""
    from training.config import validate_train_config
    from training.fit import fit

    config = validate_train_config(tiny_config(piped_class, **{"input.resize": "tile", "input.tile_overlap": 0.5,
                                                               "input.standardise_frames": True}), "tiny")
    run = tmp_path_factory.mktemp("tiny_tiled")
    return fit(config, run, progress=False, evaluate_test=False)


@pytest.fixture(scope="session")
def nsl_model(tmp_path_factory):
    """A small NSL-KDD traffic model (4,000 normal rows, 150 steps), scoring with the nearest-normal-code search."""
    from training.config import load_train_config
    from training.fit import fit

    require(DATA / "nsl_kdd" / "KDDTrain+.txt.gz")
    config = load_train_config(ROOT / "configs" / "nsl_kdd.yaml", {
        "data.max_train": 4000, "data.test_paths": {}, "train.steps": 150, "train.batch_size": 128,
        "train.threads": 1, "model.base_width": 64,
        "score.weights": {"latent_distance": 1.0, "latent_knn": 1.0}, "score.memory_size": 1000})
    return fit(config, tmp_path_factory.mktemp("nsl") / "run", progress=False).model_path


def selection_decisions(run: Path) -> dict:
    """A run's selection.json without the rounds' timings (the only part that differs between equal runs)."""
    import json

    selection = json.loads((Path(run) / "selection.json").read_text())
    selection["evaluations"] = [{k: v for k, v in e.items() if k != "seconds"} for e in selection["evaluations"]]
    return selection
