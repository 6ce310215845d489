"""Staff accounts, sessions, CSRF tokens, login lockout and the actions log of the
console, in ``DATA_DIR/console.db`` (SQLite, mode 0600).

* **Accounts** (``users``): a name, one role (``attendant``, ``manager``, ``admin``),
  an argon2id hash of the password (argon2-cffi's defaults), the user's language.
* **Sessions** (``sessions``): a random token (32 bytes) goes to the browser as an
  HttpOnly, SameSite=Strict cookie; the database keeps only its SHA-256, with the
  session's CSRF token and its expiry (``SESSION_S``).
* **Lockout** (``login_failures``, per user name, known or not): the first
  ``FREE_FAILURES`` wrong passwords are free; each one after locks the name for
  ``LOCK_BASE_S`` × 2^(k − 1) seconds (k: failures past the free ones), at most
  ``LOCK_MAX_S``; while locked, every attempt is refused ``LOCKED`` before any
  password is checked (the right one too) and is not counted. A success clears the
  count; failures are forgotten ``FORGET_S`` after the last one.
* **Actions** (``actions``): every action a logged-in user took — who (name and
  role), when, what, on what, and its result — and every login and logout.

No password, hash or session token is ever logged or shown.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lanecore.core.errors import LanecoreError
from lanecore.core.sqltxn import private_database

#: The console's roles, least to most: each sees what the ones before it see.
ROLES = ("attendant", "manager", "admin")
FREE_FAILURES = 3
LOCK_BASE_S = 30.0
LOCK_MAX_S = 900.0
FORGET_S = 3600.0
SESSION_S = 12 * 3600.0
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        lang TEXT NOT NULL DEFAULT 'en', created_at REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS login_failures (
        name TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until REAL NOT NULL,
        last_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS actions (
        action_id INTEGER PRIMARY KEY, at REAL NOT NULL, staff TEXT NOT NULL,
        role TEXT NOT NULL, action TEXT NOT NULL, target TEXT, detail TEXT,
        result TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS actions_at ON actions (at)",
)


class ConsoleError(LanecoreError):
    """A console account or login error with a stable ``code``."""


def role_rank(role: str) -> int:
    return ROLES.index(role)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConsoleError(f"unknown console role {role!r}; roles are {', '.join(ROLES)}",
                           code="BAD_ROLE")
    return role


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConsoleError("a user name is 1-64 of A-Z a-z 0-9 . _ - (a letter or digit "
                           "first)", code="BAD_NAME")
    return name


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConsoleError(f"a password is {MIN_PASSWORD}-{MAX_PASSWORD} characters",
                           code="BAD_PASSWORD")
    return password


def read_password_file(path) -> str:
    """The password in ``path`` (its first line), refused ``BAD_PERMISSIONS`` if the
    group or others may read it, ``CANNOT_READ`` if it cannot be read."""
    from lanecore.core.config import check_private
    try:
        check_private(path, what="password file", error=ConsoleError)
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConsoleError(f"{path}: no such password file", code="CANNOT_READ") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConsoleError(f"{path}: cannot read the password file: {exc}",
                           code="CANNOT_READ") from None
    lines = text.splitlines()
    return check_password(lines[0] if lines else "")


@dataclass(frozen=True)
class Session:
    name: str
    role: str
    lang: str
    csrf: str
    expires_at: float

    def may(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role)


class StaffDB:
    """``console.db``: one connection, serialised by a lock (the app calls it from its
    event loop and worker threads)."""

    def __init__(self, path, *, clock=time.time) -> None:
        from argon2 import PasswordHasher
        self.path = Path(path)
        self.clock = clock
        self.hasher = PasswordHasher()
        self.lock = threading.RLock()
        private_database(self.path)
        self.con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self.con.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA:
            self.con.execute(stmt)
        # a hash to check unknown names against: the same work, the same answer
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        with self.lock:
            self.con.close()

    # accounts --------------------------------------------------------------------
    def add_user(self, name: str, role: str, password: str, *, lang: str = "en") -> dict:
        check_name(name)
        check_role(role)
        check_password(password)
        digest = self.hasher.hash(password)
        with self.lock:
            try:
                self.con.execute("INSERT INTO users (name, role, password_hash, lang, "
                                 "created_at) VALUES (?, ?, ?, ?, ?)",
                                 (name, role, digest, lang, self.clock()))
            except sqlite3.IntegrityError:
                raise ConsoleError(f"user {name!r} exists already",
                                   code="USER_EXISTS") from None
        return {"name": name, "role": role, "lang": lang}

    def users(self) -> list[dict]:
        with self.lock:
            rows = self.con.execute("SELECT name, role, lang, created_at, disabled FROM "
                                    "users ORDER BY name").fetchall()
        return [{"name": n, "role": r, "lang": lg, "created_at": c, "disabled": bool(d)}
                for n, r, lg, c, d in rows]

    def user(self, name: str) -> dict | None:
        with self.lock:
            row = self.con.execute("SELECT name, role, lang FROM users WHERE name = ? AND "
                                   "NOT disabled", (name,)).fetchone()
        return None if row is None else {"name": row[0], "role": row[1], "lang": row[2]}

    def set_lang(self, name: str, lang: str) -> None:
        with self.lock:
            self.con.execute("UPDATE users SET lang = ? WHERE name = ?", (lang, name))

    # logins ----------------------------------------------------------------------
    def lock_state(self, name: str) -> dict:
        """``{failures, locked_until}`` of a name (failures forgotten after FORGET_S)."""
        with self.lock:
            row = self.con.execute("SELECT failures, locked_until, last_at FROM "
                                   "login_failures WHERE name = ?", (name,)).fetchone()
        if row is None or self.clock() - row[2] > FORGET_S:
            return {"failures": 0, "locked_until": 0.0}
        return {"failures": row[0], "locked_until": row[1]}

    def login(self, name: str, password: str) -> tuple[str, Session]:
        """A new session for ``name`` if ``password`` is right: (its token, for the
        cookie, and the session). ``LOCKED`` (details:
        ``retry_after_s``) while the name is locked, ``BAD_LOGIN`` for a wrong
        password or an unknown name (the same answer)."""
        name = name if isinstance(name, str) else ""
        key = name[:64]
        now = self.clock()
        state = self.lock_state(key)
        if state["locked_until"] > now:
            raise ConsoleError("too many failed logins: try again later", code="LOCKED",
                               details={"retry_after_s": round(state["locked_until"] - now)})
        with self.lock:
            row = self.con.execute("SELECT role, password_hash, lang FROM users WHERE name "
                                   "= ? AND NOT disabled", (name,)).fetchone()
        ok = False
        try:
            ok = self.hasher.verify(row[1] if row else self._dummy, password or "")
        except Exception:   # VerifyMismatchError, InvalidHashError
            ok = False
        if not ok or row is None:
            failures = state["failures"] + 1
            past = failures - FREE_FAILURES
            until = now + min(LOCK_BASE_S * 2 ** (past - 1), LOCK_MAX_S) if past > 0 else 0.0
            with self.lock:
                self.con.execute(
                    "INSERT INTO login_failures (name, failures, locked_until, last_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET failures = "
                    "excluded.failures, locked_until = excluded.locked_until, last_at = "
                    "excluded.last_at", (key, failures, until, now))
            details = {"failures": failures}
            if until:
                details["retry_after_s"] = round(until - now)
            raise ConsoleError("wrong user name or password", code="BAD_LOGIN",
                               details=details)
        with self.lock:
            self.con.execute("DELETE FROM login_failures WHERE name = ?", (key,))
        if self.hasher.check_needs_rehash(row[1]):
            with self.lock:
                self.con.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                                 (self.hasher.hash(password), name))
        return self._new_session(name, row[0], row[2])

    def _new_session(self, name: str, role: str, lang: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock()
        with self.lock:
            self.con.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            self.con.execute("INSERT INTO sessions (token_sha256, name, csrf, created_at, "
                             "expires_at) VALUES (?, ?, ?, ?, ?)",
                             (_sha(token), name, csrf, now, now + SESSION_S))
        return token, Session(name, role, lang, csrf, now + SESSION_S)

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (None: none, expired, or its user gone)."""
        if not token or len(token) > 256:
            return None
        with self.lock:
            row = self.con.execute(
                "SELECT s.name, u.role, u.lang, s.csrf, s.expires_at FROM sessions s JOIN "
                "users u ON u.name = s.name WHERE s.token_sha256 = ? AND NOT u.disabled",
                (_sha(token),)).fetchone()
        if row is None or row[4] < self.clock():
            return None
        return Session(*row)

    def logout(self, token: str | None) -> None:
        if token:
            with self.lock:
                self.con.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_sha(token),))

    # the actions log --------------------------------------------------------------
    def record(self, staff: str, role: str, action: str, *, target: str | None = None,
               detail: str | None = None, result: str = "ok") -> int:
        with self.lock:
            cur = self.con.execute(
                "INSERT INTO actions (at, staff, role, action, target, detail, result) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.clock(), staff, role, action, target, detail, result))
            return cur.lastrowid

    def actions(self, *, limit: int = 200, staff: str | None = None,
                prefix: str | None = None) -> list[dict]:
        cols = ("action_id", "at", "staff", "role", "action", "target", "detail", "result")
        sql = f"SELECT {', '.join(cols)} FROM actions WHERE 1"
        args: list = []
        if staff:
            sql += " AND staff = ?"
            args.append(staff)
        if prefix:
            sql += " AND action LIKE ?"
            args.append(prefix + "%")
        sql += " ORDER BY action_id DESC LIMIT ?"
        args.append(limit)
        with self.lock:
            rows = self.con.execute(sql, args).fetchall()
        return [dict(zip(cols, r)) for r in rows]


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (either missing: False)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def generated_password() -> str:
    return secrets.token_urlsafe(18)


def database_path(data_dir) -> Path:
    return Path(data_dir) / "console.db"


__all__ = ["ROLES", "ConsoleError", "Session", "StaffDB", "check_role", "check_name",
           "read_password_file", "role_rank", "same", "generated_password",
           "database_path"]
