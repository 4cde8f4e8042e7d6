"""Heatmap overlays for evidence images and evaluation reports: frame | frame + heatmap, side by side."""

from __future__ import annotations

import cv2
import numpy as np

from .card import ModelCard


def heatmap_reference(card: ModelCard, threshold: float) -> float:
    """The map value drawn as full red. When the score is the map's maximum, that is the threshold in
    map units, so colour means the same on every frame; otherwise the calibration's typical maximum."""
    score = card.score
    if score.map_output and set(score.weights) == {"residual_max"}:
        return threshold * score.scales["residual_max"] / score.weights["residual_max"]
    return score.scales.get("residual_max", 1.0)


def colorize(heatmap: np.ndarray, reference: float, size: tuple[int, int]) -> np.ndarray:
    """HxW float map -> BGR uint8 JET picture of `size` (width, height); `reference` maps to red."""
    scaled = np.clip(heatmap / max(reference, 1e-12), 0.0, 1.0)
    picture = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.resize(picture, size, interpolation=cv2.INTER_LINEAR)


def as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def side_by_side(frame: np.ndarray, heatmap: np.ndarray, reference: float, alpha: float = 0.45) -> np.ndarray:
    """The frame and the frame blended with its heatmap, next to each other (BGR uint8)."""
    frame = as_bgr(frame)
    colour = colorize(heatmap, reference, (frame.shape[1], frame.shape[0]))
    blended = cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0)
    return np.hstack([frame, blended])
