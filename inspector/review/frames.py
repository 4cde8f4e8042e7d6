"""A reviewed item's frame is kept out of evidence retention: retraining needs it weeks later.

Evidence retention (`evidence.max_files`, `max_bytes`) deletes the oldest pictures and frames first;
a frame an operator labelled is linked into `reviewed/` under the evidence folder (a hard link: no
copy, on the same file system; a copy where links are not possible), which retention never visits,
and the item points at that path from then on.
"""

from __future__ import annotations

import logging
import os
import shutil

from .store import ReviewStore

log = logging.getLogger(__name__)
KEPT = "reviewed"


def keep_reviewed_frame(store: ReviewStore, item: dict) -> dict:
    """Keep `item`'s frame out of retention; returns the item as stored now (unchanged when there is nothing to keep)."""
    folder = store.evidence_dir()
    frame = item.get("frame")
    if folder is None or not frame or frame.startswith(f"{KEPT}/"):
        return item
    source, target = folder / frame, folder / KEPT / frame
    try:
        target.parent.mkdir(exist_ok=True)
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    except OSError as exc:  # already deleted by retention, or the disk is full: the label still counts
        log.warning("review item %s: its frame %s cannot be kept for retraining (%s)", item["id"], source,
                    exc.strerror or exc)
        return item
    store.set_frame(item["id"], f"{KEPT}/{frame}")
    return store.item(item["id"])
