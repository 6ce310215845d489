"""A durable SMS outbox: receipts (and anything else) texted to shoppers, never lost
when a process dies and never sent twice for one request.

Messages live in table ``sms_outbox`` of a SQLite connection the caller opens in
autocommit mode (``isolation_level=None``, as :func:`lanecore.core.scan.catalog.connect`
does); every change is one ``BEGIN IMMEDIATE`` transaction. A message moves ::

    pending ──► sending ──► sent
       ▲           │
       └───────────┤ the sink raised: again after a backoff
                   └──► failed (after max_tries attempts; last_error says why)

* :meth:`Outbox.enqueue` writes a ``pending`` message. It is idempotent by the
  caller's ``msg_ref``: the same reference with the same phone and text returns the
  message already there (whatever its state); with other terms it is
  ``REF_CONFLICT``.
* :meth:`Outbox.deliver_pending` takes due messages one at a time: claims it —
  marks it ``sending`` with a lease of ``lease_s`` seconds and counts the attempt,
  in one transaction — then hands it to the sink outside any transaction (no lock
  is held while a provider is slow) and marks it ``sent``. A sink that
  raises puts the message back to ``pending`` for ``backoff_s · 2^(tries−1)`` seconds
  (at most ``max_backoff_s``), or ``failed`` after ``max_tries`` attempts.
* After a crash between the sink and ``sent`` the message stays ``sending``; once
  its lease has run out it is claimed and delivered again. Delivery to the sink is
  therefore **at least once**; every delivery carries ``msg_ref`` (and the attempt
  number), so a sink — or the SMS provider behind it — drops duplicates by
  ``msg_ref``. ``lease_s`` must be longer than the sink ever takes, or a slow
  delivery is made twice by two deliverers. A crash counts as an attempt, so a
  message that kills the deliverer on every attempt ends ``failed`` (with
  ``last_error`` saying so) instead of looping.

Sinks have one method, ``send(message: OutboxMessage) -> None``, which raises on
failure: :class:`FileSink` (one JSON object per line, fsynced), :class:`ConsoleSink`
(a readable block on a stream), and :func:`sink_from_url` builds either from
``file:/path`` or ``console:``.

Errors are :class:`OutboxError` with a stable ``code``: ``BAD_PHONE`` (not ``+``
and 8..15 digits), ``BAD_MESSAGE`` (a ``msg_ref`` or text of the wrong form),
``REF_CONFLICT``, ``BAD_SINK``, ``BAD_REQUEST`` (an impossible setting),
``DB_ERROR``/``DB_BUSY``. A sink's own error is never raised from
:meth:`Outbox.deliver_pending`: it is kept in ``last_error``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, TextIO

from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError
from lanecore.core.pay.receipt import sms_segments

__all__ = [
    "PENDING", "SENDING", "SENT", "FAILED", "STATES", "MAX_SEGMENTS", "OutboxError",
    "OutboxMessage", "Outbox", "Sink", "FileSink", "ConsoleSink", "sink_from_url",
    "normalise_phone",
]

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
STATES = (PENDING, SENDING, SENT, FAILED)
#: The longest text the outbox takes, in SMS segments (10 × 153 GSM-7 characters).
MAX_SEGMENTS = 10
_MAX_ERROR = 500                     # characters of a sink's error kept

_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_PHONE_RE = re.compile(r"\+[0-9]{8,15}")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sms_outbox (
        msg_ref TEXT PRIMARY KEY, phone TEXT NOT NULL, text TEXT NOT NULL,
        encoding TEXT NOT NULL, segments INTEGER NOT NULL,
        state TEXT NOT NULL, tries INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, sent_at REAL,
        last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS sms_outbox_due ON sms_outbox (state, next_at)",
)
_COLS = ("msg_ref, phone, text, encoding, segments, state, tries, next_at, created_at, "
         "updated_at, sent_at, last_error")


class OutboxError(LanecoreError):
    """An SMS the outbox refuses, a sink it cannot build, or a database failure."""

    code = "OUTBOX_ERROR"


def _db_error(exc: sqlite3.Error, what: str) -> OutboxError:
    """DB_BUSY when another connection holds the lock past its timeout, else DB_ERROR."""
    name = getattr(exc, "sqlite_errorname", "")
    busy = name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    err = OutboxError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")
    err.__cause__ = exc
    return err


def normalise_phone(phone: str) -> str:
    """``phone`` as stored: spaces, hyphens, dots and brackets dropped, then ``+``
    and 8..15 digits (E.164 allows 15; the shortest national numbers with their
    country code have 8), the first digit not 0. ``BAD_PHONE`` otherwise."""
    if not isinstance(phone, str) or len(phone) > 32:
        raise OutboxError("a phone number is text: + and 8..15 digits", code="BAD_PHONE")
    squeezed = re.sub(r"[ .()-]", "", phone)
    if not _PHONE_RE.fullmatch(squeezed) or squeezed[1] == "0":
        raise OutboxError(f"{phone!r} is not an international phone number (+ and "
                          f"8..15 digits, e.g. +447700900123)", code="BAD_PHONE")
    return squeezed


@dataclass(frozen=True)
class OutboxMessage:
    """One row of the outbox. Times are Unix seconds; ``next_at`` is when a
    ``pending`` message is next due, or when a ``sending`` one's lease ends;
    ``tries`` counts delivery attempts begun."""

    msg_ref: str
    phone: str
    text: str
    encoding: str
    segments: int
    state: str
    tries: int
    next_at: float
    created_at: float
    updated_at: float
    sent_at: float | None
    last_error: str | None

    def to_dict(self) -> dict:
        return asdict(self)


class Sink(Protocol):
    """Where messages go: an SMS provider's connector, a file, a console."""

    def send(self, message: OutboxMessage) -> None:
        """Deliver ``message`` or raise; may be called more than once per ``msg_ref``."""


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, "outbox_txn", _db_error, "outbox")


class Outbox:
    """The SMS outbox in table ``sms_outbox`` of ``con`` (created if missing),
    delivering to ``sink``.

    ``max_tries``: attempts before a message is ``failed``; ``backoff_s``: the wait
    after the first failure, doubled after each further one up to
    ``max_backoff_s``; ``lease_s``: how long a claimed message is left to its
    deliverer before it is claimed again (longer than any sink call); ``clock``:
    Unix seconds (tests pass their own).
    """

    def __init__(self, con: sqlite3.Connection, sink: Sink, *, max_tries: int = 5,
                 backoff_s: float = 30.0, max_backoff_s: float = 3600.0,
                 lease_s: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(con, sqlite3.Connection) or con.isolation_level is not None:
            raise OutboxError("the outbox needs a sqlite3 connection in autocommit mode "
                              "(isolation_level=None)", code="BAD_REQUEST")
        if not callable(getattr(sink, "send", None)):
            raise OutboxError("a sink has a send(message) method", code="BAD_SINK")
        if type(max_tries) is not int or max_tries < 1:
            raise OutboxError("max_tries is an integer ≥ 1", code="BAD_REQUEST")
        if not (0 <= backoff_s <= max_backoff_s) or not lease_s > 0:
            raise OutboxError("0 ≤ backoff_s ≤ max_backoff_s and lease_s > 0 (seconds)",
                              code="BAD_REQUEST")
        self.con, self.sink, self.clock = con, sink, clock
        self.max_tries, self.backoff_s = max_tries, float(backoff_s)
        self.max_backoff_s, self.lease_s = float(max_backoff_s), float(lease_s)
        try:
            with _Txn(con):
                for stmt in _SCHEMA:
                    con.execute(stmt)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot create the outbox table") from exc

    # ------------------------------------------------------------------------------
    def enqueue(self, msg_ref: str, phone: str, text: str) -> OutboxMessage:
        """Queue ``text`` for ``phone`` under the caller's ``msg_ref`` (1..64 of
        ``A-Z a-z 0-9 . _ : -``; e.g. ``receipt-S001-A1B2-0001``) and return the row.
        Idempotent: the same ``msg_ref``, phone and text return the existing row
        (whatever its state, so a retried request never sends twice); other terms
        are ``REF_CONFLICT``. ``BAD_PHONE``, ``BAD_MESSAGE`` (empty, not text,
        control characters other than newline, more than :data:`MAX_SEGMENTS`
        segments)."""
        if not isinstance(msg_ref, str) or not _REF_RE.fullmatch(msg_ref):
            raise OutboxError(f"msg_ref {msg_ref!r} is not 1..64 of A-Z a-z 0-9 . _ : -",
                              code="BAD_MESSAGE")
        phone = normalise_phone(phone)
        if not isinstance(text, str) or not text.strip():
            raise OutboxError("an SMS text is non-empty text", code="BAD_MESSAGE")
        if not text.replace("\n", "").isprintable():
            raise OutboxError("an SMS text holds control characters", code="BAD_MESSAGE")
        encoding, segments = sms_segments(text)
        if segments > MAX_SEGMENTS:
            raise OutboxError(f"the text is {segments} {encoding} segments; at most "
                              f"{MAX_SEGMENTS}", code="BAD_MESSAGE")
        now = self.clock()
        try:
            with _Txn(self.con):
                old = self._row(msg_ref)
                if old is not None:
                    if (old.phone, old.text) != (phone, text):
                        raise OutboxError(f"msg_ref {msg_ref!r} was queued with another "
                                          f"phone or text", code="REF_CONFLICT")
                    return old
                self.con.execute(
                    f"INSERT INTO sms_outbox ({_COLS}) "
                    f"VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, NULL, NULL)",
                    (msg_ref, phone, text, encoding, segments, PENDING, now, now, now))
                return self._row(msg_ref)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot queue the message") from exc

    def get(self, msg_ref: str) -> OutboxMessage | None:
        """The message queued under ``msg_ref``, or None."""
        try:
            return self._row(msg_ref)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the outbox") from exc

    def counts(self) -> dict[str, int]:
        """Messages per state, every state present."""
        try:
            got = dict(self.con.execute(
                "SELECT state, COUNT(*) FROM sms_outbox GROUP BY state").fetchall())
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the outbox") from exc
        return {s: got.get(s, 0) for s in STATES}

    # ------------------------------------------------------------------------------
    def deliver_pending(self, limit: int = 100) -> int:
        """Hand up to ``limit`` due messages to the sink — ``pending`` ones whose
        backoff is over, and ``sending`` ones whose lease ran out (a deliverer died)
        — oldest first. Returns how many were marked ``sent``. A sink's exception
        (any ``Exception``) is recorded, never raised; an exception that is not an
        ``Exception`` (KeyboardInterrupt, SystemExit) leaves the message ``sending``
        for a later call to deliver again once its lease is over."""
        if type(limit) is not int or limit < 1:
            raise OutboxError("limit is an integer ≥ 1", code="BAD_REQUEST")
        sent = 0
        for _ in range(limit):
            msg = self._claim()
            if msg is None:
                break
            try:
                self.sink.send(msg)
            except Exception as exc:  # noqa: BLE001 - any sink failure is a retry
                self._failed(msg, f"{type(exc).__name__}: {exc}")
                continue
            self._sent(msg)
            sent += 1
        return sent

    def _claim(self) -> OutboxMessage | None:
        """The next due message, now ``sending`` under a lease, its attempt counted.
        One at a time, just before its delivery, so a crash charges the attempt to
        the message being delivered and to no other."""
        now = self.clock()
        try:
            with _Txn(self.con):
                # A lease that ran out on the last allowed attempt: the deliverer
                # died in the sink every time, so stop rather than loop.
                self.con.execute(
                    "UPDATE sms_outbox SET state = ?, updated_at = ?, last_error = ? "
                    "WHERE state = ? AND next_at <= ? AND tries >= ?",
                    (FAILED, now, "the deliverer stopped during delivery; no tries left",
                     SENDING, now, self.max_tries))
                row = self.con.execute(
                    "SELECT msg_ref FROM sms_outbox WHERE state IN (?, ?) AND next_at <= ? "
                    "ORDER BY next_at, created_at, msg_ref LIMIT 1",
                    (PENDING, SENDING, now)).fetchone()
                if row is None:
                    return None
                self.con.execute(
                    "UPDATE sms_outbox SET state = ?, tries = tries + 1, next_at = ?, "
                    "updated_at = ? WHERE msg_ref = ?",
                    (SENDING, now + self.lease_s, now, row[0]))
                return self._row(row[0])
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot claim a message to deliver") from exc

    def _sent(self, msg: OutboxMessage) -> None:
        now = self.clock()
        try:
            # Whoever delivered it, it is delivered: no condition on tries.
            self.con.execute(
                "UPDATE sms_outbox SET state = ?, sent_at = ?, updated_at = ?, "
                "last_error = NULL WHERE msg_ref = ? AND state = ?",
                (SENT, now, now, msg.msg_ref, SENDING))
        except sqlite3.Error as exc:
            raise _db_error(exc, f"{msg.msg_ref} was delivered but cannot be marked "
                                 f"sent (it will be delivered again)") from exc

    def _failed(self, msg: OutboxMessage, error: str) -> None:
        now = self.clock()
        error = error[:_MAX_ERROR]
        if msg.tries >= self.max_tries:
            state, next_at = FAILED, now
        else:
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (msg.tries - 1))
            state, next_at = PENDING, now + wait
        try:
            # Only our own claim: if the lease ran out and another deliverer took the
            # message meanwhile, its outcome is the one that counts.
            self.con.execute(
                "UPDATE sms_outbox SET state = ?, next_at = ?, updated_at = ?, "
                "last_error = ? WHERE msg_ref = ? AND state = ? AND tries = ?",
                (state, next_at, now, error, msg.msg_ref, SENDING, msg.tries))
        except sqlite3.Error as exc:
            raise _db_error(exc, f"cannot record the failure of {msg.msg_ref}") from exc

    def _row(self, msg_ref: str) -> OutboxMessage | None:
        row = self.con.execute(f"SELECT {_COLS} FROM sms_outbox WHERE msg_ref = ?",
                               (msg_ref,)).fetchone()
        return None if row is None else OutboxMessage(*row)


# --------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------

class FileSink:
    """Appends one JSON object per message to ``path`` (created mode 0600: phone
    numbers are personal data) and fsyncs it before returning::

        {"attempt": 1, "encoding": "GSM-7", "msg_ref": "...", "phone": "+44...",
         "segments": 1, "text": "..."}

    Each line is written with one ``write`` on a file opened ``O_APPEND``, so lines
    from several processes do not interleave. A redelivery after a crash appends the
    line again (same ``msg_ref``, a higher ``attempt``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    def send(self, message: OutboxMessage) -> None:
        line = json.dumps({"msg_ref": message.msg_ref, "phone": message.phone,
                           "text": message.text, "encoding": message.encoding,
                           "segments": message.segments, "attempt": message.tries},
                          sort_keys=True, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileSink({self.path!r})"


class ConsoleSink:
    """Writes each message as a short block to ``stream`` (standard output by
    default): for a development lane, or a demonstration."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def send(self, message: OutboxMessage) -> None:
        out = self.stream if self.stream is not None else sys.stdout
        out.write(f"SMS {message.msg_ref} to {message.phone} ({message.encoding}, "
                  f"{message.segments} segment{'s' if message.segments != 1 else ''}, "
                  f"attempt {message.tries})\n{message.text}\n\n")
        out.flush()

    def __repr__(self) -> str:
        return f"ConsoleSink({self.stream!r})"


def sink_from_url(url: str) -> FileSink | ConsoleSink:
    """A sink from its URL: ``file:/var/lib/lanecore/sms.jsonl`` (also
    ``file:///…`` and a relative ``file:sms.jsonl``) is a :class:`FileSink`;
    ``console:`` (or ``console:stdout``, ``console:stderr``) a :class:`ConsoleSink`.
    ``BAD_SINK`` for anything else."""
    if isinstance(url, str) and url.startswith("file:"):
        path = url[len("file:"):]
        if path.startswith("//"):
            host, sep, rest = path[2:].partition("/")
            if not sep or host not in ("", "localhost"):
                raise OutboxError(f"sink {url!r}: a file sink is on this host "
                                  f"(file:/path or file:///path)", code="BAD_SINK")
            path = "/" + rest
        if not path or path.endswith("/") or "\x00" in path:
            raise OutboxError(f"sink {url!r} names no file", code="BAD_SINK")
        return FileSink(path)
    if url in ("console:", "console:stdout"):
        return ConsoleSink()
    if url == "console:stderr":
        return ConsoleSink(sys.stderr)
    raise OutboxError(f"unknown SMS sink {url!r}: file:/path or console:",
                      code="BAD_SINK")
