"""Real parts for daemon tests: a flat-part model trained in seconds, real video files, a daemon
subprocess with its metrics endpoint scraped over HTTP."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from benchmarks.servers import free_port, scrape  # noqa: F401  (the tests' names for them)
from training.flat_parts import FRAME_SHAPE, flat_part, train_flat_model, write_video  # noqa: F401


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


class PageClient:
    """The review page over HTTP: keeps cookies, never follows redirects (the tests look at them)."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect)

    def request(self, path: str, form: dict | None = None, headers: dict | None = None) -> tuple[int, dict, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            response = self.opener.open(request, timeout=10)
        except urllib.error.HTTPError as error:
            return error.code, self._lower(error.headers), error.read().decode(errors="replace")
        return response.status, self._lower(response.headers), response.read().decode(errors="replace")

    @staticmethod
    def _lower(headers) -> dict:
        return {name.lower(): value for name, value in headers.items()}

    def csrf(self, path: str = "/") -> str:
        """GET a page and return the session's CSRF token from it."""
        status, _, body = self.request(path)
        assert status == 200, body
        return re.search(r'"X-CSRF-Token": "([^"]+)"', body).group(1)
