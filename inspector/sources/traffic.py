"""Traffic source: flow records as CSV or JSON lines, from a followed file, stdin, or TCP clients.

Lines are read in chunks, parsed, and encoded with `inspector.features.encode_lines` (the one
tabular transform, shared with training; plain CSV chunks take a C parser). `window` consecutive
good rows of the source form one item, every `stride` rows. A bad row (too long, wrong field count, not JSON, non-numeric, NaN/inf)
becomes a rejected item with its reason — journaled and counted, the stream goes on. A category
never seen in training goes to the unknown bucket and is counted per column.

  file   followed like `tail -F`: existing lines first (or only new ones), then appended lines; a
         partial last line waits for its newline; rotation (rename + new file) and truncation are
         detected; after a rotation the old file is still read for ROTATION_GRACE_S (a writer may be
         finishing its last lines), then the new file is read from its start.
  stdin  lines until end of input, then the source finishes.
  tcp    a listener (bind address, connection limit, idle timeout, line-length limit) accepting
         newline-delimited lines from several clients at once; a client that disconnects in the
         middle of a line has that partial line rejected (`incomplete_line`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable


from ..card import TabularInput
from ..config_sources import TrafficSource
from ..errors import ConfigError
from .base import Emit, Item, Source
from .rows import RowItems

log = logging.getLogger(__name__)

ROTATION_GRACE_S = 1.0  # after a rotation, the old file is drained this long before switching


class TrafficSourceThread(Source):
    def __init__(self, settings: TrafficSource, spec: TabularInput,
                 on_unknown: Callable[[str, str, int], None] | None = None,
                 on_connection_refused: Callable[[str], None] | None = None, **callbacks):
        super().__init__(settings.name, **callbacks)
        self.settings = settings
        self.spec = spec
        self._rows = RowItems(self, spec, settings.format, on_unknown)
        self._lock = threading.Lock()  # TCP clients share the source's windower and sequence
        self._on_refused = on_connection_refused or (lambda source: None)
        self._server = self._listen() if settings.mode == "tcp" else None

    def _listen(self) -> socket.socket:
        """Bind now, while the daemon starts: a port that is taken refuses the start in one sentence
        (bound in the source thread, the error killed the source and the daemon ran on deaf)."""
        host, port = self.settings.listen_address
        try:
            server = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(f"sources ({self.name}).listen {host}:{port}: cannot listen there "
                              f"({os.strerror(exc.errno) if exc.errno else exc})") from None
        server.settimeout(0.2)
        self.address = server.getsockname()
        return server

    # --- shared: lines -> items -------------------------------------------------------------------
    def handle_lines(self, lines: list[str], emit: Emit, prefix: str = "") -> bool:
        """Parse, encode and emit a chunk of complete lines in order; False when the pipeline stopped."""
        with self._lock:
            items = self._rows.items(lines, prefix)
            return emit(items) if items else True

    def reject(self, emit: Emit, origin: str, reason: str, message: str) -> bool:
        with self._lock:
            return emit(Item(self.name, self.next_seq(), time.time(), origin, rejection=(reason, message)))

    def produce(self, emit: Emit) -> None:
        mode = self.settings.mode
        if mode == "file":
            self._follow_file(emit)
        elif mode == "stdin":
            self._read_stream(sys.stdin.buffer, emit)
            self.mark_finished()
        else:
            self._serve_tcp(emit)

    # --- stdin / generic stream ------------------------------------------------------------------
    def _read_stream(self, stream: BinaryIO, emit: Emit) -> None:
        self.set_up(True)
        reader = _LineReader(self.spec.max_line_bytes)
        while not self.stopping.is_set():
            data = stream.read1(1 << 20)  # what the pipe holds now (at least one byte), a chunk of lines
            if not data:
                break
            if not self._feed(reader, data, emit, ""):
                return
        self._flush_partial(reader, emit, "")

    def _feed(self, reader: "_LineReader", data: bytes, emit: Emit, prefix: str) -> bool:
        lines, too_long = reader.feed(data)
        for _ in range(too_long):
            if not self.reject(emit, f"{prefix}line", "line_too_long",
                               f"{prefix}line longer than {self.spec.max_line_bytes} bytes"):
                return False
        return self.handle_lines(lines, emit, prefix) if lines else True

    def _flush_partial(self, reader: "_LineReader", emit: Emit, prefix: str) -> None:
        if reader.pending():
            self.reject(emit, f"{prefix}end", "incomplete_line", f"{prefix}connection ended in the middle of a line")

    # --- followed file ---------------------------------------------------------------------------
    def _follow_file(self, emit: Emit) -> None:
        path = Path(self.settings.path)
        reader = _LineReader(self.spec.max_line_bytes)
        handle, inode = None, None
        first_open = True
        rotated_at: float | None = None
        skip_header = self.settings.header
        down_logged = False
        while not self.stopping.is_set():
            if handle is None:
                try:
                    handle = open(path, "rb")
                except FileNotFoundError:
                    if not down_logged:
                        log.warning("source %s: waiting for %s to appear", self.name, path)
                        down_logged = True
                    self.set_up(False)
                    self.retrying_until = time.time() + 1.0
                    self.stopping.wait(self.settings.poll_interval_s)
                    continue
                inode = os.fstat(handle.fileno()).st_ino
                if first_open and not self.settings.from_start:
                    handle.seek(0, os.SEEK_END)
                    skip_header = False
                first_open = False
                down_logged = False
                self.set_up(True)
            chunk = handle.read(1 << 20)
            if chunk:
                if skip_header:
                    newline = chunk.find(b"\n")
                    if newline < 0:
                        continue
                    chunk, skip_header = chunk[newline + 1:], False
                if not self._feed(reader, chunk, emit, ""):
                    handle.close()
                    return
                continue
            # at the end of the file: rotated or truncated?
            try:
                stat = os.stat(path)
                rotated = stat.st_ino != inode
                truncated = not rotated and stat.st_size < handle.tell()
            except FileNotFoundError:
                rotated, truncated = True, False
            if rotated and rotated_at is None:
                rotated_at = time.monotonic()  # keep draining the old file: its writer may still be finishing
            if truncated or (rotated_at is not None and time.monotonic() - rotated_at >= ROTATION_GRACE_S):
                log.info("source %s: %s was %s; reading the new file from its start", self.name, path,
                         "truncated" if truncated else "rotated")
                self._flush_partial(reader, emit, "")
                reader = _LineReader(self.spec.max_line_bytes)
                handle.close()
                handle, rotated_at = None, None
                skip_header = self.settings.header
                continue
            self.stopping.wait(self.settings.poll_interval_s)
        if handle is not None:
            handle.close()

    # --- TCP listener ----------------------------------------------------------------------------
    def _serve_tcp(self, emit: Emit) -> None:
        server = self._server
        log.info("source %s: listening for rows on %s:%d", self.name, *self.address[:2])
        self.set_up(True)
        clients: set[threading.Thread] = set()
        refused_logged = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    conn, peer = server.accept()
                except socket.timeout:
                    clients = {t for t in clients if t.is_alive()}
                    continue
                clients = {t for t in clients if t.is_alive()}
                if len(clients) >= self.settings.max_connections:
                    self._on_refused(self.name)
                    if time.time() - refused_logged > 60:
                        log.warning("source %s: connection limit %d reached; refusing %s:%d (logged once a minute)",
                                    self.name, self.settings.max_connections, *peer[:2])
                        refused_logged = time.time()
                    conn.close()
                    continue
                thread = threading.Thread(target=self._client, args=(conn, peer, emit), daemon=True,
                                          name=f"traffic-{self.name}-{peer[1]}")
                clients.add(thread)
                thread.start()
        finally:
            server.close()
            for thread in clients:
                thread.join(timeout=2)

    def _client(self, conn: socket.socket, peer, emit: Emit) -> None:
        prefix = f"{peer[0]}:{peer[1]} "
        reader = _LineReader(self.spec.max_line_bytes)
        conn.settimeout(min(self.settings.idle_timeout_s, self.settings.line_timeout_s, 0.5))
        idle_since = time.monotonic()
        line_since: float | None = None  # when the current unfinished line began
        try:
            while not self.stopping.is_set():
                try:
                    data = conn.recv(1 << 20)
                except socket.timeout:
                    data = None
                except OSError:
                    break
                now = time.monotonic()
                if data is None:
                    if now - idle_since > self.settings.idle_timeout_s:
                        log.info("source %s: closing idle connection %s", self.name, prefix.strip())
                        break
                elif not data:
                    break
                else:
                    idle_since = now
                    if not self._feed(reader, data, emit, prefix):
                        return
                    if b"\n" in data:  # a line ended here: what is still pending began in this chunk
                        line_since = None
                # a steady stream leaves a partial line after most chunks, a new one each time: only a line
                # that stays unfinished across chunks is timed
                line_since = (line_since or now) if reader.pending() else None
                if line_since is not None and now - line_since > self.settings.line_timeout_s:
                    log.warning("source %s: closing %s: a line still incomplete after %.0f s (line_timeout_s)",
                                self.name, prefix.strip(), self.settings.line_timeout_s)
                    break  # the unfinished line is journaled as incomplete_line below
            self._flush_partial(reader, emit, prefix)
        finally:
            conn.close()


class _LineReader:
    """Splits a byte stream into complete text lines; bounded: a line longer than the limit is
    dropped up to its newline (and counted) instead of buffered."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buffer = bytearray()
        self.discarding = False

    def pending(self) -> bool:
        return bool(self.buffer) and not self.discarding

    def feed(self, data: bytes) -> tuple[list[str], int]:
        """The complete lines in `data` (with what was buffered before), and how many were too long."""
        pieces = data.split(b"\n")
        rest = pieces.pop()  # after the last newline: the start of a line still to come
        lines: list[str] = []
        too_long = 0
        if pieces:
            line, too_long = self._complete(pieces[0])
            if line is not None:
                lines.append(line)
            middle = pieces[1:]
            if middle and max(map(len, middle)) <= self.limit:  # the usual case: decoded and split at C speed
                lines += b"\n".join(middle).decode("utf-8", errors="replace").split("\n")
            else:
                for piece in middle:
                    line, long = self._complete(piece)
                    too_long += long
                    if line is not None:
                        lines.append(line)
        if not self.discarding:
            if len(self.buffer) + len(rest) > self.limit:
                too_long += 1
                self.buffer.clear()
                self.discarding = True
            else:
                self.buffer += rest
        return lines, too_long

    def _complete(self, piece: bytes) -> tuple[str | None, int]:
        """The line ending with `piece` (after what is buffered): (the line or None, 1 if it was too long)."""
        if self.discarding:  # the end of a line already counted as too long
            self.discarding = False
            self.buffer.clear()
            return None, 0
        if len(self.buffer) + len(piece) > self.limit:
            self.buffer.clear()
            return None, 1
        if self.buffer:
            self.buffer += piece
            line = self.buffer.decode("utf-8", errors="replace")
            self.buffer.clear()
            return line, 0
        return piece.decode("utf-8", errors="replace"), 0
