"""With `logging.format: json`, every line the process writes to stderr is JSON, not only the
logging module's: OpenCV's native warnings, Python's own tracebacks from threads, anything a library
prints. File descriptor 2 is replaced by a pipe; a thread reads it line by line and writes each line
as a JSON object to the real stderr. The log handler writes to the real stderr directly.

The reader never stops draining: if it could, a full pipe would block every writer (the daemon too).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TextIO

_captured: TextIO | None = None


def capture_stderr_as_json() -> TextIO:
    """Route fd 2 through the JSON wrapper (once per process); returns the real stderr stream."""
    global _captured
    if _captured is not None:
        return _captured
    sys.stderr.flush()
    real_fd = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_drain, args=(read_end, real_fd), name="stderr-json", daemon=True).start()
    # the handler's own stream; the reader writes whole lines to the same descriptor with os.write, so
    # the two never share a Python buffer
    _captured = os.fdopen(real_fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    return _captured


def _drain(read_end: int, real_fd: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(read_end, 65536)
        except InterruptedError:
            continue
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                os.write(real_fd, (json.dumps(_entry(line)) + "\n").encode())
            except Exception:  # never stop draining: a blocked pipe would block every writer
                pass


def _entry(line: bytes) -> dict:
    now = time.time()
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "level": "STDERR", "logger": "stderr", "message": line.decode("utf-8", "replace").rstrip("\r")}
