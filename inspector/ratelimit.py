"""Log a recurring problem once, then at most once per interval with the count it stood for: a corrupt
frame every frame must not become a log line every frame."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 60.0):
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[tuple, float] = {}
        self._suppressed: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: tuple, message: str) -> bool:
        """Log `message` unless `key` was logged within the interval; returns whether it was logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            suppressed = self._suppressed.pop(key, 0)
            self._last[key] = now
        if suppressed:
            message = f"{message} (and {suppressed} more like it in the last {self.interval_s:.0f} s)"
        self.logger.warning(message)
        return True
