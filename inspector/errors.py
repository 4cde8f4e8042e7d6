"""Error types of the inspector and the one-sentence messages users see.

Every error a user can cause (a bad config, a wrong model file, an unreadable image) is raised as one
of these with a message that names the file, the field and what was expected, so the CLI can print it
as a single line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class InspectorError(Exception):
    """Base class: a user-facing error whose message is one clear sentence."""


class ModelCardError(InspectorError):
    """The model file or the card inside it cannot be used."""


class ConfigError(InspectorError):
    """A configuration file is missing, malformed, or has an invalid field."""


class ItemRejected(InspectorError):
    """One item (frame, file, row) cannot be scored; the stream goes on without it.

    `reason` is a short snake_case token used as a metric label and in the journal.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def describe_validation_error(error: ValidationError, source: str | Path, prefix: str = "") -> str:
    """Turn pydantic's multi-line report into one sentence naming the file and the first bad field."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "__root__")
    if prefix:
        location = f"{prefix}.{location}" if location else prefix
    kind = first.get("type", "")
    message = first.get("msg", "invalid value")
    if kind == "extra_forbidden":
        return f"{source}: unknown field '{location}' (check the spelling; see the config reference in README.md)"
    if kind == "missing":
        return f"{source}: field '{location}' is required but missing"
    got = first.get("input")
    got_text = repr(got)
    if len(got_text) > 60:
        got_text = got_text[:57] + "..."
    field = f"field '{location}'" if location else "top level"
    return f"{source}: {field}: {message.rstrip('.')} (got {got_text})"
