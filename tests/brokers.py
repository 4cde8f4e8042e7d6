"""Real brokers for the line-output and scaling tests: Debian's mosquitto and redis-server, started on
free loopback ports by the tests themselves (skipped, with the reason, where they are not installed),
plus a test certificate authority made with openssl."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .daemon_helpers import free_port


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package; .ci/run installs it)")
    return path


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Mosquitto:
    """A mosquitto broker on 127.0.0.1 with persistence (so a restart keeps persistent sessions)."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, tls: "TestCA | None" = None):
        self.binary = require_program("mosquitto")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                 f"log_dest file {folder}/mosquitto.log", "log_type all"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root mosquitto would switch to its own user, who cannot read the test's folder
        if users:
            passwd = folder / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run([require_program("mosquitto_passwd"), "-b", str(passwd), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(signal.SIGKILL)


class TestCA:
    """A throw-away certificate authority and a server certificate for 127.0.0.1 / localhost."""

    __test__ = False

    def __init__(self, folder: Path):
        openssl = require_program("openssl")
        folder.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = folder / "ca.crt", folder / "ca.key"
        self.server_cert, self.server_key = folder / "server.crt", folder / "server.key"
        run = lambda *args: subprocess.run([openssl, *args], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=qinspector test CA",
            "-keyout", str(self.ca_key), "-out", str(self.ca))
        csr = folder / "server.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(self.server_key),
            "-out", str(csr))
        ext = folder / "san.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(self.server_cert))


class Subscriber:
    """A real MQTT client (paho) collecting every message on a topic filter, with arrival times."""

    def __init__(self, port: int, topic: str = "qinspector/#", client_id: str = "test-subscriber",
                 persistent: bool = False, username: str | None = None, password: str | None = None,
                 ca: Path | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, float]] = []  # topic, payload, retained, arrival
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                                  protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.reconnect_delay_set(0.1, 0.5)

        def on_connect(client, userdata, flags, reason_code, properties):
            if not reason_code.is_failure:
                client.subscribe(topic, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            self.connected.set()

        def on_message(client, userdata, message):
            with self._lock:
                self.messages.append((message.topic, message.payload, bool(message.retain), time.time()))

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = on_connect, on_subscribe, on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.connected.wait(10), "subscriber could not subscribe"

    def on(self, suffix: str) -> list[tuple[str, bytes, bool, float]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"subscriber condition not met in {timeout} s ({len(self.messages)} messages)")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class RedisServer:
    """redis-server on 127.0.0.1 with an append-only file, so a restart keeps the stream and its groups."""

    def __init__(self, folder: Path, password: str | None = None):
        self.binary = require_program("redis-server")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, password=self.password)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(20)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(signal.SIGKILL)
