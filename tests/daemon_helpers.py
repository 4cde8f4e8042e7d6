"""Real parts for daemon tests: a flat-part model trained in seconds, real video files, a daemon
subprocess with its metrics endpoint scraped over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

FRAME_SHAPE = (48, 64)


def flat_part(rng: np.random.Generator, defect: bool = False) -> np.ndarray:
    """A plain grey part with sensor noise; a defect is a black 10x10 patch (unmistakable on purpose:
    daemon tests check plumbing, so the model must separate these with a huge margin)."""
    image = np.clip(rng.integers(110, 150) + rng.normal(0, 4, (*FRAME_SHAPE, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    if defect:
        y, x = rng.integers(8, 30), rng.integers(8, 46)
        image[y:y + 10, x:x + 10] = 10
    return image


def train_flat_model(folder: Path) -> Path:
    from training.config import validate_train_config
    from training.fit import fit

    rng = np.random.default_rng(0)
    good = folder / "data" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(40):
        cv2.imwrite(str(good / f"{i:03d}.png"), flat_part(rng))
    config = validate_train_config({
        "name": "flat", "data": {"path": str(folder / "data")},
        "input": {"height": 32, "width": 32, "channels": 3, "color_order": "rgb"},
        "model": {"base_width": 8, "latent_dim": 16}, "train": {"steps": 20, "batch_size": 16, "threads": 1},
        "score": {"weights": {"residual_max": 1.0}, "pool_kernel": 3}}, "flat")
    return fit(config, folder / "run", progress=False).model_path


def write_video(path: Path, n_frames: int, defect_every: int = 0, seed: int = 1, fps: float = 25.0) -> list[int]:
    """A lossless FFV1 video of flat parts; returns the 1-based indices of the defective frames."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (FRAME_SHAPE[1], FRAME_SHAPE[0]))
    assert writer.isOpened()
    truth = []
    for index in range(1, n_frames + 1):
        defect = defect_every > 0 and index % defect_every == 0
        writer.write(flat_part(rng, defect))
        if defect:
            truth.append(index)
    writer.release()
    return truth


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics and parse it with prometheus_client's parser: {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def health(port: int) -> tuple[int, dict]:
    try:
        response = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_unhealthy(port: int, timeout: float = 30.0) -> tuple[int, dict]:
    """Poll /healthz until it stops answering 200 (or the time is up); its last status and body."""
    deadline = time.time() + timeout
    status, body = health(port)
    while status == 200 and time.time() < deadline:
        time.sleep(0.2)
        status, body = health(port)
    return status, body


class DaemonProcess:
    """`inspector run` in a subprocess with a config written for the test."""

    def __init__(self, folder: Path, model_path: Path, sources: list[dict], **sections):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.journal = folder / "journal" / "decisions.jsonl"
        self.evidence = folder / "evidence"
        config = {"model": {"path": str(model_path), "intra_op_threads": 1}, "sources": sources,
                  "metrics": {"port": self.port}, "journal": {"path": str(self.journal)},
                  "evidence": {"dir": str(self.evidence)}, "logging": {"status_interval_s": 0},
                  "batching": {"max_batch": 16, "max_wait_ms": 2}}
        config.update(sections)
        self.config_path = folder / "line.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen | None = None
        self.log_path = folder / "daemon.log"

    def start(self, *extra: str) -> "DaemonProcess":
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(self.config_path), *extra],
                                        stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log()}")
            try:
                scrape(self.port)
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"daemon did not serve metrics:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for(self, predicate, timeout: float = 30.0, interval: float = 0.1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            samples = scrape(self.port)
            if predicate(samples):
                return samples
            time.sleep(interval)
        raise AssertionError(f"condition not reached in {timeout} s; log:\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def journal_lines(self) -> list[dict]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def frame_number(origin: str) -> int:
    return int(re.match(r"frame (\d+)", origin).group(1))
