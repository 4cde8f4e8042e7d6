"""Real servers for the benchmarks (and the tests), started on free loopback ports: Debian's redis-server and
mosquitto; and a scrape of a daemon's Prometheus endpoint."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before by this process: two binds to port 0 in a
    row may get the same port, and a daemon given it for metrics and for its review page then fails
    to listen on the second."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics and parse it with prometheus_client's parser: {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _program(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise SystemExit(f"{name} is not installed (apt-get install {name})")
    return binary


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([_program("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen([_program("mosquitto"), "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


def start_inspector(folder: Path, config: dict) -> subprocess.Popen:
    """`inspector run` on a config written into `folder` (its metrics.port set to a free one when absent);
    returns once /metrics answers. The daemon's output goes to folder/daemon.log."""
    import sys

    import yaml

    config.setdefault("metrics", {}).setdefault("port", free_port())
    (folder / "line.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "-c", str(folder / "line.yaml")],
                               stdout=open(folder / "daemon.log", "w"), stderr=subprocess.STDOUT,
                               cwd=Path(__file__).resolve().parents[1])
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"the daemon in {folder} exited: {(folder / 'daemon.log').read_text()[-2000:]}")
        try:
            scrape(config["metrics"]["port"])
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the daemon in {folder} did not serve metrics within a minute")
