"""Several inspectors sharing one Redis stream through a consumer group, against a real redis-server
started by the tests: every entry is journaled by some consumer, once unless a consumer died between
journaling and acknowledging; a consumer killed with SIGKILL has its entries claimed by the others;
a Redis restart is ridden out; frames travel as encoded images; verdicts can go back out to a stream."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time

import pytest

from .brokers import RedisServer
from .conftest import DATA, require
from .daemon_helpers import DaemonProcess, metric, scrape, train_flat_model, write_video

pytest.importorskip("redis")
pytestmark = pytest.mark.slow


def kdd_table(tmp_path, n: int):
    path = tmp_path / "flows.csv"
    with gzip.open(require(DATA / "nsl_kdd" / "KDDTest+.txt.gz"), "rt") as handle:
        path.write_text("".join(next(handle) for _ in range(n)))
    return path


def publish(redis: RedisServer, stream: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "inspector.cli", "publish", redis.url, stream, *args], check=True,
                   capture_output=True, timeout=120)


def consumer(tmp_path, name: str, model, redis: RedisServer, stream: str = "flows", sections: dict | None = None,
             **settings) -> DaemonProcess:
    source = {"name": "flows", "kind": "redis_stream", "url": redis.url, "stream": stream, "group": "inspectors",
              "consumer": name, "count": 200, "block_ms": 100, "claim_idle_s": 1.0, "claim_interval_s": 0.5,
              "reconnect": {"initial_s": 0.1, "max_s": 0.5}, **settings}
    return DaemonProcess(tmp_path / name, model, [source], evidence={"dir": None}, **(sections or {}))


def stop_holding_entries(process: subprocess.Popen, redis: RedisServer, name: str, timeout: float = 30.0) -> None:
    """SIGSTOP a consumer at a moment it holds delivered, unacknowledged entries (it is idle most of
    the time at the test's feed rate): stop, look at its pending entries, resume and retry if none."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        process.send_signal(signal.SIGSTOP)
        if redis.client().xpending_range("flows", "inspectors", "-", "+", 1, consumername=name):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"{name} never held an unacknowledged entry in {timeout:.0f} s")


def journaled_ids(*daemons: DaemonProcess) -> list[str]:
    return [line["entry_id"] for daemon in daemons for line in daemon.journal_lines()]


def stream_ids(redis: RedisServer, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in redis.client().xrange(stream)]


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s")


@pytest.mark.parametrize("consumers", [2, 3])
def test_consumers_of_one_group_share_the_stream_and_journal_every_entry_once(nsl_model, tmp_path, consumers):
    with RedisServer(tmp_path / "redis") as redis:
        # nobody dies here: claims at the default idle time, so a consumer slowed by a busy machine keeps its entries
        daemons = [consumer(tmp_path, f"inspector-{k}", nsl_model, redis, claim_idle_s=30.0, claim_interval_s=5.0).start()
                   for k in range(consumers)]
        try:
            publish(redis, "flows", "--table", str(kdd_table(tmp_path, 3000)), "--rate", "2000")
            ids = stream_ids(redis, "flows")
            wait_until(lambda: len(journaled_ids(*daemons)) >= 3000, what="3000 journal lines")
            wait_until(lambda: redis.client().xpending("flows", "inspectors")["pending"] == 0, what="all acknowledged")
            for daemon in daemons:
                assert daemon.terminate() == 0
        finally:
            for daemon in daemons:
                daemon.__exit__(None)
    journaled = journaled_ids(*daemons)
    assert sorted(journaled) == sorted(ids)  # every entry, none twice
    assert all(len(daemon.journal_lines()) > 0 for daemon in daemons)
    for daemon in daemons:  # each consumer journals its share in stream order
        own = [line["entry_id"] for line in daemon.journal_lines()]
        assert own == sorted(own, key=lambda e: tuple(map(int, e.split("-"))))
        assert all(line["origin"] == f"flows {line['entry_id']}" for line in daemon.journal_lines())


def test_a_consumer_killed_mid_stream_has_its_entries_claimed_and_journaled_by_the_other(nsl_model, tmp_path):
    with RedisServer(tmp_path / "redis") as redis:
        feeder = subprocess.Popen([sys.executable, "-m", "inspector.cli", "publish", redis.url, "flows", "--table",
                                   str(kdd_table(tmp_path, 12000)), "--rate", "3000"], stderr=subprocess.DEVNULL)
        victim = consumer(tmp_path, "victim", nsl_model, redis, sections={"queue": {"size": 64}}).start()
        survivor = consumer(tmp_path, "survivor", nsl_model, redis).start()
        try:
            wait_until(lambda: len(victim.journal_lines()) >= 1000, what="the victim at work")
            stop_holding_entries(victim.process, redis, "victim")  # else the kill may find it idle, all acknowledged
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(10)
            assert feeder.wait(60) == 0
            ids = stream_ids(redis, "flows")
            wait_until(lambda: set(journaled_ids(victim, survivor)) >= set(ids), what="every entry journaled")
            wait_until(lambda: redis.client().xpending("flows", "inspectors")["pending"] == 0, what="all acknowledged")
            redelivered = metric(scrape(survivor.port), "inspector_stream_redeliveries_total", source="flows")
            assert survivor.terminate() == 0
        finally:
            victim.__exit__(None)
            survivor.__exit__(None)
    journaled = journaled_ids(victim, survivor)
    assert set(journaled) == set(ids) and len(ids) == 12000
    duplicates = len(journaled) - len(set(journaled))
    assert redelivered > 0  # the victim held delivered, unacknowledged entries when it died
    assert duplicates <= redelivered  # a repeat only for an entry journaled but not yet acknowledged by the victim


def test_consumers_ride_out_a_redis_restart(nsl_model, tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    table = kdd_table(tmp_path, 6000)
    daemons = []
    try:
        publish(redis, "flows", "--table", str(table), "--limit", "3000")
        daemons = [consumer(tmp_path, f"inspector-{k}", nsl_model, redis).start() for k in range(2)]
        wait_until(lambda: len(journaled_ids(*daemons)) >= 3000, what="the first half")
        redis.stop()  # SIGTERM: Redis writes its append-only file and exits
        time.sleep(1.0)
        down = [scrape(d.port) for d in daemons]
        redis.start()
        lines = [line for line in table.read_text().splitlines()[3000:]]
        rest = tmp_path / "rest.csv"
        rest.write_text("\n".join(lines) + "\n")
        publish(redis, "flows", "--table", str(rest))
        ids = stream_ids(redis, "flows")
        wait_until(lambda: set(journaled_ids(*daemons)) >= set(ids), what="the second half after the restart")
        for daemon in daemons:
            assert daemon.terminate() == 0
    finally:
        for daemon in daemons:
            daemon.__exit__(None)
        redis.__exit__(None)
    assert len(ids) == 6000 and sorted(set(journaled_ids(*daemons))) == sorted(ids)
    assert all(metric(s, "inspector_source_up", source="flows") == 0 for s in down)
    assert all("retrying" in d.log() for d in daemons)


def test_frames_published_from_a_video_are_scored_and_verdicts_go_out_to_a_stream(tmp_path):
    model = train_flat_model(tmp_path / "model")
    video = tmp_path / "line.avi"
    truth = write_video(video, 40, defect_every=5)
    with RedisServer(tmp_path / "redis") as redis:
        publish(redis, "frames", "--video", str(video), "--camera", "cam7")
        source = {"name": "frames", "kind": "redis_stream", "url": redis.url, "stream": "frames", "payload": "frames",
                  "field": "image", "block_ms": 100}
        outputs = {"redis_stream": {"url": redis.url, "stream": "verdicts"}}
        with DaemonProcess(tmp_path, model, [source], outputs=outputs) as daemon:
            wait_until(lambda: len(daemon.journal_lines()) >= 40, what="40 frames")
            wait_until(lambda: redis.client().xlen("verdicts") >= 40, what="40 verdicts out")
            journal = daemon.journal_lines()
            assert daemon.terminate() == 0
        out = [json.loads(fields[b"verdict"]) for _, fields in redis.client().xrange("verdicts")]
    assert [line["seq"] for line in journal] == list(range(1, 41))
    assert [i + 1 for i, line in enumerate(journal) if line["verdict"] == "anomaly"] == truth
    assert all(line["origin"].startswith("cam7 ") for line in journal)
    assert [(m["seq"], m["verdict"]) for m in out] == [(line["seq"], line["verdict"]) for line in journal]


def test_a_published_folder_arrives_in_the_cameras_numbering_with_images_only(tmp_path):
    """frame_2 before frame_10, a WebP photo included; a note and a folder named like a photo are not sent;
    a folder with no photo is one error line, not '0 entries published'."""
    import cv2
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("frame_10.png", "frame_2.png", "frame_1.webp"):
        cv2.imwrite(str(folder / name), np.full((24, 24, 3), 128, np.uint8))
    (folder / "notes.txt").write_text("not a photo")
    (folder / "frame_3.png").mkdir()
    with RedisServer(tmp_path / "redis") as redis:
        publish(redis, "frames", "--folder", str(folder))
        sent = [fields[b"camera"].decode() for _, fields in redis.client().xrange("frames")]
    assert sent == ["frame_1.webp", "frame_2.png", "frame_10.png"]
    (tmp_path / "empty").mkdir()
    refused = subprocess.run([sys.executable, "-m", "inspector.cli", "publish", "redis://127.0.0.1:9/0", "frames",
                              "--folder", str(tmp_path / "empty")], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("empty: no images (PNG, JPEG, BMP, TIFF or WebP) in this folder")


def test_an_entry_without_the_row_field_is_rejected_in_its_place_and_acknowledged(nsl_model, tmp_path):
    with RedisServer(tmp_path / "redis") as redis:
        client = redis.client()
        rows = kdd_table(tmp_path, 3).read_text().splitlines()
        client.xadd("flows", {"row": rows[0]})
        client.xadd("flows", {"something": "else"})
        client.xadd("flows", {"row": rows[1]})
        with consumer(tmp_path, "only", nsl_model, redis) as daemon:
            wait_until(lambda: len(daemon.journal_lines()) >= 3, what="3 lines")
            wait_until(lambda: client.xpending("flows", "inspectors")["pending"] == 0, what="all acknowledged")
            journal = daemon.journal_lines()
            assert daemon.terminate() == 0
    assert [line["seq"] for line in journal] == [1, 2, 3]
    assert [line.get("reason") for line in journal] == [None, "missing_field", None]
