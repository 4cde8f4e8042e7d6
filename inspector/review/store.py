"""Review items and the labels operators give them, in SQLite (WAL) next to the journal.

Why SQLite: the journal is an append-only text log that rotates away; the review page needs
filters and pagination that stay fast at 100,000 items, and labels must outlive restarts, journal
rotation and model hot-swaps. An embedded database file gives both with nothing to run.

Two tables:
  items    one row per item offered for review (every anomaly, and a sample of normal verdicts near
           the threshold): what the journal line says about it (daemon run, source, seq, model
           version, scores) plus its evidence file name. `label` is the latest review's label, kept
           beside the item so that filtering by review state uses an index.
  reviews  append-only (triggers refuse UPDATE and DELETE): item, label, note, reviewer, time.
  settings where the evidence folder is (pictures and captured frames are files there).
  tallies  items per source, model version, verdict and label, kept by triggers: the page's counts
           read a few rows instead of grouping 100,000 items on every refresh.

The schema version is SQLite's `user_version`; opening a file migrates it forward in one
transaction, and a file written by a newer inspector is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LABELS = ("defect", "false_alarm", "unsure")
VERDICTS = ("anomaly", "normal")
STATES = ("unreviewed", "reviewed", *LABELS)

MIGRATIONS: tuple[str, ...] = (
    # version 1
    """
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        run TEXT NOT NULL,
        source TEXT NOT NULL,
        seq INTEGER NOT NULL,
        origin TEXT NOT NULL,
        captured_at REAL NOT NULL,
        model_version TEXT NOT NULL,
        score REAL NOT NULL,
        normalised REAL NOT NULL,
        threshold REAL NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('anomaly', 'normal')),
        evidence TEXT,
        frame TEXT,
        label TEXT CHECK (label IN ('defect', 'false_alarm', 'unsure')),
        UNIQUE (run, source, seq)
    );
    CREATE INDEX items_by_source ON items (source, id);
    CREATE INDEX items_by_label ON items (label, id);
    CREATE INDEX items_by_verdict ON items (verdict, id);
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items (id),
        label TEXT NOT NULL CHECK (label IN ('defect', 'false_alarm', 'unsure')),
        note TEXT NOT NULL DEFAULT '',
        reviewer TEXT NOT NULL,
        reviewed_at REAL NOT NULL
    );
    CREATE INDEX reviews_by_item ON reviews (item_id, id);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE tallies (
        source TEXT NOT NULL,
        model_version TEXT NOT NULL,
        verdict TEXT NOT NULL,
        label TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (source, model_version, verdict, label)
    ) WITHOUT ROWID;
    CREATE TRIGGER items_are_tallied AFTER INSERT ON items BEGIN
        INSERT INTO tallies VALUES (NEW.source, NEW.model_version, NEW.verdict, COALESCE(NEW.label, ''), 1)
            ON CONFLICT (source, model_version, verdict, label) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER labels_are_tallied AFTER UPDATE OF label ON items BEGIN
        UPDATE tallies SET n = n - 1 WHERE source = OLD.source AND model_version = OLD.model_version
            AND verdict = OLD.verdict AND label = COALESCE(OLD.label, '');
        INSERT INTO tallies VALUES (NEW.source, NEW.model_version, NEW.verdict, COALESCE(NEW.label, ''), 1)
            ON CONFLICT (source, model_version, verdict, label) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER reviews_are_not_updated BEFORE UPDATE ON reviews
        BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
    CREATE TRIGGER reviews_are_not_deleted BEFORE DELETE ON reviews
        BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
ITEM_COLUMNS = ("id", "run", "source", "seq", "origin", "captured_at", "model_version", "score", "normalised",
                "threshold", "verdict", "evidence", "frame", "label")


class ReviewStoreError(Exception):
    pass


@dataclass(frozen=True)
class NewItem:
    run: str
    source: str
    seq: int
    origin: str
    captured_at: float
    model_version: str
    score: float
    normalised: float
    threshold: float
    verdict: str
    evidence: str | None
    frame: str | None = None  # the captured frame's file in the evidence folder


@dataclass(frozen=True)
class ItemFilter:
    """What the page's filters select; None means any."""

    source: str | None = None
    verdict: str | None = None  # anomaly | normal
    state: str | None = None  # unreviewed | reviewed | defect | false_alarm | unsure
    since: float | None = None  # captured_at bounds, seconds since the epoch
    until: float | None = None
    model_version: str | None = None

    def where(self) -> tuple[str, list]:
        clauses, values = [], []
        for column in ("source", "verdict", "model_version"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if self.state == "unreviewed":
            clauses.append("label IS NULL")
        elif self.state == "reviewed":
            clauses.append("label IS NOT NULL")
        elif self.state is not None:
            clauses.append("label = ?")
            values.append(self.state)
        if self.since is not None:
            clauses.append("captured_at >= ?")
            values.append(self.since)
        if self.until is not None:
            clauses.append("captured_at < ?")
            values.append(self.until)
        return (" AND ".join(clauses) or "1"), values


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ReviewStoreError(f"{path}: review database schema version {version} is newer than this inspector's "
                               f"({SCHEMA_VERSION}); upgrade the inspector")
    if version == SCHEMA_VERSION:
        return
    with connection:  # one transaction: a migration is applied whole or not at all
        connection.execute("BEGIN IMMEDIATE")
        for number in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[number]):
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit half-way); triggers keep their body."""
    buffer = ""
    for line in script.strip().splitlines():
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer!r}")


class ReviewStore:
    """Thread-safe: every thread gets its own connection (the pipeline writes items, the web server reviews)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _migrate(self._connection(), self.path)
        except sqlite3.Error as exc:
            raise ReviewStoreError(f"{self.path}: cannot open the review database ({exc})") from None

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)  # autocommit; BEGIN explicitly
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across a process crash
            connection.execute("PRAGMA foreign_keys = ON")
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # -- writes ---------------------------------------------------------------------------------

    def add_items(self, items: list[NewItem]) -> None:
        if not items:
            return
        connection = self._connection()
        with connection:
            connection.execute("BEGIN")
            connection.executemany(
                "INSERT OR IGNORE INTO items (run, source, seq, origin, captured_at, model_version, score, normalised, "
                "threshold, verdict, evidence, frame) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(i.run, i.source, i.seq, i.origin, i.captured_at, i.model_version, i.score, i.normalised,
                  i.threshold, i.verdict, i.evidence, i.frame) for i in items])

    def set_frame(self, item_id: int, frame: str) -> None:
        """Where the item's captured frame is now (relative to the evidence folder)."""
        self._connection().execute("UPDATE items SET frame = ? WHERE id = ?", (frame, item_id))

    def set_evidence_dir(self, folder: Path | None) -> None:
        """Where the items' pictures and frames are (the daemon records it; retraining reads it)."""
        try:
            connection = self._connection()
            if folder is None:
                connection.execute("DELETE FROM settings WHERE key = 'evidence_dir'")
            else:
                connection.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('evidence_dir', ?)",
                                   (str(Path(folder).resolve()),))
        except sqlite3.Error as exc:
            raise ReviewStoreError(f"{self.path}: cannot write the review database ({exc})") from None

    def evidence_dir(self) -> Path | None:
        row = self._connection().execute("SELECT value FROM settings WHERE key = 'evidence_dir'").fetchone()
        return Path(row[0]) if row is not None else None

    def add_review(self, item_id: int, label: str, reviewer: str, note: str = "", at: float | None = None) -> dict:
        """Append a review and make it the item's current label; returns the updated item."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
        if not reviewer:
            raise ValueError("a review needs a reviewer name")
        connection = self._connection()
        with connection:
            connection.execute("BEGIN IMMEDIATE")
            if connection.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise KeyError(item_id)
            connection.execute("INSERT INTO reviews (item_id, label, note, reviewer, reviewed_at) VALUES (?, ?, ?, ?, ?)",
                               (item_id, label, note, reviewer, time.time() if at is None else at))
            connection.execute("UPDATE items SET label = ? WHERE id = ?", (label, item_id))
        return self.item(item_id)

    # -- reads ----------------------------------------------------------------------------------

    def item(self, item_id: int) -> dict | None:
        row = self._connection().execute(f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE id = ?", (item_id,)).fetchone()
        return dict(row) if row is not None else None

    def items(self, selection: ItemFilter = ItemFilter(), before: int | None = None, after: int | None = None,
              limit: int = 50) -> list[dict]:
        """Newest first; `before` pages back (keyset pagination: as fast on page 2,000 as on page 1),
        `after` returns only items newer than the one the page shows on top."""
        where, values = selection.where()
        if before is not None:
            where += " AND id < ?"
            values.append(before)
        if after is not None:
            where += " AND id > ?"
            values.append(after)
        rows = self._connection().execute(
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE {where} ORDER BY id DESC LIMIT ?", (*values, limit))
        return [dict(row) for row in rows]

    def latest_reviews(self, item_ids: list[int]) -> dict[int, dict]:
        """The latest review of each item (for the note and the reviewer shown beside the label)."""
        if not item_ids:
            return {}
        marks = ", ".join("?" * len(item_ids))
        rows = self._connection().execute(
            f"SELECT r.item_id, r.label, r.note, r.reviewer, r.reviewed_at FROM reviews r "
            f"JOIN (SELECT item_id, MAX(id) AS last FROM reviews WHERE item_id IN ({marks}) GROUP BY item_id) latest "
            f"ON r.id = latest.last", item_ids)
        return {row["item_id"]: dict(row) for row in rows}

    def sources(self) -> list[str]:
        return [row[0] for row in self._connection().execute("SELECT DISTINCT source FROM tallies ORDER BY source")]

    def counts(self, by: str) -> list[dict]:
        """Per source or per model version: items, reviewed, each label, and the estimated precision of
        the alarms (confirmed defects / reviewed anomalies that got a defect or false-alarm label)."""
        if by not in ("source", "model_version"):
            raise ValueError(by)
        rows = self._connection().execute(
            f"SELECT {by} AS key, SUM(n) AS total, SUM(n * (verdict = 'anomaly')) AS anomalies, "
            f"SUM(n * (label != '')) AS reviewed, "
            f"SUM(n * (verdict = 'anomaly' AND label = 'defect')) AS confirmed, "
            f"SUM(n * (verdict = 'anomaly' AND label = 'false_alarm')) AS false_alarms, "
            f"SUM(n * (label = 'unsure')) AS unsure, "
            f"SUM(n * (verdict = 'normal' AND label = 'defect')) AS missed "
            f"FROM tallies GROUP BY {by} HAVING SUM(n) > 0 ORDER BY {by}")
        out = []
        for row in rows:
            entry = dict(row)
            judged = entry["confirmed"] + entry["false_alarms"]
            entry["precision"] = entry["confirmed"] / judged if judged else None
            out.append(entry)
        return out

    def reviews(self) -> Iterator[dict]:
        """Every review in the order given, with the item it is about (for export)."""
        rows = self._connection().execute(
            "SELECT r.id AS review_id, r.reviewed_at, r.reviewer, r.label, r.note, i.id AS item_id, i.run, i.source, "
            "i.seq, i.origin, i.captured_at, i.model_version, i.score, i.normalised, i.threshold, i.verdict, "
            "i.evidence, i.frame FROM reviews r JOIN items i ON i.id = r.item_id ORDER BY r.id")
        for row in rows:
            yield dict(row)

    def labelled_frames(self, label: str, verdict: str | None = None) -> tuple[list[tuple[dict, Path]], int]:
        """Items whose current label is `label` (and whose verdict was `verdict`, when given) with their
        captured frame's path, oldest first; and how many of them have no frame any more."""
        folder = self.evidence_dir()
        found, missing = [], 0
        for item in self.labelled(label):
            if verdict is not None and item["verdict"] != verdict:
                continue
            path = folder / item["frame"] if folder is not None and item["frame"] else None
            if path is not None and path.is_file():
                found.append((item, path))
            else:
                missing += 1
        return found, missing

    def labelled(self, label: str) -> list[dict]:
        """Items whose current label is `label`, oldest first (retraining reads the false alarms)."""
        rows = self._connection().execute(f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE label = ? ORDER BY id",
                                          (label,))
        return [dict(row) for row in rows]
