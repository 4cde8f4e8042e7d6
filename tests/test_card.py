"""The model card: round trip through the .onnx file, and one-sentence refusal of bad cards."""

from __future__ import annotations

import json

import onnx
import pytest

from inspector.card import CARD_KEY, parse_card
from inspector.errors import ModelCardError
from inspector.scorer import Scorer


def _rewrite_card(src, dst, mutate):
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            data = json.loads(prop.value)
            result = mutate(data)
            prop.value = result if isinstance(result, str) else json.dumps(data)
    onnx.save(model, str(dst))


def test_card_round_trips_through_the_onnx_file(tiny_piped_run):
    card = tiny_piped_run.card
    loaded = Scorer(tiny_piped_run.model_path).card
    assert loaded == card
    assert parse_card(card.to_json()) == card
    assert loaded.input.channels == 3 and loaded.input.color_order == "rgb"
    assert loaded.calibration.method == "quantile" and loaded.calibration.threshold > 0
    assert {"p50", "p99", "max"} <= set(loaded.calibration.quantiles)
    assert loaded.training.steps == 4 and loaded.export.parity_max_abs_diff <= loaded.export.parity_tolerance


def test_onnx_without_card_is_refused(tiny_piped_run, tmp_path):
    model = onnx.load(str(tiny_piped_run.model_path))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelCardError, match="has no model card"):
        Scorer(tmp_path / "bare.onnx")


def test_newer_card_format_is_refused(tiny_piped_run, tmp_path):
    _rewrite_card(tiny_piped_run.model_path, tmp_path / "new.onnx", lambda d: d.update(format_version=99))
    with pytest.raises(ModelCardError, match="format 99 is newer"):
        Scorer(tmp_path / "new.onnx")


def test_format_1_and_2_cards_from_earlier_releases_still_load(tiny_piped_run, tmp_path):
    def format_2(d):
        d["format_version"] = 2
        del d["calibration"]["synthetic_recall"]  # added in format 3

    def format_1(d):
        format_2(d)
        d["format_version"] = 1
        del d["calibration"]["confidence"]  # added in format 2

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "old.onnx", format_1)
    card = Scorer(tmp_path / "old.onnx").card
    assert card.format_version == 1 and card.calibration.confidence is None
    _rewrite_card(tiny_piped_run.model_path, tmp_path / "two.onnx", format_2)
    card = Scorer(tmp_path / "two.onnx").card
    assert card.format_version == 2 and card.calibration.synthetic_recall is None
    def format_5(d):
        d["format_version"] = 5
        del d["input"]["tile_scale"]  # added in format 6

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "five.onnx", format_5)
    card = Scorer(tmp_path / "five.onnx").card
    assert card.format_version == 5 and card.input.tile_scale == 1.0  # tiles at native resolution, as then

    def format_6(d):
        d["format_version"] = 6
        for key in ("precision", "int8_rank_correlation", "int8_synthetic_auroc_change"):  # added in format 7
            del d["export"][key]

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "six.onnx", format_6)
    card = Scorer(tmp_path / "six.onnx").card
    assert card.format_version == 6 and card.export.precision == "float32"

    def format_7(d):
        d["format_version"] = 7
        del d["input"]["frame_level"]  # added in format 8

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "seven.onnx", format_7)
    card = Scorer(tmp_path / "seven.onnx").card
    assert card.format_version == 7 and card.input.frame_level is None  # frames scored as they come, as then

    def format_8(d):
        d["format_version"] = 8
        del d["score"]["map_in_score_units"]  # added in format 9

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "eight.onnx", format_8)
    card = Scorer(tmp_path / "eight.onnx").card
    assert card.format_version == 8 and not card.score.map_in_score_units  # the map in its own unit, as then

    def format_9(d):
        d["format_version"] = 9
        del d["export"]["photo_height"], d["export"]["photo_width"]  # added in format 10

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "nine.onnx", format_9)
    card = Scorer(tmp_path / "nine.onnx").card
    assert card.format_version == 9 and card.export.photo_width is None  # proportions unknown: no warning, as then
    def format_10(d):
        d["format_version"] = 10
        del d["score"]["pooled_output"]  # added in format 11

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "ten.onnx", format_10)
    card = Scorer(tmp_path / "ten.onnx").card
    assert card.format_version == 10 and card.score.pooled_output is None  # the weighted sum of maxima, as then

    def format_11(d):
        d["format_version"] = 11
        del d["score"]["map_baseline"]  # added in format 12

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "eleven.onnx", format_11)
    card = Scorer(tmp_path / "eleven.onnx").card
    assert card.format_version == 11 and card.score.map_baseline is None  # heatmap colours from 0, as then
    new = tiny_piped_run.card
    assert (new.export.photo_height, new.export.photo_width) == (128, 128)  # the training photos as stored
    assert new.format_version == 12 and new.score.map_baseline > 0 and new.input.frame_level is not None and new.export.precision == "float32" and new.calibration.confidence == 0.9 and new.calibration.folds is None
    assert new.lineage is None  # trained from scratch
    assert 0 <= new.calibration.synthetic_recall <= 1


def test_card_that_disagrees_with_the_graph_is_refused(tiny_piped_run, tmp_path):
    def gray(d):
        d["input"].update(channels=1, color_order="gray", mean=[0.5], std=[0.5])

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "gray.onnx", gray)
    with pytest.raises(ModelCardError, match=r"card says input .* but the graph takes"):
        Scorer(tmp_path / "gray.onnx")


def test_card_scoring_an_output_the_graph_lacks_is_refused(tiny_piped_run, tmp_path):
    def latent(d):
        d["score"]["weights"] = {"latent_distance": 1.0}
        d["score"]["scales"] = {"latent_distance": 1.0}

    _rewrite_card(tiny_piped_run.model_path, tmp_path / "latent.onnx", latent)
    with pytest.raises(ModelCardError, match="does not have"):
        Scorer(tmp_path / "latent.onnx")


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"format_version": 1}', "is required but missing"),
])
def test_broken_card_text_gives_one_sentence(text, message):
    with pytest.raises(ModelCardError, match=message) as info:
        parse_card(text, "m.onnx")
    assert "\n" not in str(info.value)


def test_invalid_threshold_in_card_names_the_field(tiny_piped_run, tmp_path):
    _rewrite_card(tiny_piped_run.model_path, tmp_path / "thr.onnx", lambda d: d["calibration"].update(threshold=-1))
    with pytest.raises(ModelCardError, match=r"card\.calibration\.threshold"):
        Scorer(tmp_path / "thr.onnx")


def test_threshold_override_needs_no_re_export(tiny_piped_run):
    scorer = Scorer(tiny_piped_run.model_path, threshold=123.0)
    assert scorer.threshold == 123.0 and scorer.card.calibration.threshold != 123.0
    with pytest.raises(ModelCardError, match="positive number"):
        Scorer(tiny_piped_run.model_path, threshold=0.0)
