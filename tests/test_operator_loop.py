"""The whole operator's loop against real daemons: the lamp changed and good parts alarm; the operator marks
them false alarm on the review page; retrain; the candidate is shadow-tested on the live line; promoted
through the daemon's hot swap; a candidate that would miss a confirmed defect is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from inspector.review.promote import promote
from inspector.review.security import add_user
from inspector.review.shadow import shadow_report
from inspector.review.store import ReviewStore
from inspector.scorer import Scorer
from tests.daemon_helpers import DaemonProcess, PageClient, free_port, metric
from tests.test_feedback_loop import drifted_part
from training.flat_parts import train_flat_model
from training.recalibrate import recalibrate
from training.retrain import retrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory):
    # frames as they come: the lamp change below must make false alarms (exposure standardising would undo it)
    return train_flat_model(tmp_path_factory.mktemp("parent"), standardise_frames=False).parent


def a_line(tmp_path, parent_run):
    """A line's folder: an inbox the camera drops frames into, the active model (a copy of the parent's),
    a port for the review page and the folder source's settings."""
    line = tmp_path / "line"
    inbox = line / "inbox"
    inbox.mkdir(parents=True)
    active = line / "model.onnx"
    shutil.copyfile(parent_run / "model.onnx", active)
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.1, "poll_interval_s": 0.05}]
    return line, inbox, active, free_port(), sources


def drop_parts(inbox, prefix: str, count: int, defects: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for index in range(count + defects):
        ok, data = cv2.imencode(".png", drifted_part(rng, defect=index >= count))
        kind = "defect" if index >= count else "good"
        staged = inbox / f".{prefix}_{kind}_{index:02d}.part"
        staged.write_bytes(data.tobytes())
        staged.rename(inbox / f"{prefix}_{kind}_{index:02d}.png")


def label_everything_new(client: PageClient, store: ReviewStore) -> None:
    """The operator: defects are defects, every flagged good part a false alarm."""
    token = client.csrf()
    for item in store.items(limit=1000):
        if item["label"] is None:
            label = "defect" if "_defect_" in item["origin"] else "false_alarm"
            status, _, body = client.request(f"/items/{item['id']}/review", {"label": label}, {"X-CSRF-Token": token})
            assert status == 200, body


def scored(daemon: DaemonProcess, count: int) -> None:
    daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="inbox", verdict="normal")
                    + metric(s, "inspector_items_scored_total", source="inbox", verdict="anomaly") >= count, timeout=60)


def test_reviewed_false_alarms_are_learned_shadow_tested_and_promoted_into_the_running_daemon(parent_run, tmp_path):
    line, inbox, active, page_port, sources = a_line(tmp_path, parent_run)
    database = line / "journal" / "reviews.sqlite3"

    # 1. the lamp changed: good parts alarm; the operator marks them on the page
    with DaemonProcess(line, active, sources, review={"port": page_port}) as daemon:
        drop_parts(inbox, "day1", 10, 2, seed=1)
        scored(daemon, 12)
        time.sleep(0.3)
        store = ReviewStore(database)
        assert sum(i["verdict"] == "anomaly" for i in store.items()) >= 10  # nearly every good part alarms
        label_everything_new(PageClient(f"http://127.0.0.1:{page_port}"), store)
        assert daemon.terminate() == 0

    # 2. retrain from the reviews: a candidate that names its parent
    candidate = retrain(parent_run, database, [], out=tmp_path / "candidate", budget_s=10, progress=False)
    assert candidate.card.lineage.parent == Scorer(active).card.version

    # 3. shadow test on the live line; the operator keeps reviewing what the active model flags
    shadow = {"model": str(candidate.run.model)}
    with DaemonProcess(line, active, sources, review={"port": page_port}, shadow=shadow,
                       model={"path": str(active), "intra_op_threads": 1, "watch_interval_s": 0.2}) as daemon:
        drop_parts(inbox, "day2", 10, 2, seed=2)
        scored(daemon, 12)
        time.sleep(0.3)
        label_everything_new(PageClient(f"http://127.0.0.1:{page_port}"), store)
        report = shadow_report(line / "journal" / "shadow.jsonl", database)
        assert report["items"] == 12 and report["candidate_alarms"] < report["active_alarms"]
        assert report["reviewed_false_alarms"] >= 8 and report["false_alarms_fixed"] >= 0.8 * report["reviewed_false_alarms"]
        assert report["confirmed_defects"] == 2 and report["defects_still_caught"] == 2
        printed = subprocess.run([sys.executable, "-m", "inspector.cli", "shadow", "report",
                                  str(line / "journal" / "shadow.jsonl"), "--reviews", str(database)],
                                 capture_output=True, text=True, check=True).stdout
        assert (f"reviewed false alarms the candidate fixes: {report['false_alarms_fixed']} of "
                f"{report['reviewed_false_alarms']}") in printed
        assert "confirmed defects the candidate still catches: 2 of 2" in printed
        # the same test offline (no daemon): every reviewed frame kept, and new photos of good parts
        photos = tmp_path / "photos"
        photos.mkdir()
        drop_parts(photos, "photo", 3, 0, seed=5)
        offline = subprocess.run([sys.executable, "-m", "inspector.cli", "shadow", "score", str(candidate.run.model),
                                  "--active", str(active), "--reviews", str(database), "--photos", str(photos), "--json",
                                  "--no-progress"], capture_output=True, text=True, check=True).stdout
        offline = json.loads(offline.strip().splitlines()[-1])
        assert offline["confirmed_defects"] == offline["defects_still_caught"] == 4  # day 1 and day 2
        assert offline["false_alarms_fixed"] >= 0.8 * offline["reviewed_false_alarms"] >= 0.8 * 16
        assert offline["items"] == 3 + offline["reviewed_false_alarms"] + offline["confirmed_defects"]
        assert (line / "journal" / "shadow-offline.jsonl").is_file()
        samples = daemon.wait_for(lambda s: metric(s, "inspector_shadow_disagreements_total", source="inbox",
                                                   kind="active_only") >= 1)
        assert metric(samples, "inspector_shadow_anomalies_total", source="inbox") == report["candidate_alarms"]

        # 4. promotion: checked against the confirmed defects, then hot-swapped by the running daemon
        check = promote(candidate.run.model, active, database)
        assert check.confirmed_caught == 4 and check.still_caught == 4 and not check.missed
        version = candidate.card.version
        daemon.wait_for(lambda s: any(k[0] == "inspector_model_info" and dict(k[1])["version"] == version
                                      for k in s), timeout=30)
        assert (line / "model.previous.onnx").is_file()
        assert daemon.terminate() == 0


def test_a_candidate_that_misses_a_confirmed_defect_is_not_promoted_unless_forced(parent_run, tmp_path):
    line, inbox, active, page_port, sources = a_line(tmp_path, parent_run)
    with DaemonProcess(line, active, sources, review={"port": page_port}) as daemon:
        drop_parts(inbox, "day1", 0, 3, seed=3)
        scored(daemon, 3)
        time.sleep(0.3)
        store = ReviewStore(line / "journal" / "reviews.sqlite3")
        label_everything_new(PageClient(f"http://127.0.0.1:{page_port}"), store)
        assert daemon.terminate() == 0
    # a careless recalibration on defective parts: its threshold sits above the defects
    careless = tmp_path / "careless"
    careless.mkdir()
    drop_parts(careless, "bad", 0, 20, seed=4)
    blind = recalibrate(parent_run, [careless], out=tmp_path / "blind.onnx").path
    before = active.read_bytes()
    refused = subprocess.run([sys.executable, "-m", "inspector.cli", "promote", str(blind), "--to", str(active),
                              "--reviews", str(line / "journal" / "reviews.sqlite3")], capture_output=True, text=True)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "misses 3 of 3 confirmed defect(s) the active model caught" in refused.stderr
    assert active.read_bytes() == before

    # the page's promote button (a logged-in user, the candidate in shadow) is refused the same way
    users = line / "users"
    add_user(users, "ana", "correct horse battery")
    with DaemonProcess(line, active, sources, review={"port": page_port, "users_file": str(users)},
                       shadow={"model": str(blind)}) as daemon:
        client = PageClient(f"http://127.0.0.1:{page_port}")
        token = client.csrf("/login")
        client.request("/login", {"username": "ana", "password": "correct horse battery", "csrf_token": token})
        status, _, body = client.request("/promote", {}, {"X-CSRF-Token": client.csrf()})
        assert status == 409 and "misses 3 of 3 confirmed defect(s) the active model caught" in body
        assert daemon.terminate() == 0
    assert active.read_bytes() == before

    check = promote(blind, active, line / "journal" / "reviews.sqlite3", force=True)
    assert len(check.missed) == 3 and Scorer(active).card.version == Scorer(blind).card.version


def test_a_shadow_candidate_is_judged_by_its_own_cards_threshold_not_the_active_override(parent_run, tmp_path):
    from inspector.config import parse_daemon_config
    from inspector.daemon import Daemon
    from inspector.review.shadow import ShadowSink

    config = parse_daemon_config({"model": {"path": str(parent_run / "model.onnx"), "threshold": 123.0},
                                  "sources": [{"name": "in", "kind": "folder", "path": str(tmp_path)}],
                                  "metrics": {"port": 0}, "journal": {"path": str(tmp_path / "j.jsonl")},
                                  "shadow": {"model": str(parent_run / "model.onnx")}}, "line.yaml")
    daemon = Daemon(config)
    try:
        (shadow,) = [sink for sink in daemon.pipeline.sinks if isinstance(sink, ShadowSink)]
        assert daemon.model.scorer.threshold == 123.0
        assert shadow.candidate.threshold == Scorer(parent_run / "model.onnx").card.calibration.threshold
    finally:
        daemon.server.server.server_close()  # never started: nothing to shut down, only the socket to free
