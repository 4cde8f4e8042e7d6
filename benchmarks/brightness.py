"""Normal variation a line shows: the false-alarm rate on test/good frames made darker and brighter.

Each normal test frame is scaled by the FACTORS (pixel values times the factor, clipped to 0-255:
a lamp ageing, an aperture, a shift in ambient light) and scored at the calibrated threshold; a
recipe robust to lighting keeps these rates near the one on the frames as they are (the project's
goal: at most twice the 1% target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from inspector.image_files import list_images, read_image

FACTORS = (0.7, 1.3)


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def good_test_frames(root: Path) -> list[np.ndarray]:
    return [read_image(path) for path in list_images(root / "test" / "good")]  # what evaluation reads


def brightness_false_alarms(score_frames: Callable[[list[np.ndarray]], np.ndarray], root: Path,
                            threshold: float) -> dict[str, float]:
    """{"0.7": rate, "1.3": rate}: share of test/good frames at or above `threshold` after scaling."""
    frames = good_test_frames(root)
    return {str(factor): float(np.mean(score_frames([scaled(f, factor) for f in frames]) >= threshold))
            for factor in FACTORS}
