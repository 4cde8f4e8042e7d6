"""The scorer: torch/onnxruntime parity on real files, batch independence, per-item errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.errors import ModelCardError
from inspector.image_files import read_image
from inspector.preprocess import prepare_image
from inspector.scorer import ANOMALY, NORMAL, PreparedFrame, Scorer, combine_score
from training.data import list_images, load_test
from training.fit import model_inputs, per_frame_max
from training.models.ganomaly import GANomalyScoring
from training.torch_scoring import run_scoring

# Scores are sums of float32 convolutions: onnxruntime and torch order them differently, so they agree
# to float32 rounding, not bit for bit. Scores are in units of a typical normal score (about 1).
PARITY_TOLERANCE = 1e-4


def _test_files(piped_class, n=12):
    files = list_images(piped_class / "test" / "good")[: n // 2] + list_images(piped_class / "test" / "impurity")[: n // 2]
    return files


@pytest.mark.parametrize("run_name", ["tiny_piped_run", "tiny_tiled_run"])
def test_onnxruntime_and_torch_give_the_same_scores_on_real_files(run_name, request, piped_class):
    run = request.getfixturevalue(run_name)
    scorer = Scorer(run.model_path)
    spec = scorer.card.input
    test = load_test(piped_class, spec)
    inputs, owner = model_inputs(test.tensors, spec)
    module = GANomalyScoring(run.generator, pool_kernel=3, residual="l2", with_latent=False)
    torch_scores = per_frame_max(combine_score(run_scoring(module, inputs), scorer.card.score), owner)
    onnx_results = scorer.score_files(test.paths)
    onnx_scores = np.array([r.raw for r in onnx_results])
    assert len(onnx_scores) == len(test.paths) == 64
    assert np.max(np.abs(onnx_scores - torch_scores)) < PARITY_TOLERANCE


def test_a_score_does_not_depend_on_the_batch(tiny_piped_run, piped_class):
    scorer = Scorer(tiny_piped_run.model_path)
    images = [read_image(p) for p in _test_files(piped_class)]
    alone = [scorer.score_images([img])[0].raw for img in images]
    together = [r.raw for r in scorer.score_images(images)]
    shuffled_order = np.random.default_rng(0).permutation(len(images))
    shuffled = scorer.score_images([images[i] for i in shuffled_order])
    in_other_company = [None] * len(images)
    for position, index in enumerate(shuffled_order):
        in_other_company[index] = shuffled[position].raw
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(in_other_company, alone, rtol=1e-6, atol=1e-7)


def test_results_carry_raw_normalised_verdict_and_heatmap(tiny_piped_run, piped_class):
    scorer = Scorer(tiny_piped_run.model_path)
    result = scorer.score_files(_test_files(piped_class, 2))[0]
    assert not result.rejected
    assert result.normalised == pytest.approx(result.raw / scorer.threshold)
    assert result.verdict == (ANOMALY if result.raw >= scorer.threshold else NORMAL)
    assert result.heatmap.shape == (32, 32) and np.all(result.heatmap >= 0)
    assert set(result.components) == {"residual_max"}


def test_tiled_model_returns_a_frame_sized_heatmap_and_its_worst_tile(tiny_tiled_run, piped_class):
    scorer = Scorer(tiny_tiled_run.model_path)
    image = read_image(_test_files(piped_class, 2)[0])
    result = scorer.score_images([image])[0]
    assert result.heatmap.shape == image.shape[:2]
    tiles, _ = prepare_image(image, scorer.card.input)
    tiles_scores, _ = scorer.score_tensor(tiles)
    assert len(tiles) == 7 * 7  # 32x32 tiles with half overlap over a 128x128 frame
    assert result.raw == pytest.approx(float(tiles_scores.max()))


@pytest.mark.parametrize("run_name", ["tiny_piped_run", "tiny_tiled_run"])
def test_a_card_carries_its_heatmaps_typical_level_on_good_frames_in_the_maps_own_unit(run_name, request, piped_class):
    """Where evidence pictures start their colours: the median cell of the exported heatmap on held-out
    good frames (a from-scratch model's map is its own residual, not the score's unit). The good test
    photos' heatmaps sit around it, and it is below what is drawn red."""
    from inspector.overlay import heatmap_scale

    scorer = Scorer(request.getfixturevalue(run_name).model_path)
    baseline = scorer.card.score.map_baseline
    good = [r.heatmap for r in scorer.score_files(list_images(piped_class / "test" / "good"))]
    assert baseline > 0 and 0.5 < np.median(np.concatenate([h.ravel() for h in good])) / baseline < 2
    assert heatmap_scale(scorer.card, scorer.threshold).low == baseline


def test_frames_prepared_ahead_score_the_same_and_stale_preparations_are_redone(tiny_piped_run, piped_class):
    scorer = Scorer(tiny_piped_run.model_path)
    images = [read_image(p) for p in _test_files(piped_class, 4)]
    direct = [r.raw for r in scorer.score_images(images)]
    ahead = [scorer.prepare(image) for image in images]
    assert [r.raw for r in scorer.score_images([None] * 4, prepared=ahead)] == direct
    # Made for another input geometry (a model reloaded since): prepared again from the image.
    other_spec = scorer.card.input.model_copy(update={"height": 48, "width": 48})
    stale = [PreparedFrame(np.zeros((1, 3, 48, 48), np.float32), None, other_spec) for _ in images]
    assert [r.raw for r in scorer.score_images(images, prepared=stale)] == direct


def test_threshold_override_changes_verdicts_not_scores(tiny_piped_run, piped_class):
    files = _test_files(piped_class, 4)
    low = Scorer(tiny_piped_run.model_path, threshold=1e-9).score_files(files)
    high = Scorer(tiny_piped_run.model_path, threshold=1e9).score_files(files)
    assert [r.raw for r in low] == [r.raw for r in high]
    assert {r.verdict for r in low} == {ANOMALY} and {r.verdict for r in high} == {NORMAL}


def test_bad_items_are_rejected_and_the_rest_of_the_batch_is_scored(tiny_piped_run, piped_class, tmp_path):
    good = _test_files(piped_class, 2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:100])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.imread(str(good[0]), cv2.IMREAD_GRAYSCALE))
    results = Scorer(tiny_piped_run.model_path).score_files([good[0], corrupt, empty, gray, good[1]])
    kinds = [r.reason if r.rejected else "scored" for r in results]
    assert kinds == ["scored", "decode_failed", "empty_file", "wrong_channels", "scored"]


def test_a_file_that_is_not_onnx_is_refused_in_one_sentence(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("definitely not a protobuf")
    with pytest.raises(ModelCardError) as info:
        Scorer(fake)
    assert str(info.value).startswith(f"{fake}: not a loadable ONNX model") and "\n" not in str(info.value)
    with pytest.raises(ModelCardError, match="model file not found"):
        Scorer(tmp_path / "missing.onnx")


def test_large_whole_frames_are_scored_a_few_per_run_and_tiles_and_rows_a_full_batch():
    """64 frames of 512x512 in one onnxruntime run of a backbone model took 24 GB (killed): a run is
    bounded by its input values as well as by max_batch."""
    from inspector.scorer import inputs_per_run

    assert inputs_per_run((3, 64, 64), 64) == 64  # tiles: the batch as asked
    assert inputs_per_run((3, 128, 128), 64) == 16
    assert inputs_per_run((1, 512, 512), 64) == 3
    assert inputs_per_run((3, 512, 512), 64) == 1
    assert inputs_per_run((3, 4096, 4096), 64) == 1  # never none
    assert inputs_per_run((78,), 4096) == 4096  # flow windows
