"""The patch memory keeps rare normal patches: a greedy coreset covers every normal patch more
closely than a random sample of the same size."""

from __future__ import annotations

import torch

from training.models.coreset import covering_radius, greedy_coreset


def normal_patches(seed: int = 0) -> torch.Tensor:
    """Mostly one common kind of patch, and a rare kind (0.5%) far from it: an edge among flat surface."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(4000, 24, generator=generator)
    rare = torch.randn(20, 24, generator=generator) * 0.5 + 12.0
    return torch.cat([common, rare])


def test_the_coreset_keeps_the_rare_patches_a_random_sample_of_the_same_size_misses():
    points = normal_patches()
    kept = greedy_coreset(points, 40, seed=0)
    assert len(kept) == 40 and len(set(kept.tolist())) == 40
    assert (kept >= 4000).sum() >= 1  # a rare patch is in the memory
    sampled = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:40]
    assert covering_radius(points, points[kept]) < 0.6 * covering_radius(points, points[sampled])


def test_a_pool_no_larger_than_the_memory_is_kept_whole():
    points = normal_patches()[:30]
    assert greedy_coreset(points, 64, seed=0).tolist() == list(range(30))


def test_the_coreset_is_reproducible_from_its_seed():
    points = normal_patches()
    assert torch.equal(greedy_coreset(points, 50, seed=3), greedy_coreset(points, 50, seed=3))


def test_the_backbone_patch_memory_is_a_coreset_of_the_frames_patches_by_default():
    from training.backbone import FEATURE_DIM, StageFeatures
    from training.config import ScoreConfig
    from training.models.feature_ganomaly import PretrainedFeatures, patch_memory

    assert ScoreConfig().memory_sampling == "coreset"
    features = PretrainedFeatures(StageFeatures(), "rgb").eval()
    frames = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy() * 2 - 1
    with torch.no_grad():
        patches = features(torch.from_numpy(frames)).permute(0, 2, 3, 1).reshape(-1, FEATURE_DIM)
    coreset = patch_memory(features, frames, 48, seed=0)
    sampled = patch_memory(features, frames, 48, seed=0, sampling="random")
    assert coreset.shape == sampled.shape == (48, FEATURE_DIM)
    exact = torch.cdist(coreset, patches, compute_mode="donot_use_mm_for_euclid_dist")
    assert float(exact.amin(dim=1).max()) < 1e-3  # every kept row is one of the frames' patches
    assert covering_radius(patches, coreset) < covering_radius(patches, sampled)
