"""RESULTS.md holds one section per benchmark between markers; each script rewrites only its own."""

from __future__ import annotations

from pathlib import Path

HEADER = "# Benchmark results\n\nEvery table below is written by a script; the command that made it is above it.\n"


def write_section(path: Path, section: str, start: str, end: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
