"""The operator's loop on real data: the lamp changed, good parts alarm, the operator reviews, the model is retrained.

Per set (no config: the from-scratch model, model.backbone: none, the recipe `inspector train --data`
used by default when these rows were measured):
  1. a quarter of train/good (seeded) is set aside as "the new normal"; the base model trains on the rest;
  2. the line's lighting drifts (DRIFTS, every frame, clipped: the lamp moved to one side, so light falls
     off across the frame; or a flatter light, less contrast about the frame's mean); the set-aside images
     and every test/ defect, drifted, stream through a real daemon with the review page;
  3. the operator labels every flagged item on the page over HTTP: set-aside images false alarm, test/
     defects defect (the labels the ground truth gives); only half of the test/ defects (seeded) reach the
     line, the other half is never seen and only measured;
  4. `retrain` from the review database (default budget), and for comparison `recalibrate` on the
     set-aside images (when the drift raised no false alarm there is nothing to review: the row says so);
  5. both candidates and the base model score: the reviewed half (the set-aside images, drifted), the
     other half, never reviewed nor trained on (test/good, drifted), the confirmed defects (the base
     model caught them on the line; retraining keeps its threshold low enough for them), the other
     defects (never on the line), and test/ as it is.
test/ is never trained on, and nothing here was tuned on it: the drift and the budget were set before
the first run. The first drifts (darker: x0.7 + 15, brighter: x1.3) are still here (--drifts) but no
longer the default: every frame is now brought to the training images' exposure before scoring, which
undoes a change of the whole frame's brightness, so they raise few false alarms left to review. The
uneven and flatter drifts were chosen for that reason, before any run of them. Goals (issue 21): false alarms -80% on the reviewed half, -50% on the other half,
recall on the confirmed defects >= 95% of before, retrain + recalibration + export <= 5 minutes.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import cv2
import numpy as np

from benchmarks.results import section_header, section_main
from benchmarks.servers import free_port, scrape, start_inspector
from inspector.image_files import list_images, read_image
from inspector.review.promote import check_candidate
from inspector.scorer import ANOMALY, Scorer

MARK_START, MARK_END = "<!-- feedback-loop:start -->", "<!-- feedback-loop:end -->"
DEFAULT_SETS = ("kolektor_sdd", "elpv_mono", "glass_fibre")  # enough normal images to set a quarter aside


def light_falloff(image: np.ndarray) -> np.ndarray:
    """The lamp moved to the left: x1.3 at the left edge falling linearly to x0.7 at the right edge."""
    gain = np.linspace(1.3, 0.7, image.shape[1], dtype=np.float32)[None, :]
    gain = gain[..., None] if image.ndim == 3 else gain
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def flatter_light(image: np.ndarray) -> np.ndarray:
    """A more diffuse light: 0.6x the contrast about the frame's own mean (mean brightness unchanged)."""
    pixels = image.astype(np.float32)
    mean = float(pixels.mean())
    return np.clip((pixels - mean) * 0.6 + mean, 0, 255).astype(np.uint8)


def global_light(gain: float, offset: float):
    def change(image: np.ndarray) -> np.ndarray:
        return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    return change


DRIFTS = {"uneven": ("the lamp moved: x1.3 at the left edge to x0.7 at the right", light_falloff),
          "flatter": ("diffuse light: contrast x0.6 about the frame's mean", flatter_light),
          "darker": ("pixel x 0.7 + 15", global_light(0.7, 15.0)),
          "brighter": ("pixel x 1.3", global_light(1.3, 0.0))}
DEFAULT_DRIFTS = ("uneven", "flatter")
SET_ASIDE = 0.25
ROWS = Path(__file__).resolve().parent / "rows" / "feedback_loop.jsonl"


def set_root(name: str) -> Path:
    from training.data import data_root

    if name.startswith("piped_"):
        (match,) = (data_root() / "piped").glob(f"PA_{name.split('_', 1)[1].upper()}_*")
        return match
    return data_root() / name


def split_train_good(root: Path, seed: int = 0) -> tuple[list[Path], list[Path]]:
    paths = list_images(root / "train" / "good")
    order = np.random.default_rng(seed).permutation(len(paths))
    aside = max(2, int(round(SET_ASIDE * len(paths))))
    return [paths[i] for i in sorted(order[aside:])], [paths[i] for i in sorted(order[:aside])]


def test_files(root: Path) -> tuple[list[Path], list[Path]]:
    good = list_images(root / "test" / "good")
    defects = [p for folder in sorted((root / "test").iterdir()) if folder.is_dir() and folder.name != "good"
               for p in list_images(folder)]
    return good, defects


class Page:
    """The review page over HTTP, as an operator's browser uses it (session cookie + CSRF token)."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        page = self.opener.open(self.base + "/", timeout=30).read().decode()
        self.token = re.search(r'"X-CSRF-Token": "([^"]+)"', page).group(1)

    def label(self, item_id: int, label: str) -> None:
        data = urllib.parse.urlencode({"label": label, "reviewer": "benchmark"}).encode()
        request = urllib.request.Request(f"{self.base}/items/{item_id}/review", data=data,
                                         headers={"X-CSRF-Token": self.token})
        self.opener.open(request, timeout=30).read()


def stream_and_review(work: Path, model: Path, frames: list[tuple[str, np.ndarray]]) -> tuple[Path, dict]:
    """Stream the drifted frames through a daemon with the review page; label every flagged item."""
    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    metrics_port, page_port = free_port(), free_port()
    config = {"model": {"path": str(model), "intra_op_threads": 1}, "metrics": {"port": metrics_port},
              "sources": [{"name": "line", "kind": "folder", "path": str(inbox), "settle_s": 0.1}],
              "journal": {"path": str(work / "journal" / "decisions.jsonl")}, "evidence": {"dir": str(work / "evidence"),
                                                                                         "max_files": 100_000},
              "review": {"port": page_port}, "logging": {"status_interval_s": 0}}
    daemon = start_inspector(work, config)
    try:
        for name, frame in frames:
            cv2.imwrite(str(work / f".{name}.part.png"), frame)
            (work / f".{name}.part.png").rename(inbox / name)
        done = 0
        while done < len(frames):
            time.sleep(0.5)
            samples = scrape(metrics_port)
            done = sum(v for (n, _), v in samples.items()
                       if n in ("inspector_items_scored_total", "inspector_items_rejected_total"))
        time.sleep(1.0)
        from inspector.review.store import ReviewStore

        store = ReviewStore(work / "journal" / "reviews.sqlite3")
        page = Page(page_port)
        labels = {"false_alarm": 0, "defect": 0}
        for item in store.items(limit=1_000_000):
            if item["verdict"] == ANOMALY:
                label = "defect" if item["origin"].startswith("defect_") else "false_alarm"
                page.label(item["id"], label)
                labels[label] += 1
        store.close()
    finally:
        daemon.terminate()
        daemon.wait(60)
    return work / "journal" / "reviews.sqlite3", labels


def alarm_rate(scorer: Scorer, frames: list[np.ndarray]) -> float:
    results = scorer.score_images(frames, heatmaps=False)
    return float(np.mean([r.verdict == ANOMALY for r in results])) if frames else float("nan")


def auroc(scorer: Scorer, normal: list[np.ndarray], defects: list[np.ndarray]) -> float:
    from sklearn.metrics import roc_auc_score

    scores = [r.raw for r in scorer.score_images(normal + defects, heatmaps=False)]
    return float(roc_auc_score([0] * len(normal) + [1] * len(defects), scores))


def measure(scorer: Scorer, sets: dict[str, list[np.ndarray]], confirmed: list[np.ndarray]) -> dict:
    return {"far_reviewed_half": alarm_rate(scorer, sets["aside"]), "far_other_half": alarm_rate(scorer, sets["test_good"]),
            "recall_confirmed": alarm_rate(scorer, confirmed), "recall_other_defects": alarm_rate(scorer, sets["unseen"]),
            "auroc_drifted": auroc(scorer, sets["test_good"], sets["defects"]),
            "far_original": alarm_rate(scorer, sets["test_good_original"]),
            "recall_original": alarm_rate(scorer, sets["defects_original"]),
            "threshold": scorer.threshold}


def base_model(name: str, work: Path) -> tuple[Path, list[Path], float]:
    """The from-scratch recipe on train/good minus the set-aside quarter; (model, set-aside images, seconds)."""
    from training.cli import default_config
    from training.fit import fit

    base_train, aside = split_train_good(set_root(name))
    data = work / "data" / "train" / "good"
    data.mkdir(parents=True)
    for path in base_train:
        (data / path.name).symlink_to(path.resolve())
    started = time.perf_counter()
    fitted = fit(default_config(str(work / "data"), {"model.backbone": "none"}), work / "run", progress=False,
                 evaluate_test=False)
    return fitted.model_path, aside, time.perf_counter() - started


def run_drift(name: str, drift_name: str, work: Path, model: Path, aside: list[Path], budget_s: float) -> dict:
    from training.recalibrate import recalibrate
    from training.retrain import retrain

    _, drift = DRIFTS[drift_name]
    test_good, test_defects = test_files(set_root(name))
    originals = {"aside": [read_image(p) for p in aside], "test_good": [read_image(p) for p in test_good],
                 "defects": [read_image(p) for p in test_defects]}
    sets = {key: [drift(f) for f in frames] for key, frames in originals.items()}
    sets["test_good_original"], sets["defects_original"] = originals["test_good"], originals["defects"]
    # half of the defects reach the line and its operator; the other half is never seen, only measured
    order = np.random.default_rng(1).permutation(len(sets["defects"]))
    on_line = [sets["defects"][i] for i in sorted(order[: len(order) // 2])]
    sets["unseen"] = [sets["defects"][i] for i in sorted(order[len(order) // 2:])]
    stream = [(f"aside_{i:04d}.png", f) for i, f in enumerate(sets["aside"])]
    stream += [(f"defect_{i:04d}.png", f) for i, f in enumerate(on_line)]
    reviews, labels = stream_and_review(work / "line", model, stream)
    active = Scorer(model)
    confirmed = [f for f, r in zip(on_line, active.score_images(on_line, heatmaps=False)) if r.verdict == ANOMALY]
    row = {"set": name, "drift": drift_name, "drift_is": DRIFTS[drift_name][0], "n_reviewed_half": len(aside),
           "n_other_half": len(test_good), "n_defects_on_line": len(on_line), "n_defects_unseen": len(sets["unseen"]),
           "n_confirmed": len(confirmed),
           "labels": labels, "budget_s": budget_s, "base": measure(active, sets, confirmed)}
    if not labels["false_alarm"]:
        return row  # nothing flagged among the good parts: nothing to review, nothing to retrain
    started = time.perf_counter()
    retrained = retrain(work.parent / "run", reviews, [], out=work / "retrained", budget_s=budget_s, progress=False)
    row["retrain_seconds"], row["retrain_steps"] = round(time.perf_counter() - started, 1), retrained.steps
    aside_folder = work / "aside_drifted"
    aside_folder.mkdir()
    for i, frame in enumerate(sets["aside"]):
        cv2.imwrite(str(aside_folder / f"{i:04d}.png"), frame)
    started = time.perf_counter()
    recalibrated = recalibrate(model, [aside_folder], out=work / "recalibrated.onnx").path
    row["recalibrate_seconds"] = round(time.perf_counter() - started, 1)
    row["retrained"] = measure(Scorer(retrained.run.model), sets, confirmed)
    check = check_candidate(Scorer(retrained.run.model), reviews)  # what `inspector promote --reviews` decides
    row["promotable"] = not check.missed
    row["threshold_method"] = retrained.card.calibration.method
    row["recalibrated"] = measure(Scorer(recalibrated), sets, confirmed)
    return row


def rate(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"  # nan: nothing to measure (no confirmed defect)


def change(before: float, after: float) -> str:
    return "n/a" if before == 0 else f"{100 * (after - before) / before:+.0f}%"


def table(rows: list[dict]) -> list[str]:
    lines = ["| set, drift | model | FAR reviewed half | FAR other half | recall confirmed defects | recall other defects | "
             "AUROC drifted | FAR / recall original light | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = row["base"]
        for name, seconds in (("base", row.get("base_train_seconds")), ("retrained", row.get("retrain_seconds")),
                              ("recalibrated", row.get("recalibrate_seconds"))):
            m = row[name]
            changes = ("", "") if name == "base" else (f" ({change(base['far_reviewed_half'], m['far_reviewed_half'])})",
                                                       f" ({change(base['far_other_half'], m['far_other_half'])})")
            kept = "" if name == "base" or not row["n_confirmed"] else f" ({100 * m['recall_confirmed'] / max(base['recall_confirmed'], 1e-9):.0f}% of before)"
            lines.append(f"| {row['set']} {row['drift']} | {name} | {rate(m['far_reviewed_half'])}{changes[0]} | "
                         f"{rate(m['far_other_half'])}{changes[1]} | {rate(m['recall_confirmed'])}{kept} | "
                         f"{rate(m['recall_other_defects'])} | {m['auroc_drifted']:.3f} | {rate(m['far_original'])} / "
                         f"{rate(m['recall_original'])} | {seconds:.0f} s |")
            if name == "base" and "retrained" not in row:
                lines.append(f"| {row['set']} {row['drift']} | retrained | no false alarm to review: not retrained "
                             "| | | | | | |")
                break
    return lines


def run(args) -> str:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()] if args.from_rows else []
    for name in ([] if args.from_rows else args.sets.split(",")):
        work = Path(args.work) / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"{name}: base model ...", flush=True)
        model, aside, seconds = base_model(name, work)
        for drift_name in args.drifts.split(","):
            print(f"{name} {drift_name}: stream, review, retrain ...", flush=True)
            row = {**run_drift(name, drift_name, work / drift_name, model, aside, args.budget_s),
                   "base_train_seconds": round(seconds, 1), "command": "python -m benchmarks.feedback_loop "
                   + " ".join(sys.argv[1:])}
            with ROWS.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            rows.append(row)
            print("\n".join(table([row])), flush=True)
    lines = section_header(MARK_START, "Operator's loop: review false alarms, retrain, measure", "benchmarks.feedback_loop")
    shown = dict.fromkeys(row["drift"] for row in rows)
    drifts = "; ".join(f"{name}: {DRIFTS[name][0]}" for name in shown)
    lines += ["", f"Lighting drift on every frame after training ({drifts}; clipped). Reviewed half: "
              f"{int(SET_ASIDE * 100)}% of train/good set aside before training, drifted, streamed through the daemon and "
              "labelled false alarm where flagged. Other half: test/good drifted, never reviewed nor trained on. Confirmed "
              "defects: the drifted test/ defects of the half streamed through the line that the base model flagged, "
              "labelled defect (retraining keeps them caught when it can). Other defects: the other half, never on the "
              "line. FAR = false-alarm rate at the "
              "model's threshold; changes are against the base model. Time: base training, retrain (fine-tune + "
              "calibration + export), recalibration.", ""]
    lines += table(rows)
    if not args.from_rows:
        lines += ["", f"Every run's rows, earlier drifts included, are in benchmarks/rows/{ROWS.name} (`--from-rows` "
                  "tables them all; rows before 2026-12-03 13:00 UTC were measured without exposure standardising)."]
    return "\n".join(lines + ["", MARK_END])


def drift_names(text: str) -> str:
    """--drifts, checked before any training starts."""
    import argparse

    unknown = [name for name in text.split(",") if name not in DRIFTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown drift {unknown[0]!r}: choose from {', '.join(DRIFTS)}")
    return text


def add_arguments(parser) -> None:
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--drifts", default=",".join(DEFAULT_DRIFTS), type=drift_names,
                        help=f"comma-separated, any of {', '.join(DRIFTS)}")
    parser.add_argument("--budget-s", type=float, default=180.0, help="retrain's fine-tuning budget")
    parser.add_argument("--work", default="/tmp/qi_feedback_loop")
    parser.add_argument("--from-rows", action="store_true", help=f"run nothing: the table of every row in {ROWS.name} "
                        "(runs of several --sets)")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
