"""The per-part verdict message that the line outputs publish (MQTT, Redis stream).

One JSON object per decided item, scored or rejected, with what a reject gate or a PLC needs and
nothing it does not (no image bytes unless a thumbnail is asked for). Its schema is
deploy/mqtt/verdict.schema.json; a test validates real messages against it.
"""

from __future__ import annotations

import base64
import time

import cv2
import numpy as np

from ..scorer import Scorer, ScoreResult
from ..sources.base import Item

SCHEMA_VERSION = 1


def thumbnail_jpeg(image: np.ndarray, longest_side: int) -> str | None:
    """Base64 JPEG of the frame scaled so its longest side is `longest_side` pixels."""
    height, width = image.shape[:2]
    scale = min(1.0, longest_side / max(height, width))
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return base64.b64encode(encoded.tobytes()).decode("ascii") if ok else None


def verdict_message(item: Item, result: ScoreResult, scorer: Scorer, line: str,
                    thumbnail_px: int = 0) -> dict:
    card = scorer.card
    message = {"schema": SCHEMA_VERSION, "line": line, "source": item.source, "seq": item.seq, "origin": item.origin,
               "captured_at": round(item.captured_at, 6), "published_at": round(time.time(), 6),
               "model": {"name": card.name, "version": card.version}, "threshold": scorer.threshold,
               "evidence": item.evidence}
    if not result.rejected:
        finite = bool(np.isfinite(result.raw))
        message.update(verdict=result.verdict, score=result.raw if finite else None,
                       normalised=result.normalised if finite else None)
    else:
        message.update(verdict="rejected", score=None, normalised=None, reason=result.reason, error=result.message)
    if thumbnail_px and item.image is not None:
        message["thumbnail_jpeg"] = thumbnail_jpeg(item.image, thumbnail_px)
    return message


def model_summary(scorer: Scorer) -> dict:
    """The active model, as a retained message: what a line controller shows next to the verdicts."""
    card = scorer.card
    return {"schema": SCHEMA_VERSION, "name": card.name, "version": card.version, "family": card.family,
            "threshold": scorer.threshold, "input": card.input.kind,
            "target_false_alarm_rate": card.calibration.target_false_alarm_rate}
