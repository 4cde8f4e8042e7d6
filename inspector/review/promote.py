"""`inspector promote`: put a candidate model in the active model's place, unless it would miss a
confirmed defect the active model caught.

The check needs no shadow run: every item an operator confirmed as a defect, that the active model
flagged, kept its captured frame; the candidate scores those frames now. The swap itself is the
daemon's existing one: the file is replaced by an atomic rename, which the daemon's watcher (or a
SIGHUP) turns into a hot swap between batches after the candidate's self-test. The replaced model is
kept beside it (`<name>.previous.onnx`) so a promotion can be undone the same way.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InspectorError
from ..scorer import ANOMALY, Scorer


@dataclass
class PromotionCheck:
    confirmed_caught: int = 0  # confirmed defects the active model flagged (with a frame to re-score)
    still_caught: int = 0
    missed: list[str] = field(default_factory=list)  # "source origin (normalised x.xx)"
    without_frame: int = 0


def check_candidate(candidate: Scorer, reviews: Path) -> PromotionCheck:
    from .store import ReviewStore, ReviewStoreError

    try:
        store = ReviewStore(reviews)
    except ReviewStoreError as exc:
        raise InspectorError(str(exc)) from None
    check = PromotionCheck()
    # confirmed defects the active model flagged (its misses: the candidate is not held to them)
    caught, check.without_frame = store.labelled_frames("defect", verdict=ANOMALY)
    for item, frame in caught:
        check.confirmed_caught += 1
        (result,) = candidate.score_files([frame], heatmaps=False)
        if not result.rejected and result.verdict == ANOMALY:
            check.still_caught += 1
        else:
            shown = "rejected" if result.rejected else f"normalised {result.normalised:.2f}"
            check.missed.append(f"{item['source']} {item['origin']} ({shown})")
    store.close()
    return check


def active_version(path: Path) -> str | None:
    """The version on the active model file's card, or None when it cannot be read as a model."""
    try:
        return Scorer(path).card.version
    except InspectorError:
        return None


def promote(candidate_path: Path, active_path: Path, reviews: Path | None = None, force: bool = False) -> PromotionCheck | None:
    candidate = Scorer(candidate_path)
    candidate.self_test()
    check = None
    if reviews is not None:
        if not reviews.is_file():
            raise InspectorError(f"{reviews}: no review database there")
        check = check_candidate(candidate, reviews)
        if check.missed and not force:
            raise InspectorError(f"{candidate_path} misses {len(check.missed)} of {check.confirmed_caught} confirmed "
                                 f"defect(s) the active model caught, e.g. {check.missed[0]}; not promoted "
                                 "(--force promotes anyway)")
    if active_path.exists():
        if active_path.resolve() == candidate_path.resolve() or active_version(active_path) == candidate.card.version:
            # a second promotion of the same model would overwrite the kept previous model with it: no undo left
            raise InspectorError(f"{candidate_path} ({candidate.card.version}) is already the active model")
        shutil.copy2(active_path, active_path.with_name(active_path.stem + ".previous.onnx"))
    staged = active_path.with_name(f".{active_path.name}.promoting")
    shutil.copyfile(candidate_path, staged)  # same folder: the rename below is atomic
    os.replace(staged, active_path)
    return check
