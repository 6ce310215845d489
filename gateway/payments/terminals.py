"""POS terminals of the payment gateway (seed 004): who may call it, what each may do.

A terminal is registered with an id and gets a 32-byte secret key (``lanecore
terminal add``). With ``[pos] auth = "hmac"`` in ``payments.toml`` every request
to the gateway is one MessagePack frame followed by an *authentication frame*::

    frame 1  the request, exactly as without authentication
    frame 2  MessagePack map {"t": terminal id, "ts": unix seconds (int),
                              "n": 16 random bytes, "mac": 32 bytes}

    mac = HMAC-SHA256(key, b"LCA2\\n" + t + b"\\n" + decimal(ts) + b"\\n"
                           + hex(n) + b"\\n" + frame 1)

The MAC covers the request's bytes as sent, so no language has to reproduce our
MessagePack encoding. ``ts`` must be within ``max_skew_s`` (default 300 s, always
below the gateway's reply retention) of the gateway's clock, and the nonce ``n`` is
used once: ``(t, n)`` is kept in table ``pos_nonces`` (surviving a restart) for
2 × ``max_skew_s``, and a second use is ``AUTH_REPLAYED`` — a captured frame is
refused inside the window as well as after it. A retry is a fresh frame around the
same request (same id): it meets the recorded reply. ``LCA1`` frames (no nonce) are
``AUTH_OLD_FRAME``. The authenticated terminal id is the client for retries (a
``client`` field in the request is ignored), so one terminal can never read
another's replies.

Per-terminal limits (any of them may be absent): ``max_payment_minor`` (one
payment), ``max_day_minor`` (the terminal's paid and open charges of the UTC day,
all channels together) and ``methods`` (the payment methods it may take). They apply
to a terminal named in a request whether or not authentication is on.
"""

from __future__ import annotations

import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field

import msgpack

from lanecore.core.errors import LanecoreError
from lanecore.core.pay.ledger import METHODS
# The request signature every client computes lives with the clients (gateway.net);
# re-exported here beside the registry that holds the keys.
from lanecore.gateway.net.identity import Principal, parse_roles
from lanecore.gateway.net.auth import (  # noqa: F401 - re-exported
    AUTH_TAG, KEY_BYTES, MAX_SKEW_S, NONCE_BYTES, TerminalError,
    auth_frame, key_text, mac, parse_key)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")

SCHEMA = """CREATE TABLE IF NOT EXISTS pos_terminals (
    id TEXT PRIMARY KEY, key BLOB NOT NULL, admin INTEGER NOT NULL DEFAULT 0,
    max_payment_minor INTEGER, max_day_minor INTEGER, methods TEXT,
    created_at REAL NOT NULL, disabled_at REAL, roles TEXT)"""
#: A terminal registered without roles: a POS terminal (``admin`` with ``--admin``).
DEFAULT_ROLES = frozenset({"pos"})
#: The nonces of authentication frames already seen (``authenticate``), per terminal.
NONCES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pos_nonces (
        terminal TEXT NOT NULL, nonce BLOB NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (terminal, nonce)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS pos_nonces_at ON pos_nonces (at)",
)
#: How often (seconds) nonces older than the window are deleted.
NONCE_PRUNE_EVERY_S = 30.0


class AuthError(LanecoreError):
    """A request that did not prove which terminal sent it."""

    code = "AUTH_FAILED"


@dataclass(frozen=True)
class Terminal:
    id: str
    key: bytes = field(repr=False)
    admin: bool = False
    max_payment_minor: int | None = None
    max_day_minor: int | None = None
    methods: tuple[str, ...] | None = None
    created_at: float = 0.0
    disabled_at: float | None = None
    #: What it may do (``gateway/net/identity.py``); ``admin`` is one of them.
    roles: frozenset[str] = DEFAULT_ROLES

    def principal(self) -> Principal:
        """The identity this terminal proves with its HMAC."""
        return Principal(f"pos:{self.id}", self.roles, "hmac")

    def to_dict(self) -> dict:
        """Everything but the key."""
        return {"id": self.id, "admin": self.admin, "roles": sorted(self.roles),
                "max_payment_minor": self.max_payment_minor,
                "max_day_minor": self.max_day_minor,
                "methods": list(self.methods) if self.methods is not None else None,
                "created_at": self.created_at, "disabled_at": self.disabled_at}

    def check_limits(self, amount_minor: int, method: str, used_today_minor: int) -> None:
        """Raise TERMINAL_LIMIT when this payment is beyond one of the terminal's limits
        (``method`` None: money taken in without a payment method, a stored-value
        top-up — the amount limits only)."""
        if method is not None and self.methods is not None and method not in self.methods:
            raise LimitError(self.id, "methods", f"terminal {self.id} does not take "
                             f"{method} payments (it takes {', '.join(self.methods)})")
        if self.max_payment_minor is not None and amount_minor > self.max_payment_minor:
            raise LimitError(self.id, "max_payment_minor",
                             f"{amount_minor} is over terminal {self.id}'s limit of "
                             f"{self.max_payment_minor} per payment",
                             limit_minor=self.max_payment_minor)
        if self.max_day_minor is not None and \
                used_today_minor + amount_minor > self.max_day_minor:
            raise LimitError(self.id, "max_day_minor",
                             f"terminal {self.id} has taken {used_today_minor} today; "
                             f"{amount_minor} more is over its day limit of "
                             f"{self.max_day_minor}", limit_minor=self.max_day_minor,
                             used_minor=used_today_minor)


class LimitError(LanecoreError):
    code = "TERMINAL_LIMIT"

    def __init__(self, terminal: str, limit: str, message: str, **details) -> None:
        super().__init__(message)
        self.details = {"terminal": terminal, "limit": limit, **details}

    def to_dict(self) -> dict:
        return {**super().to_dict(), **self.details}


def _check_id(terminal_id) -> str:
    if not isinstance(terminal_id, str) or not _ID.match(terminal_id):
        raise TerminalError(f"a terminal id is 1–32 letters, digits, '.', '_' or '-' "
                            f"starting with a letter or digit: {terminal_id!r}",
                            code="BAD_TERMINAL_ID")
    return terminal_id


def _check_limit(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10 ** 12:
        raise TerminalError(f"{name} is a positive number of minor units, got {value!r}",
                            code="BAD_LIMIT")
    return value


def _check_methods(methods) -> tuple[str, ...] | None:
    if methods is None:
        return None
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise TerminalError(f"methods are some of {', '.join(METHODS)}; got "
                            f"{', '.join(map(str, bad)) or 'none'}", code="BAD_LIMIT")
    return methods


class Terminals:
    """The registry, table ``pos_terminals`` of the gateway's ledger database."""

    def __init__(self, con: sqlite3.Connection, *, clock=time.time) -> None:
        self.con = con
        self.clock = clock
        con.execute(SCHEMA)
        if "roles" not in {r[1] for r in con.execute("PRAGMA table_info(pos_terminals)")}:
            con.execute("ALTER TABLE pos_terminals ADD COLUMN roles TEXT")   # older files
        for stmt in NONCES_SCHEMA:
            con.execute(stmt)
        self._nonces_pruned = 0.0

    @staticmethod
    def _row(row) -> Terminal:
        tid, key, admin, maxp, maxd, methods, created, disabled, roles = row
        if roles:
            held = parse_roles(roles)
        else:                          # registered before roles: admin or a POS
            held = frozenset({"admin"}) if admin else DEFAULT_ROLES
        return Terminal(tid, bytes(key), "admin" in held, maxp, maxd,
                        tuple(methods.split(",")) if methods else None, created, disabled,
                        held)

    _COLUMNS = ("id, key, admin, max_payment_minor, max_day_minor, methods, created_at, "
                "disabled_at, roles")

    def get(self, terminal_id: str) -> Terminal | None:
        row = self.con.execute(f"SELECT {self._COLUMNS} FROM pos_terminals WHERE id = ?",
                               (terminal_id,)).fetchone()
        return None if row is None else self._row(row)

    def list(self) -> list[Terminal]:
        return [self._row(r) for r in self.con.execute(
            f"SELECT {self._COLUMNS} FROM pos_terminals ORDER BY id")]

    def register(self, terminal_id: str, *, admin: bool = False,
                 max_payment_minor: int | None = None, max_day_minor: int | None = None,
                 methods=None, key: bytes | None = None,
                 rotate: bool = False, roles=None) -> tuple[Terminal, bytes]:
        """Add a terminal (or, with ``rotate``, give an existing one a new key and
        these limits, enabling it again); returns it and its key. A terminal that
        exists is TERMINAL_EXISTS unless ``rotate``. ``roles``: what it may do
        (``"kiosk"``, ``["till", "attendant"]``; default ``pos``); ``admin=True`` adds
        ``admin``."""
        _check_id(terminal_id)
        held = DEFAULT_ROLES if roles is None else parse_roles(roles)
        if admin:
            held = (held - DEFAULT_ROLES if roles is None else held) | {"admin"}
        maxp = _check_limit("max_payment_minor", max_payment_minor)
        maxd = _check_limit("max_day_minor", max_day_minor)
        methods = _check_methods(methods)
        key = secrets.token_bytes(KEY_BYTES) if key is None else key
        if len(key) != KEY_BYTES:
            raise TerminalError("a terminal key is 32 bytes", code="BAD_KEY")
        row = (terminal_id, key, int("admin" in held), maxp, maxd,
               ",".join(methods) if methods else None, self.clock(), ",".join(sorted(held)))
        with self.con:
            if self.get(terminal_id) is not None:
                if not rotate:
                    raise TerminalError(f"terminal {terminal_id} is registered already "
                                        "(rotate its key to replace it)",
                                        code="TERMINAL_EXISTS")
                self.con.execute("DELETE FROM pos_terminals WHERE id = ?", (terminal_id,))
            self.con.execute("INSERT INTO pos_terminals (id, key, admin, max_payment_minor, "
                             "max_day_minor, methods, created_at, roles) VALUES (?, ?, ?, ?, "
                             "?, ?, ?, ?)", row)
        return self.get(terminal_id), key

    def disable(self, terminal_id: str) -> Terminal:
        """Refuse every request of this terminal from now on (its history stays)."""
        if self.get(_check_id(terminal_id)) is None:
            raise TerminalError(f"no terminal {terminal_id}", code="UNKNOWN_TERMINAL")
        with self.con:
            self.con.execute("UPDATE pos_terminals SET disabled_at = COALESCE(disabled_at, ?) "
                             "WHERE id = ?", (self.clock(), terminal_id))
        return self.get(terminal_id)

    def rotate_key(self, terminal_id: str, *, key: bytes | None = None
                   ) -> tuple[Terminal, bytes]:
        """Give a terminal a new key, keeping its roles, limits and state (a disabled
        terminal stays disabled: :meth:`enable` it once the new key is in place);
        the old key fails from the next request. Returns it and the new key."""
        key = secrets.token_bytes(KEY_BYTES) if key is None else key
        if len(key) != KEY_BYTES:
            raise TerminalError("a terminal key is 32 bytes", code="BAD_KEY")
        if self.get(_check_id(terminal_id)) is None:
            raise TerminalError(f"no terminal {terminal_id}", code="UNKNOWN_TERMINAL")
        with self.con:
            self.con.execute("UPDATE pos_terminals SET key = ? WHERE id = ?",
                             (key, terminal_id))
        return self.get(terminal_id), key

    def enable(self, terminal_id: str) -> Terminal:
        """Accept a disabled terminal's requests again (its key unchanged)."""
        if self.get(_check_id(terminal_id)) is None:
            raise TerminalError(f"no terminal {terminal_id}", code="UNKNOWN_TERMINAL")
        with self.con:
            self.con.execute("UPDATE pos_terminals SET disabled_at = NULL WHERE id = ?",
                             (terminal_id,))
        return self.get(terminal_id)

    def set_limits(self, terminal_id: str, *, max_payment_minor: int | None = None,
                   max_day_minor: int | None = None, methods=None) -> Terminal:
        """Replace a terminal's limits (``None``: no such limit), keeping its key, roles
        and state; the gateway reads them at its next request."""
        maxp = _check_limit("max_payment_minor", max_payment_minor)
        maxd = _check_limit("max_day_minor", max_day_minor)
        methods = _check_methods(methods)
        if self.get(_check_id(terminal_id)) is None:
            raise TerminalError(f"no terminal {terminal_id}", code="UNKNOWN_TERMINAL")
        with self.con:
            self.con.execute("UPDATE pos_terminals SET max_payment_minor = ?, "
                             "max_day_minor = ?, methods = ? WHERE id = ?",
                             (maxp, maxd, ",".join(methods) if methods else None,
                              terminal_id))
        return self.get(terminal_id)

    def authenticate(self, frame: bytes | None, payload: bytes, *,
                     max_skew_s: float = MAX_SKEW_S) -> Terminal:
        """The terminal that sent ``payload`` with authentication ``frame``; raises
        AuthError: AUTH_REQUIRED (no frame), AUTH_OLD_FRAME (an ``LCA1`` frame, without
        a nonce), AUTH_BAD_FRAME (not the documented map), AUTH_EXPIRED (``ts`` too far
        from our clock), AUTH_FAILED (unknown or disabled terminal, or a wrong MAC —
        one code, so a caller cannot learn which terminal ids exist), AUTH_REPLAYED
        (a good frame whose nonce this terminal used before). The nonce of a good
        frame is recorded (committed) before this returns; only frames with a valid
        MAC are recorded, so nobody else can fill the table."""
        if frame is None:
            raise AuthError("this gateway authenticates every request: send the "
                            "authentication frame after the request (docs/protocol.md)",
                            code="AUTH_REQUIRED")
        try:
            auth = msgpack.unpackb(frame, raw=False)
        except Exception:
            auth = None
        well_formed = isinstance(auth, dict) and isinstance(auth.get("t"), str) \
            and isinstance(auth.get("ts"), int) and not isinstance(auth.get("ts"), bool) \
            and isinstance(auth.get("mac"), bytes) and len(auth["mac"]) == 32
        if well_formed and set(auth) == {"t", "ts", "mac"}:
            raise AuthError("LCA1 authentication frames (without a nonce) are no longer "
                            "accepted: sign with LCA2 {t, ts, n, mac} (docs/protocol.md)",
                            code="AUTH_OLD_FRAME")
        if not (well_formed and isinstance(auth.get("n"), bytes)
                and len(auth["n"]) == NONCE_BYTES):
            raise AuthError("the authentication frame is a map {t: str, ts: int, "
                            "n: 16 bytes, mac: 32 bytes}", code="AUTH_BAD_FRAME")
        now = self.clock()
        if abs(now - auth["ts"]) > max_skew_s:
            raise AuthError(f"ts {auth['ts']} is more than {max_skew_s:g} s from the "
                            f"gateway's clock ({int(now)})", code="AUTH_EXPIRED")
        terminal = self.get(auth["t"]) if _ID.match(auth["t"]) else None
        expected = mac(terminal.key if terminal else b"\0" * KEY_BYTES, auth["t"],
                       auth["ts"], auth["n"], payload)
        if not hmac.compare_digest(expected, auth["mac"]) or terminal is None \
                or terminal.disabled_at is not None:
            raise AuthError("authentication failed", code="AUTH_FAILED")
        self._use_nonce(terminal.id, auth["n"], now, max_skew_s)
        return terminal

    def _use_nonce(self, terminal_id: str, nonce: bytes, now: float,
                   max_skew_s: float) -> None:
        """Record ``(terminal, nonce)``, AUTH_REPLAYED when it is there already. Kept
        for 2 × ``max_skew_s``: a frame older than that is AUTH_EXPIRED anyway."""
        if now - self._nonces_pruned >= NONCE_PRUNE_EVERY_S or now < self._nonces_pruned:
            self.con.execute("DELETE FROM pos_nonces WHERE at < ?", (now - 2 * max_skew_s,))
            self._nonces_pruned = now
        try:
            self.con.execute("INSERT INTO pos_nonces (terminal, nonce, at) VALUES (?, ?, ?)",
                             (terminal_id, nonce, now))
        except sqlite3.IntegrityError:
            raise AuthError("this authentication frame was used before (a replay): "
                            "every request, a retry too, needs a fresh nonce",
                            code="AUTH_REPLAYED") from None


def open_registry(path, *, readonly: bool = False, clock=time.time):
    """The registry in the ledger database ``path`` on a connection of its own:
    ``(con, Terminals)``; the caller closes ``con``. Read-write (``lanecore terminal
    …`` and the console's ``/terminals`` add, disable and limits): the file made
    private first (it holds the keys: 0600, ``-wal`` and ``-shm`` too), WAL.
    ``readonly``: ``mode=ro``, nothing written; ``(con, None)`` when the gateway has
    not made the table yet. DB_ERROR when it cannot be opened."""
    from pathlib import Path

    from lanecore.core.sqltxn import private_database
    path = Path(path)
    try:
        if readonly:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                  timeout=10.0)
            if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                           "'pos_terminals'").fetchone() is None:
                return con, None
            return con, Terminals(con, clock=clock)
        private_database(path)
        con = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        con.execute("PRAGMA journal_mode=WAL")
        return con, Terminals(con, clock=clock)
    except (OSError, sqlite3.Error) as exc:
        raise LanecoreError(f"cannot open the terminal registry {path}: {exc}",
                            code="DB_ERROR") from exc
