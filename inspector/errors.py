"""Error types of the inspector and the one-sentence messages users see.

Every error a user can cause (a bad config, a wrong model file, an unreadable image) is raised as one
of these with a message that names the file, the field and what was expected, so the CLI can print it
as a single line instead of a traceback.
"""

from __future__ import annotations

import difflib
import reprlib
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError


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


def describe_validation_error(error: ValidationError, source: str | Path, prefix: str = "",
                              model: type[BaseModel] | None = None) -> str:
    """Turn pydantic's multi-line report into one sentence naming the file and the first bad field;
    with the root `model`, a misspelled field or kind gets a 'did you mean'. The offending input is
    shown through a bounded repr: a YAML alias bomb must not be rendered whole to be cut short."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "__root__")
    if prefix:
        location = f"{prefix}.{location}" if location else prefix
    kind = first.get("type", "")
    # a validator's own ValueError comes as "Value error, <its text>": its text says it all
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if kind == "extra_forbidden":
        name = str(first["loc"][-1]) if first.get("loc") else ""
        return (f"{source}: unknown field '{location}'{_did_you_mean(name, field_names(model))} (see the config "
                f"reference in README.md)")
    if kind == "missing":
        missing = first["loc"]
        strays = [str(e["loc"][-1]) for e in error.errors()
                  if e.get("type") == "extra_forbidden" and e["loc"][:-1] == missing[:-1]]
        close = difflib.get_close_matches(str(missing[-1]), strays, n=1, cutoff=0.6)
        hint = f"; found '{close[0]}' instead: a misspelling?" if close else ""
        return f"{source}: field '{location}' is required but missing{hint}"
    if kind == "union_tag_invalid":
        context = first.get("ctx", {})
        tag, expected = str(context.get("tag", "")), str(context.get("expected_tags", ""))
        choices = [choice.strip(" '") for choice in expected.split(",") if choice.strip(" '")]
        return (f"{source}: field '{location}.{context.get('discriminator', 'kind').strip(chr(39))}': unknown value "
                f"'{tag}'{_did_you_mean(tag, choices)} (one of {', '.join(choices)})")
    got_text = _SHORT.repr(first.get("input"))
    field = f"field '{location}'" if location else "top level"
    return f"{source}: {field}: {message.rstrip('.')} (got {got_text})"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 40, 40


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def field_names(model: type[BaseModel] | None) -> list[str]:
    """Every field name in a config model and the models nested in its fields (lists, unions, optionals)."""
    names: set[str] = set()
    seen: set[type] = set()

    def visit(annotation) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.add(annotation)
            for field_name, info in annotation.model_fields.items():
                names.add(field_name)
                visit(info.annotation)
            return
        for argument in typing.get_args(annotation):
            visit(argument)

    if model is not None:
        visit(model)
    return sorted(names)
