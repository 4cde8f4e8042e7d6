"""The review page's HTTP server: uvicorn on a thread of the daemon, on a socket bound up front.

Binding before the thread starts turns a taken port into one config error at start (not a log line
from a thread), and lets port 0 report the port it got.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path

import uvicorn

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # response written as headers + body waits ~40 ms for the client's delayed ACK on a kept-alive connection
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ReviewServer:
    def __init__(self, app, host: str, port: int, cert_file: Path | None = None, key_file: Path | None = None):
        self.socket = _bind(host, port)
        self.address = self.socket.getsockname()[:2]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                                ssl_certfile=str(cert_file) if cert_file else None,
                                ssl_keyfile=str(key_file) if key_file else None)
        self.scheme = "https" if cert_file else "http"
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{self.scheme}://{host if ':' not in host else f'[{host}]'}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="review-page", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self.socket]))
        except Exception:  # the page failing must not take the line down: scoring and the journal go on
            log.exception("review page stopped")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.socket.close()
