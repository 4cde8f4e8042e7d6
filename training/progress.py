"""Training progress: a tqdm bar on a terminal; one plain line per epoch anywhere else.

A tqdm bar redraws itself with carriage returns, which a log file or a CI log keeps as one endless
line. When stderr is not a terminal the same calls print `desc: step S/T (P%), E s, key=value ...`
once an epoch (at most MAX_LINES a run: tiny sets have one-step epochs) and at the end.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

MAX_LINES = 50


class EpochLines:
    """The subset of tqdm's interface the training loops use, printing one line per epoch."""

    def __init__(self, total: int, initial: int, desc: str, steps_per_epoch: int, stream=None):
        self.total, self.n, self.desc = total, initial, desc
        self.every = max(1, steps_per_epoch, -(-total // MAX_LINES))
        self.stream = stream or sys.stderr
        self.postfix: dict[str, str] = {}
        self.started = time.perf_counter()
        self._last_printed = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n >= self.total:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = {key: str(value) for key, value in values.items()}

    def close(self) -> None:
        if self.n != self._last_printed:
            self._print()

    def _print(self) -> None:
        self._last_printed = self.n
        extra = " ".join(f"{key}={value}" for key, value in self.postfix.items())
        print(f"{self.desc}: step {self.n}/{self.total} ({self.n / max(1, self.total):.0%}), "
              f"{time.perf_counter() - self.started:.0f} s {extra}".rstrip(), file=self.stream, flush=True)


def progress(total: int, initial: int, desc: str, steps_per_epoch: int, enabled: bool):
    """A tqdm bar on an interactive terminal, EpochLines otherwise; a silent bar when not `enabled`."""
    if enabled and not sys.stderr.isatty():
        return EpochLines(total, initial, desc, steps_per_epoch)
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", leave=False)
