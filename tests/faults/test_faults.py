"""Fault injection against a running daemon: every fault is survived, logged once, counted by reason,
journaled where an item is involved, and no accepted item is lost."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import onnx
import pytest
import yaml

from inspector.card import CARD_KEY

from ..daemon_helpers import DaemonProcess, flat_part, free_port, health, metric, train_flat_model, write_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat"))


def run_refused(config_path):
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "run", "-c", str(config_path)],
                            capture_output=True, text=True, timeout=60)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    return result.returncode, lines


@pytest.mark.parametrize("fault, expected", [
    ("missing", "model file"),
    ("truncated", "not a loadable ONNX model"),
    ("not_onnx", "not a loadable ONNX model"),
    ("no_card", "has no model card"),
    ("card_graph_mismatch", "but the graph takes"),
])
def test_a_bad_model_file_refuses_to_start_with_one_sentence(model, tmp_path, fault, expected):
    bad = tmp_path / "model.onnx"
    if fault == "truncated":
        bad.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif fault == "not_onnx":
        bad.write_text("<html>not a model</html>")
    elif fault in ("no_card", "card_graph_mismatch"):
        graph = onnx.load(str(model))
        for prop in list(graph.metadata_props):
            if prop.key == CARD_KEY:
                if fault == "no_card":
                    graph.metadata_props.remove(prop)
                else:
                    card = json.loads(prop.value)
                    card["input"].update(height=64, width=64)
                    prop.value = json.dumps(card)
        onnx.save(graph, str(bad))
    video = tmp_path / "v.avi"
    write_video(video, 2)
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(bad)}, "sources": [{"name": "c", "kind": "camera", "uri": str(video)}]}))
    code, lines = run_refused(config)
    assert code == 2 and len(lines) == 1 and expected in lines[0] and "model.onnx" in lines[0]


def test_bad_image_files_are_rejected_by_reason_while_the_other_source_keeps_scoring(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(0)
    good_png = cv2.imencode(".png", flat_part(rng))[1].tobytes()
    good_jpg = cv2.imencode(".jpg", flat_part(rng))[1].tobytes()
    files = {
        "truncated.png": good_png[: len(good_png) // 3],
        "truncated.jpg": good_jpg[: len(good_jpg) // 3],
        "empty.png": b"",
        "notes.png": b"meeting notes, not an image",
        "gray.png": cv2.imencode(".png", flat_part(rng)[:, :, 0])[1].tobytes(),
        "huge.png": cv2.imencode(".png", np.zeros((2000, 2000), np.uint8))[1].tobytes(),
        "fine.png": good_png,
    }
    for name, data in files.items():
        (inbox / name).write_bytes(data)
    video = tmp_path / "line.avi"
    write_video(video, 50)
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.1, "incomplete_grace_s": 0,
                "max_pixels": 1_000_000},
               {"name": "cam", "kind": "camera", "uri": str(video), "realtime": True, "loop": True}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        expected = {"decode_failed": 3, "empty_file": 1, "wrong_channels": 1, "too_large": 1}
        samples = daemon.wait_for(lambda s: all(metric(s, "inspector_items_rejected_total", source="inbox", reason=r) == n
                                                for r, n in expected.items()))
        before = metric(samples, "inspector_items_scored_total", source="cam", verdict="normal")
        later = daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="cam", verdict="normal") > before + 10)
        status, _ = health(daemon.port)
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    assert status == 200
    assert metric(later, "inspector_items_scored_total", source="inbox", verdict="normal") == 1
    rejected = sorted(l["origin"] for l in lines if l["source"] == "inbox" and l["verdict"] == "rejected")
    assert rejected == sorted(set(files) - {"fine.png"})
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == rejected
    warnings = [l for l in daemon.log().splitlines() if "rejected:" in l]
    assert len(warnings) == 4  # one line per reason: the three undecodable files share one
    assert sum(any(name in l for name in ("notes.png", "truncated.png", "truncated.jpg")) for l in warnings) == 1


def test_a_file_deleted_between_listing_and_reading_is_rejected_not_fatal(tmp_path):
    from inspector.config_sources import FolderSource
    from inspector.sources.folder import FolderSourceThread

    source = FolderSourceThread(FolderSource(name="f", kind="folder", path=tmp_path, incomplete_grace_s=0))
    item = source._item(tmp_path / "gone.png")
    assert item.rejection[0] == "file_missing"


def test_an_unwritable_journal_is_counted_scoring_continues_and_writing_resumes(model, tmp_path):
    blocked = tmp_path / "journal"
    blocked.write_text("a file where the journal folder should be")  # not writable, even for root
    video = tmp_path / "line.avi"
    write_video(video, 40)
    sources = [{"name": "cam", "kind": "camera", "uri": str(video), "realtime": True, "loop": True}]
    daemon = DaemonProcess(tmp_path, model, sources).start()
    try:
        daemon.wait_for(lambda s: metric(s, "inspector_sink_errors_total", sink="journal") >= 3)
        scored = lambda s: metric(s, "inspector_items_scored_total", source="cam", verdict="normal")
        first = daemon.wait_for(lambda s: scored(s) > 20)
        blocked.unlink()  # space / permission comes back
        daemon.wait_for(lambda s: daemon.journal.exists() and len(daemon.journal_lines()) > 5)
        errors_then = metric(daemon.wait_for(lambda s: True), "inspector_sink_errors_total", sink="journal")
        time.sleep(0.5)
        after = daemon.wait_for(lambda s: True)
        assert daemon.terminate() == 0
    finally:
        daemon.__exit__()
    assert scored(after) > scored(first)
    assert metric(after, "inspector_sink_errors_total", sink="journal") == errors_then  # no new errors once writable
    assert daemon.log().count("cannot write") == 1 and "writing again" in daemon.log()


def test_a_10_mb_line_and_a_flood_of_clients_are_bounded(tmp_path, tmp_path_factory):
    from training.config import load_train_config
    from training.fit import fit

    from ..conftest import DATA, require

    require(DATA / "nsl_kdd" / "KDDTrain+.txt.gz")
    from pathlib import Path

    config = load_train_config(Path(__file__).resolve().parents[2] / "configs" / "nsl_kdd.yaml",
                               {"data.max_train": 2000, "data.test_paths": {}, "train.steps": 20, "train.threads": 1,
                                "model.base_width": 32})
    nsl = fit(config, tmp_path_factory.mktemp("nsl") / "run", progress=False).model_path
    port = free_port()
    sources = [{"name": "feed", "kind": "traffic", "mode": "tcp", "listen": f"127.0.0.1:{port}", "max_connections": 4,
                "idle_timeout_s": 30}]
    import gzip

    with gzip.open(DATA / "nsl_kdd" / "KDDTest+.txt.gz", "rt") as handle:
        good = [next(handle).rstrip("\n") for _ in range(20)]
    with DaemonProcess(tmp_path, nsl, sources, evidence={"dir": None}) as daemon:
        holders = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]  # the limit, held open
        time.sleep(0.3)
        extra = []
        for _ in range(20):  # the flood: refused and counted
            c = socket.create_connection(("127.0.0.1", port))
            extra.append(c)
        daemon.wait_for(lambda s: metric(s, "inspector_connections_refused_total", source="feed") >= 20)
        for c in extra + holders:
            c.close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"x" * 10_000_000 + b"\n" + ("\n".join(good) + "\n").encode())
        samples = daemon.wait_for(lambda s: sum(metric(s, "inspector_items_scored_total", source="feed", verdict=v)
                                                for v in ("normal", "anomaly")) == 20)
        rss_kb = int([l for l in open(f"/proc/{daemon.process.pid}/status") if l.startswith("VmHWM")][0].split()[1])
        assert daemon.terminate() == 0
    assert metric(samples, "inspector_items_rejected_total", source="feed", reason="line_too_long") == 1
    assert rss_kb < 1_500_000  # the 10 MB line was never buffered whole (peak RSS well under 1.5 GB)


def test_an_unusable_evidence_folder_is_counted_and_recovers(tmp_path, model):
    blocked = tmp_path / "evidence"
    blocked.write_text("a file where the evidence folder should be")
    video = tmp_path / "line.avi"
    write_video(video, 30, defect_every=3)
    sources = [{"name": "cam", "kind": "camera", "uri": str(video), "realtime": True, "loop": True}]
    with DaemonProcess(tmp_path, model, sources) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_sink_errors_total", sink="evidence") >= 2)
        blocked.unlink()
        samples = daemon.wait_for(lambda s: metric(s, "inspector_evidence_written_total", source="cam") >= 2)
        assert daemon.terminate() == 0
    assert metric(samples, "inspector_items_scored_total", source="cam", verdict="anomaly") > 2
    assert len(list(blocked.glob("*.png"))) >= 2
