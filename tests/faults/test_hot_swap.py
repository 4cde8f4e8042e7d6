"""Model hot-swap while frames stream: atomic replacement and SIGHUP switch between batches, an invalid
model is refused while the old one keeps serving, and no item is lost or scored twice."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from inspector.scorer import Scorer

from ..daemon_helpers import DaemonProcess, metric, train_flat_model, write_video

pytestmark = pytest.mark.slow


def model_version(samples) -> str | None:
    for (name, labels), value in samples.items():
        if name == "inspector_model_info" and value == 1:
            return dict(labels)["version"]
    return None


def test_models_swap_between_batches_and_a_bad_model_is_refused(tmp_path_factory):
    work = tmp_path_factory.mktemp("swap")
    first = train_flat_model(work / "a")
    second = train_flat_model(work / "b")
    active = work / "active.onnx"
    shutil.copy(first, active)
    version_a, version_b = Scorer(first).card.version, Scorer(second).card.version
    assert version_a != version_b
    video = work / "line.avi"
    write_video(video, 200)
    sources = [{"name": "cam", "kind": "camera", "uri": str(video), "realtime": True, "loop": True}]
    daemon = DaemonProcess(work, active, sources, model={"path": str(active), "intra_op_threads": 1,
                                                         "watch_interval_s": 0.2}).start()
    try:
        daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="cam", verdict="normal") > 20)
        staged = work / "staged.onnx"
        shutil.copy(second, staged)
        os.replace(staged, active)  # atomic replacement, as a deployment tool does it
        daemon.wait_for(lambda s: model_version(s) == version_b and
                        metric(s, "inspector_model_reloads_total", result="loaded") == 1)
        (work / "broken.onnx").write_text("not a model")
        os.replace(work / "broken.onnx", active)
        after_refusal = daemon.wait_for(lambda s: metric(s, "inspector_model_reloads_total", result="refused") == 1)
        assert model_version(after_refusal) == version_b  # the old model keeps serving
        scored = metric(after_refusal, "inspector_items_scored_total", source="cam", verdict="normal")
        daemon.wait_for(lambda s: metric(s, "inspector_items_scored_total", source="cam", verdict="normal") > scored + 20)
        shutil.copy(first, staged)
        os.replace(staged, active)
        daemon.wait_for(lambda s: model_version(s) == version_a)
        daemon.process.send_signal(signal.SIGHUP)  # forced reload of the same file
        daemon.wait_for(lambda s: metric(s, "inspector_model_reloads_total", result="loaded") == 3)
        assert daemon.terminate() == 0
    finally:
        daemon.__exit__()
    lines = daemon.journal_lines()
    assert [l["seq"] for l in lines] == list(range(1, len(lines) + 1))  # nothing lost, nothing twice
    versions = [l["model_version"] for l in lines]
    switches = [(a, b) for a, b in zip(versions, versions[1:]) if a != b]
    assert switches == [(version_a, version_b), (version_b, version_a)]
    assert "model reload refused" in daemon.log() and daemon.log().count("model reload refused") == 1
