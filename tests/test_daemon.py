"""The daemon as it runs beside a line: real video files through cv2.VideoCapture, a watched folder,
a dead RTSP camera, SIGTERM under load; metrics scraped over HTTP, the journal read back."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import yaml

from inspector.overlay import CAPTION_MIN_WIDTH

from .daemon_helpers import (DaemonProcess, flat_part, frame_number, health, metric, train_flat_model,
                             wait_for_unhealthy, write_video)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat_model"))


def test_video_frames_are_all_scored_journaled_and_the_defective_ones_flagged(model, tmp_path):
    video = tmp_path / "line.avi"
    truth = write_video(video, 60, defect_every=7)
    sources = [{"name": "cam0", "kind": "camera", "uri": str(video), "realtime": False}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        samples = daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="cam0", verdict="normal")
                                  + metric(s, "inspector_items_scored_total", source="cam0", verdict="anomaly") >= 60)
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    normal = metric(samples, "inspector_items_scored_total", source="cam0", verdict="normal")
    anomalies = metric(samples, "inspector_items_scored_total", source="cam0", verdict="anomaly")
    assert normal + anomalies == 60 == len(lines)
    assert anomalies == len(truth) == metric(samples, "inspector_anomalies_total", source="cam0")
    assert sorted(frame_number(l["origin"]) for l in lines if l["verdict"] == "anomaly") == truth
    assert [l["seq"] for l in lines] == list(range(1, 61))
    assert metric(samples, "inspector_anomaly_score_count", source="cam0") == 60
    assert metric(samples, "inspector_end_to_end_latency_seconds_count", source="cam0") == 60
    assert metric(samples, "inspector_last_anomaly_timestamp_seconds", source="cam0") > time.time() - 120
    info = [k for k in samples if k[0] == "inspector_model_info"]
    assert len(info) == 1 and dict(info[0][1])["name"] == "flat"
    evidence = sorted(daemon.evidence.glob("*.png"))
    assert len(evidence) == len(truth)
    for path in evidence:
        picture = cv2.imread(str(path))
        assert picture is not None and picture[:48, :128].shape == (48, 128, 3)  # frame | overlay on top
        assert picture.shape[1] == CAPTION_MIN_WIDTH and picture.shape[0] > 48  # then the scale and the caption


def test_folder_source_scores_dropped_files_once_and_never_reads_a_half_written_one(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(5)
    ok, first = cv2.imencode(".png", flat_part(rng))
    cv2.imwrite(str(inbox / "a_existing.png"), flat_part(rng))
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.2, "poll_interval_s": 0.05,
                "incomplete_grace_s": 3.0}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="inbox", verdict="normal") >= 1)
        for name in ("b.png", "c.png", "d.png"):
            cv2.imwrite(str(inbox / name), flat_part(rng))
        partial = inbox / "e_slow.png"
        data = first.tobytes()
        partial.write_bytes(data[: len(data) // 2])  # a writer that pauses mid-file
        (inbox / "z_corrupt.png").write_text("not an image at all")
        time.sleep(1.0)  # far longer than settle_s: size has been stable, but the file is incomplete
        assert not (inbox / "done" / "e_slow.png").exists() and not (inbox / "rejected" / "e_slow.png").exists()
        assert "e_slow.png" not in {l["origin"] for l in daemon.journal_lines()}
        with partial.open("ab") as handle:
            handle.write(data[len(data) // 2:])
        samples = daemon.wait_for(lambda s: metric(s, "inspector_items_rejected_total", source="inbox",
                                                   reason="decode_failed") >= 1
                                  and metric(s, "inspector_items_scored_total", source="inbox", verdict="normal") >= 5)
        time.sleep(0.3)
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    scored = sorted(l["origin"] for l in lines if l["verdict"] != "rejected")
    assert scored == ["a_existing.png", "b.png", "c.png", "d.png", "e_slow.png"]
    assert [l["origin"] for l in lines if l["verdict"] == "rejected"] == ["z_corrupt.png"]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == scored
    assert [p.name for p in (inbox / "rejected").iterdir()] == ["z_corrupt.png"]
    assert not list(inbox.glob("*.png"))
    assert metric(samples, "inspector_items_rejected_total", source="inbox", reason="decode_failed") == 1


def test_folder_source_scores_a_cameras_unpadded_numbering_in_the_order_it_was_taken(model, tmp_path):
    """frame_2 before frame_10: the journal's order is the line's, not plain string order."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(6)
    for number in (10, 2, 1, 11, 9):
        cv2.imwrite(str(inbox / f"frame_{number}.png"), flat_part(rng))
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.1, "poll_interval_s": 0.05}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="inbox", verdict="normal")
                        + metric(s, "inspector_items_scored_total", source="inbox", verdict="anomaly") >= 5)
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    assert [l["origin"] for l in sorted(lines, key=lambda l: l["seq"])] == [
        "frame_1.png", "frame_2.png", "frame_9.png", "frame_10.png", "frame_11.png"]


def test_a_lost_camera_shows_down_and_retries_while_the_daemon_stays_healthy(model, tmp_path):
    video = tmp_path / "ok.avi"
    write_video(video, 30)
    sources = [{"name": "dead-rtsp", "kind": "camera", "uri": "rtsp://127.0.0.1:9/stream",
                "reconnect": {"initial_s": 0.1, "max_s": 0.4}, "stale_after_s": 120},
               {"name": "cam-ok", "kind": "camera", "uri": str(video), "realtime": False, "loop": True}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        first = daemon.wait_for(lambda s: metric(s, "inspector_source_reconnects_total", source="dead-rtsp") >= 2)
        later = daemon.wait_for(lambda s: metric(s, "inspector_source_reconnects_total", source="dead-rtsp")
                                > metric(first, "inspector_source_reconnects_total", source="dead-rtsp") + 1)
        status, body = health(daemon.port)
        assert daemon.terminate() == 0
    assert metric(later, "inspector_source_up", source="dead-rtsp") == 0
    assert metric(later, "inspector_source_up", source="cam-ok") == 1
    assert metric(later, "inspector_items_scored_total", source="cam-ok", verdict="normal") > 30
    assert status == 200 and body["sources"] == {"dead-rtsp": "retrying", "cam-ok": "up"}
    assert daemon.log().count("cannot open rtsp://127.0.0.1:9/stream") == 1  # logged once per outage


def test_a_camera_silent_past_its_limit_fails_healthz_with_the_reason_and_no_password(model, tmp_path):
    sources = [{"name": "gate", "kind": "camera", "uri": "rtsp://admin:S3cretPass@127.0.0.1:9/stream",
                "reconnect": {"initial_s": 0.1, "max_s": 0.2}, "stale_after_s": 1.0}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_source_reconnects_total", source="gate") >= 1)
        status, body = wait_for_unhealthy(daemon.port)
        assert daemon.terminate() == 0
    assert status == 503 and body["status"] == "unhealthy" and body["sources"] == {"gate": "stalled"}
    reason = body["reasons"]["gate"]
    assert reason.startswith("no frame for") and "limit 1 s" in reason and "cannot open rtsp://***@127.0.0.1:9" in reason
    assert "S3cretPass" not in daemon.log() and "S3cretPass" not in json.dumps(body)


@pytest.mark.parametrize("workers", [1, 3])
def test_sigterm_under_load_journals_every_frame_read_and_exits_0(model, tmp_path, workers):
    """With several scoring workers too: the journal holds every frame read, in capture order."""
    video = tmp_path / "long.avi"
    write_video(video, 400)
    sources = [{"name": "cam0", "kind": "camera", "uri": str(video), "realtime": False, "loop": True}]
    daemon = DaemonProcess(tmp_path, model, sources, queue={"size": 64},
                           batching={"max_batch": 16, "max_wait_ms": 2, "workers": workers}).start()
    try:
        daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="cam0", verdict="normal") > 200)
        assert daemon.terminate() == 0
    finally:
        daemon.__exit__()
    seqs = [l["seq"] for l in daemon.journal_lines()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 200
    assert "stopped after" in daemon.log()


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(extra_key=1), "unknown field 'extra_key'"),
    (lambda c: c["batching"].update(max_batch="many"), "field 'batching.max_batch'"),
    (lambda c: c["model"].update(path="/nonexistent/model.onnx"), "field 'model.path': model file"),
    (lambda c: c["sources"][0].update(kind="folder", path="/nonexistent/dir", uri=None), "field 'sources.0"),
    (lambda c: c["sources"][0].update(uri="/nonexistent.avi"), "field 'sources.0.uri': video file"),
    (lambda c: c["sources"].append(dict(c["sources"][0])), "source names must be unique"),
])
def test_bad_configs_refuse_to_start_with_one_sentence(model, tmp_path, mutate, expected):
    video = tmp_path / "v.avi"
    write_video(video, 2)
    config = {"model": {"path": str(model)}, "batching": {"max_batch": 4},
              "sources": [{"name": "cam0", "kind": "camera", "uri": str(video)}]}
    mutate(config)
    if config["sources"][0].get("uri") is None:
        config["sources"][0].pop("uri")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "run", "-c", str(path)], capture_output=True,
                            text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0]
