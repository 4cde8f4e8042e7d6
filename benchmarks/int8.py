"""INT8 against float32 (issue 20): the from-scratch model per dev set (model.backbone: none, the
default recipe's when these rows were measured), exported with
`export.precision: int8` (which keeps the float32 parent beside it), both graphs timed in the same run
and both evaluated on the set's test/ images.

Speed: model inputs/s on batches of 32 (one session, all onnxruntime threads), float32 and int8
measured alternately, twice each, the better of each pair kept; the ratio is the figure. Accuracy:
image AUROC of both graphs on test/ (measured only: nothing is chosen by it), the Spearman rank
correlation of their test scores, and each one's false-alarm rate on test normals at its own card's
threshold (int8's threshold is calibrated on its own held-out scores). Goals: >= 2.0x the frames/s,
AUROC within 0.005, rank correlation >= 0.99.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from benchmarks.results import section_header, section_main
from inspector.frame_cost import measure_inputs_per_second
from inspector.scorer import Scorer

MARK_START, MARK_END = "<!-- int8:start -->", "<!-- int8:end -->"
DEFAULT_SETS = "kolektor_sdd,elpv_mono,piped/PA_FVN01_TL"


def test_scores(scorer: Scorer, data: Path) -> tuple[np.ndarray, np.ndarray]:
    from training.evaluate import list_test_items

    items = list_test_items(data)
    results = scorer.score_files([item.path for item in items], heatmaps=False)
    kept = [k for k, r in enumerate(results) if not r.rejected]
    return np.array([results[k].raw for k in kept]), np.array([items[k].label for k in kept])


def speeds(float_scorer: Scorer, int8_scorer: Scorer, seconds: float) -> tuple[float, float]:
    best = {"float32": 0.0, "int8": 0.0}
    for _ in range(2):
        for name, scorer in (("float32", float_scorer), ("int8", int8_scorer)):
            best[name] = max(best[name], measure_inputs_per_second(scorer, seconds=seconds))
    return best["float32"], best["int8"]


def run(args) -> str:
    from training.cli import default_config
    from training.data import data_root
    from training.fit import fit

    rows = []
    for name in args.sets.split(","):
        data = data_root() / name
        if not data.is_dir():
            print(f"{name}: not found at {data}, skipped", flush=True)
            continue
        overrides = {"export.precision": "int8", "model.backbone": "none",
                     **({"train.steps": args.steps} if args.steps else {})}
        started = time.perf_counter()
        result = fit(default_config(str(data), overrides), Path(tempfile.mkdtemp(prefix="qi_int8_")) / "run",
                     progress=False, evaluate_test=False)
        trained_s = time.perf_counter() - started
        int8, float32 = Scorer(result.model_path), Scorer(result.model_path.parent / "model.float32.onnx")
        float_rate, int8_rate = speeds(float32, int8, args.seconds)
        (a, labels), (b, _) = test_scores(float32, data), test_scores(int8, data)
        row = {"set": name, "steps": int8.card.training.steps, "train_s": trained_s, "float_rate": float_rate,
               "int8_rate": int8_rate, "float_auroc": roc_auc_score(labels, a), "int8_auroc": roc_auc_score(labels, b),
               "spearman": spearmanr(a, b).statistic, "card_spearman": int8.card.export.int8_rank_correlation,
               "float_far": float(np.mean(a[labels == 0] >= float32.threshold)),
               "int8_far": float(np.mean(b[labels == 0] >= int8.threshold)), "input": int8.card.input}
        rows.append(row)
        print(name, {k: v for k, v in row.items() if k != "input"}, flush=True)
    lines = section_header(MARK_START, "INT8 against float32", "benchmarks.int8")
    spec = rows[0]["input"] if rows else None
    lines += ["", "The from-scratch model per set (`inspector train --data DIR --set model.backbone=none --set "
              "export.precision=int8`"
              + (f", {args.steps} steps" if args.steps else "") + "), its float32 parent beside it. Speed: model inputs/s "
              "at batch 32, all onnxruntime threads, both graphs alternately in the same run. Accuracy on test/ "
              "(measured, not used for any choice); false-alarm rate on test normals at each graph's own threshold. "
              "Rank correlation at export: the card's, on held-out normal images and their synthetic-defect copies."
              + (f" Model input: {spec.height} px tiles, overlap {spec.tile_overlap:g}." if spec and spec.resize == "tile" else ""),
              "", "| set | steps | float32 inputs/s | int8 inputs/s | int8 / float32 | AUROC float32 | AUROC int8 | "
              "difference | rank correlation on test | at export | false alarms float32 / int8 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['steps']} | {r['float_rate']:,.0f} | {r['int8_rate']:,.0f} | "
                     f"{r['int8_rate'] / r['float_rate']:.2f}x | {r['float_auroc']:.3f} | {r['int8_auroc']:.3f} | "
                     f"{r['int8_auroc'] - r['float_auroc']:+.3f} | {r['spearman']:.4f} | {r['card_spearman']:.4f} | "
                     f"{r['float_far']:.3f} / {r['int8_far']:.3f} |")
    return "\n".join(lines + ["", MARK_END])


def add_arguments(parser) -> None:
    parser.add_argument("--sets", default=DEFAULT_SETS, help=f"comma-separated folders under $QI_DATA (default {DEFAULT_SETS})")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's own)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per speed measurement")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
