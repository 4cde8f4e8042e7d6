"""The README's first command: synthetic parts -> train -> calibrate -> export -> evaluate.

Everything it needs is generated on the spot (no downloads), sized to finish in about a minute on
two cores, and left in the output folder for the user to open.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import validate_train_config
from .fit import fit
from .synthetic import write_dataset

DEMO_SIZE = 64


def demo_config(data: Path, steps: int) -> dict:
    return {
        "name": "demo", "data": {"path": str(data)},
        "input": {"height": DEMO_SIZE, "width": DEMO_SIZE, "channels": 3, "color_order": "rgb"},
        "model": {"base_width": 8, "latent_dim": 64},
        "train": {"steps": steps, "batch_size": 16, "augment": {"hflip": True, "vflip": True, "rot90": True}},
        "score": {"weights": {"residual_max": 1.0}, "pool_kernel": 5},
    }


def run_demo(out: Path, steps: int) -> int:
    started = time.perf_counter()
    out = Path(out)
    data = write_dataset(out / "data", size=DEMO_SIZE)
    print(f"[1/3] generated synthetic parts in {data} (train/good: normal only; test/: good, speck, scratch, stain)")
    config = validate_train_config(demo_config(data, steps), "demo")
    print(f"[2/3] training GANomaly for {steps} steps on normal parts only, then calibrating and exporting ...")
    result = fit(config, out / "run")
    card, metrics = result.card, result.metrics or {}
    print(f"[3/3] model: {result.model_path}  threshold {card.calibration.threshold:.3g} "
          f"(quantile for a {card.calibration.target_false_alarm_rate:.0%} false-alarm rate on "
          f"{card.calibration.n_samples} held-out normal parts), torch/onnx max diff {card.export.parity_max_abs_diff:.1e}")
    print(f"      test: image AUROC {metrics.get('image_auroc', float('nan')):.3f}, pixel AUROC "
          f"{metrics.get('pixel_auroc', float('nan')):.3f}, recall {metrics.get('recall', 0):.2f}, "
          f"false-alarm rate {metrics.get('false_alarm_rate', 0):.2f}")
    print(f"      report: {out / 'run' / 'report'} (roc.png, score_histogram.png, examples.png)")
    print(f"      try: inspector score {result.model_path} {data / 'test' / 'speck' / '0000.png'}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
