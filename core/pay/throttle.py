"""A per-source throttle with exponential backoff for secret checks: the venue's
logins and transaction passwords (:mod:`lanecore.core.store.unattended`) and the
stored-value PINs (:mod:`lanecore.core.pay.storedvalue`).

A per-account lock stops guessing one account's secret, but not one password tried
over many accounts (spraying), and it lets anyone lock anyone out. This throttle
counts wrong answers **per source** — the device, terminal or peer the attempt came
from, as the caller names it — and makes a source that keeps failing wait:

* the first :data:`FREE_FAILURES` (5) failures cost nothing;
* each one after that blocks the source for :data:`BASE_S` (30 s) × 2^k — 30 s, 60 s,
  120 s, 240 s, 480 s, then :data:`MAX_S` (900 s) — with k the failures still
  counting (rounded up) past the free ones;
* the count decays: one failure is forgotten for every :data:`DECAY_S` (600 s)
  without one (continuously: the level is a real number);
* while blocked, an attempt from the source that carries a secret is refused
  before anything is read or hashed (the caller's ``THROTTLED``, details
  ``retry_after_s`` and ``until``); it is not counted, it does not extend the block;
* a success neither resets nor lowers the count — else an attacker would mix logins
  to an account of their own into a spray.

So a source gets at most about ``12 + T / 600 s`` secrets checked over any period
``T`` (≈ 15 in the first hour, ≈ 154 a day), so at most 3 accounts locked or frozen
(five wrong answers each) in the first hour and 31 a day; freezing members' stored
value one after the other as fast as allowed takes ≈ 7.5 minutes for the second,
≈ 2.5 hours for five and ≈ 6.7 hours for ten. ``docs/security.md`` ("Logins") gives
the measurements.

The state is one row per source in a table of the caller's database (the module's
own, so it lives and dies with the rest of its state), read and written inside the
caller's transaction (``core/sqltxn.py``): a failure and its count commit together.
Rows that have decayed to nothing and block nothing are deleted as failures come in.

Why a few lines and not a rate-limiting library: the well-kept ones (e.g. ``limits``)
count fixed or moving windows in memory, Redis or Memcached; this needs a backoff
that grows, a count that decays, state in the module's own SQLite and in the very
transaction that records the failure, and the caller's injectable clock.

Imports nothing of lanecore: it sits in ``core/pay`` beside stored value, and
``core/store`` may import ``core/pay``.
"""

from __future__ import annotations

import math
import re
import sqlite3

__all__ = ["BASE_S", "DECAY_S", "FREE_FAILURES", "MAX_S", "SourceThrottle", "source_ok"]

#: Failures a source may make before it has to wait.
FREE_FAILURES = 5
#: The first wait, seconds; it doubles with every failure after that.
BASE_S = 30.0
#: The longest wait, seconds.
MAX_S = 900.0
#: Seconds without a failure that forget one.
DECAY_S = 600.0

_TABLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SOURCE_MAX = 128


def source_ok(source) -> bool:
    """A source names where an attempt came from: a string of 1–128 characters (only
    a key: the payment gateway's ``terminal:<id>`` holds any terminal name)."""
    return isinstance(source, str) and 1 <= len(source) <= _SOURCE_MAX


class SourceThrottle:
    """The throttle's rules on table ``table`` (created by :meth:`schema`'s
    statements). Times are the caller's Unix seconds (``now``); every method reads
    or writes through the connection the caller passes, inside its transaction."""

    def __init__(self, table: str, *, free: int = FREE_FAILURES, base_s: float = BASE_S,
                 max_s: float = MAX_S, decay_s: float = DECAY_S) -> None:
        if not _TABLE_RE.fullmatch(table):
            raise ValueError(f"not a table name: {table!r}")
        if not (isinstance(free, int) and free >= 0):
            raise ValueError("free must be an integer ≥ 0")
        if not (0 < base_s <= max_s) or not decay_s > 0:
            raise ValueError("need 0 < base_s <= max_s and decay_s > 0")
        self.table, self.free = table, free
        self.base_s, self.max_s, self.decay_s = float(base_s), float(max_s), float(decay_s)

    def schema(self) -> tuple[str, ...]:
        return (f"""CREATE TABLE IF NOT EXISTS {self.table} (
            source          TEXT PRIMARY KEY,
            level           REAL NOT NULL CHECK (level >= 0),
            last_failure_at REAL NOT NULL,
            blocked_until   REAL)""",)

    def _row(self, con: sqlite3.Connection, source: str):
        return con.execute(f"SELECT level, last_failure_at, blocked_until FROM {self.table} "
                           "WHERE source = ?", (source,)).fetchone()

    def level(self, con: sqlite3.Connection, source: str, now: float) -> float:
        """The source's failures that still count at ``now`` (decayed)."""
        row = self._row(con, source)
        if row is None:
            return 0.0
        return max(0.0, row[0] - max(0.0, now - row[1]) / self.decay_s)

    def blocked_until(self, con: sqlite3.Connection, source: str,
                      now: float) -> float | None:
        """When the source may try again, or None when it may now."""
        row = self._row(con, source)
        if row is None or row[2] is None or now >= row[2]:
            return None
        return row[2]

    def backoff_s(self, level: float) -> float:
        """The wait after a failure that leaves the source at ``level`` (0: none)."""
        over = math.ceil(level - 1e-9) - self.free
        if over <= 0:
            return 0.0
        return min(self.max_s, self.base_s * 2.0 ** min(over - 1, 64))

    def fail(self, con: sqlite3.Connection, source: str, now: float) -> float | None:
        """Count one failure of ``source`` at ``now``; the end of the wait it starts,
        or None when it starts none."""
        level = self.level(con, source, now) + 1.0
        wait = self.backoff_s(level)
        until = now + wait if wait else None
        # Sources that have decayed to nothing and block nothing: forgotten.
        con.execute(f"DELETE FROM {self.table} WHERE level <= (? - last_failure_at) / ? "
                    "AND (blocked_until IS NULL OR blocked_until <= ?)",
                    (now, self.decay_s, now))
        con.execute(f"INSERT INTO {self.table} (source, level, last_failure_at, "
                    "blocked_until) VALUES (?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
                    "level = excluded.level, last_failure_at = excluded.last_failure_at, "
                    "blocked_until = excluded.blocked_until", (source, level, now, until))
        return until

    @staticmethod
    def retry_after_s(until: float, now: float) -> int:
        """Whole seconds to wait (at least 1), as ``THROTTLED`` reports them."""
        return max(1, math.ceil(until - now))
