"""Camera source: cv2.VideoCapture on a device index, a video file or an RTSP/HTTP URL.

Live streams (devices, URLs) that fail to open or stop delivering are reopened with capped
exponential backoff; `source_up` is 0 meanwhile and every attempt counts as a reconnect. A video file
that ends finishes the source cleanly (or starts again with `loop: true`); with `realtime: true`
frames are paced at the file's frame rate, otherwise read as fast as the pipeline takes them.
"""

from __future__ import annotations

import logging
import time

import cv2

from ..config_sources import CameraSource
from ..settings import redact_url
from .base import Emit, Item, Source

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0


def video_capture(uri: int | str, timeout_s: float) -> cv2.VideoCapture:
    """cv2.VideoCapture on a device index, a video file, or a stream URL; a URL gets open and read
    timeouts, so a silent network camera cannot hang its caller."""
    if isinstance(uri, int) or "://" not in uri:
        return cv2.VideoCapture(uri)
    timeout_ms = int(timeout_s * 1000)
    return cv2.VideoCapture(uri, cv2.CAP_FFMPEG,
                            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])


class CameraSourceThread(Source):
    def __init__(self, settings: CameraSource, **callbacks):
        super().__init__(settings.name, **callbacks)
        self.settings = settings
        self.shown_uri = redact_url(settings.uri) if isinstance(settings.uri, str) else f"camera {settings.uri}"
        if not settings.is_file:
            self.stale_after_s = settings.stale_after_s

    def _open(self) -> cv2.VideoCapture:
        return video_capture(self.settings.uri, self.settings.read_timeout_s)

    def _wait(self, seconds: float) -> None:
        self.retrying_until = time.time() + seconds
        self.stopping.wait(seconds)

    def produce(self, emit: Emit) -> None:
        backoff = self.settings.reconnect.initial_s
        outage_logged = False
        while not self.stopping.is_set():
            capture = self._open()
            if not capture.isOpened():
                capture.release()
                self.problem = f"cannot open {self.shown_uri}"
                if self.settings.is_file:
                    log.error("source %s: cannot open video file %s (not a readable video)", self.name, self.settings.uri)
                    self.set_up(False)
                    return
                if not outage_logged:
                    log.warning("source %s: cannot open %s; retrying with backoff up to %.0f s",
                                self.name, self.shown_uri, self.settings.reconnect.max_s)
                    outage_logged = True
                self.set_up(False)
                self.count_reconnect()
                self._wait(backoff)
                backoff = min(backoff * self.settings.reconnect.factor, self.settings.reconnect.max_s)
                continue
            self.set_up(True)
            self.retrying_until = self.problem = None
            backoff, outage_logged = self.settings.reconnect.initial_s, False
            frames = self._stream(capture, emit)
            capture.release()
            if self.settings.is_file:
                if self.settings.loop and frames > 0 and not self.stopping.is_set():
                    continue
                log.info("source %s: video file ended after %d frames", self.name, frames)
                self.mark_finished()
                return
            if self.stopping.is_set():
                break
            log.warning("source %s: stream stopped delivering frames; reconnecting", self.name)
            self.problem = f"{self.shown_uri} stopped delivering frames"
            outage_logged = True
            self.set_up(False)
            self.count_reconnect()
            self._wait(backoff)
        self.set_up(False)

    def _stream(self, capture: cv2.VideoCapture, emit: Emit) -> int:
        """Read frames until the capture fails or the source stops; returns the number of frames read."""
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and fps > 0 and fps < 1000 else DEFAULT_FPS
        pace = self.settings.is_file and self.settings.realtime
        started = time.monotonic()
        index = 0
        while not self.stopping.is_set():
            ok, frame = capture.read()
            if not ok:
                return index
            index += 1
            if pace:  # a paced file's frame is captured when it is due, as a camera would deliver it
                delay = started + index / fps - time.monotonic()
                if delay > 0:
                    self.stopping.wait(delay)
            captured = time.time()
            origin = f"frame {index}"
            if frame is None or frame.size == 0:
                item = Item(self.name, self.next_seq(), captured, origin, rejection=("empty_frame", f"{self.name} {origin}: empty frame"))
            else:
                item = Item(self.name, self.next_seq(), captured, origin, image=frame)
            self.last_delivery = captured
            if not emit(item):
                return index
        return index
