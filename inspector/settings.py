"""Shared pieces of the daemon's typed settings: the strict base model, backoff, secrets.

Every settings model forbids unknown keys, so a misspelled key is an error rather than a silent
default. Secrets (broker passwords) are never written into a config: the config names a file or an
environment variable that holds them, and `read_secret` reads it once, when the output starts.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from .errors import ConfigError
from .strict import Strict


class Backoff(Strict):
    initial_s: Annotated[float, Field(gt=0)] = 0.5
    max_s: Annotated[float, Field(gt=0)] = 30.0
    factor: Annotated[float, Field(ge=1)] = 2.0

    def delays(self):
        """initial_s, initial_s * factor, ... capped at max_s, for ever."""
        delay = self.initial_s
        while True:
            yield min(delay, self.max_s)
            delay = min(delay * self.factor, self.max_s)


class Credentials(Strict):
    """A user name and where its password is: a file (first line) or an environment variable."""

    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _one_password_place(self) -> "Credentials":
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if (self.password_file is not None or self.password_env is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self

    @property
    def has_user(self) -> bool:
        return bool(self.username)

    def password(self, where: str) -> str | None:
        """The password, read now; a missing file or variable is one ConfigError sentence (never the value)."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0] if self.password_file.stat().st_size else ""
            except OSError as exc:
                raise ConfigError(f"field '{where}.password_file': cannot read {self.password_file} "
                                  f"({exc.strerror or exc})") from None
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"field '{where}.password_env': environment variable {self.password_env} is not set")
            return value
        return None


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_redis_url(url: str) -> str:
    """A Redis URL as redis-py takes it, without credentials (they belong in `auth`, read from a secret)."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("url must start with redis://, rediss:// (TLS) or unix://")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError("put no credentials in the url: use auth.username and auth.password_file")
    return url


def redact_url(url: str) -> str:
    """The URL as it may be logged or shown: a user name or password in it becomes ***
    (rtsp://admin:secret@cam/stream -> rtsp://***@cam/stream)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
