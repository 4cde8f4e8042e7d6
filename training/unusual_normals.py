"""Good training photos that score like defects: named in the summary, shown in unusual_good.png.

A train/good folder is sorted by hand, and a part with a hair, a blob or a scratch slips in. Its
out-of-fold score (or held-out score) then sits far above the other normal scores, and because the
threshold is an upper limit of the normal scores' tail, that one photo can set it: on KolektorSDD,
whose train/good holds a few surfaces with a fibre, a bright spot or a streak on them (no crack, so
labelled good), the four highest of 261 out-of-fold scores were those photos and the threshold sat
at the highest. Only the user can tell a flaw they would reject from normal variation the model has
seen too little of, so the photos are named, highest first, and drawn; nothing is dropped.

"Far above" is the rule the calibration already uses for scores far below the rest, mirrored: a log
score more than OUTLIER_SPREADS robust spreads above the median (the modified z-score of Iglewicz
and Hoaglin). On log-normal scores it flags about 2 in 10,000; on the normal scores recorded by 36
earlier suite runs (six of each set) it names 0 to 10 photos per set: real oddities by eye on
kolektor_sdd and glass_fibre (a dark thread), and on tire four ordinary-looking tyres at 1.17-1.24x
the median, where the scores' spread is tight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import ItemRejected
from inspector.image_files import read_image
from inspector.overlay import as_bgr

from .calibrate import LOW_OUTLIER_SPREADS, robust_spread
from .run_folder import RunFolder

OUTLIER_SPREADS = LOW_OUTLIER_SPREADS
MIN_SCORES = 10  # a median and a spread from fewer normal scores are too rough to call one of them far
SHOWN = 8  # photos drawn in unusual_good.png (all of them are in selection.json)
PER_ROW = 4
PICTURE = "unusual_good.png"
TILE_HEIGHT = 300


@dataclass(frozen=True)
class NormalPhotos:
    """The files of the normal frames calibration sees: all of them, in the order of the frames, and
    which of them are held out (the ones scored when the threshold is not cross-fitted)."""

    paths: list[Path]
    held_out: np.ndarray

    def scored(self, cross_fitted: bool) -> list[str]:
        return [str(self.paths[i]) for i in (range(len(self.paths)) if cross_fitted else self.held_out)]


@dataclass(frozen=True)
class UnusualNormal:
    path: str
    score: float
    times_median: float  # its score over the median normal score: how far out it is, in the score's own unit


def unusual_normals(scores: np.ndarray, paths: list[str]) -> list[UnusualNormal]:
    """The normal items (one score and one path each) whose log score lies more than OUTLIER_SPREADS
    robust spreads above the median of all, highest first; none from fewer than MIN_SCORES scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(paths):
        raise ValueError(f"{len(scores)} scores for {len(paths)} paths")
    if len(scores) < MIN_SCORES or np.any(scores <= 0):
        return []
    logs = np.log(scores)
    centre = float(np.median(logs))
    spread = robust_spread(logs, centre)
    if spread <= 0:  # half the scores tie: no spread to measure "far" in
        return []
    median = float(np.median(scores))  # the unit of times_median, as of the threshold's in `record`
    far = np.flatnonzero(logs > centre + OUTLIER_SPREADS * spread)
    return [UnusualNormal(paths[i], float(scores[i]), float(scores[i] / median))
            for i in far[np.argsort(-scores[far], kind="stable")]]


def unusual_record(scores: np.ndarray, paths: list[str], threshold: float, picture: Path) -> dict | None:
    """The far-scoring normal photos as a `record`, drawn into `picture`; None when there are none (an
    older picture there is removed either way, so a rerun shows no stale one)."""
    picture.unlink(missing_ok=True)
    unusual = unusual_normals(scores, paths)
    if not unusual:
        return None
    draw(unusual, threshold, picture)
    return record(unusual, len(scores), threshold, float(np.median(scores)))


def note_unusual_normals(run: RunFolder, scores: np.ndarray, paths: list[str], threshold: float) -> dict | None:
    """After a training run's calibration: its far-scoring normal photos in selection.json
    (`unusual_normal`) and the run's unusual_good.png."""
    found = unusual_record(scores, paths, threshold, run.root / PICTURE)
    if found is not None:
        run.record_selection("unusual_normal", found)
    return found


def record(unusual: list[UnusualNormal], n_scores: int, threshold: float, median: float) -> dict:
    """selection.json's `unusual_normal`: the photos and what the threshold is next to them."""
    return {"rule": f"log score more than {OUTLIER_SPREADS:g} robust spreads above the median of the "
                    f"{n_scores} normal scores the threshold was set from",
            "threshold_times_median": round(threshold / median, 4),
            "photos": [{"path": u.path, "score": float(f"{u.score:.6g}"), "times_median": round(u.times_median, 4)}
                       for u in unusual]}


def draw(unusual: list[UnusualNormal], threshold: float, path: Path) -> Path | None:
    """Up to SHOWN of the photos side by side, each captioned with its name and score, where they can
    be looked at. No heatmap: at training the exported model was fitted on some of them (their scores
    came from fold models or the held-out part), so its map would not show what made them score high."""
    tiles = []
    for item in unusual[:SHOWN]:
        try:
            image = as_bgr(read_image(item.path))
        except ItemRejected:  # gone or changed since training: its tile is left out
            continue
        scale = min(TILE_HEIGHT / image.shape[0], 3 * TILE_HEIGHT / image.shape[1])  # a panorama: at most 3 tiles wide
        height, width = (max(1, round(side * scale)) for side in image.shape[:2])
        tile = np.full((TILE_HEIGHT + 40, max(width, 180), 3), 255, np.uint8)
        tile[20:20 + height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, Path(item.path).name[:28], (2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(tile, f"{item.times_median:.2f}x median, {item.score / threshold:.2f}x threshold",
                    (2, TILE_HEIGHT + 34), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 200), 1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        return None
    gap = np.full((TILE_HEIGHT + 40, 6, 3), 255, np.uint8)
    rows = [np.hstack([part for tile in tiles[i:i + PER_ROW] for part in (tile, gap)][:-1])
            for i in range(0, len(tiles), PER_ROW)]
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    if not cv2.imwrite(str(path), np.vstack(rows)[:-6]):
        raise OSError(f"could not write {path}")
    return path


def summary_line(found: dict, picture: Path | None = None, recorded_in: str | None = "selection.json unusual_normal",
                 take_out: str = "take it out of the good photos (train/good) and train again", named: int = 5) -> str:
    """The summary's line about the far-scoring good photos of an `unusual_normal` record; `take_out`
    says how to act on one that shows a flaw."""
    photos = found["photos"]
    first, *rest = [f"{Path(p['path']).name} {p['times_median']:.2f}x" for p in photos[:named]]
    names = ", ".join([f"{first} the median normal score", *rest])
    more = f" and {len(photos) - named} more" if len(photos) > named else ""
    where = [str(picture)] if picture is not None and picture.is_file() else []
    where += [recorded_in] if recorded_in else []
    see = f" ({'; '.join(where)})" if where else ""
    return (f"check: {len(photos)} good photo(s) score far above the other normal scores{see}: {names}{more}; "
            f"the threshold is {found['threshold_times_median']:.2f}x. A part among them that you would reject raises "
            f"the threshold: {take_out}; if they are good, photograph more parts like them")
