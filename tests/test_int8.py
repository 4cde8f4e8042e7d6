"""INT8 export: the quantized graph really computes in 8 bits, scores like its float32 parent, carries
a threshold calibrated on its own scores, and states its precision and parity in the card."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from scipy.stats import spearmanr

from inspector.errors import ConfigError
from inspector.scorer import Scorer
from training.config import validate_train_config
from training.fit import fit

from .conftest import tiny_config


@pytest.fixture(scope="module")
def int8_run(piped_class, tmp_path_factory):
    config = validate_train_config(tiny_config(piped_class, **{
        "input.resize": "tile", "input.tile_overlap": 0.5, "train.steps": 30, "export.precision": "int8"}), "tiny-int8")
    return fit(config, tmp_path_factory.mktemp("int8") / "run", progress=False, evaluate_test=False), config


def test_the_int8_model_quantizes_its_convolutions_and_keeps_the_residual_in_float(int8_run):
    result, _ = int8_run
    run = result.model_path.parent
    graph = onnx.load(str(result.model_path))
    ops = [node.op_type for node in graph.graph.node]
    convs = [node for node in graph.graph.node if node.op_type == "Conv"]
    produced_by_dequantize = {out for node in graph.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    first, *rest = convs
    assert rest and all(node.input[1] in produced_by_dequantize for node in rest)  # int8 weights feed every later Conv
    assert first.input[0] == graph.graph.input[0].name and first.input[1] not in produced_by_dequantize  # not the first
    assert ops.count("QuantizeLinear") >= len(rest)  # and 8-bit activations
    float_graph = onnx.load(str(run / "model.float32.onnx"))
    assert "QuantizeLinear" not in {node.op_type for node in float_graph.graph.node}  # the parent is kept beside it
    residual = [node for node in graph.graph.node if node.op_type in ("Sub", "Pow", "AveragePool", "ReduceMax")]
    assert residual and not any(i in produced_by_dequantize for node in residual for i in node.input[1:])


def test_the_int8_card_records_precision_parity_and_its_own_threshold(int8_run):
    result, config = int8_run
    card = Scorer(result.model_path).card
    parent = Scorer(result.model_path.parent / "model.float32.onnx").card
    assert card.export.precision == "int8" and parent.export.precision == "float32"
    # a 30-step model of width 8: its residuals are near the 8-bit step (the benchmark measures real models)
    assert 0.5 <= card.export.int8_rank_correlation <= 1.0
    assert abs(card.export.int8_synthetic_auroc_change) <= 0.25
    assert card.calibration.threshold != parent.calibration.threshold  # calibrated again, on int8 scores
    assert card.calibration.method == "quantile" and 0 <= card.calibration.synthetic_recall <= 1


def test_int8_scores_follow_float32_on_real_frames(int8_run, piped_class):
    result, _ = int8_run
    int8, float32 = Scorer(result.model_path), Scorer(result.model_path.parent / "model.float32.onnx")
    photos = sorted((piped_class / "train" / "good").iterdir())[:12]
    a = np.array([r.raw for r in int8.score_files(photos)])
    b = np.array([r.raw for r in float32.score_files(photos)])
    assert np.all(np.isfinite(a)) and not np.array_equal(a, b)  # really a different graph
    assert spearmanr(a, b).statistic > 0.5


@pytest.mark.parametrize("overrides, words", [
    ({"data.kind": "table", "data.path": "x.csv", "data.label": "label"}, "tables export float32"),
    ({"calibration.folds": 3}, "calibration.folds 0"),
])
def test_int8_export_refuses_what_it_cannot_calibrate_in_one_sentence(piped_class, overrides, words):
    with pytest.raises(ConfigError, match=words):
        validate_train_config(tiny_config(piped_class, **{"export.precision": "int8", **overrides}), "t")
