"""Heatmap overlays for evidence images and evaluation reports: frame | frame + heatmap, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .card import ModelCard


@dataclass(frozen=True)
class HeatmapScale:
    """How map values become colours: `low` and below blue, `high` and above red, linear between;
    the labels say what the two ends mean under the colour bar."""

    low: float
    high: float
    low_label: str
    high_label: str


def heatmap_reference(card: ModelCard, threshold: float) -> float:
    """The map value drawn as full red. When the map is in the score's unit (or the score is the map's
    maximum), that is the threshold in map units, so colour means the same on every frame; otherwise
    the calibration's typical maximum."""
    score = card.score
    if score.map_output and score.map_in_score_units:
        return threshold
    if score.map_output and set(score.weights) == {"residual_max"}:
        return threshold * score.scales["residual_max"] / score.weights["residual_max"]
    return score.scales.get("residual_max", 1.0)


def heatmap_scale(card: ModelCard, threshold: float) -> HeatmapScale:
    """The colour scale of this card's heatmaps: from the map's typical level on good frames
    (score.map_baseline; 0 on older cards, or where it is not below the red end) to heatmap_reference."""
    high = heatmap_reference(card, threshold)
    baseline = card.score.map_baseline
    low = baseline if baseline is not None and 0 <= baseline < high else 0.0
    return HeatmapScale(low, high, "typical good surface" if low > 0 else "0", reference_label(card))


def colorize(heatmap: np.ndarray, scale: HeatmapScale, size: tuple[int, int]) -> np.ndarray:
    """HxW float map -> BGR uint8 JET picture of `size` (width, height), coloured on `scale`."""
    scaled = np.clip((heatmap - scale.low) / max(scale.high - scale.low, 1e-12), 0.0, 1.0)
    picture = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.resize(picture, size, interpolation=cv2.INTER_LINEAR)


def as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def side_by_side(frame: np.ndarray, heatmap: np.ndarray, scale: HeatmapScale, alpha: float = 0.45) -> np.ndarray:
    """The frame and the frame blended with its heatmap, next to each other (BGR uint8)."""
    frame = as_bgr(frame)
    colour = colorize(heatmap, scale, (frame.shape[1], frame.shape[0]))
    blended = cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0)
    return np.hstack([frame, blended])


CAPTION_MIN_WIDTH = 420  # pixels: room for the caption's longest line on small frames
LINE_HEIGHT = 16
BAR_HEIGHT = 14


def reference_label(card: ModelCard) -> str:
    """What full red means, in words, for the colour bar (see heatmap_reference)."""
    if card.score.map_output and (card.score.map_in_score_units or set(card.score.weights) == {"residual_max"}):
        return "red = the threshold's level"
    return "red = the typical maximum on good parts"


def colour_bar(width: int, scale: HeatmapScale) -> np.ndarray:
    """A JET gradient strip with what its two ends mean beneath (`scale`'s labels), BGR uint8."""
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (BAR_HEIGHT, 1))
    legend = np.zeros((LINE_HEIGHT, width, 3), np.uint8)
    _text(legend, scale.low_label, 2, 12)
    size = cv2.getTextSize(scale.high_label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]
    _text(legend, scale.high_label, max(2, width - size - 2), 12)
    return np.vstack([cv2.applyColorMap(ramp, cv2.COLORMAP_JET), legend])


def evidence_picture(frame: np.ndarray, heatmap: np.ndarray, scale: HeatmapScale, caption: list[str]) -> np.ndarray:
    """What an operator opens: frame | overlay, the colour scale, and the caption lines (score,
    threshold, verdict, source, time, model) under them, so the PNG explains itself without the journal."""
    pair = side_by_side(frame, heatmap, scale)
    width = max(pair.shape[1], CAPTION_MIN_WIDTH)
    if pair.shape[1] < width:
        pair = np.hstack([pair, np.zeros((pair.shape[0], width - pair.shape[1], 3), np.uint8)])
    text = np.zeros((LINE_HEIGHT * len(caption) + 4, width, 3), np.uint8)
    for row, line in enumerate(caption):
        _text(text, line, 4, LINE_HEIGHT * (row + 1) - 3)
    return np.vstack([pair, colour_bar(width, scale), text])


def _text(picture: np.ndarray, line: str, x: int, y: int) -> None:
    """ASCII only: OpenCV's Hershey fonts draw '?' for anything else."""
    printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in line)
    cv2.putText(picture, printable, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
