"""The `inspector` subcommands this package brings: train, evaluate, demo, recalibrate, retrain.

Registered through the `qinspector.commands` entry point (pyproject.toml), so the runtime's command
line lists them without importing training code; this module imports argparse only, and each
handler ("module:function") is imported when its command runs (torch loads then, not for --help).
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    """Add the training subcommands to the `inspector` subparsers."""
    _add_train(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_recalibrate(sub)
    _add_retrain(sub)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train on normal images, calibrate, export model.onnx, evaluate on test/",
                       description="Train a GANomaly model (or AnoGAN: --set model.family=anogan) on "
                       "<data>/train/good only (or a table's normal rows), hold out part of it to choose the "
                       "checkpoint and calibrate the threshold, export model.onnx with its card and, when <data>/test "
                       "exists (a table's data.test_paths), evaluate it there (metrics.json and report/ in the run "
                       "folder). The run folder also shows how training went: losses.csv / losses.png, image grids in "
                       "diagnostics/, selection.json, and unusual_good.png: good photos that scored like defects (a "
                       "flawed part sorted into train/good raises the threshold; the summary's check: line names them).")
    p.add_argument("-c", "--config", type=Path, help="training YAML (see configs/); --data alone uses defaults. A "
                   "flow table's config needs only its layout: name, data (kind: table, path, header, label, "
                   "normal_values) and features (categorical, ignore, window); the rest is the table recipe")
    p.add_argument("--data", help="MVTec-layout folder (overrides data.path). Without --config: GANomaly on "
                   "pretrained EfficientNet-Lite0 features of whole frames (at most 512 px; smaller than 224x224 "
                   "enlarged for the backbone), or from scratch in 64 px tiles with --set model.backbone=none, another "
                   "model.family or --frame-rate")
    p.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    p.add_argument("--steps", type=int, help="train exactly this many steps (sets train.steps and train.max_blocks=1; "
                   "for anogan, the steps of each of its two phases). Without it the length adapts: blocks of "
                   "train.steps while the self-check improves, within train.budget_s (10 minutes) for the whole fit")
    p.add_argument("--threads", type=int, help="CPU threads for torch (overrides train.threads)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.base_width=8 (value parsed as YAML)")
    p.add_argument("--frame-rate", type=float, metavar="FPS",
                   help="the line's frames/s: choose the most detailed tile plan (less overlap, then smaller scale) "
                   "that the daemon's pipeline runs that fast on this machine (measured: frames decoded, cropped, "
                   "tiled, scored, journaled), and say what it traded (tiled models)")
    p.add_argument("--frame-size", metavar="WxH",
                   help="the camera's frame size for --frame-rate, e.g. 1920x1080 (default: the first training image's)")
    p.add_argument("--roi", metavar="WxH",
                   help="with --frame-rate: the size of the region of interest scored in each frame, e.g. 640x480 "
                   "(default: the whole frame)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation on test/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler="training.cli:train")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="AUROC, AP, F1 and a report with plots for a model.onnx on a test set",
                       description="Score <data>/test/* with the exported model (the file itself, through the "
                       "inspector's scorer) and write metrics.json plus report/ (ROC, score histogram, examples).")
    p.add_argument("model", type=Path)
    p.add_argument("--data", required=True, help="MVTec-layout folder with test/good and test/<defect>, or for a "
                   "traffic model a labelled CSV table (gzip allowed)")
    p.add_argument("--header", action="store_true", help="tables: the first line names the columns")
    p.add_argument("--out", type=Path, help="where metrics.json and report/ go (default: beside the model)")
    p.add_argument("--threshold", type=float, help="use this threshold instead of the card's")
    p.add_argument("--latent-search", type=int, metavar="N",
                   help="anogan models: also score by classic AnoGAN latent search (N gradient steps per item, torch, "
                   "slow) and compare it with the encoder's single pass on the same items (latent_search.json)")
    p.add_argument("--limit", type=int, metavar="K",
                   help="with --latent-search: a seeded random subset of K test items (the search is slow)")
    p.set_defaults(handler="training.cli:evaluate")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the one-command demo on generated data (needs the train extra)",
                       description="Generate a synthetic defect data set, train for about a minute, calibrate, "
                       "export and evaluate; prints the metrics and where the report is.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--steps", type=int, default=300, help="training steps (about a minute on 2 cores)")
    p.set_defaults(handler="training.cli:demo")


def _add_recalibrate(sub) -> None:
    p = sub.add_parser("recalibrate", help="a new threshold from new photos of good parts (no retraining)",
                       description="Score newly photographed good parts with the model and set its threshold on them "
                       "with the training rule (at most the card's target false-alarm rate, at its confidence). Writes "
                       "a candidate .onnx (the same graph, a new card naming its parent) beside the model; "
                       "`inspector promote` puts it in place.")
    p.add_argument("model", type=Path, help="a model.onnx, or a run folder holding one")
    p.add_argument("--good", type=Path, action="append", required=True, metavar="DIR",
                   help="a folder of new good-part photos (repeatable); 40 or more recommended, none "
                   "of them a training photo (those are counted and warned of: they score low)")
    p.add_argument("--out", type=Path, help="the candidate's path (default: candidate.onnx beside the model)")
    p.add_argument("--target-false-alarm-rate", type=float, help="default: the card's")
    p.set_defaults(handler="training.feedback_cli:recalibrate")


def _add_retrain(sub) -> None:
    p = sub.add_parser("retrain", help="fine-tune a run on the frames operators marked false alarm, recalibrate, export a candidate",
                       description="Start from the run's trained weights, add the frames reviewed as false alarm on "
                       "the review page (and any --good photos) to its normal training images, fine-tune within "
                       "a time budget, recalibrate on held-out normal images and export a candidate whose card "
                       "names its parent and the reviews it learned from. Then shadow-test it (shadow: in the "
                       "daemon config, `inspector shadow report`) and `inspector promote` it.")
    p.add_argument("run", type=Path, help="the run folder of the active model (config.json, checkpoint.pt)")
    p.add_argument("--reviews", type=Path, required=True, help="the review database (journal/reviews.sqlite3)")
    p.add_argument("--good", type=Path, action="append", default=[], metavar="DIR",
                   help="also learn these new good-part photos (repeatable)")
    p.add_argument("--out", type=Path, help="the candidate's run folder (default: <run>/retrained-<time>)")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="seconds of fine-tuning (default 180; calibration and export come on top)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler="training.feedback_cli:retrain")
