"""The one strict base of every typed config and card model: unknown keys are errors, never ignored.

A misspelled key in a daemon config, a training config or a model card fails with the field's name
(inspector.errors turns it into one sentence with a "did you mean") instead of a silent default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrozenStrict(Strict):
    """Strict and immutable: what a model card says cannot change after it is read."""

    model_config = ConfigDict(frozen=True)
