"""Accuracy benchmark: train, calibrate, export and evaluate on every dev set; write RESULTS.md.

    python benchmarks/accuracy.py                         # everything (about an hour on 2 cores)
    python benchmarks/accuracy.py --sets piped --variants default,autoencoder

Sets: the 8 PIPED classes, mvtec_screw, and the MNIST one-class protocol (10 digits). Variants:
  default      the shipped config of each set (configs/*.yaml)
  autoencoder  plain convolutional autoencoder, same geometry and budget, mean reconstruction error
  classic      GANomaly as published: whole frame resized to 128 (MNIST: 32), no augmentation,
               latent-distance score
Per row: image AUROC / AP of the card's score, F1 and false-alarm rate at the calibrated threshold
(through the exported .onnx file), pixel AUROC where masks exist, train time, and the AUROC each
score component would give on the same trained model (so the table shows which score works).
Model selection and calibration never read test/: thresholds come from held-out train/good.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_section  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.data import data_root, load_test, mnist_one_class  # noqa: E402
from training.fit import fit, model_inputs, per_frame_max  # noqa: E402
from training.models.ganomaly import GANomalyScoring  # noqa: E402
from training.torch_scoring import run_scoring  # noqa: E402

PIPED = ["bdp01", "bft01", "brg01", "brg03", "btn01", "flr01", "fvn01", "gla01"]
COMPONENTS = ("latent_distance", "residual_mean", "residual_max")
MARK_START, MARK_END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"


def variant_overrides(variant: str, set_name: str) -> dict:
    if variant == "default":
        return {}
    if variant == "autoencoder":
        return {"model.family": "autoencoder", "score.weights": {"residual_mean": 1.0}}
    if variant == "classic":
        size = 32 if set_name.startswith("mnist") else 128
        return {"input.height": size, "input.width": size, "input.resize": "stretch",
                "train.augment": {"hflip": False, "vflip": False, "rot90": False},
                "train.batch_size": 64 if set_name.startswith("mnist") else 16,
                "train.steps": 600 if set_name.startswith("mnist") else 300,
                "score.weights": {"latent_distance": 1.0}}
    raise ValueError(f"unknown variant {variant}")


def jobs(sets: list[str]) -> list[tuple[str, Path, dict]]:
    out = []
    for s in sets:
        if s == "piped":
            out += [(f"piped_{c}", ROOT / "configs" / f"piped_{c}.yaml", {}) for c in PIPED]
        elif s == "mvtec_screw":
            out.append(("mvtec_screw", ROOT / "configs" / "mvtec_screw.yaml", {}))
        elif s == "mnist":
            out += [(f"mnist_digit{d}", ROOT / "configs" / "mnist_digit0.yaml",
                     {"data.anomaly_digit": d, "name": f"mnist_digit{d}"}) for d in range(10)]
        else:
            raise ValueError(f"unknown set {s}")
    return out


def component_aurocs(config, generator) -> dict[str, float]:
    """AUROC of every score component on test/ with the trained generator (torch), frame = worst tile."""
    spec = config.input.to_spec()
    if config.data.kind == "mnist":
        _, test = mnist_one_class(config.data.resolved_path, config.data.anomaly_digit, spec, 1)
    else:
        test = load_test(config.data.resolved_path, spec)
    scoring = GANomalyScoring(generator, config.score.pool_kernel, config.score.residual, with_latent=True)
    inputs, owner = model_inputs(test.tensors, spec)
    outputs = run_scoring(scoring, inputs, batch_size=256, keep_maps=False)
    return {name: float(roc_auc_score(test.labels, per_frame_max(outputs[name].reshape(-1), owner)))
            for name in COMPONENTS}


def run_job(name: str, config_path: Path, extra: dict, variant: str, runs: Path, threads: int) -> dict:
    overrides = {**extra, **variant_overrides(variant, name), "train.threads": threads}
    config = load_train_config(config_path, overrides)
    started = time.perf_counter()
    result = fit(config, runs / variant / name, progress=False)
    wall = time.perf_counter() - started
    m, card = result.metrics, result.card
    spec = config.input.to_spec()
    tiles = 1
    if spec.resize == "tile":
        from training.data import list_images

        from inspector.preprocess import read_image, tiles_from_frame, frame_tensor

        first = list_images(config.data.resolved_path / "test" / "good")[0]
        tiles = len(tiles_from_frame(frame_tensor(read_image(first), spec), spec)[0])
    row = {
        "set": name, "variant": variant, "score": "+".join(config.score.weights),
        "image_auroc": m.get("image_auroc"), "average_precision": m.get("average_precision"),
        "f1": m["f1"], "false_alarm_rate": m["false_alarm_rate"], "pixel_auroc": m.get("pixel_auroc"),
        "train_seconds": card.training.train_seconds, "wall_seconds": round(wall, 1),
        "steps": card.training.steps, "epochs": card.training.epochs,
        "mflops_per_frame": round(card.export.flops_per_item * tiles / 1e6, 1),
        "input": f"{spec.height}x{spec.width} {spec.resize}" + (f" ({tiles} tiles)" if tiles > 1 else ""),
        "components": component_aurocs(config, result.generator),
    }
    return row


def fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict], command: str) -> str:
    lines = [MARK_START, "## Accuracy", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.node()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
             f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ",
             "Thresholds: quantile of held-out train/good scores for a 1% false-alarm target; nothing is tuned on test/. "
             "Image AUROC/AP/F1/FAR are measured on the exported .onnx through the inspector's scorer; the component "
             "columns give the torch AUROC of each score component on the same trained model.", "",
             "| set | variant | input | MFLOPs/frame | score | image AUROC | AP | F1 @thr | FAR test/good | pixel AUROC "
             "| AUROC latent | AUROC res. mean | AUROC res. max | train s | steps | epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["components"]
        lines.append(f"| {r['set']} | {r['variant']} | {r['input']} | {r['mflops_per_frame']:.0f} | {r['score']} | "
                     f"{fmt(r['image_auroc'])} | {fmt(r['average_precision'])} | {fmt(r['f1'])} | "
                     f"{fmt(r['false_alarm_rate'])} | {fmt(r['pixel_auroc'])} | {fmt(c.get('latent_distance'))} | "
                     f"{fmt(c.get('residual_mean'))} | {fmt(c.get('residual_max'))} | {r['train_seconds']:.0f} | "
                     f"{r['steps']} | {r['epochs']} |")
    lines += ["", "Means per group:", "", "| group | variant | rows | image AUROC | pixel AUROC | FAR test/good |",
              "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        group = "piped" if r["set"].startswith("piped") else "mnist" if r["set"].startswith("mnist") else r["set"]
        groups.setdefault((group, r["variant"]), []).append(r)
    for (group, variant), rs in groups.items():
        aurocs = [r["image_auroc"] for r in rs if r["image_auroc"] is not None]
        pixels = [r["pixel_auroc"] for r in rs if r["pixel_auroc"] is not None]
        lines.append(f"| {group} | {variant} | {len(rs)} | {fmt(np.mean(aurocs) if aurocs else None)} | "
                     f"{fmt(np.mean(pixels) if pixels else None)} | {fmt(np.mean([r['false_alarm_rate'] for r in rs]))} |")
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="piped,mvtec_screw,mnist")
    parser.add_argument("--variants", default="default,autoencoder,classic")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jsonl", type=Path, help="append rows here as they finish (default <runs>/accuracy.jsonl)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not data_root().is_dir():
        print(f"data folder {data_root()} not found (set QI_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    jsonl = args.jsonl or args.runs / "accuracy.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        for name, config_path, extra in jobs(args.sets.split(",")):
            row = run_job(name, config_path, extra, variant, args.runs, args.threads)
            rows.append(row)
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    write_section(args.out, table(rows, command.strip()), MARK_START, MARK_END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
