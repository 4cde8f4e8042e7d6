"""The review database: labels that last, history that cannot be rewritten, filters that page fast."""

from __future__ import annotations

import sqlite3

import pytest

from inspector.review.store import SCHEMA_VERSION, ItemFilter, NewItem, ReviewStore, ReviewStoreError


def offered(seq: int, source: str = "cam0", verdict: str = "anomaly", model: str = "v1", run: str = "run-a",
            captured_at: float | None = None) -> NewItem:
    normalised = 1.5 if verdict == "anomaly" else 0.9
    return NewItem(run, source, seq, f"frame {seq}", captured_at if captured_at is not None else 1_000 + seq, model,
                   normalised * 2.0, normalised, 2.0, verdict, f"{source}_{seq:08d}.png")


def test_a_new_file_is_created_at_the_current_schema_version_in_wal_mode(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    connection = sqlite3.connect(tmp_path / "reviews.sqlite3")
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_a_file_from_a_newer_inspector_is_refused_not_misread(tmp_path):
    path = tmp_path / "reviews.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(ReviewStoreError, match="newer than this inspector"):
        ReviewStore(path)


def test_labels_survive_reopening_and_the_item_shows_its_latest_label(tmp_path):
    path = tmp_path / "reviews.sqlite3"
    store = ReviewStore(path)
    store.add_items([offered(1), offered(2)])
    first = store.items()[-1]["id"]
    store.add_review(first, "defect", "ana")
    store.add_review(first, "false_alarm", "ben", note="reflection on the rim")
    store.close()

    again = ReviewStore(path)
    item = again.item(first)
    assert item["label"] == "false_alarm"
    latest = again.latest_reviews([first])[first]
    assert (latest["reviewer"], latest["note"]) == ("ben", "reflection on the rim")
    history = [(r["label"], r["reviewer"]) for r in again.reviews()]
    assert history == [("defect", "ana"), ("false_alarm", "ben")]


def test_reviews_are_append_only(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(1)])
    store.add_review(store.items()[0]["id"], "defect", "ana")
    connection = sqlite3.connect(tmp_path / "reviews.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("UPDATE reviews SET label = 'false_alarm'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("DELETE FROM reviews")


def test_a_review_needs_a_known_label_a_reviewer_and_an_existing_item(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(1)])
    item_id = store.items()[0]["id"]
    with pytest.raises(ValueError, match="label must be one of"):
        store.add_review(item_id, "maybe", "ana")
    with pytest.raises(ValueError, match="reviewer"):
        store.add_review(item_id, "defect", "")
    with pytest.raises(KeyError):
        store.add_review(item_id + 100, "defect", "ana")


def test_the_same_journal_item_is_stored_once_but_a_restart_that_reuses_seq_is_a_new_item(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(1), offered(1)])
    store.add_items([offered(1, run="run-b")])  # the daemon restarted: seq counts from 1 again
    assert [(i["run"], i["seq"]) for i in store.items()] == [("run-b", 1), ("run-a", 1)]


def test_keyset_pages_walk_every_item_once_newest_first(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(seq) for seq in range(1, 104)])
    seen, before = [], None
    while True:
        page = store.items(before=before, limit=25)
        if not page:
            break
        seen += [i["seq"] for i in page]
        before = page[-1]["id"]
    assert seen == list(range(103, 0, -1))
    newest = store.items(limit=1)[0]["id"]
    store.add_items([offered(104), offered(105)])
    assert [i["seq"] for i in store.items(after=newest)] == [105, 104]


def test_filters_select_by_source_verdict_review_state_time_and_model(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(1, "cam0"), offered(2, "cam1"), offered(3, "cam0", verdict="normal"),
                     offered(4, "cam0", model="v2"), offered(5, "cam1", captured_at=5_000)])
    by_seq = {i["seq"]: i["id"] for i in store.items()}
    store.add_review(by_seq[1], "false_alarm", "ana")
    store.add_review(by_seq[2], "defect", "ana")

    def seqs(**selection) -> list[int]:
        return sorted(i["seq"] for i in store.items(ItemFilter(**selection)))

    assert seqs(source="cam0") == [1, 3, 4]
    assert seqs(verdict="normal") == [3]
    assert seqs(state="unreviewed") == [3, 4, 5]
    assert seqs(state="reviewed") == [1, 2]
    assert seqs(state="false_alarm") == [1]
    assert seqs(since=1_002, until=1_005) == [2, 3, 4]
    assert seqs(model_version="v2") == [4]
    assert seqs(source="cam0", state="unreviewed", verdict="anomaly") == [4]


def test_counts_give_estimated_precision_per_source_and_model(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(seq) for seq in range(1, 6)] + [offered(6, verdict="normal"), offered(7, "cam1")])
    ids = {i["seq"]: i["id"] for i in store.items()}
    for seq, label in ((1, "defect"), (2, "defect"), (3, "defect"), (4, "false_alarm"), (5, "unsure"), (6, "defect")):
        store.add_review(ids[seq], label, "ana")
    cam0, cam1 = store.counts("source")
    assert (cam0["key"], cam0["total"], cam0["anomalies"], cam0["reviewed"]) == ("cam0", 6, 5, 6)
    assert (cam0["confirmed"], cam0["false_alarms"], cam0["unsure"], cam0["missed"]) == (3, 1, 1, 1)
    assert cam0["precision"] == pytest.approx(0.75)
    assert cam1["precision"] is None  # nothing judged yet
    (model,) = store.counts("model_version")
    assert (model["key"], model["total"]) == ("v1", 7)


def test_a_page_deep_in_100000_items_is_read_through_an_index_not_a_scan(tmp_path):
    """Keyset pagination uses the primary key (or the filter's index); benchmarks/review_page.py times it."""
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(seq, source=f"cam{seq % 4}") for seq in range(1, 100_001)])
    plan = " ".join(str(row[3]) for row in store._connection().execute(
        "EXPLAIN QUERY PLAN SELECT id FROM items WHERE source = ? AND id < ? ORDER BY id DESC LIMIT 41", ("cam1", 50_000)))
    assert "items_by_source" in plan and "SCAN items" not in plan
    page = store.items(ItemFilter(source="cam1"), before=50_000, limit=41)
    assert [i["seq"] for i in page] == list(range(49_997, 49_997 - 4 * 41, -4))


def test_the_tallies_kept_by_triggers_match_a_count_of_the_items(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    store.add_items([offered(seq, source=f"cam{seq % 3}", verdict="normal" if seq % 4 == 0 else "anomaly",
                             model=f"v{seq % 2}") for seq in range(1, 200)])
    for item in store.items(limit=200)[::3]:
        store.add_review(item["id"], "false_alarm", "ana")
        store.add_review(item["id"], "defect", "ben")  # a change of mind moves the item between tallies
    connection = store._connection()
    for by in ("source", "model_version"):
        direct = {row[0]: row[1:] for row in connection.execute(
            f"SELECT {by}, COUNT(*), SUM(verdict = 'anomaly'), SUM(label IS NOT NULL), "
            f"SUM(verdict = 'anomaly' AND label IS 'defect') FROM items GROUP BY {by}")}
        tallied = {row["key"]: (row["total"], row["anomalies"], row["reviewed"], row["confirmed"])
                   for row in store.counts(by)}
        assert tallied == direct
