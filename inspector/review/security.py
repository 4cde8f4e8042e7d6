"""Who may use the review page, and what protects every change it makes.

- Users file: one `name:scrypt$n$r$p$salt$hash` line per user (salted scrypt from hashlib; no
  password is ever stored). `inspector reviews add-user FILE NAME` writes the lines.
- Sessions: a random id in an HttpOnly, SameSite=Strict cookie, kept in memory (a restart logs
  everyone out; the labels are in the database). A fresh id is issued at login (no fixation).
- CSRF: every session has a random token; every state change must send it back (header
  `X-CSRF-Token` or form field `csrf_token`), and a browser's `Origin`, when sent, must be this page.
- Failed logins are throttled per client address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
COOKIE = "qi_review_session"
MAX_SESSIONS = 10_000  # beyond, the oldest sessions end: a flood of new visitors cannot exhaust memory
MAX_FAILURES = 5  # failed logins per client address within FAILURE_WINDOW_S before refusals
FAILURE_WINDOW_S = 300.0


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def read_users(path: Path) -> dict[str, str]:
    """{name: hash} from a users file; a malformed line is an error naming its line number."""
    users = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not name or not stored.startswith("scrypt$"):
            raise ValueError(f"{path}:{number}: expected name:scrypt$... (write it with `inspector reviews add-user`)")
        users[name] = stored
    return users


def add_user(path: Path, name: str, password: str) -> None:
    """Add or replace a user in a users file (created with owner-only permissions)."""
    if not name or ":" in name or name != name.strip():
        raise ValueError("a user name must be non-empty, without ':' or surrounding spaces")
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    users = read_users(path) if path.exists() else {}
    users[name] = hash_password(password)
    text = "".join(f"{user}:{stored}\n" for user, stored in users.items())
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(text)


@dataclass
class Session:
    id: str
    csrf: str
    expires: float
    user: str | None = None


@dataclass
class Sessions:
    lifetime_s: float
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self, user: str | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time() + self.lifetime_s, user)
        with self._lock:
            now = time.time()
            for stale in [key for key, value in self._sessions.items() if value.expires < now]:
                del self._sessions[stale]
            while len(self._sessions) >= MAX_SESSIONS:  # dicts keep insertion order: the oldest goes first
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.time():
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


class LoginThrottle:
    def __init__(self):
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> list[float]:
        return [t for t in self._failures.get(client, []) if now - t < FAILURE_WINDOW_S]

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client, time.time())) >= MAX_FAILURES

    def failed(self, client: str) -> None:
        with self._lock:
            now = time.time()
            self._failures[client] = self._recent(client, now) + [now]

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """A browser's Origin header (absent for non-browser clients) must name this page."""
    if origin is None:
        return True
    return host is not None and origin in (f"{scheme}://{host}",)


SECURITY_HEADERS = {
    # scripts, styles and images only from this page: no inline script can run even if a source name
    # or file name slipped through escaping
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
