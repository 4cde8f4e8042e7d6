"""RESULTS.md holds one section per benchmark between markers; each script rewrites only its own."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
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


def section_main(doc: str, run, start: str, end: str, add_arguments=None) -> int:
    """The command line every section benchmark shares: parse --out and the script's own flags, run,
    write the section between its markers, print it."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    section = run(args)
    write_section(args.out, section, start, end)
    print(section)
    return 0


def section_header(start: str, title: str, module: str, machine: str = "") -> list[str]:
    """The lines a section opens with: its start marker, its title, the command that made it (this
    run's own arguments), and the machine and time."""
    command = f"python -m {module} " + " ".join(sys.argv[1:])
    return [start, f"## {title}", "", f"Command: `{command.strip()}`  ",
            f"Machine: {platform.node()}{machine}, run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.  "]
