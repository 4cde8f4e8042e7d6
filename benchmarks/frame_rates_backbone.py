"""Frames/s of the default recipe's model at the line's resolution: the pretrained backbone.

For every dev image set, the model `inspector train --data SET` makes since the default became the
pretrained backbone (GANomaly on EfficientNet-Lite0 features, whole frames at the training images'
size, at most 512 px on the long side) is exported after a few training steps: FLOPs and speed do
not depend on the GAN's weights, and its patch memory (score.memory_size patches, at most) is drawn
as in a full run. Model inputs/s are measured on batches of 32 as `inspector run --check` measures
them; a camera frame of any size is one model input (stretched to the model's size), so frames/s do
not fall with the camera's resolution as a tiled model's do (benchmarks.frame_rates), and the
detail a larger frame holds is lost. Decoding and resizing the camera frame are not counted here
(the daemon's own rate: `inspector run --check`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.frame_rates import add_arguments, rate_section
from benchmarks.results import section_main

MARK_START, MARK_END = "<!-- frame-rates-backbone:start -->", "<!-- frame-rates-backbone:end -->"


def default_model(data: Path, work: Path) -> Path:
    from training.cli import default_config
    from training.fit import fit

    config = default_config(str(data), {"train.steps": 2, "selection.criterion": "last"})
    return fit(config, work, progress=False, evaluate_test=False).model_path


def run(args) -> str:
    return rate_section(args, default_model, (MARK_START, MARK_END), "Frame rates of the default recipe (pretrained "
                        "backbone)", "benchmarks.frame_rates_backbone", "The model `inspector train --data DIR` trains "
                        "by default (model.backbone: efficientnet_lite0: whole frames at the training images' size, at "
                        "most 512 px on the long side; MFLOPs include the patch memory's search); a frame of any size "
                        "is one input")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
