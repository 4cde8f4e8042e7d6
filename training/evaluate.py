"""Evaluate an exported model (the .onnx file itself, through the inspector's Scorer) on a test set.

Metrics: image AUROC and average precision (anomaly = positive), F1 / precision / recall and the
false-alarm rate at the card's threshold, per-defect-type AUROC, pixel AUROC where masks exist, and
the best F1 any threshold reaches on this test set within a 2% false-alarm rate (`best_f1_within_far`):
set beside the F1 at the card's threshold, it tells a threshold that costs recall from a ranking that
cannot separate the parts at so few false alarms.
Writes `metrics.json` and a report folder with ROC curve, score histogram (normal vs defect with the
threshold line), a grid of the worst and best test images with heatmap overlays, and `scores.csv`
(one row per test image: its score and verdict) to find which parts were missed or raised alarms.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from inspector.image_files import read_image
from inspector.overlay import colour_bar, heatmap_scale, side_by_side
from inspector.scorer import Scorer

from .data import list_test_files
from .run_folder import METRICS

log = logging.getLogger(__name__)

CHUNK = 64
CEILING_FALSE_ALARM_RATE = 0.02  # the false-alarm rate a line accepts (issue 17's goal) for best_f1_within_far
MAX_PIXELS_FOR_PIXEL_AUROC = 20_000_000


@dataclass
class TestItem:
    path: Path | None
    label: int
    kind: str
    mask_path: Path | None = None
    array: np.ndarray | None = None  # in-memory items (MNIST)

    @property
    def name(self) -> str:
        return str(self.path) if self.path else self.kind


def list_test_items(root: Path) -> list[TestItem]:
    return [TestItem(image, label, kind, mask) for image, label, kind, mask in list_test_files(root)]


def image_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    labels = labels.astype(bool)
    predicted = scores >= threshold
    tp, fp = int(np.sum(predicted & labels)), int(np.sum(predicted & ~labels))
    fn, tn = int(np.sum(~predicted & labels)), int(np.sum(~predicted & ~labels))
    out = {"n_normal": int((~labels).sum()), "n_anomalous": int(labels.sum()), "threshold": float(threshold),
           "true_positives": tp, "false_positives": fp, "false_negatives": fn, "true_negatives": tn,
           "precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn),
           "f1": 2 * tp / max(1, 2 * tp + fp + fn), "false_alarm_rate": fp / max(1, fp + tn)}
    if labels.any() and (~labels).any():
        out["image_auroc"] = float(roc_auc_score(labels, scores))
        out["average_precision"] = float(average_precision_score(labels, scores))
        out["best_f1_within_far"] = best_f1_within_false_alarm_rate(scores, labels, CEILING_FALSE_ALARM_RATE)
    return out


def best_f1_within_false_alarm_rate(scores: np.ndarray, labels: np.ndarray, max_false_alarm_rate: float) -> float:
    """The highest F1 over every threshold whose false-alarm rate on these normals is at most the limit.

    Chosen with the test labels, so it is no operating point: it is the ceiling a calibration rule
    (which sees normal data only) can at best reach with this ranking."""
    labels = np.asarray(labels, bool)
    n_defects, n_normal = int(labels.sum()), int((~labels).sum())
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    ranked_scores, ranked = np.asarray(scores, float)[order], labels[order]
    tp, fp = np.cumsum(ranked), np.cumsum(~ranked)
    # a threshold can only fall between distinct scores: keep the last index of each run of ties
    last_of_tie = np.r_[ranked_scores[1:] != ranked_scores[:-1], True]
    allowed = last_of_tie & (fp <= max_false_alarm_rate * n_normal)
    if not allowed.any():
        return 0.0
    f1 = 2 * tp[allowed] / (tp[allowed] + fp[allowed] + n_defects)
    return float(f1.max())


def _plots(report: Path, scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels.astype(bool)
    if labels.any() and (~labels).any():
        fpr, tpr, _ = roc_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        ax.set_xlabel("false-alarm rate")
        ax.set_ylabel("recall")
        ax.set_title(title)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(report / "roc.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(scores.min(), threshold) * 0.95, max(scores.max(), threshold) * 1.05, 40)
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label="normal")
    if labels.any():
        ax.hist(scores[labels], bins=bins, alpha=0.6, label="defect")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(report / "score_histogram.png", dpi=110)
    plt.close(fig)


OUTCOME_COLOURS = {"false alarm": (0, 0, 220), "missed": (0, 140, 255), "caught": (0, 160, 0), "passed": (0, 160, 0)}


def outcome(label: int, score: float, threshold: float) -> str:
    """What the card's threshold did with a test item: caught / missed (defects), passed / false alarm (good)."""
    flagged = score >= threshold
    if label == 1:
        return "caught" if flagged else "missed"
    return "false alarm" if flagged else "passed"


def _example_grid(report: Path, picks: list[tuple[str, TestItem, float, np.ndarray]], scorer: Scorer) -> None:
    """Rows of 'frame | overlay' tiles, each framed and captioned with what the threshold did with it
    (red: false alarm, orange: missed, green: right), over the heatmap's colour scale; OpenCV only."""
    scale = heatmap_scale(scorer.card, scorer.threshold)
    tiles = []
    for caption, item, score, heatmap in picks:
        frame = item.array if item.array is not None else read_image(item.path)
        pair = side_by_side(cv2.resize(frame, (160, 160 * frame.shape[0] // frame.shape[1] or 1)), heatmap, scale)
        pair = cv2.resize(pair, (320, 160))
        verdict = outcome(item.label, score, scorer.threshold)
        canvas = np.full((208, 320, 3), 255, np.uint8)
        canvas[24:184] = pair
        cv2.rectangle(canvas, (0, 24), (319, 183), OUTCOME_COLOURS[verdict], 3)
        cv2.putText(canvas, f"{caption}: {item.kind}", (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        cv2.putText(canvas, f"{verdict.upper()}  score {score / scorer.threshold:.2f} x threshold", (4, 201),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, OUTCOME_COLOURS[verdict], 1)
        tiles.append(canvas)
    if not tiles:
        return
    columns = 4
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    grid = np.vstack(rows)
    cv2.imwrite(str(report / "examples.png"), np.vstack([grid, colour_bar(grid.shape[1], scale)]))


def _score_items(scorer: Scorer, items: list[TestItem]) -> tuple[list, list[np.ndarray | None]]:
    results, heatmaps = [], []
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        if chunk[0].array is not None:
            out = scorer.score_images([i.array for i in chunk], [i.name for i in chunk])
        else:
            out = scorer.score_files([i.path for i in chunk])
        results.extend(out)
    for r in results:
        heatmaps.append(None if r.rejected else r.heatmap)
    return results, heatmaps


def pixel_auroc(items: list[TestItem], heatmaps: list[np.ndarray | None]) -> float | None:
    truth, predicted, total = [], [], 0
    for item, heatmap in zip(items, heatmaps):
        if heatmap is None or item.path is None:
            continue
        if item.label == 1 and item.mask_path is None:
            continue
        size = cv2.imread(str(item.mask_path or item.path), cv2.IMREAD_GRAYSCALE)
        if size is None:
            continue
        mask = size > 127 if item.mask_path else np.zeros(size.shape, bool)
        total += mask.size
        if total > MAX_PIXELS_FOR_PIXEL_AUROC:
            log.warning("pixel AUROC computed on the first %d images only (pixel budget)", len(truth))
            break
        truth.append(mask.reshape(-1))
        predicted.append(cv2.resize(heatmap, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR).reshape(-1))
    if not truth or not any(t.any() for t in truth):
        return None
    return float(roc_auc_score(np.concatenate(truth), np.concatenate(predicted)))


def evaluate(scorer: Scorer, items: list[TestItem], out_dir: Path | None, title: str = "") -> dict:
    """Score `items` with the deployed scorer and compute metrics; write report files if `out_dir`."""
    results, heatmaps = _score_items(scorer, items)
    kept = [i for i, r in enumerate(results) if not r.rejected]
    rejected = [(items[i].name, results[i].reason) for i, r in enumerate(results) if r.rejected]
    for name, reason in rejected:
        log.warning("evaluation skipped %s (%s)", name, reason)
    scores = np.array([results[i].raw for i in kept])
    labels = np.array([items[i].label for i in kept])
    metrics = image_metrics(scores, labels, scorer.threshold)
    metrics["rejected"] = len(rejected)
    metrics["per_defect_auroc"] = {}
    kinds = sorted({items[i].kind for i in kept if items[i].label == 1})
    for kind in kinds:
        sel = [j for j, i in enumerate(kept) if items[i].label == 0 or items[i].kind == kind]
        if len(set(labels[sel])) == 2:
            metrics["per_defect_auroc"][kind] = float(roc_auc_score(labels[sel], scores[sel]))
    pixel = pixel_auroc([items[i] for i in kept], [heatmaps[i] for i in kept])
    if pixel is not None:
        metrics["pixel_auroc"] = pixel
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(out_dir / METRICS, metrics)
        report = out_dir / "report"
        report.mkdir(exist_ok=True)
        _plots(report, scores, labels, scorer.threshold, title)
        write_scores(report / "scores.csv", [items[i] for i in kept], scores, scorer.threshold)
        if all(heatmaps[i] is not None for i in kept):
            order = np.argsort(scores)
            normals = [j for j in order if labels[j] == 0]
            defects = [j for j in order if labels[j] == 1]
            picks = ([("worst normal", j) for j in normals[-4:][::-1]] + [("weakest defect", j) for j in defects[:4]]
                     + [("best defect", j) for j in defects[-4:][::-1]])
            _example_grid(report, [(c, items[kept[j]], float(scores[j]), heatmaps[kept[j]]) for c, j in picks], scorer)
    return metrics


def write_scores(path: Path, items: list[TestItem], scores: np.ndarray, threshold: float) -> None:
    """One row per test image, highest score first: what an operator sorts through to see which
    parts the threshold let pass and which normal ones raised alarms."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "kind", "label", "score", "verdict"])
        for j in np.argsort(-scores, kind="stable"):
            item = items[j]
            writer.writerow([item.name, item.kind, "defect" if item.label else "normal", f"{scores[j]:.6g}",
                             outcome(item.label, float(scores[j]), threshold)])


def write_metrics(path: Path, metrics: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, path)


def evaluate_windows(scorer: Scorer, test, out_dir: Path | None, title: str = "") -> dict:
    """Metrics for a tabular test set (windows with labels and attack kinds) through the exported model."""
    scores = np.array([r.raw for r in scorer.score_features(test.features)])
    metrics = image_metrics(scores, test.labels, scorer.threshold)
    if "image_auroc" in metrics:
        metrics["auroc"] = metrics.pop("image_auroc")
    metrics["per_attack_auroc"] = {}
    kinds = np.array(test.kinds)
    for kind in sorted(set(test.kinds) - {"normal"}):
        sel = (test.labels == 0) | (kinds == kind)
        if len(set(test.labels[sel])) == 2 and (kinds == kind).sum() >= 10:
            metrics["per_attack_auroc"][kind] = float(roc_auc_score(test.labels[sel], scores[sel]))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(out_dir / METRICS, metrics)
        report = out_dir / "report"
        report.mkdir(exist_ok=True)
        _plots(report, scores, test.labels, scorer.threshold, title)
    return metrics
