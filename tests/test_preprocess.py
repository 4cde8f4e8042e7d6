"""One preprocessing: training and inspector produce identical tensors from the same file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.card import ImageInput
from inspector.errors import ItemRejected
from inspector.image_files import decode_image, name_order, read_image
from inspector.preprocess import frame_tensor, prepare_image, stitch_tiles, tile_origins, tiles_from_frame
from training.data import list_images, load_images, load_train_good

COLOUR = ImageInput(height=64, width=64, channels=3, color_order="rgb", mean=(0.5,) * 3, std=(0.5,) * 3)
GRAY = ImageInput(height=32, width=48, channels=1, color_order="gray")


def test_training_loader_and_inspector_give_identical_tensors(piped_class):
    loaded = load_train_good(piped_class, COLOUR)
    for tensor, path in zip(loaded.tensors[:5], loaded.paths[:5]):
        tiles, layout = prepare_image(read_image(path), COLOUR, str(path))
        assert layout is None
        assert np.array_equal(tiles[0], tensor)


def test_preprocessing_is_deterministic_and_in_model_range(piped_class):
    path = list_images(piped_class / "train" / "good")[0]
    a, _ = prepare_image(read_image(path), COLOUR)
    b, _ = prepare_image(read_image(path), COLOUR)
    assert np.array_equal(a, b)
    assert a.shape == (1, 3, 64, 64) and a.dtype == np.float32
    assert -1.0 <= a.min() and a.max() <= 1.0


def test_rgb_model_gets_rgb_order():
    blue = np.zeros((20, 20, 3), np.uint8)
    blue[..., 0] = 255  # OpenCV frames are BGR
    tiles, _ = prepare_image(blue, COLOUR)
    assert tiles[0, 2].mean() == pytest.approx(1.0) and tiles[0, 0].mean() == pytest.approx(-1.0)


def test_normalisation_is_the_cards_mean_and_std_per_channel():
    spec = ImageInput(height=16, width=16, channels=3, color_order="bgr", mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225))
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tiles, _ = prepare_image(pixels, spec)
    expected = (pixels / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(tiles[0], expected.transpose(2, 0, 1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", [(7, 300), (1000, 33, 3), (480, 640, 4), (64, 64, 1)])
def test_any_frame_geometry_becomes_the_model_input(shape):
    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    tiles, _ = prepare_image(frame, GRAY)
    assert tiles.shape == (1, 1, 32, 48)


def test_grayscale_frame_into_colour_model_is_rejected_with_reason():
    with pytest.raises(ItemRejected) as info:
        prepare_image(np.zeros((64, 64), np.uint8), COLOUR, "cam0#12")
    assert info.value.reason == "wrong_channels"
    assert "cam0#12" in str(info.value) and "grayscale" in str(info.value)


def test_corrupt_and_empty_files_are_rejected_with_reasons(tmp_path, piped_class):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(list_images(piped_class / "train" / "good")[0].read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    reasons = {}
    for path in (empty, truncated, text, tmp_path / "missing.png"):
        with pytest.raises(ItemRejected) as info:
            read_image(path)
        reasons[path.name] = info.value.reason
        assert path.name in str(info.value)
    assert reasons == {"empty.png": "empty_file", "truncated.png": "decode_failed", "notes.png": "decode_failed",
                       "missing.png": "file_missing"}


def test_file_names_sort_as_a_camera_numbers_them_and_no_name_breaks_the_order():
    names = ["frame_10.png", "frame_9.png", "frame_1.png", "frame_09b.png", "x1", "x01", "a1\u00b22.png", "a1.png"]
    assert sorted(names, key=name_order) == ["a1.png", "a1\u00b22.png", "frame_1.png", "frame_09b.png", "frame_9.png",
                                             "frame_10.png", "x01", "x1"]


def test_huge_image_is_refused_from_its_header_before_decoding():
    ok, png = cv2.imencode(".png", np.zeros((300, 400), np.uint8))
    with pytest.raises(ItemRejected) as info:
        decode_image(png.tobytes(), "big.png", max_pixels=100_000)
    assert info.value.reason == "too_large"


def test_training_skips_unreadable_files_and_counts_them(tmp_path, piped_class):
    good = list_images(piped_class / "train" / "good")[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    loaded = load_images(good + [bad], COLOUR)
    assert len(loaded) == 3
    assert loaded.skipped == [(bad, "decode_failed")]


def test_tiles_cover_the_frame_and_stitch_back():
    assert tile_origins(128, 64, 0.0) == [0, 64]
    assert tile_origins(128, 64, 0.5) == [0, 32, 64]
    assert tile_origins(100, 64, 0.0) == [0, 36]
    spec = ImageInput(height=32, width=32, channels=1, color_order="gray", resize="tile")
    frame = np.random.default_rng(1).integers(0, 255, (70, 90), dtype=np.uint8)
    tiles, layout = tiles_from_frame(frame_tensor(frame, spec), spec)
    assert tiles.shape[1:] == (1, 32, 32) and len(tiles) == 3 * 3
    stitched = stitch_tiles(tiles[:, 0], layout)
    assert np.allclose(stitched, frame_tensor(frame, spec)[0])


LEVEL = ImageInput(height=32, width=32, channels=3, color_order="bgr", resize="tile", frame_level=0.45)


@pytest.mark.parametrize("gain", [0.6, 0.8, 1.1])
def test_a_standardised_frame_looks_the_same_under_another_exposure(piped_class, gain):
    frame = read_image(list_images(piped_class / "train" / "good")[0])
    exposed = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    plain = LEVEL.model_copy(update={"frame_level": None})

    same, changed = frame_tensor(frame, LEVEL), frame_tensor(exposed, LEVEL)
    assert np.abs(same - changed).mean() < 0.01  # rounding to 8 bits (and a little clipping) remain
    assert np.abs(frame_tensor(frame, plain) - frame_tensor(exposed, plain)).mean() > 0.05  # what it undoes


def test_a_standardised_frame_has_the_cards_brightness_and_a_blank_one_stays_blank(piped_class):
    frame = read_image(list_images(piped_class / "train" / "good")[0])
    pixels = frame_tensor(frame, LEVEL) * 0.5 + 0.5  # back to 0-1 units (the card's mean = std = 0.5)
    assert pixels.mean() == pytest.approx(0.45, abs=0.01)
    blank = frame_tensor(np.full((48, 48, 3), 200, np.uint8), LEVEL)
    assert np.allclose(blank, blank.flat[0]) and np.isfinite(blank).all()


def test_a_frame_far_from_the_level_keeps_part_of_its_difference():
    """An exposure change is less than 2x; a frame 4x darker than normal (another object, a covered
    lens) must not be made to look like a normal frame: it is brightened 2x, no more."""
    dark = np.full((64, 64, 3), 30, np.uint8)
    dark[::2] = 34
    pixels = frame_tensor(dark, LEVEL.model_copy(update={"frame_level": 0.5})) * 0.5 + 0.5
    assert pixels.mean() == pytest.approx(2 * 32 / 255, abs=1e-3)


def test_training_measures_the_level_on_train_good_and_the_card_carries_it(tiny_piped_run):
    level = tiny_piped_run.card.input.frame_level
    assert level is not None and 0.05 < level < 0.95
    assert tiny_piped_run.card.format_version >= 8  # the format that added frame_level


@pytest.mark.parametrize("gain, offset", [(0.7, 0.0), (0.6, 0.0)])
def test_a_trained_model_scores_normal_frames_alike_under_a_dimmer_lamp(tiny_tiled_run, piped_class, gain, offset):
    """Issue 17's brightness check in small: what a lamp change does to the scores of normal frames
    (no pixel clips at these gains; a brighter lamp clips highlights, which no rescaling undoes)."""
    from inspector.scorer import Scorer

    scorer = Scorer(tiny_tiled_run.model_path)
    frames = [read_image(path) for path in list_images(piped_class / "test" / "good")]
    dimmed = [np.clip(f.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8) for f in frames]
    before = np.array([r.normalised for r in scorer.score_images(frames, heatmaps=False)])
    after = np.array([r.normalised for r in scorer.score_images(dimmed, heatmaps=False)])
    assert np.abs(after - before).max() < 0.02  # in units of the threshold: no verdict flips on the lamp
