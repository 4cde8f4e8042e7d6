"""Names chosen by whoever writes into the watched folder: a reused name never overwrites an earlier
file in done/, and a newline in a name never forges a log line."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from ..daemon_helpers import DaemonProcess, flat_part, metric, train_flat_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat_model"))


def folder_source(inbox):
    return [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.1, "poll_interval_s": 0.05}]


def scored(daemon, n):
    return daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="inbox", verdict="normal")
                           + metric(s, "inspector_items_scored_total", source="inbox", verdict="anomaly") >= n)


def test_a_reused_file_name_never_overwrites_the_first_in_done(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(3)
    first, second = flat_part(rng), flat_part(rng)
    with DaemonProcess(tmp_path, model, folder_source(inbox)) as daemon:
        cv2.imwrite(str(inbox / "part.png"), first)
        scored(daemon, 1)
        daemon.wait_for(lambda s: (inbox / "done" / "part.png").exists())
        cv2.imwrite(str(inbox / "part.png"), second)  # the camera software starts its numbering again
        scored(daemon, 2)
        daemon.wait_for(lambda s: not (inbox / "part.png").exists())
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    assert [l["origin"] for l in lines] == ["part.png", "part.png"]
    kept = inbox / "done" / f"part.{lines[1]['seq']}.png"  # the journal's seq names the second copy
    assert np.array_equal(cv2.imread(str(inbox / "done" / "part.png")), first)
    assert np.array_equal(cv2.imread(str(kept)), second)


def test_a_newline_in_a_file_name_cannot_forge_a_log_line(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    forged = "x\n2026-01-01 00:00:00,000 ERROR inspector.reloader: model reload refused\r.png"
    with DaemonProcess(tmp_path, model, folder_source(inbox)) as daemon:
        (inbox / forged).write_text("not an image")
        daemon.wait_for(lambda s: metric(s, "inspector_items_rejected_total", source="inbox",
                                         reason="decode_failed") >= 1)
        time.sleep(0.2)
        assert daemon.terminate() == 0
    log = daemon.log()
    assert "model reload refused" in log  # the name is there, escaped, inside the warning's own line
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())
    assert "x\\n2026-01-01" in log and "\r" not in log


def test_links_fifos_and_folders_named_like_images_are_reported_once_and_never_opened(model, tmp_path):
    import os

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "link.png").symlink_to("/etc/passwd")
    os.mkfifo(inbox / "pipe.png")  # opening it would block the source for ever
    (inbox / "folder.png").mkdir()
    with DaemonProcess(tmp_path, model, folder_source(inbox)) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_items_rejected_total", source="inbox",
                                         reason="not_a_regular_file") >= 3)
        cv2.imwrite(str(inbox / "part.png"), flat_part(np.random.default_rng(4)))
        scored(daemon, 1)
        time.sleep(0.5)  # more scans: nothing is reported twice
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    rejected = {l["origin"]: l["error"] for l in lines if l["verdict"] == "rejected"}
    assert sorted(rejected) == ["folder.png", "link.png", "pipe.png"]
    assert "symbolic link" in rejected["link.png"] and "directory" in rejected["folder.png"]
    assert "FIFO" in rejected["pipe.png"]
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == ["folder.png", "link.png", "pipe.png"]
    assert [l["origin"] for l in lines if l["verdict"] != "rejected"] == ["part.png"]


def test_a_traffic_port_already_taken_refuses_the_start_in_one_line(nsl_model, tmp_path):
    import socket

    from ..test_cli import error_line, inspector

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "flows.yaml"
        config.write_text(f"model: {{path: {nsl_model}}}\nsources:\n"
                          f"  - {{name: netflow, kind: traffic, mode: tcp, listen: '127.0.0.1:{port}'}}\n"
                          "metrics: {port: 0}\n")
        result = inspector("run", "-c", str(config), "--check")
    assert result.returncode == 2
    assert error_line(result).endswith(f"sources (netflow).listen 127.0.0.1:{port}: cannot listen there "
                                       "(Address already in use)")


def test_clients_trickling_bytes_cannot_hold_the_traffic_listener(nsl_model, tmp_path):
    """max_connections clients that send a byte a second, never a newline, are closed after
    line_timeout_s (their unfinished lines journaled as incomplete_line); a real client then gets in."""
    import socket
    import threading

    from ..daemon_helpers import free_port
    from ..test_traffic import kdd_test_lines

    port = free_port()
    sources = [{"name": "flows", "kind": "traffic", "mode": "tcp", "listen": f"127.0.0.1:{port}",
                "max_connections": 4, "line_timeout_s": 1.0}]
    stop = threading.Event()

    def trickle():
        with socket.create_connection(("127.0.0.1", port)) as conn:
            while not stop.is_set():
                try:
                    conn.sendall(b"1")
                except OSError:
                    return  # closed by the daemon
                stop.wait(0.3)

    with DaemonProcess(tmp_path, nsl_model, sources, evidence={"dir": None}) as daemon:
        slow = [threading.Thread(target=trickle, daemon=True) for _ in range(4)]
        for thread in slow:
            thread.start()
        time.sleep(0.5)
        deadline = time.time() + 20
        delivered = False
        while not delivered and time.time() < deadline:  # retried while the slots are still held
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(("\n".join(kdd_test_lines(50)) + "\n").encode())
            time.sleep(0.5)
            delivered = any(l["verdict"] != "rejected" for l in daemon.journal_lines())
        stop.set()
        samples = daemon.wait_for(lambda s: metric(s, "inspector_items_rejected_total", source="flows",
                                                   reason="incomplete_line") >= 4)
        assert daemon.terminate() == 0
    assert delivered
    assert metric(samples, "inspector_items_rejected_total", source="flows", reason="incomplete_line") >= 4
    assert "a line still incomplete after 1 s" in daemon.log()


def test_the_metrics_endpoint_takes_a_burst_of_scrapes_and_sheds_idle_and_aborted_connections(model, tmp_path):
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from inspector.sinks.metrics import IDLE_TIMEOUT_S

    with DaemonProcess(tmp_path, model, folder_source(tmp_path)) as daemon:
        idle = socket.create_connection(("127.0.0.1", daemon.port))
        aborted = socket.create_connection(("127.0.0.1", daemon.port))
        aborted.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the end of the request
        aborted.close()

        def scrape_once(_):
            with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=10) as response:
                return response.status

        with ThreadPoolExecutor(max_workers=200) as pool:
            statuses = list(pool.map(scrape_once, range(200)))
        idle.settimeout(IDLE_TIMEOUT_S + 5)
        closed_by_server = idle.recv(1) == b""
        idle.close()
        assert daemon.terminate() == 0
    assert statuses == [200] * 200
    assert closed_by_server
    assert "Traceback" not in daemon.log()


def test_json_logging_turns_every_stderr_line_into_json_even_opencvs_own(model, tmp_path, monkeypatch):
    """OpenCV prints from C++ straight to stderr (errors by default; its warnings here); with
    logging.format json they arrive as JSON lines too, beside the daemon's own."""
    import json

    monkeypatch.setenv("OPENCV_LOG_LEVEL", "WARNING")

    sources = [{"name": "gate", "kind": "camera", "uri": 7, "reconnect": {"initial_s": 0.1, "max_s": 0.2},
                "stale_after_s": 60}]
    with DaemonProcess(tmp_path, model, sources, logging={"format": "json", "status_interval_s": 0}) as daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_source_reconnects_total", source="gate") >= 2)
        assert daemon.terminate() == 0
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line parses
    assert any(e["logger"] == "stderr" and "VIDEOIO" in e["message"] for e in entries)  # OpenCV's own warning
    assert any(e["logger"] == "inspector.sources.camera" and "cannot open camera 7" in e["message"] for e in entries)


def test_a_text_file_given_as_the_video_fails_healthz_with_the_reason(model, tmp_path):
    from ..daemon_helpers import wait_for_unhealthy

    notes = tmp_path / "line.avi"
    notes.write_text("this is not a video\n")
    sources = [{"name": "cam", "kind": "camera", "uri": str(notes)}]
    with DaemonProcess(tmp_path / "run", model, sources) as daemon:
        status, body = wait_for_unhealthy(daemon.port, 20)
        assert daemon.terminate() == 0
    assert status == 503 and body["sources"] == {"cam": "down"}
    assert body["reasons"]["cam"] == f"cannot open {notes}"


def test_a_steady_stream_cut_mid_line_is_never_taken_for_a_stalled_line(nsl_model, tmp_path):
    """Chunks that each end in the middle of a line (as TCP delivers a busy stream) for longer than
    line_timeout_s: each partial line is finished by the next chunk, so the connection stays open and
    every line is scored."""
    import socket

    from ..daemon_helpers import free_port
    from ..test_traffic import kdd_test_lines

    port = free_port()
    sources = [{"name": "flows", "kind": "traffic", "mode": "tcp", "listen": f"127.0.0.1:{port}", "line_timeout_s": 1.0}]
    payload = ("\n".join(kdd_test_lines(400)) + "\n").encode()
    pieces = [payload[i:i + 997] for i in range(0, len(payload), 997)]  # 997: chunk ends fall inside lines
    with DaemonProcess(tmp_path, nsl_model, sources, evidence={"dir": None}) as daemon:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            started = time.time()
            for piece in pieces:  # about 3 s in all, three times the line timeout
                conn.sendall(piece)
                time.sleep(3.0 / len(pieces))
            assert time.time() - started > 2.5
        samples = daemon.wait_for(lambda s: sum(metric(s, "inspector_items_scored_total", source="flows", verdict=v)
                                                for v in ("normal", "anomaly")) >= 400)
        assert daemon.terminate() == 0
    assert metric(samples, "inspector_items_rejected_total", source="flows", reason="incomplete_line") == 0
    assert "still incomplete" not in daemon.log()
