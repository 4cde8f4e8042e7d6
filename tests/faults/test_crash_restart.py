"""SIGKILL in the middle of a folder, then a restart: every file is decided exactly once, none skipped."""

from __future__ import annotations

import json
import signal

import cv2
import numpy as np
import pytest

from ..daemon_helpers import DaemonProcess, flat_part, metric, train_flat_model

pytestmark = pytest.mark.slow


def test_sigkill_then_restart_resumes_a_folder_without_rescoring_or_skipping(tmp_path_factory):
    work = tmp_path_factory.mktemp("crash")
    model = train_flat_model(work / "model")
    inbox = work / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(3)
    names = [f"part_{i:04d}.png" for i in range(400)]
    for name in names:
        cv2.imwrite(str(inbox / name), flat_part(rng))
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0, "poll_interval_s": 0.05}]
    sections = {"batching": {"max_batch": 4, "max_wait_ms": 1}, "queue": {"size": 8}}
    first = DaemonProcess(work, model, sources, **sections).start()
    first.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="inbox", verdict="normal") >= 60,
                   interval=0.02)
    first.process.send_signal(signal.SIGKILL)  # no draining, no flushing: a power cut
    first.process.wait(10)
    first._log.close()
    assert any(inbox.glob("*.png")), "the crash should leave files to do"
    second = DaemonProcess(work, model, sources, **sections)
    second.log_path = work / "daemon2.log"
    with second:
        second.wait_for(lambda s: not any(inbox.glob("*.png")) and
                        len(list((inbox / "done").glob("*.png"))) == len(names), timeout=60)
        assert second.terminate() == 0
    decided = []
    for raw in second.journal.read_text().splitlines():
        try:
            decided.append(json.loads(raw)["origin"])
        except ValueError:
            pass  # a line the kill cut short
    assert sorted(decided) == sorted(names)  # each file exactly once
