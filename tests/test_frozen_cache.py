"""Frozen outputs kept per distinct input while a model trains on a frozen backbone's features."""

from __future__ import annotations

import torch

from training.backbone import StageFeatures
from training.models.feature_ganomaly import FeatureGANomalyScoring, FeatureGenerator, PatchMemory, PretrainedFeatures
from training.models.frozen_cache import FrozenOutputs, available_memory, cache_limit


class CountingDouble:
    """A frozen computation that says how many items it was asked for."""

    def __init__(self):
        self.items = 0

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.items += len(batch)
        return {"doubled": batch * 2, "total": batch.flatten(1).sum(dim=1)}


def test_each_distinct_item_is_computed_once_whatever_batch_it_comes_in():
    compute = CountingDouble()
    cache = FrozenOutputs(compute, max_bytes=1 << 20)
    a, b, c = torch.rand(3, 1, 4, 4).unbind()
    first = cache(torch.stack([a, b]))
    again = cache(torch.stack([c, b, a, b]))
    assert compute.items == 3  # c is new; b and a come from the first batch
    assert (cache.hits, cache.misses) == (3, 3)
    torch.testing.assert_close(again["doubled"], torch.stack([c, b, a, b]) * 2, rtol=0, atol=0)
    torch.testing.assert_close(again["total"][2], first["total"][0], rtol=0, atol=0)


def test_an_item_that_differs_in_one_pixel_is_computed_afresh():
    compute = CountingDouble()
    cache = FrozenOutputs(compute, max_bytes=1 << 20)
    item = torch.rand(1, 1, 4, 4)
    changed = item.clone()
    changed[0, 0, 1, 1] += 1e-3
    cache(item)
    out = cache(changed)
    assert compute.items == 2
    torch.testing.assert_close(out["doubled"], changed * 2, rtol=0, atol=0)


def test_beyond_the_byte_limit_outputs_are_computed_and_not_kept():
    compute = CountingDouble()
    per_item = 16 * 4 + 4  # the doubled 4x4 float32 map and its float32 total
    cache = FrozenOutputs(compute, max_bytes=2 * per_item)
    batch = torch.rand(3, 1, 4, 4)
    cache(batch)
    assert cache.bytes == 2 * per_item and len(cache.kept) == 2
    out = cache(batch)
    assert compute.items == 4  # the third item again: it did not fit
    torch.testing.assert_close(out["doubled"], batch * 2, rtol=0, atol=0)


def test_the_cache_counts_the_seconds_spent_on_outputs_it_keeps_and_only_those():
    """What a later call will not repeat: the selection rounds' time estimate leaves it out."""
    import time

    inside = []

    def slow_double(batch):
        started = time.perf_counter()
        time.sleep(0.01 * len(batch))
        inside.append(time.perf_counter() - started)
        return {"doubled": batch * 2}

    per_item = 16 * 4
    cache = FrozenOutputs(slow_double, max_bytes=2 * per_item)
    batch = torch.rand(3, 1, 4, 4)
    started = time.perf_counter()
    cache(batch)
    around = time.perf_counter() - started
    first = cache.kept_seconds
    # two of the three items were kept: their share of the computing time, bounded by the time
    # measured inside the computation and around the whole call (no bound a loaded machine breaks)
    assert 2 / 3 * inside[0] <= first <= 2 / 3 * around
    cache(batch)
    assert cache.kept_seconds == first  # nothing new kept: the third item, recomputed, does not count


def test_a_scorer_with_the_cache_gives_what_it_gives_without_and_runs_the_backbone_once_per_frame():
    features = PretrainedFeatures(StageFeatures(), "rgb").eval()
    generator = FeatureGenerator(width=16, latent=8).eval()
    frames = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        memory = PatchMemory(features(frames[:1]).permute(0, 2, 3, 1).reshape(-1, 120))
        plain = FeatureGANomalyScoring(features, generator, memory)
        cache = FrozenOutputs(plain.frozen_maps, max_bytes=1 << 30)
        cached = FeatureGANomalyScoring(features, generator, memory, frozen_cache=cache)
        expected = plain(frames)
        for _ in range(2):  # a second selection round finds every frame kept
            got = cached(frames.flip(0))
            for name in ("patch_residual", "patch_knn", "anomaly_map"):
                torch.testing.assert_close(got[name], expected[name].flip(0), rtol=1e-4, atol=1e-5)
    assert (cache.misses, cache.hits) == (3, 3)


def test_a_cache_takes_at_most_a_quarter_of_the_memory_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8000000 kB\nMemFree:          100000 kB\nMemAvailable:    2000000 kB\n")
    assert available_memory(meminfo) == 2_000_000 * 1024
    assert cache_limit(3 << 30, available=2_000_000 * 1024) == 512_000_000  # an 8 GB box with 2 GB free
    assert cache_limit(1 << 20, available=64 << 30) == 1 << 20  # a large machine: the ceiling
    assert cache_limit(1 << 20, available=None) <= 1 << 20  # this machine's own figure, never above it
    assert available_memory(tmp_path / "absent") is None


def test_a_model_trained_without_selection_rounds_draws_its_memory_through_the_training_draws_before_they_go(
        tmp_path, caplog):
    """A calibration fold's model runs no selection round: its patch memory is drawn when training ends,
    through the training draws' cache. The memory's frames, as photographed and brightened, were all
    drawn in training, so the backbone runs for none of them again; the memory is the one drawn directly."""
    import logging

    import numpy as np

    from training.config import validate_train_config
    from training.driver import train
    from training.models.feature_ganomaly import patch_memory

    from .test_backbone import backbone_config

    frames = np.random.default_rng(0).uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32)
    config = validate_train_config(backbone_config(tmp_path, selection={"criterion": "last"},
                                                   score={"memory_size": 256}), "test")
    with caplog.at_level(logging.INFO, logger="training.models.feature_ganomaly"):
        trained = train(config, frames, tmp_path / "run", progress=False)
    draws = config.train.steps * config.train.batch_size  # 12 epochs of the 8 frames, about half brightened
    versions = 2 * len(frames)  # the memory's lookups: each frame as photographed and brightened
    # computed once per version (16), in training; every later draw and every memory lookup reused
    assert f"frozen features of training draws: {draws} of {draws + versions} reused" in caplog.text
    scoring = trained.family.scoring(frames)
    assert scoring.memory_build_seconds == 0  # drawn already
    direct = patch_memory(trained.family.features, frames, 256, config.train.seed, config.score.memory_sampling,
                          config.train.augment.lighting)
    torch.testing.assert_close(scoring.memory.memory, direct, rtol=1e-4, atol=1e-4)
