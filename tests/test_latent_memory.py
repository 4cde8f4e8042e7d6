"""latent_lof: the local outlier factor of a code among the memory of normal codes (models/memory.py)."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import LocalOutlierFactor

from inspector.errors import ConfigError
from training.config import validate_train_config
from training.models import memory as memory_module
from training.models.memory import NearestCode

from .conftest import tiny_config


def clusters(rng: np.random.Generator) -> np.ndarray:
    """Normal codes in two modes of very different spread: a tight one and a loose one."""
    tight = rng.normal(0.0, 0.05, size=(300, 6))
    loose = rng.normal(0.0, 1.0, size=(300, 6)) + 10.0
    return np.concatenate([tight, loose]).astype(np.float32)


def test_latent_lof_equals_scikit_learns_local_outlier_factor(monkeypatch):
    rng = np.random.default_rng(0)
    memory = clusters(rng)
    monkeypatch.setattr(memory_module, "RANKED_ENTRIES", 128 * len(memory))  # densities in 5 chunks of rows
    queries = np.concatenate([clusters(rng)[::10], rng.normal(5.0, 3.0, size=(40, 6))]).astype(np.float32)
    reference = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(memory)
    with torch.no_grad():
        ours = NearestCode(torch.from_numpy(memory), lof_neighbors=20)(torch.from_numpy(queries))
    np.testing.assert_allclose(ours["latent_lof"].numpy(), -reference.score_samples(queries), rtol=1e-4)
    nearest = np.sqrt(((queries[:, None] - memory[None]) ** 2).mean(axis=2).min(axis=1))
    np.testing.assert_allclose(ours["latent_knn"].numpy(), nearest, rtol=1e-5, atol=1e-6)


def test_latent_lof_judges_a_code_by_the_spread_of_its_own_mode():
    """Two codes at the same distance from their nearest normal mode: the one beside the tight mode
    is the outlier. The plain nearest-code distance cannot tell them apart; the LOF can."""
    rng = np.random.default_rng(1)
    memory = torch.from_numpy(clusters(rng))
    step = np.zeros(6, np.float32)
    step[0] = 1.5
    beside_tight = memory[:300].mean(dim=0) + torch.from_numpy(step)
    beside_loose = memory[300:].mean(dim=0) + torch.from_numpy(step)
    with torch.no_grad():
        scores = NearestCode(memory, lof_neighbors=20)(torch.stack([beside_tight, beside_loose]))
    lof = scores["latent_lof"].numpy()
    assert lof[0] > 10 and lof[1] < 1.5  # a typical normal code scores about 1
    knn = scores["latent_knn"].numpy()
    assert knn[0] < 2 * knn[1]


def test_latent_lof_scores_a_code_alone_as_in_any_batch():
    rng = np.random.default_rng(2)
    module = NearestCode(torch.from_numpy(clusters(rng)), lof_neighbors=5)
    queries = torch.from_numpy(clusters(rng)[::7])
    with torch.no_grad():
        batch = module(queries)["latent_lof"].numpy()
        alone = np.array([module(q[None])["latent_lof"].item() for q in queries])
    np.testing.assert_allclose(alone, batch, rtol=1e-5)


def test_latent_lof_needs_more_memory_codes_than_neighbours():
    with pytest.raises(ValueError, match="needs more than that many memory codes"):
        NearestCode(torch.zeros(20, 4), lof_neighbors=20)
    with pytest.raises(ConfigError, match="lof_neighbors .20. must be below score.memory_size .10."):
        validate_train_config({"name": "t", "data": {"path": "x"},
                               "score": {"weights": {"latent_lof": 1.0}, "memory_size": 10}}, "t")


def test_training_refuses_a_set_too_small_for_its_lof_neighbours_before_it_starts(piped_class, tmp_path):
    from training.fit import fit

    config = validate_train_config(tiny_config(piped_class, **{
        "score.weights": {"latent_lof": 1.0}, "score.lof_neighbors": 500, "input.resize": "stretch"}), "tiny")
    with pytest.raises(ConfigError, match=r"score.lof_neighbors is 500, but the \d+ fitted items give only \d+ normal codes"):
        fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before the first training step
