"""Memory is bounded in bytes, not in queued items: full-HD frames for a tiled model (each about 100 MB
as model input) queue only as many as the byte budget holds, and a frame whose model input alone is
over the budget is refused with the reason before it is tiled."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ..daemon_helpers import DaemonProcess, metric

pytestmark = pytest.mark.slow
MIB = 1 << 20


def full_hd_video(path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (1920, 1080))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(90, 110, (1080, 1920, 3), dtype=np.uint8))
    writer.release()


def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def done(daemon, n):
    return daemon.wait_for(lambda s: sum(metric(s, "inspector_items_scored_total", source="cam", verdict=v)
                                         for v in ("normal", "anomaly"))
                           + sum(v for k, v in s.items() if k[0] == "inspector_items_rejected_total") >= n,
                           timeout=240)


def test_full_hd_frames_for_a_tiled_model_stay_within_the_byte_budget(tiny_tiled_run, tmp_path):
    video = tmp_path / "hd.avi"
    full_hd_video(video, 10)
    budget = 160 * MIB  # one full-HD frame's tiles (~98 MB) and the frame itself fit; two do not
    sources = [{"name": "cam", "kind": "camera", "uri": str(video), "realtime": False}]
    with DaemonProcess(tmp_path, tiny_tiled_run.model_path, sources, queue={"size": 256, "max_bytes": budget},
                       evidence={"dir": None}, batching={"max_batch": 16, "max_wait_ms": 2, "workers": 1}) as daemon:
        done(daemon, 10)
        peak = peak_rss_mib(daemon.process.pid)
        assert daemon.terminate() == 0
    assert len(daemon.journal_lines()) == 10
    # one queue and one batch of at most `budget` each, the runtime and the model: 2 x 160 + 450 MiB
    assert peak < 2 * budget / MIB + 450, f"peak RSS {peak:.0f} MiB"


def test_a_frame_over_the_budget_is_refused_before_it_is_tiled(tiny_tiled_run, tmp_path):
    video = tmp_path / "hd.avi"
    full_hd_video(video, 3)
    sources = [{"name": "cam", "kind": "camera", "uri": str(video), "realtime": False}]
    with DaemonProcess(tmp_path, tiny_tiled_run.model_path, sources, queue={"size": 256, "max_bytes": 32 * MIB},
                       evidence={"dir": None}) as daemon:
        samples = done(daemon, 3)
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    assert metric(samples, "inspector_items_rejected_total", source="cam", reason="too_large") == 3
    assert all("a 1920x1080 frame needs" in line["error"] and "queue.max_bytes (32 MiB)" in line["error"]
               for line in lines)
