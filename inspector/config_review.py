"""Settings of the operator's review page (`review:` in the daemon config).

Loopback by default, with no login: the page is for the person at the inspector's own screen.
Bound to any other address it must have a users file (names and salted scrypt hashes, written by
`inspector reviews add-user`), and should have TLS so the password does not cross the network in
the clear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from .config_sources import resolve_path
from .settings import is_loopback
from .strict import Strict


class ReviewTls(Strict):
    cert_file: Path
    key_file: Path


class ReviewSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9109  # 0 = pick a free port (tests)
    # the labels and the items offered for review; default: reviews.sqlite3 beside the journal
    database: Path | None = None
    # normal verdicts at or above this normalised score (1.0 = threshold) are where the misses live:
    # one in `sample_every` of them is offered for review beside every anomaly
    near_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    sample_every: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    page_size: Annotated[int, Field(ge=5, le=500)] = 40
    users_file: Path | None = None  # required off loopback
    session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12.0
    tls: ReviewTls | None = None

    @model_validator(mode="after")
    def _login_off_loopback(self) -> "ReviewSettings":
        if not is_loopback(self.host) and self.users_file is None:
            raise ValueError(f"the review page on {self.host} (not loopback) needs users_file: "
                             f"create one with `inspector reviews add-user FILE NAME`")
        return self

    def resolve_paths(self, base: Path, journal: Path) -> None:
        self.database = resolve_path(self.database, base) if self.database is not None else journal.parent / "reviews.sqlite3"
        if self.users_file is not None:
            self.users_file = resolve_path(self.users_file, base)
        if self.tls is not None:
            self.tls.cert_file = resolve_path(self.tls.cert_file, base)
            self.tls.key_file = resolve_path(self.tls.key_file, base)

    def missing_file(self) -> tuple[str, str] | None:
        if self.users_file is not None and not self.users_file.is_file():
            return "users_file", f"users file {self.users_file} does not exist"
        if self.tls is not None:
            for name in ("cert_file", "key_file"):
                path = getattr(self.tls, name)
                if not path.is_file():
                    return f"tls.{name}", f"{path} does not exist"
        return None


class ShadowSettings(Strict):
    """A candidate model scoring live items beside the active one, journaling, acting on nothing."""

    model: Path
    journal: Path | None = None  # default: shadow.jsonl beside the journal

    def resolve_paths(self, base: Path, journal: Path) -> None:
        self.model = resolve_path(self.model, base)
        self.journal = resolve_path(self.journal, base) if self.journal is not None else journal.parent / "shadow.jsonl"

    def missing_file(self) -> tuple[str, str] | None:
        return None if self.model.is_file() else ("model", f"candidate model file {self.model} does not exist")
