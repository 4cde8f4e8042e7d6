"""`inspector recalibrate`: a new threshold from newly photographed good parts, without retraining.

When the line's look drifted a little (a lamp replaced, a new batch of material) the model may still
rank parts right while its scores moved: the threshold set at training then alarms on good parts.
Scoring fresh good photos with the exported model and setting the threshold on them with the same
rule as training (upper confidence limit of the 1 - target quantile) fixes that in seconds. The
graph is unchanged; the candidate's card records the new calibration and its parent.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from inspector.card import ImageInput, Lineage, ModelCard
from inspector.errors import InspectorError
from inspector.image_files import list_images
from inspector.scorer import Scorer

from .calibrate import calibrate
from .export import replace_card
from .fit import model_version
from .unusual_normals import PICTURE, unusual_record

log = logging.getLogger(__name__)


@dataclass
class Recalibrated:
    path: Path
    card: ModelCard
    old_threshold: float
    old_false_alarms: int  # of the new good images, how many the old threshold flags
    images: int
    unusual: dict | None = None  # the good photos that score far above the others (training.unusual_normals)
    picture: Path | None = None  # where they are drawn
    seen_in_training: int = 0  # of the new good images, how many are copies of the training folder's photos
    training_folder: Path | None = None


def model_of(run_or_model: Path) -> Path:
    """A run folder stands for its model.onnx."""
    path = run_or_model / "model.onnx" if run_or_model.is_dir() else run_or_model
    if not path.is_file():
        raise InspectorError(f"{run_or_model}: no model there (give a model.onnx or a run folder that holds one)")
    return path


def good_image_paths(folders: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise InspectorError(f"{folder}: not a folder of good-part photos")
        found = list_images(folder)
        if not found:
            raise InspectorError(f"{folder}: a folder with no images in it")
        paths += found
    return paths


def training_folder(card: ModelCard) -> Path | None:
    """The folder the model was trained on (<data>/train/good, from the card), if it is here."""
    folder = Path(card.training.data) / "train" / "good"
    return folder if folder.is_dir() else None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seen_in_training(paths: list[Path], folder: Path | None) -> int:
    """How many of `paths` are the training folder's photos: the same file or a byte-for-byte copy.
    The model was fitted on most of them, so they score lower than parts it never saw, and a threshold
    set on them alarms on new good parts more often than its target."""
    if folder is None:
        return 0
    trained: dict[int, list[Path]] = {}  # by file size: only photos of a trained size are read and hashed
    for photo in list_images(folder):
        trained.setdefault(photo.stat().st_size, []).append(photo)
    digests: dict[int, set[str]] = {}
    count = 0
    for path in paths:
        size = path.stat().st_size
        if size not in trained:
            continue
        if size not in digests:
            digests[size] = {_digest(p) for p in trained[size]}
        count += _digest(path) in digests[size]
    return count


PHOTOS_PER_CALL = 16  # photos scored at once: their frame-sized heatmaps are held only that long
CELLS_PER_PHOTO = 4096  # evenly strided heatmap cells of each photo kept for the median


def normal_scores(scorer: Scorer, paths: list[Path]) -> tuple[np.ndarray, float | None]:
    """Scores of good-part photos, and their heatmaps' median cell (from a strided sample of each; None
    without a heatmap); any photo the model cannot take is an error (it would bias the threshold)."""
    scores, cells, bad = [], [], []
    for start in range(0, len(paths), PHOTOS_PER_CALL):
        chunk = paths[start:start + PHOTOS_PER_CALL]
        for path, result in zip(chunk, scorer.score_files(chunk)):
            if result.rejected:
                bad.append((path, result))
                continue
            scores.append(result.raw)
            if result.heatmap is not None:
                flat = result.heatmap.ravel()
                cells.append(flat[::max(1, flat.size // CELLS_PER_PHOTO)])
    if bad:
        path, result = bad[0]
        raise InspectorError(f"{len(bad)} of {len(paths)} good photo(s) cannot be scored, e.g. {path}: {result.message}")
    baseline = float(np.median(np.concatenate(cells))) if cells else None
    return np.array(scores, dtype=np.float64), baseline


def recalibrate(run_or_model: Path, good: list[Path], out: Path | None = None,
                target_false_alarm_rate: float | None = None, confidence: float | None = None) -> Recalibrated:
    source = model_of(run_or_model)
    scorer = Scorer(source)
    card = scorer.card
    if not isinstance(card.input, ImageInput):
        raise InspectorError(f"{source}: recalibrate takes photos of good parts; this is a traffic model "
                             "(retrain it on the new normal rows instead)")
    paths = good_image_paths(good)
    scores, baseline = normal_scores(scorer, paths)
    old = card.calibration
    target = target_false_alarm_rate or old.target_false_alarm_rate or 0.01
    calibration = calibrate(scores, target, "quantile", confidence=confidence or old.confidence or 0.9)
    created = datetime.now(timezone.utc)
    # the synthetic self-check needs the torch model; it is not re-measured for a new threshold. The
    # heatmap's colours start where the new good photos' maps typically lie, as the scores moved with them
    score = card.score
    if baseline is not None and np.isfinite(baseline):
        score = score.model_copy(update={"map_baseline": max(baseline, 0.0)})
    new = card.with_updates(version=model_version(card.version, created), calibration=calibration, score=score,
                            lineage=Lineage(parent=card.version, change="recalibrated",
                                            created=created.isoformat(timespec="seconds"), new_good_images=len(paths)))
    out = out or source.with_name("candidate.onnx")
    if out.resolve() == source.resolve():
        raise InspectorError(f"{out}: write the candidate beside the active model, not over it "
                             "(inspector promote puts it in place)")
    replace_card(source, new, out)
    log.info("recalibrated %s on %d good photos: threshold %.4g -> %.4g", source, len(paths), old.threshold,
             calibration.threshold)
    picture = out.with_name(f"{out.stem}_{PICTURE}")
    unusual = unusual_record(scores, [str(p) for p in paths], calibration.threshold, picture)
    folder = training_folder(card)
    return Recalibrated(out, new, old.threshold, int(np.sum(scores >= old.threshold)), len(paths), unusual,
                        picture if picture.is_file() else None, seen_in_training(paths, folder), folder)
