"""A live camera that misbehaves, served as a real MJPEG-over-HTTP stream read by cv2.VideoCapture:
it stops delivering mid-stream, comes back at another resolution, and sends a corrupt frame. The
source goes down, reconnects with backoff, comes back up; the daemon never stops scoring."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time

import cv2
import numpy as np
import pytest

from ..daemon_helpers import DaemonProcess, free_port, health, metric, train_flat_model

pytestmark = pytest.mark.slow


class Camera:
    """Connection k (1-based) streams `plan[k]` = (frames, (height, width)); the last plan repeats.
    Frame 5 of the first connection is corrupt JPEG bytes."""

    def __init__(self, plan: list[tuple[int, tuple[int, int]]]):
        self.plan = plan
        self.connections = 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                camera.connections += 1
                frames, size = camera.plan[min(camera.connections, len(camera.plan)) - 1]
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                rng = np.random.default_rng(camera.connections)
                for i in range(frames):
                    image = np.clip(rng.integers(110, 150) + rng.normal(0, 4, (*size, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
                    data = cv2.imencode(".jpg", image)[1].tobytes()
                    if camera.connections == 1 and i == 5:
                        data = data[: len(data) // 4] + b"\x00" * 64  # a corrupt frame
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.01)
                # returning closes the connection: the camera "stops delivering mid-stream"

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_camera_that_stops_then_returns_at_another_resolution_is_reconnected(tmp_path_factory):
    work = tmp_path_factory.mktemp("camera")
    model = train_flat_model(work / "model")
    camera = Camera([(40, (48, 64)), (1_000_000, (96, 128))])
    try:
        sources = [{"name": "cam", "kind": "camera", "uri": camera.url, "read_timeout_s": 2,
                    "reconnect": {"initial_s": 0.2, "max_s": 1.0}}]
        with DaemonProcess(work, model, sources, evidence={"dir": None}) as daemon:
            scored = lambda s: sum(metric(s, "inspector_items_scored_total", source="cam", verdict=v) for v in ("normal", "anomaly"))
            samples = daemon.wait_for(lambda s: metric(s, "inspector_source_reconnects_total", source="cam") >= 1
                                      and metric(s, "inspector_source_up", source="cam") == 1 and scored(s) > 80, timeout=60)
            status, body = health(daemon.port)
            lines = daemon.journal_lines()
            assert daemon.terminate() == 0
    finally:
        camera.close()
    assert camera.connections >= 2
    assert status == 200 and body["sources"]["cam"] == "up"
    assert scored(samples) > 80  # frames of both resolutions were scored
    assert [l["seq"] for l in lines] == list(range(1, len(lines) + 1))
    assert daemon.log().count("stopped delivering frames") == 1
