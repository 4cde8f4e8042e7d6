"""Drift benchmark: what the drift gauge reads on healthy lines, and on the same parts under other light.

    python -m benchmarks.drift                 # every image dev set, about 10 minutes on 2 cores
    python -m benchmarks.drift --sets kolektor_sdd,tire

Per set: the from-scratch model (model.backbone: none; what `inspector train --data SET` trained when
these rows were measured, last weights exported to save the selection passes), then the exported file scores test/good. A healthy
line is simulated by drawing parts from those scores with replacement: the first `window` normal
verdicts form the baseline, then 10,000 more parts stream by in batches of 16, and every reading of
the gauge is kept (p50, p99, max). The drift check rescores the same good images 20% darker, as a
dimmed lamp would, and streams them after a healthy baseline: the reading after one full window.
The demo's synthetic parts are the first row. test/ is only scored here, never trained on.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from benchmarks.results import section_header, section_main
from inspector.drift import DriftMonitor
from inspector.image_files import read_image
from inspector.scorer import NORMAL, Scorer
from training.cli import infer_input
from training.config import apply_overrides, validate_train_config
from training.data import data_root, list_images
from training.fit import fit
from training.synthetic import write_dataset

MARK_START, MARK_END = "<!-- drift:start -->", "<!-- drift:end -->"
SETS = ["piped/PA_BDP01_TL", "piped/PA_BFT01_TL", "piped/PA_BRG01_RL", "piped/PA_BRG03_TL", "piped/PA_BTN01_RL",
        "piped/PA_FLR01_TL", "piped/PA_FVN01_TL", "piped/PA_GLA01_TL", "mvtec_screw", "kolektor_sdd", "tire",
        "glass_fibre", "elpv_poly", "elpv_mono", "deeppcb"]
WINDOW = 500
STREAM = 10_000
BATCH = 16
DIMMED = 0.8


def train_default(data: Path, out: Path):
    raw = {"name": data.name.lower(), "data": {"path": str(data)}, "input": infer_input(data)}
    config = validate_train_config(apply_overrides(raw, {"selection.criterion": "last"}), "benchmark")
    return fit(config, out, progress=False, evaluate_test=False).model_path


def good_scores(scorer: Scorer, data: Path, brightness: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised scores and normal-verdict flags of test/good, optionally with the light scaled."""
    images = []
    for path in list_images(data / "test" / "good"):
        image = read_image(path, scorer.card.input.max_pixels)
        if brightness != 1.0:
            image = cv2.convertScaleAbs(image, alpha=brightness)
        images.append(image)
    results = scorer.score_images(images, [str(k) for k in range(len(images))])
    scores = np.array([r.normalised for r in results])
    return scores, np.array([r.verdict == NORMAL for r in results])


def readings(monitor: DriftMonitor, scores: np.ndarray, normal: np.ndarray) -> list[float]:
    out = []
    for start in range(0, len(scores), BATCH):
        chunk = slice(start, start + BATCH)
        psi = monitor.observe("line", scores[chunk][normal[chunk]].tolist())
        if psi is not None:
            out.append(psi)
    return out


def drift_row(name: str, model: Path, data: Path, seed: int = 0) -> dict:
    scorer = Scorer(model)
    scores, normal = good_scores(scorer, data)
    dimmed, dimmed_normal = good_scores(scorer, data, DIMMED)
    rng = np.random.default_rng(seed)
    healthy_draw = rng.integers(0, len(scores), WINDOW * 2 + STREAM)
    monitor = DriftMonitor(WINDOW)
    monitor.add_source("line")
    healthy = readings(monitor, scores[healthy_draw], normal[healthy_draw])
    shifted_monitor = DriftMonitor(WINDOW)
    shifted_monitor.add_source("line")
    readings(shifted_monitor, scores[healthy_draw[:WINDOW * 2]], normal[healthy_draw[:WINDOW * 2]])
    dim_draw = rng.integers(0, len(dimmed), WINDOW * 2)
    shifted = readings(shifted_monitor, dimmed[dim_draw], dimmed_normal[dim_draw])
    return {"set": name, "good": len(scores), "normal_share": float(normal.mean()),
            "p50": float(np.median(healthy)), "p99": float(np.percentile(healthy, 99)), "max": float(max(healthy)),
            "readings": len(healthy), "dimmed": shifted[WINDOW // BATCH] if len(shifted) > WINDOW // BATCH else float("nan"),
            "dimmed_normal_share": float(dimmed_normal.mean())}


def run(args) -> str:
    logging.basicConfig(level=logging.WARNING)
    root = data_root()
    names = args.sets.split(",") if args.sets else ["demo", *SETS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data = write_dataset(Path(tmp) / "demo_data", size=64) if name == "demo" else root / name
            if name != "demo" and not (data / "test" / "good").is_dir():
                print(f"{name}: not found under {root}, skipped", flush=True)
                continue
            model = train_default(data, Path(tmp) / name.replace("/", "_"))
            rows.append(drift_row(name, model, data))
            r = rows[-1]
            print(f"{name}: healthy p50 {r['p50']:.3f} p99 {r['p99']:.3f} max {r['max']:.3f}; dimmed {r['dimmed']:.3f}",
                  flush=True)
    out = [*section_header(MARK_START, "Drift gauge on healthy lines", "benchmarks.drift"),
           f"Each set's default-recipe model (last weights) scores test/good; a healthy line draws {STREAM:,} parts "
           f"from those scores with replacement after a {WINDOW}-part baseline; every reading of "
           f"`inspector_score_drift_psi` (window {WINDOW}, normal verdicts only) is kept. 'Dimmed': the same good "
           f"images at {DIMMED:.0%} brightness streamed after a healthy baseline, the reading one window later. "
           "Levels: < 0.1 stable, > 0.25 the InspectorScoreDrift alert.", "",
           "| set | good images | healthy PSI p50 | p99 | max | dimmed light PSI | normal verdicts healthy / dimmed |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['set']} | {r['good']} | {r['p50']:.3f} | {r['p99']:.3f} | {r['max']:.3f} | {r['dimmed']:.3f} | "
                   f"{r['normal_share']:.0%} / {r['dimmed_normal_share']:.0%} |")
    p99 = [r["p99"] for r in rows]
    dimmed = [r["dimmed"] for r in rows]
    out += ["", f"Healthy p99 over the {len(rows)} sets: highest {max(p99):.3f}, median {np.median(p99):.3f}; "
            f"dimmed light above 0.25 on {sum(d > 0.25 for d in dimmed)} of {len(rows)} sets, above 0.1 on "
            f"{sum(d > 0.1 for d in dimmed)}.", MARK_END]
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument("--sets", default="", help="comma-separated set folders under $QI_DATA, or 'demo'")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
