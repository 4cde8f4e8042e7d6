"""Models that pass a schema check but would break the line are refused in one sentence, at start as
on hot-swap; a score that is not a number is a rejected item, never a verdict."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from inspector.card import CARD_KEY
from inspector.errors import ModelCardError
from inspector.scorer import Scorer

from ..test_cli import error_line, inspector


def rewrite(src, dst, mutate_card=None, mutate_graph=None):
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == CARD_KEY and mutate_card is not None:
            data = json.loads(prop.value)
            mutate_card(data)
            prop.value = json.dumps(data)  # json writes inf and nan as Infinity and NaN, as a tampered card would
    if mutate_graph is not None:
        mutate_graph(model.graph)
    onnx.save(model, str(dst))
    return dst


def fixed_batch_of_one(graph):
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1


def scores_times(factor: float):
    """Multiply the score output (residual_max) by `factor` inside the graph."""
    def edit(graph):
        output = next(o for o in graph.output if o.name == "residual_max")
        for node in graph.node:
            node.output[:] = ["residual_max_raw" if name == "residual_max" else name for name in node.output]
        graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "poison"))
        graph.node.append(helper.make_node("Mul", ["residual_max_raw", "poison"], [output.name]))
    return edit


@pytest.mark.parametrize("what, card_edit, expected", [
    ("threshold Infinity", lambda d: d["calibration"].update(threshold=float("inf")), "calibration.threshold"),
    ("a zero weight", lambda d: d["score"]["weights"].update(residual_max=0.0), "weights must be finite and positive"),
    ("an infinite scale", lambda d: d["score"]["scales"].update(residual_max=float("inf")), "scales must be finite and positive"),
    ("tile overlap 0.999", lambda d: d["input"].update(tile_overlap=0.999), "tile_overlap': Input should be less than or equal to 0.75"),
])
def test_a_card_that_would_silence_or_stall_the_line_is_refused(tiny_piped_run, tmp_path, what, card_edit, expected):
    bad = rewrite(tiny_piped_run.model_path, tmp_path / "bad.onnx", mutate_card=card_edit)
    with pytest.raises(ModelCardError, match=expected.replace(".", r"\.")):
        Scorer(bad)


def test_a_graph_with_a_fixed_batch_of_one_is_refused_at_start_in_one_line(tiny_piped_run, tmp_path):
    bad = rewrite(tiny_piped_run.model_path, tmp_path / "batch1.onnx", mutate_graph=fixed_batch_of_one)
    config = tmp_path / "line.yaml"
    config.write_text(f"model: {{path: {bad}}}\nsources:\n  - {{name: in, kind: folder, path: {tmp_path}}}\n"
                      "metrics: {port: 0}\n")
    result = inspector("run", "-c", str(config), "--check")
    assert result.returncode == 2
    assert "the model fails on a batch of 2 neutral inputs" in error_line(result)


@pytest.mark.parametrize("factor", [float("nan"), float("-inf")])
def test_a_score_that_is_not_a_number_rejects_the_item_instead_of_deciding_it(tiny_piped_run, tmp_path, factor):
    poisoned = rewrite(tiny_piped_run.model_path, tmp_path / "nan.onnx", mutate_graph=scores_times(factor))
    with pytest.raises(ModelCardError, match="non-finite score on a neutral input"):
        Scorer(poisoned).self_test()
    frame = np.full((128, 128, 3), 120, np.uint8)
    result = Scorer(poisoned).score_images([frame], ["part 1"])[0]
    assert result.rejected and result.reason == "non_finite_score"
    assert result.message.startswith("part 1: the model's score is")
