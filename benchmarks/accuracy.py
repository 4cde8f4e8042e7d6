"""Accuracy benchmark: train, calibrate, export and evaluate on every dev set; write RESULTS.md.

    python -m benchmarks.accuracy                         # everything (about an hour on 2 cores)
    python -m benchmarks.accuracy --sets piped --variants default,autoencoder
    python -m benchmarks.accuracy --sets nsl_kdd,unsw_nb15 --variants default,autoencoder,isolation_forest,ocsvm
    python -m benchmarks.accuracy --sets suite,mvtec_screw --variants knn_reference,default

Sets: the 8 PIPED classes, mvtec_screw, the MNIST one-class protocol (10 digits), the harder suite
(`suite`: kolektor_sdd, tire, glass_fibre, elpv_poly, elpv_mono, deeppcb, trained with no config, as
`inspector train --data DIR` does), and the traffic tables nsl_kdd (KDDTest+, KDDTest-21) and
unsw_nb15. Variants:
  default      the shipped config of each set (configs/*.yaml); a suite set's defaults are those of
               `inspector train --data`: the pretrained backbone, as the variant backbone
  plain        what `inspector train --data DIR` trains with no config at all, on a shipped config's
               image folder too (PIPED, mvtec_screw: the configs' geometry, length and augmentation
               left out); a suite set's plain is its default. Not for MNIST arrays or tables
  from_scratch the suite's defaults with model.backbone: none (GANomaly on pixels in 64 px tiles,
               the suite's default rows until the default became the backbone; relabelled so)
  autoencoder  plain convolutional autoencoder, same geometry and budget, mean reconstruction error
  classic      GANomaly as published: whole frame resized to 128 (MNIST: 32), no augmentation,
               latent-distance score (images only)
  backbone     GANomaly on EfficientNet-Lite0 features (model.backbone: efficientnet_lite0); a
               shipped config's set gets whole frames and the backbone's score
  anogan       the AnoGAN family (f-AnoGAN: WGAN-GP, then an izi_f encoder), same input geometry as
               the set's config and its `anogan:` settings, score (1 - lambda) * pixel residual +
               lambda * critic-feature residual (MNIST: the config's latent_lof; see
               ANOGAN_KEEPS_CONFIG_SCORE), encoder checkpoint chosen by the synthetic_auroc
               criterion on held-out normal images (tables: validation_loss). Its rows also compare
               the encoder's single pass with classic latent search on a seeded subset of test items.
  recipe       tables: only the layout facts of the shipped config (its name, data and features
               sections, as a config written from the README states them); everything else is the
               recipe's (table defaults, length, checkpoint and score by the table self-check)
  knn_reference
               no training: nearest-neighbour distance of pretrained EfficientNet-Lite0 patch
               features to 30,000 normal ones (benchmarks/knn_reference.py; image folders only)
  isolation_forest, ocsvm
               scikit-learn baselines on the same encoded traffic features (tables only; the
               one-class SVM is fitted on a 10,000-row subsample), calibrated the same way
Per row: image AUROC / AP of the card's score, F1 and false-alarm rate at the calibrated threshold
(through the exported .onnx file), pixel AUROC where masks exist, train time, and the AUROC each
score component would give on the same trained model (so the table shows which score works).
Model selection and calibration never read test/: thresholds come from held-out train/good.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.accuracy_tables import (COMPONENTS, LATENT_SEARCH_STEPS, MARK_END, MARK_START, SUITE, latest_rows,
                                       set_group, table)
from benchmarks.results import write_section
from inspector.config import read_yaml_mapping
from benchmarks.brightness import brightness_false_alarms
from benchmarks.focus import exported_scores, focus_false_alarms
from benchmarks.knn_reference import knn_reference_row
from training.cli import default_config, infer_input, parse_overrides
from training.config import apply_overrides, load_train_config, validate_train_config
from training.data import data_root, load_test, mnist_one_class
from training.fit import fit
from training.frame_level import with_frame_level
from training.frame_scores import frame_outputs, per_frame_max
from training.models.ganomaly import GANomalyScoring
from training.models.registry import BACKBONE_COMPONENTS
from training.torch_scoring import run_scoring

ROOT = Path(__file__).resolve().parents[1]

TABLES = {"nsl_kdd": "nsl_kdd.yaml", "unsw_nb15": "unsw_nb15.yaml"}
BASELINES = ("isolation_forest", "ocsvm")
LAYOUT_SECTIONS = ("name", "data", "features")  # what a table's recipe variant keeps of its shipped config
OCSVM_MAX_TRAIN = 10_000
PIPED = ["bdp01", "bft01", "brg01", "brg03", "btn01", "flr01", "fvn01", "gla01"]
# AnoGAN score per data kind: the pixel residual the set's GANomaly config scores (local maximum for
# parts, mean for tables) with lambda = 0.1 on the critic-feature residual, as in AnoGAN. Sets whose
# config scores the memory of normal codes (MNIST: latent_lof) keep that score: no pixel residual
# tells nine normal digits from a tenth (every family's residual columns sit near 0.5 there), and
# the AnoGAN encoder's codes serve the memory as GANomaly's do. The residual columns still show
# the f-AnoGAN score's parts on the same model.
ANOGAN_LAMBDA = 0.1
ANOGAN_KEEPS_CONFIG_SCORE = ("mnist",)
LATENT_SEARCH_ITEMS = {"piped": 24, "mvtec_screw": 24, "mnist": 200, "table": 2000}


def variant_overrides(variant: str, set_name: str) -> dict:
    if variant == "default":
        return {}
    if variant in BASELINES or variant in ("knn_reference", "recipe", "plain"):
        return {}
    if variant == "autoencoder":
        return {"model.family": "autoencoder", "score.weights": {"residual_mean": 1.0}}
    if variant == "anogan":
        table = set_name in TABLES
        if set_name.startswith(ANOGAN_KEEPS_CONFIG_SCORE):
            return {"model.family": "anogan", "selection.criterion": "synthetic_auroc"}
        pixel = "residual_max" if set_name.startswith(("piped", "mvtec")) else "residual_mean"
        return {"model.family": "anogan",
                "score.weights": {pixel: 1 - ANOGAN_LAMBDA, "feature_residual": ANOGAN_LAMBDA},
                "selection.criterion": "validation_loss" if table else "synthetic_auroc"}
    if variant == "backbone":  # GANomaly on pretrained features; whole frames for the suite's default geometry
        return {"model.backbone": "efficientnet_lite0"}
    if variant == "from_scratch":  # GANomaly on pixels, tiled (model.backbone: none; a suite set's default until 2026-12-05)
        return {"model.backbone": "none"}
    if variant == "classic":
        size = 32 if set_name.startswith("mnist") else 128
        return {"input.height": size, "input.width": size, "input.resize": "stretch",
                "train.augment": {"hflip": False, "vflip": False, "rot90": False},
                "train.batch_size": 64 if set_name.startswith("mnist") else 16,
                "train.steps": 600 if set_name.startswith("mnist") else 300,
                "score.weights": {"latent_distance": 1.0}}
    raise ValueError(f"unknown variant {variant}")


def jobs(sets: list[str], digits: list[int] = list(range(10))) -> list[tuple[str, Path, dict]]:
    out = []
    for s in sets:
        if s == "piped":
            out += [(f"piped_{c}", ROOT / "configs" / f"piped_{c}.yaml", {}) for c in PIPED]
        elif s.removeprefix("piped_") in PIPED:  # one PIPED class, named as its rows are
            out.append((s, ROOT / "configs" / f"{s}.yaml", {}))
        elif s == "mvtec_screw":
            out.append(("mvtec_screw", ROOT / "configs" / "mvtec_screw.yaml", {}))
        elif s == "suite":
            out += [(name, None, {}) for name in SUITE]
        elif s in SUITE:
            out.append((s, None, {}))
        elif s in TABLES:
            out.append((s, ROOT / "configs" / TABLES[s], {}))
        elif s == "mnist":
            out += [(f"mnist_digit{d}", ROOT / "configs" / "mnist_digit0.yaml",
                     {"data.anomaly_digit": d, "name": f"mnist_digit{d}"}) for d in digits]
        else:
            raise ValueError(f"unknown set {s}")
    return out


def load_test_images(config):
    spec = config.input.to_spec()
    if config.data.kind == "mnist":
        return mnist_one_class(config.data.resolved_path, config.data.anomaly_digit, spec, 1)[1]
    return load_test(config.data.resolved_path, spec)


def component_aurocs(config, result) -> dict[str, float]:
    """AUROC of every score component on test/ with the trained model (torch), frame = worst tile."""
    spec = config.input.to_spec()
    test = load_test_images(config)
    if config.model.family == "anogan" or config.model.backbone != "none":
        scoring = result.scoring
    else:
        scoring = GANomalyScoring(result.generator, config.score.pool_kernel, config.score.residual, with_latent=True,
                                  nearest_code=result.scoring.nearest_code, with_structure=True)
    outputs, owner = frame_outputs(scoring, test.tensors, spec)
    return {name: float(roc_auc_score(test.labels, per_frame_max(outputs[name].reshape(-1), owner)))
            for name in (*COMPONENTS, "structure_max") if name in outputs}  # structure_max: suite rows only


def latent_search_row(scoring, card, frames, labels, spec, group: str) -> dict:
    """Single pass vs latent search on a seeded subset of test items (both classes kept)."""
    from training.latent_search import compare_with_single_pass

    keep = np.sort(np.random.default_rng(0).permutation(len(labels))[:LATENT_SEARCH_ITEMS[group]])
    return compare_with_single_pass(scoring, card.score, card.calibration.threshold, frames[keep],
                                    np.asarray(labels)[keep], LATENT_SEARCH_STEPS, spec)


def run_tabular_baseline(config, variant: str) -> list[dict]:
    """scikit-learn reference on the same encoded features, calibrated the same way (1% of held-out normals)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    from training.calibrate import quantile_threshold
    from training.data import config_split
    from training.evaluate import image_metrics
    from training.tabular import load_tabular

    spec, normal, tests = load_tabular(config)
    fit_idx, hold_idx = config_split(config, len(normal))
    train = normal[fit_idx]
    if variant == "ocsvm" and len(train) > OCSVM_MAX_TRAIN:
        train = train[np.random.default_rng(0).choice(len(train), OCSVM_MAX_TRAIN, replace=False)]
    model = (IsolationForest(n_estimators=200, random_state=config.train.seed, n_jobs=2) if variant == "isolation_forest"
             else OneClassSVM(nu=0.01, gamma="scale"))
    started = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - started
    threshold = quantile_threshold(-model.decision_function(normal[hold_idx]), config.calibration.target_false_alarm_rate)
    rows = []
    for test_name, test in tests.items():
        started = time.perf_counter()
        scores = -model.decision_function(test.features)
        score_seconds = time.perf_counter() - started
        m = image_metrics(scores, test.labels, threshold)
        rows.append({"set": f"{config.name} {test_name}", "variant": variant, "auroc": m.get("image_auroc"),
                     "average_precision": m.get("average_precision"), "f1": m["f1"], "false_alarm_rate": m["false_alarm_rate"],
                     "fit_seconds": round(fit_seconds, 1), "score_seconds": round(score_seconds, 2),
                     "rows_per_s": round(len(test.features) / max(score_seconds, 1e-9)), "train_rows": len(train),
                     "kind": "table"})
    return rows


def selection_record(run_dir: Path) -> dict:
    """What a row keeps of its run's selection.json (the self-check, the length, the score choice): {"selection": ...}."""
    if not (run_dir / "selection.json").exists():
        return {}
    selection = json.loads((run_dir / "selection.json").read_text())
    return {"selection": {k: selection[k] for k in ("criterion", "selected_epoch", "selected_value", "training_length",
                                                    "selected_components", "selected_component_shifts", "score_choice",
                                                    "unusual_normal")
                          if k in selection}}


def run_tabular(config, variant: str, runs: Path, latent_search: bool = True) -> list[dict]:
    if variant in BASELINES:
        return run_tabular_baseline(config, variant)
    from inspector.scorer import Scorer
    from training.tabular import load_tabular

    from training.models.tabular import TabularScoring

    result = fit(config, runs / variant / config.name, progress=False)
    _, normal, tests = load_tabular(config)
    scorer = Scorer(result.model_path)
    components = (result.scoring if config.model.family == "anogan"  # every component, latent_knn / latent_lof when scored
                  else TabularScoring(result.generator, with_latent=True, nearest_code=result.scoring.nearest_code).eval())
    rows = []
    for test_name, m in result.metrics.items():
        started = time.perf_counter()
        scorer.score_features(tests[test_name].features)
        score_seconds = time.perf_counter() - started
        rows.append({"set": f"{config.name} {test_name}", "variant": variant, "auroc": m.get("auroc"),
                     "average_precision": m.get("average_precision"), "f1": m["f1"], "false_alarm_rate": m["false_alarm_rate"],
                     "score": "+".join(result.card.score.weights), "fit_seconds": result.card.training.train_seconds, "score_seconds": round(score_seconds, 2),
                     "rows_per_s": round(len(tests[test_name].features) / max(score_seconds, 1e-9)),
                     "train_rows": len(normal) - result.card.calibration.n_samples, "kind": "table",
                     "steps": result.card.training.steps,
                     "mflops_per_frame": round(result.card.export.flops_per_item / 1e6, 3),
                     "components": {name: float(roc_auc_score(tests[test_name].labels, values)) for name, values in
                                    run_scoring(components, tests[test_name].features, batch_size=4096).items()}})
        rows[-1].update(selection_record(result.model_path.parent))
        if variant == "anogan" and latent_search:
            test = tests[test_name]
            rows[-1]["latent_search"] = latent_search_row(result.scoring, result.card, test.features, test.labels, None,
                                                          "table")
    return rows


def job_config(name: str, config_path: Path | None, variant: str, extra: dict, overrides: dict):
    """The config a job trains (None: the variant has no row for this set). `config_path` None: a
    suite set, trained with the defaults of `inspector train --data`; `extra`: the job's own settings
    (a MNIST digit), `overrides`: those with the variant's and the command line's."""
    if variant == "plain" and config_path is not None:  # a shipped config's images, trained as if it were not there
        shipped = load_train_config(config_path, extra)
        if shipped.data.kind != "mvtec":
            return None
        return default_config(str(shipped.data.resolved_path), overrides)
    if config_path is None:  # the defaults, as `inspector train --data` gives them
        return default_config(str(data_root() / name), overrides)
    config = load_train_config(config_path, {k: v for k, v in overrides.items() if k != "model.backbone"})
    if overrides.get("model.backbone", "none") == "none":
        return config
    adapted = {}
    if config.data.kind == "mvtec":  # a tiled config's set: whole frames, the backbone's score
        adapted = {f"input.{key}": value for key, value in infer_input(config.data.resolved_path, True).items()}
        adapted["score.weights"] = {name: 1.0 for name in sorted(BACKBONE_COMPONENTS)}  # a set: sorted, so rows name it alike
        adapted["score.choice"] = "self_check"  # weighted as a backbone run whose config leaves the score gets it
    return load_train_config(config_path, {**overrides, **adapted})


def run_job(name: str, config_path: Path, extra: dict, variant: str, runs: Path, threads: int,
            settings: dict | None = None, latent_search: bool = True) -> list[dict]:
    overrides = {**extra, **variant_overrides(variant, name), "train.threads": threads, **(settings or {})}
    if variant == "recipe":
        if name not in TABLES:  # an image set's recipe is its suite default (`inspector train --data`)
            return []
        layout = {key: value for key, value in read_yaml_mapping(config_path).items() if key in LAYOUT_SECTIONS}
        return run_tabular(validate_train_config(apply_overrides(layout, overrides), config_path), variant, runs,
                           latent_search)
    config = job_config(name, config_path, variant, extra, overrides)
    if config is None:
        return []
    if variant == "knn_reference":
        if config.data.kind != "mvtec":  # image folders only (not MNIST arrays, not tables)
            return []
        return [knn_reference_row(name, config.data.resolved_path, config.train.seed)]
    if config.data.kind == "table":
        if variant == "classic":
            return []
        return run_tabular(config, variant, runs, latent_search)
    if variant in BASELINES:
        return []
    config = with_frame_level(config)  # the level fit would measure: test images below are loaded with it too
    started = time.perf_counter()
    result = fit(config, runs / variant / name, progress=False)
    wall = time.perf_counter() - started
    m, card = result.metrics, result.card
    spec = config.input.to_spec()
    tiles = 1
    if spec.resize == "tile":
        from inspector.image_files import read_image
        from inspector.preprocess import frame_tensor, tiles_from_frame
        from training.data import list_images

        first = list_images(config.data.resolved_path / "test" / "good")[0]
        tiles = len(tiles_from_frame(frame_tensor(read_image(first), spec), spec)[0])
    row = {
        "set": name, "variant": variant, "score": "+".join(card.score.weights),  # the recipe may choose it
        "map_top_share": config.score.map_top_share if card.score.pooled_output else None,
        "image_auroc": m.get("image_auroc"), "average_precision": m.get("average_precision"),
        "f1": m["f1"], "false_alarm_rate": m["false_alarm_rate"], "pixel_auroc": m.get("pixel_auroc"),
        "best_f1_within_far": m.get("best_f1_within_far"),
        "train_seconds": card.training.train_seconds, "wall_seconds": round(wall, 1),
        "steps": card.training.steps, "epochs": card.training.epochs,
        "mflops_per_frame": round(card.export.flops_per_item * tiles / 1e6, 1),
        "input": f"{spec.height}x{spec.width} {spec.resize}" + (f" ({tiles} tiles)" if tiles > 1 else ""),
        "components": component_aurocs(config, result),
        "unusual_checked": True,  # selection.json has `unusual_normal` where the summary named good photos
    }
    if config.data.kind == "mvtec":
        score_frames, threshold = exported_scores(result.model_path)
        row["far_brightness"] = brightness_false_alarms(score_frames, config.data.resolved_path, threshold)
        row["far_focus"] = focus_false_alarms(score_frames, config.data.resolved_path, threshold)
    if variant == "anogan" and latent_search:
        test = load_test_images(config)
        row["latent_search"] = latent_search_row(result.scoring, card, test.tensors, test.labels, spec, set_group(name))
    row.update(selection_record(result.model_path.parent))
    return [row]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="piped,mvtec_screw,mnist")
    parser.add_argument("--variants", default="default,autoencoder,classic")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mnist-digits", default="0,1,2,3,4,5,6,7,8,9", help="anomaly digits of the MNIST protocol to run")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every job (YAML value), e.g. --set train.device=cuda "
                        "--set train.steps=3000; recorded in each row")
    parser.add_argument("--no-latent-search", action="store_true",
                        help="skip the AnoGAN latent-search comparison (slow: hundreds of optimiser steps per item)")
    parser.add_argument("--jsonl", type=Path, help="append rows here as they finish (default <runs>/accuracy.jsonl)")
    parser.add_argument("--table-from", type=Path, nargs="+", metavar="JSONL",
                        help="train nothing: rebuild the tables from rows recorded by earlier runs (newest per set "
                        "and variant), e.g. an image run and a traffic run")
    parser.add_argument("--commands", nargs="*", default=[], help="with --table-from: the commands that made the rows")
    parser.add_argument("--notes", nargs="*", default=[], help="with --table-from: sentences printed under the tables")
    args = parser.parse_args()
    if args.table_from:
        write_section(args.out, table(latest_rows(args.table_from), args.commands, args.notes), MARK_START, MARK_END)
        print(f"wrote {args.out}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    if not data_root().is_dir():
        print(f"data folder {data_root()} not found (set QI_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = parse_overrides(args.settings)
    rows = []
    jsonl = args.jsonl or args.runs / "accuracy.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        for name, config_path, extra in jobs(args.sets.split(","), [int(d) for d in args.mnist_digits.split(",")]):
            for row in run_job(name, config_path, extra, variant, args.runs, args.threads, settings,
                               not args.no_latent_search):
                row["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                if settings:
                    row["settings"] = settings
                rows.append(row)
                with jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    command = "python -m benchmarks.accuracy " + " ".join(sys.argv[1:])
    write_section(args.out, table(rows, [command.strip()]), MARK_START, MARK_END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
