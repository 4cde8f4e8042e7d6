"""Frames/s of the from-scratch tiled model at the line's resolution (issue 20, first goal).

For every dev image set, the from-scratch model `inspector train --data SET` made when these rows were
measured (model.backbone: none, stated here since the default became the pretrained backbone; its
geometry: tile size, overlap, channels) is exported after a few training steps: FLOPs and speed do not depend on the weights. Its
model inputs/s are measured here on batches of 32 (`inspector.frame_cost.measure_inputs_per_second`,
the measurement `inspector run --check` makes), and frames/s follow from the tiles per frame at the
set's native frame size, at 1280x720 and at 1920x1080.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.accuracy_tables import SUITE
from benchmarks.results import section_header, section_main
from inspector.frame_cost import frame_cost, inputs_per_second, measure_inputs_per_second
from inspector.image_files import list_images, read_image
from inspector.scorer import Scorer

MARK_START, MARK_END = "<!-- frame-rates:start -->", "<!-- frame-rates:end -->"
SIZES = ((720, 1280), (1080, 1920))
PIPED = ("PA_BDP01_TL", "PA_FVN01_TL")


def dev_sets() -> list[tuple[str, Path]]:
    from training.data import data_root

    root = data_root()
    return [(name, root / name) for name in SUITE] + [(f"piped {c}", root / "piped" / c) for c in PIPED] + \
        [("mvtec_screw", root / "mvtec_screw")]


def matmul_gflops(seconds: float = 3.0, n: int = 1024) -> float:
    """The machine's float32 roofline as this benchmark measures it: GFLOP/s of a square matrix product
    (numpy's BLAS, all cores), measured in the same run as the models."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    products_per_s = inputs_per_second(lambda _: a @ b, np.zeros(1), seconds)  # one product per run
    return 2 * n ** 3 * products_per_s / 1e9


def default_model(data: Path, work: Path) -> Path:
    from training.cli import default_config
    from training.fit import fit

    config = default_config(str(data), {"train.steps": 2, "selection.criterion": "last", "model.backbone": "none"})
    return fit(config, work, progress=False, evaluate_test=False).model_path


def measured_rows(model_of, args) -> list[tuple]:
    """Per dev set: the model `model_of(data, work)` exports, its inputs/s and the cost of a frame at the
    set's native size and at SIZES, with the matmul roofline measured right after it."""
    rows = []
    for name, data in dev_sets():
        if not data.is_dir():
            print(f"{name}: not found at {data}, skipped", flush=True)
            continue
        model = model_of(data, Path(tempfile.mkdtemp(prefix="qi_frames_")))
        scorer = Scorer(model, intra_op_threads=args.threads)
        rate = measure_inputs_per_second(scorer, seconds=args.seconds)
        native = read_image(list_images(data / "train" / "good")[0]).shape[:2]
        spec, flops = scorer.card.input, scorer.card.export.flops_per_item
        costs = [frame_cost(spec, *native, flops)] + [frame_cost(spec, h, w, flops) for h, w in SIZES]
        rows.append((name, spec, flops, rate, costs, matmul_gflops()))
        print(name, [c.describe(rate) for c in costs], f"roofline {rows[-1][-1]:.0f} GFLOP/s", flush=True)
    return rows


def rate_table(rows: list[tuple]) -> list[str]:
    lines = ["| set | model input | MFLOPs / input | inputs/s | GFLOP/s (of matmul roofline) | native frame: inputs, "
             "GFLOPs, frames/s | 1280x720: inputs, frames/s | 1920x1080: inputs, frames/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, spec, flops, rate, (native, hd, full), roofline in rows:
        achieved = rate * flops / 1e9
        geometry = (f"{spec.height} px tiles, overlap {spec.tile_overlap:g}" if spec.resize == "tile"
                    else f"{spec.width}x{spec.height} {spec.resize}")
        lines.append(f"| {name} | {geometry} | {flops / 1e6:.1f} | {rate:,.0f} | {achieved:.0f} ({achieved / roofline:.0%} "
                     f"of {roofline:.0f}) | {native.width}x{native.height}: "
                     f"{native.inputs:,}, {native.flops / 1e9:.2f}, {rate / native.inputs:,.1f} | {hd.inputs:,}, "
                     f"{rate / hd.inputs:,.2f} | {full.inputs:,}, {rate / full.inputs:,.2f} |")
    return lines


def rate_section(args, model_of, markers: tuple[str, str], title: str, module: str, model: str) -> str:
    """The section of one kind of model: `model` says which and what an input of it is."""
    rows = measured_rows(model_of, args)
    lines = section_header(markers[0], title, module)
    lines += ["", f"{model}; model inputs/s measured on batches of 32 with {args.threads or 'all'} onnxruntime threads. "
              "Native = the set's first training image. Roofline: a 1024x1024 float32 matrix product (numpy's BLAS, "
              "all cores) measured right after each model.", ""]
    return "\n".join(lines + rate_table(rows) + ["", markers[1]])


def run(args) -> str:
    return rate_section(args, default_model, (MARK_START, MARK_END), "Frame rates at the line's resolution",
                        "benchmarks.frame_rates", "The from-scratch tiled model per dev set (geometry as `inspector "
                        "train --data DIR --set model.backbone=none` chooses it); frames/s = inputs/s / tiles per "
                        "frame (the inputs columns)")


def add_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to measure each model")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
