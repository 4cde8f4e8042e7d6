"""A full disk loses no decision: a file leaves the watched folder only once its journal line is
written; while the journal cannot write, files stay and are scored again when it can; evidence never
takes the journal's last space and leaves no half-written files. Uses a real 1 MiB tmpfs (root only)."""

from __future__ import annotations

import subprocess
import time

import cv2
import numpy as np
import pytest

from ..daemon_helpers import DaemonProcess, flat_part, metric, train_flat_model

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.decode().strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_flat_model(tmp_path_factory.mktemp("flat_model"))


def test_a_full_disk_keeps_every_undecided_file_in_the_folder_and_loses_nothing(model, tmp_path, tiny_disk):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(0)
    for k in range(120):
        cv2.imwrite(str(inbox / f"part_{k:03d}.png"), flat_part(rng, defect=k % 10 == 0))
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 24 * 1024))  # about 20 KB left: room for some journal lines
    sources = [{"name": "inbox", "kind": "folder", "path": str(inbox), "settle_s": 0.05, "poll_interval_s": 0.05}]
    daemon = DaemonProcess(tmp_path / "run", model, sources, journal={"path": str(tiny_disk / "decisions.jsonl")},
                           evidence={"dir": str(tiny_disk / "evidence"), "reserve_bytes": 64 * 1024})
    daemon.journal = tiny_disk / "decisions.jsonl"
    with daemon:
        daemon.wait_for(lambda s: metric(s, "inspector_sink_errors_total", sink="journal") >= 1, timeout=60)
        time.sleep(1.0)  # the folder keeps being polled while the journal fails
        journaled = {l["origin"] for l in daemon.journal_lines()}
        moved = {p.name for sub in ("done", "rejected") if (inbox / sub).is_dir() for p in (inbox / sub).iterdir()}
        waiting = {p.name for p in inbox.glob("*.png")}
        assert moved <= journaled  # nothing left the folder without its journal line
        assert moved | waiting == {f"part_{k:03d}.png" for k in range(120)}
        assert waiting  # the disk filled before the end
        assert not list(tiny_disk.rglob("*.tmp"))
        filler.unlink()  # space again: the rest is scored, journaled and moved
        daemon.wait_for(lambda s: not list(inbox.glob("*.png")), timeout=60)
        lines = daemon.journal_lines()
        assert daemon.terminate() == 0
    decided = {l["origin"] for l in lines}
    assert decided == {f"part_{k:03d}.png" for k in range(120)} and len(lines) == 120  # each once
    assert not list(tiny_disk.rglob("*.tmp"))
    assert "the journal cannot be written; files stay in" in daemon.log()
