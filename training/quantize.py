"""INT8 export (`export.precision: int8`): static quantization of the exported graph.

onnxruntime's quantization tools rewrite the float32 graph in QDQ form: per-channel int8 weights and
uint8 activations whose ranges come from held-out normal model inputs only. Only the matrix-heavy
operators are quantized, and not the first one, which reads the picture; the residual, its local
mean and the score reductions stay float32 (the score is a small difference between an input and
its reconstruction, which 8 bits would drown).
The threshold is then calibrated again on the quantized model's own held-out scores, and the card
records the precision and its parity with the float32 graph, which is kept beside it.

8-bit arithmetic pays only on CPUs with 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI, Arm
dotprod); `python -m benchmarks.int8` measures both graphs on the machine at hand.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from inspector.card import ModelCard
from inspector.scorer import Scorer

from .calibrate import calibrate
from .frame_scores import model_inputs, per_frame_max
from .run_folder import RunFolder
from .selection import synthetic_copies

log = logging.getLogger(__name__)

QUANTIZED_OPERATORS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
CALIBRATION_ITEMS = 512  # model inputs whose activation ranges set the 8-bit scales
CALIBRATION_BATCH = 32


def quantize_graph(float_path: Path, out_path: Path, calibration_inputs: np.ndarray) -> None:
    """Write the static-INT8 (QDQ) version of `float_path`, activation ranges from `calibration_inputs`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(float_path))
    input_name = graph.graph.input[0].name
    picked = calibration_inputs[np.linspace(0, len(calibration_inputs) - 1,
                                            min(len(calibration_inputs), CALIBRATION_ITEMS)).astype(int)]

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: np.ascontiguousarray(picked[i:i + CALIBRATION_BATCH], np.float32)}
                                  for i in range(0, len(picked), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self._batches, None)

    quantize_static(str(float_path), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPERATORS, nodes_to_exclude=first_layers(graph))


def first_layers(graph: onnx.ModelProto) -> list[str]:
    """The operators that read the model input: kept in float32, so the picture the residual compares
    with its reconstruction is the one the encoder saw. (Measured on held-out normal images and their
    synthetic-defect copies of three dev sets: score rank correlation with float32 0.978-0.997 with
    them quantized, 0.998-0.9998 without.)"""
    graph_input = graph.graph.input[0].name
    return [node.name for node in graph.graph.node if graph_input in node.input and node.op_type in QUANTIZED_OPERATORS]


def frame_scores(scorer: Scorer, frames: np.ndarray, spec, batch: int = 256) -> np.ndarray:
    """Per-frame scores of model-space frames through an exported graph (a frame = its worst tile)."""
    inputs, owner = model_inputs(frames, spec)
    scores, _ = scorer.score_in_chunks(inputs, batch)
    return per_frame_max(np.nan_to_num(np.asarray(scores, np.float64), nan=np.inf), owner)


@dataclass(frozen=True)
class Int8Parity:
    rank_correlation: float  # Spearman, float32 vs int8 scores of normal frames and their defective copies
    synthetic_auroc_float32: float
    synthetic_auroc_int8: float


def int8_parity(float_scorer: Scorer, int8_scorer: Scorer, normal_frames: np.ndarray, spec,
                seed: int) -> tuple[Int8Parity, np.ndarray]:
    """Both graphs on held-out normal frames and their synthetic-defect copies; also the int8 scores of
    the copies (for the synthetic recall at the int8 threshold)."""
    defective = synthetic_copies(normal_frames, spec, seed)
    labels = np.r_[np.zeros(len(normal_frames)), np.ones(len(defective))]
    both = np.concatenate([normal_frames, defective])
    reference, quantized = frame_scores(float_scorer, both, spec), frame_scores(int8_scorer, both, spec)
    parity = Int8Parity(float(spearmanr(reference, quantized).statistic), float(roc_auc_score(labels, reference)),
                        float(roc_auc_score(labels, quantized)))
    return parity, quantized[len(normal_frames):]


def export_int8(config, run: RunFolder, card: ModelCard, held_out_frames: np.ndarray, max_items: int) -> ModelCard:
    """Replace run.model (float32, parity-checked) by its INT8 version with a threshold calibrated on
    its own held-out scores; the float32 graph stays as run.float_model. Returns the int8 card."""
    from .export import save_atomic, write_card

    spec = card.input
    inputs, _ = model_inputs(held_out_frames, spec)
    quantized = run.model.with_name(run.model.name + ".int8.tmp")
    quantize_graph(run.model, quantized, inputs)  # a failure here leaves the float32 model in place
    graph = onnx.load(str(quantized))
    quantized.unlink()
    os.replace(run.model, run.float_model)
    write_card(graph, card)  # the float card for now: the scorer below reads it
    save_atomic(graph, run.model)
    float_scorer, int8_scorer = Scorer(run.float_model), Scorer(run.model)
    normal = frame_scores(int8_scorer, held_out_frames, spec)
    target = config.calibration.target_false_alarm_rate
    calibration = calibrate(normal, target, "quantile", confidence=config.calibration.confidence)
    parity, defective = int8_parity(float_scorer, int8_scorer, held_out_frames[:max_items], spec, config.train.seed)
    calibration = calibration.model_copy(update={"synthetic_recall": float(np.mean(defective >= calibration.threshold)),
                                                 "folds": card.calibration.folds})
    export = card.export.model_copy(update={
        "precision": "int8", "int8_rank_correlation": round(parity.rank_correlation, 6),
        "int8_synthetic_auroc_change": round(parity.synthetic_auroc_int8 - parity.synthetic_auroc_float32, 6)})
    final = card.with_updates(calibration=calibration, export=export)
    write_card(graph, final)
    save_atomic(graph, run.model)
    log.info("int8: score rank correlation with float32 %.4f, synthetic-defect AUROC %.4f -> %.4f, threshold "
             "%.4g -> %.4g (calibrated on the int8 scores); float32 graph kept as %s", parity.rank_correlation,
             parity.synthetic_auroc_float32, parity.synthetic_auroc_int8, card.calibration.threshold,
             calibration.threshold, run.float_model)
    if parity.rank_correlation < 0.99:
        log.warning("int8: the quantized scores rank frames differently from float32 (Spearman %.3f < 0.99); "
                    "compare both with `inspector evaluate` before deploying the int8 model", parity.rank_correlation)
    return final
