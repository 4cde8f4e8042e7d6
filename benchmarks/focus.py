"""Normal variation a line shows, part two: the false-alarm rate on test/good frames slightly out of focus.

Each normal test frame is blurred by a Gaussian of SIGMAS pixels (of the photo as stored: a lens
drifting out of focus, vibration, a part standing a little off its seat) and scored at the
calibrated threshold. It measures; nothing is chosen from it. Saved run folders can be measured
again without training:

    python -m benchmarks.focus RUN_DIR [RUN_DIR ...]      # each holding model.onnx and config.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from benchmarks.brightness import good_test_frames

SIGMAS = (1.0, 2.0)


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def focus_false_alarms(score_frames: Callable[[list[np.ndarray]], np.ndarray], root: Path,
                       threshold: float) -> dict[str, float]:
    """{"1.0": rate, "2.0": rate}: share of test/good frames at or above `threshold` after blurring."""
    frames = good_test_frames(root)
    return {str(sigma): float(np.mean(score_frames([blurred(f, sigma) for f in frames]) >= threshold))
            for sigma in SIGMAS}


def exported_scores(model: Path) -> tuple[Callable[[list[np.ndarray]], np.ndarray], float]:
    """The exported model's frame scores (a frame it rejects counts as an alarm) and its threshold."""
    from inspector.scorer import Scorer

    scorer = Scorer(model)
    return (lambda frames: np.array([np.inf if r.rejected else r.raw
                                     for r in scorer.score_images(frames, heatmaps=False)])), scorer.threshold


def run_data(run: Path) -> Path:
    """The image folder a run folder's config.json trained on ($QI_DATA expanded as training does)."""
    from training.config import expand_data_path

    return expand_data_path(json.loads((run / "config.json").read_text())["data"]["path"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="False alarms of saved runs on their data's test/good frames, "
                                                 "as photographed and blurred (benchmarks/focus.py)")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by inspector train (model.onnx, "
                                                           "config.json naming an image folder)")
    args = parser.parse_args(argv)
    for run in args.runs:
        try:
            data = run_data(run)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"{run}: not a run folder with an image data path ({error})", file=sys.stderr)
            return 2
        if not (run / "model.onnx").is_file() or not (data / "test" / "good").is_dir():
            print(f"{run}: needs model.onnx and {data}/test/good", file=sys.stderr)
            return 2
        score_frames, threshold = exported_scores(run / "model.onnx")
        sharp = float(np.mean(score_frames(good_test_frames(data)) >= threshold))
        rates = focus_false_alarms(score_frames, data, threshold)
        print(f"{run}: false alarms on {data.name} test/good: as photographed {sharp:.3f}, "
              + ", ".join(f"blurred {sigma} px {rate:.3f}" for sigma, rate in rates.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
