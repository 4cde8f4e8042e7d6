"""Shadow testing: a candidate model scores the live items beside the active one, acting on nothing.

The shadow sink runs the candidate on every batch the active model scored (reusing its prepared input
when both models take the same input) and journals one line per item: the active model's verdict and
the candidate's, keyed like the review items (daemon run, source, seq). The report joins those lines
with the reviews: which reviewed false alarms the candidate would have fixed, which confirmed defects
it still catches. It costs a second inference per item: shadow-test for a shift, not for ever.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter

from ..active_model import ActiveModel
from ..scorer import ANOMALY, NORMAL, Scorer, ScoreResult
from ..sinks.journal import JournalSink
from ..sources.base import Item

log = logging.getLogger(__name__)


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.anomalies = Counter("inspector_shadow_anomalies", "Items the shadow candidate would have flagged",
                                 ["source"], registry=registry)
        self.disagreements = Counter("inspector_shadow_disagreements", "Items the candidate and the active model "
                                     "decide differently: candidate_only = only the candidate alarms, active_only = "
                                     "only the active model does", ["source", "kind"], registry=registry)

    def register_source(self, source: str) -> None:
        self.anomalies.labels(source)
        for kind in ("candidate_only", "active_only"):
            self.disagreements.labels(source, kind)


class ShadowSink:
    name = "shadow"

    def __init__(self, candidate: Scorer, journal: JournalSink, active: ActiveModel, run: str,
                 metrics: ShadowMetrics | None = None, on_error: Callable[[str], None] | None = None):
        self.candidate = candidate
        self.journal = journal
        self._active = active
        self.run = run
        self.metrics = metrics
        self._on_error = on_error or (lambda sink: None)

    def _score(self, items: list[Item]) -> list[ScoreResult | None]:
        results: list[ScoreResult | None] = [None] * len(items)
        frames = [i for i, item in enumerate(items) if item.image is not None or item.prepared is not None]
        windows = [i for i, item in enumerate(items) if item.features is not None]
        if frames:
            scored = self.candidate.score_images([items[i].image for i in frames],
                                                 [f"{items[i].source} {items[i].origin}" for i in frames],
                                                 heatmaps=False, prepared=[items[i].prepared for i in frames])
            for i, result in zip(frames, scored):
                results[i] = result
        if windows:
            scored = self.candidate.score_features(np.stack([items[i].features for i in windows]))
            for i, result in zip(windows, scored):
                results[i] = result
        return results

    def handle(self, items: list[Item], results: list[ScoreResult], inference_s: float) -> None:
        pairs = [(item, active) for item, active in zip(items, results) if not active.rejected]
        if not pairs:
            return
        try:
            shadows = self._score([item for item, _ in pairs])
        except Exception as exc:  # a candidate that fails must never disturb the line
            log.error("shadow candidate %s failed on a batch (%s); the active model is unaffected",
                      self.candidate.path, str(exc).splitlines()[0][:200])
            self._on_error("shadow")
            return
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        versions = (self._active.version, self.candidate.card.version)
        lines = []
        for (item, active), shadow in zip(pairs, shadows):
            if shadow is None:
                continue
            lines.append(shadow_line(now, (self.run, item.source, item.seq, item.origin), versions, active, shadow))
            if not shadow.rejected:
                self._count(item.source, active.verdict, shadow.verdict)
        if lines:
            self.journal.write(lines)

    def _count(self, source: str, active: str, candidate: str) -> None:
        if self.metrics is None:
            return
        if candidate == ANOMALY:
            self.metrics.anomalies.labels(source).inc()
        if active != candidate:
            kind = "candidate_only" if candidate == ANOMALY else "active_only"
            self.metrics.disagreements.labels(source, kind).inc()

    def close(self) -> None:
        self.journal.close()


def shadow_line(now: str, key: tuple[str, str, int, str], versions: tuple[str, str], active: ScoreResult,
                shadow: ScoreResult) -> dict:
    """One shadow journal line: the item's key (run, source, seq, origin), both models' versions and decisions."""
    run, source, seq, origin = key
    line = {"time": now, "run": run, "source": source, "seq": seq, "origin": origin, "active_version": versions[0],
            "active_score": round(active.raw, 6), "active_verdict": active.verdict, "candidate_version": versions[1]}
    if shadow.rejected:
        line.update(candidate_verdict="rejected", reason=shadow.reason)
    else:
        line.update(candidate_score=round(shadow.raw, 6), candidate_normalised=round(shadow.normalised, 6),
                    candidate_verdict=shadow.verdict)
    return line


OFFLINE_RUN = "offline"  # the run named by lines of files scored offline (not review items)


def offline_frames(paths: list[Path], reviews: Path | None) -> tuple[list[tuple[tuple, Path]], int]:
    """What an offline shadow test scores: every reviewed item's kept frame (keyed like the live lines, so
    the report joins the labels) and the image files under `paths`; and how many reviewed items lost
    their frame."""
    from ..image_files import list_images
    from .store import LABELS, ReviewStore

    frames: list[tuple[tuple, Path]] = []
    missing = 0
    if reviews is not None:
        store = ReviewStore(reviews)
        for label in LABELS:
            found, lost = store.labelled_frames(label)
            frames += [((item["run"], item["source"], item["seq"], item["origin"]), path) for item, path in found]
            missing += lost
        store.close()
    files = [file for path in paths for file in (list_images(path) if path.is_dir() else [path])]
    frames += [((OFFLINE_RUN, "files", index, str(file)), file) for index, file in enumerate(files, 1)]
    return frames, missing


def offline_shadow(active: Scorer, candidate: Scorer, frames: list[tuple[tuple, Path]], journal: Path,
                   batch: int = 16, progress: bool = True) -> list[str]:
    """Score `frames` with both models and write the shadow journal the live sink would have written;
    returns what the active model rejected (an unreadable file, a wrong size: one message each)."""
    rejected = []
    from tqdm import tqdm

    versions = (active.card.version, candidate.card.version)
    journal.parent.mkdir(parents=True, exist_ok=True)
    with journal.open("wb") as out, tqdm(total=len(frames), unit="frame", disable=not progress,
                                         desc="shadow") as bar:
        for start in range(0, len(frames), batch):
            chunk = frames[start:start + batch]
            paths = [path for _, path in chunk]
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            pairs = zip(chunk, active.score_files(paths, heatmaps=False), candidate.score_files(paths, heatmaps=False))
            for (key, _), first, second in pairs:
                if first.rejected:  # as live: an item the active model rejected is not shadowed
                    rejected.append(first.message or first.reason)
                else:
                    out.write(orjson.dumps(shadow_line(now, key, versions, first, second)) + b"\n")
            bar.update(len(chunk))
    return rejected


def shadow_lines(path: Path) -> Iterator[dict]:
    """The shadow journal's lines, rotated files first (oldest to newest); a cut last line is skipped."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for file in [*[p for p in rotated if p.suffix[1:].isdigit()], path]:
        if not file.exists():
            continue
        with file.open("rb") as handle:
            for raw in handle:
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue


def shadow_report(shadow_journal: Path, reviews: Path | None = None) -> dict:
    """Alarms of each model, disagreements, and with reviews: false alarms fixed, confirmed defects kept."""
    tally: Tally = Tally()
    decided: dict[tuple, dict] = {}
    versions = set()
    for line in shadow_lines(shadow_journal):
        if line.get("candidate_verdict") not in (ANOMALY, NORMAL):
            tally["candidate_rejected"] += 1
            continue
        versions.add((line["active_version"], line["candidate_version"]))
        tally["items"] += 1
        tally["active_alarms"] += line["active_verdict"] == ANOMALY
        tally["candidate_alarms"] += line["candidate_verdict"] == ANOMALY
        if line["active_verdict"] != line["candidate_verdict"]:
            tally["candidate_only" if line["candidate_verdict"] == ANOMALY else "active_only"] += 1
        decided[(line["run"], line["source"], line["seq"])] = line
    report = {"items": tally["items"], "active_alarms": tally["active_alarms"],
              "candidate_alarms": tally["candidate_alarms"], "candidate_only_alarms": tally["candidate_only"],
              "active_only_alarms": tally["active_only"], "candidate_rejected": tally["candidate_rejected"],
              "models": sorted({f"{a} -> {c}" for a, c in versions})}
    if reviews is not None:
        from .store import ReviewStore

        store = ReviewStore(reviews)
        false_alarms = [decided[key] for key in _keys(store.labelled("false_alarm")) if key in decided]
        defects = [decided[key] for key in _keys(store.labelled("defect")) if key in decided]
        store.close()
        report["reviewed_false_alarms"] = len(false_alarms)
        report["false_alarms_fixed"] = sum(line["candidate_verdict"] == NORMAL for line in false_alarms)
        report["confirmed_defects"] = len(defects)
        report["defects_still_caught"] = sum(line["candidate_verdict"] == ANOMALY for line in defects)
        report["defects_missed"] = [f"{line['source']} {line['origin']}" for line in defects
                                    if line["candidate_verdict"] != ANOMALY]
    return report


def _keys(items: list[dict]) -> Iterator[tuple]:
    for item in items:
        yield item["run"], item["source"], item["seq"]
