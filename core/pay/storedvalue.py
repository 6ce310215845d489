"""Member stored value: a store's prepaid member balances, kept in the store database.

A member (card or phone number, 1–64 safe characters) has at most one account, in one
currency. Money moves onto it by a **top-up** (the member pays in at the desk), off it
by a **debit** (a checkout), and back onto it by a **credit** — the refund or reversal
of one earlier debit, never more than that debit took less what earlier credits
against it gave back. An **adjust** is a staff correction, signed. Every amount is an
integer number of minor units (pence, cent, fen), at most :data:`MAX_AMOUNT_MINOR` per
move.

**Tables** (on the caller's ``sqlite3`` connection, in autocommit mode, as
:func:`lanecore.core.scan.catalog.connect` opens it): ``sv_accounts`` one row per member
(balance, frozen flag, salted PIN hash, the count of wrong PINs in a row) and
``sv_moves`` one row per move, keyed by the caller's reference, with the balance after
it. ``balance_minor >= 0`` is a table constraint as well as a check made before every
write.

**Transactions.** Every change is one ``BEGIN IMMEDIATE`` transaction — the write
lock is taken before the balance is read, so two lanes debiting the same account
cannot both spend the same money — or, when the connection is already inside a
transaction, a savepoint in it: the caller's ``COMMIT`` makes it durable, its
``ROLLBACK`` undoes it, and a refusal undoes only this module's part.

**Idempotency.** A ``ref`` names one move. Repeating a move with the same ``ref`` and
the same terms (member, currency, amount, ``of_ref``) answers with the move first made
and moves nothing; other terms, or another kind of move, under that ``ref`` are
``REF_CONFLICT``. Refs are one namespace across all members and kinds. A replay is
answered from the record without checking the PIN or the frozen flag again: it moves
nothing. **A refused move is not recorded** under its ``ref``: a debit refused for
``BALANCE_NOT_ENOUGH`` may be sent again with the same ``ref`` after a top-up and
succeed.

**Settling.** :meth:`StoredValue.settle` answers whether a debit was made under a
``ref`` and, when none was, voids the ``ref`` (table ``sv_voids``, schema version 2)
so none can be made later: a caller whose own records live elsewhere (the payment
gateway's ledger, when the accounts are in the chain's PostgreSQL database) gets a
final answer about a debit it may or may not have sent.

**PINs.** An account may have a PIN (any 4–64 printable characters; a password is
fine). Only a salted scrypt hash is stored (``scrypt$n$r$p$salt$hash``, base64),
compared in constant time. A debit of an account with a PIN needs the right one: a
wrong PIN is ``WRONG_PASSWORD`` and counts; after :data:`MAX_PIN_FAILURES` wrong in a
row the account is frozen. The count is kept in ``sv_accounts.pin_failures`` and is
written even though the debit is refused (the refusal commits the count, nothing
else); a right PIN sets it back to 0, :meth:`StoredValue.unfreeze` and
:meth:`StoredValue.set_pin` too. A missing PIN is ``WRONG_PASSWORD`` (details
``pin_missing``) but does not count — it is no guess. Top-ups, credits and adjusts
need no PIN.

**Per source.** The freeze is per account, so one terminal could otherwise try a PIN
over many members, or freeze any member with five wrong PINs. ``debit(…, source=)``
(the payment gateway passes ``terminal:<id>``) also counts wrong PINs per source in
table ``sv_source_failures`` (:mod:`lanecore.core.pay.throttle`): after 5 a source
waits 30 s, 60 s, … up to 900 s, one failure forgotten per 600 s without one, and
while it waits a debit that carries a PIN is ``THROTTLED`` (details
``retry_after_s``, ``until``) before the account is read or the PIN hashed: not
counted anywhere, the right PIN refused too. Ten members frozen from one terminal
take it about 6.7 hours instead of seconds.

**Frozen** accounts refuse debits (``ACCOUNT_FROZEN``); money can still come back or in
(top-up, credit, adjust), so a refund is never stuck.

**Errors** are :class:`StoredValueError` with a stable ``code`` and a ``details`` map:
``BAD_MEMBER``, ``BAD_AMOUNT``, ``BAD_REF`` (also a bad ``origin``), ``BAD_PIN`` (a new PIN of the wrong form, a
PIN that is no string), ``BAD_CURRENCY``, ``BAD_REQUEST`` (an adjust without a reason,
a debit's bad ``source``),
``UNKNOWN_MEMBER``, ``REF_CONFLICT``, ``UNKNOWN_DEBIT`` (a credit's ``of_ref`` is no
debit of this member), ``OVER_REFUND``, ``BALANCE_LIMIT`` (a top-up or adjust above
:data:`MAX_BALANCE_MINOR`), ``THROTTLED`` (the source is in backoff; not a decline:
routing does not fall back on it), ``DB_ERROR``/``DB_BUSY``, and the three refusals a
payment channel of kind ``stored_value`` reports (:data:`DECLINE_CODES`, mapped in
``lanecore.core.pay.routing.DECLINE_TABLE["stored_value"]``): ``BALANCE_NOT_ENOUGH``,
``ACCOUNT_FROZEN``, ``WRONG_PASSWORD``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import numbers
import os
import re
import sqlite3
import time
from dataclasses import asdict, dataclass

from lanecore.core.sqlschema import migrate
from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError
from lanecore.core.pay.throttle import SourceThrottle, source_ok

__all__ = [
    "DECLINE_CODES", "KINDS", "MAX_AMOUNT_MINOR", "MAX_BALANCE_MINOR", "MAX_PIN_FAILURES",
    "Account", "Move", "StoredValue", "StoredValueError",
]

#: Largest single move, minor units.
MAX_AMOUNT_MINOR = 10 ** 12
#: Largest balance a top-up or a positive adjust may reach, minor units (far inside
#: int64; credits give back what was debited and are not held to it).
MAX_BALANCE_MINOR = 10 ** 15
#: Wrong PINs in a row that freeze the account.
MAX_PIN_FAILURES = 5
#: The kinds of move in ``sv_moves``.
KINDS = ("topup", "debit", "credit", "adjust")
#: The refusals of a debit, as ``routing.DECLINE_TABLE["stored_value"]`` names them.
DECLINE_CODES = ("BALANCE_NOT_ENOUGH", "ACCOUNT_FROZEN", "WRONG_PASSWORD")

_MEMBER_RE = re.compile(r"[A-Za-z0-9_.@+:-]{1,64}")
_REF_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_PIN_MIN, _PIN_MAX = 4, 64
# scrypt cost: about 70 ms and 16 MiB a check on a kiosk-class CPU. The parameters go
# into every stored hash, so raising them later leaves old hashes readable.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2 ** 14, 8, 1, 32


class StoredValueError(LanecoreError):
    """A stored-value refusal with a stable ``code`` and machine-readable ``details``."""

    code = "STORED_VALUE_ERROR"


@dataclass(frozen=True)
class Account:
    """One member's account. Money in minor units, times in Unix seconds. The PIN
    hash is never handed out: ``has_pin`` says whether there is one."""

    member: str
    currency: str
    balance_minor: int
    frozen: bool
    has_pin: bool
    pin_failures: int
    created_at: float
    updated_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Move:
    """One row of ``sv_moves``: ``amount_minor`` is positive for top-ups, debits and
    credits (the kind says which way), signed for adjusts; ``balance_after`` is the
    balance once it was made; ``of_ref`` the debit a credit gives back."""

    ref: str
    member: str
    kind: str
    amount_minor: int
    balance_after: int
    of_ref: str | None
    at: float

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _member(value) -> str:
    if not isinstance(value, str) or not _MEMBER_RE.fullmatch(value):
        raise StoredValueError(f"a member id is 1-64 of A-Z a-z 0-9 _ . @ + : -, not "
                               f"{value!r:.80}", code="BAD_MEMBER")
    return value


def _ref(value, what: str = "ref") -> str:
    if not isinstance(value, str) or not _REF_RE.fullmatch(value):
        raise StoredValueError(f"{what} must be 1-100 of A-Z a-z 0-9 _ . : -, not "
                               f"{value!r:.80}", code="BAD_REF", details={"field": what})
    return value


def _amount(value, what: str = "amount_minor", *, signed: bool = False) -> int:
    ok = _is_int(value) and 0 < abs(value) <= MAX_AMOUNT_MINOR and (signed or value > 0)
    if not ok:
        raise StoredValueError(
            f"{what} must be a {'non-zero' if signed else 'positive'} integer of minor "
            f"units, at most {MAX_AMOUNT_MINOR} in size, not {value!r:.40}",
            code="BAD_AMOUNT", details={"field": what})
    return int(value)


def _pin_form_ok(pin: str) -> bool:
    return _PIN_MIN <= len(pin) <= _PIN_MAX and pin.isprintable()


def _check_new_pin(pin) -> str | None:
    if pin is not None and (not isinstance(pin, str) or not _pin_form_ok(pin)):
        raise StoredValueError(f"a PIN is {_PIN_MIN}-{_PIN_MAX} printable characters",
                               code="BAD_PIN")
    return pin


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=2 * 128 * r * (n + p + 2), dklen=_SCRYPT_LEN)


def _hash_pin(pin: str | None) -> str | None:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``pin`` with a fresh 16-byte salt."""
    if pin is None:
        return None
    salt = os.urandom(16)
    digest = _scrypt(pin, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return (f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}$"
            f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")


def _pin_matches(pin: str, stored: str) -> bool:
    """Constant-time check of ``pin`` against a stored ``scrypt$n$r$p$salt$hash``."""
    if not _pin_form_ok(pin):
        return False          # cannot be right; not worth an scrypt
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        if scheme != "scrypt" or not (n <= 2 ** 20 and r <= 32 and p <= 16):
            return False
        got = _scrypt(pin, base64.b64decode(salt), n, r, p)
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


# --------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sv_accounts (
        member        TEXT PRIMARY KEY,
        currency      TEXT NOT NULL,
        balance_minor INTEGER NOT NULL CHECK (balance_minor >= 0),
        frozen        INTEGER NOT NULL DEFAULT 0 CHECK (frozen IN (0, 1)),
        pin_hash      TEXT,
        pin_failures  INTEGER NOT NULL DEFAULT 0 CHECK (pin_failures >= 0),
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sv_moves (
        ref           TEXT PRIMARY KEY,
        member        TEXT NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('topup', 'debit', 'credit', 'adjust')),
        amount_minor  INTEGER NOT NULL,
        balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
        of_ref        TEXT,
        terms         TEXT NOT NULL,
        at            REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sv_moves_member ON sv_moves (member)",
    "CREATE INDEX IF NOT EXISTS sv_moves_of_ref ON sv_moves (of_ref) WHERE of_ref IS NOT NULL",
)
#: Schema version 2: references :meth:`StoredValue.settle` closed with no move made
#: under them — no move may ever be made under one later.
_VOIDS = (
    """CREATE TABLE IF NOT EXISTS sv_voids (
        ref           TEXT PRIMARY KEY,
        at            REAL NOT NULL)""",
)

_ACCOUNT_COLS = ("member, currency, balance_minor, frozen, pin_hash, pin_failures, "
                 "created_at, updated_at")
_MOVE_COLS = "ref, member, kind, amount_minor, balance_after, of_ref, at"


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, "sv_txn", _db_error, "stored-value")


def _throttled(until: float, now: float) -> StoredValueError:
    wait = SourceThrottle.retry_after_s(until, now)
    return StoredValueError(f"too many wrong PINs from this source: try again in {wait} s",
                            code="THROTTLED", details={"retry_after_s": wait, "until": until})


def _db_error(exc: sqlite3.Error, what: str) -> StoredValueError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return StoredValueError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


class StoredValue:
    """Member stored value in ``currency``, on tables ``sv_accounts`` and ``sv_moves``
    of ``con`` (created if absent). ``clock`` gives Unix seconds for the times kept.

    Accounts in another currency are refused (``BAD_CURRENCY``), so one store database
    may hold accounts of several currencies, each used through its own instance."""

    def __init__(self, con: sqlite3.Connection, currency: str = "CNY", *,
                 clock=time.time, throttle: SourceThrottle | None = None) -> None:
        if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
            raise StoredValueError(f"currency must be an ISO 4217 code, not {currency!r:.20}",
                                   code="BAD_CURRENCY")
        self.con = con
        self.currency = currency
        self.clock = clock
        #: The per-source throttle of PIN checks (``core/pay/throttle.py``), on table
        #: ``sv_source_failures``.
        self.throttle = throttle or SourceThrottle("sv_source_failures")
        try:
            with _Txn(con):
                migrate(con, "storedvalue", (_SCHEMA + self.throttle.schema(), _VOIDS))
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot open the stored-value tables") from exc

    # ------------------------------------------------------------------------------
    # Reading
    # ------------------------------------------------------------------------------
    def _row(self, member: str, *, must: bool = True) -> tuple | None:
        row = self.con.execute(f"SELECT {_ACCOUNT_COLS} FROM sv_accounts WHERE member = ?",
                               (member,)).fetchone()
        if row is None:
            if must:
                raise StoredValueError(f"no stored-value account for member {member}",
                                       code="UNKNOWN_MEMBER", details={"member": member})
            return None
        if row[1] != self.currency:
            raise StoredValueError(f"member {member}'s account holds {row[1]}, not "
                                   f"{self.currency}", code="BAD_CURRENCY",
                                   details={"member": member, "currency": row[1]})
        return row

    @staticmethod
    def _account(row: tuple) -> Account:
        return Account(row[0], row[1], row[2], bool(row[3]), row[4] is not None, row[5],
                       row[6], row[7])

    def account(self, member: str) -> Account:
        """The member's account (``UNKNOWN_MEMBER`` if none)."""
        member = _member(member)
        try:
            return self._account(self._row(member))
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the account") from exc

    def balance(self, member: str) -> int:
        """The member's balance in minor units (``UNKNOWN_MEMBER`` if no account)."""
        return self.account(member).balance_minor

    def moves(self, member: str) -> list[Move]:
        """The member's moves, oldest first (``UNKNOWN_MEMBER`` if no account)."""
        member = _member(member)
        try:
            self._row(member)
            cur = self.con.execute(f"SELECT {_MOVE_COLS} FROM sv_moves WHERE member = ? "
                                   "ORDER BY rowid", (member,))
            return [Move(*r) for r in cur.fetchall()]
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the moves") from exc

    def find(self, ref: str) -> Move | None:
        """The move made under ``ref``, or None (a refused move left none)."""
        ref = _ref(ref)
        try:
            row = self.con.execute(f"SELECT {_MOVE_COLS} FROM sv_moves WHERE ref = ?",
                                   (ref,)).fetchone()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the moves") from exc
        return None if row is None else Move(*row)

    def refundable(self, of_ref: str) -> int:
        """What a credit against debit ``of_ref`` may still give back: the debit less
        the credits already made against it (``UNKNOWN_DEBIT`` if no such debit)."""
        of_ref = _ref(of_ref, "of_ref")
        try:
            debit = self.con.execute("SELECT member, kind, amount_minor FROM sv_moves "
                                     "WHERE ref = ?", (of_ref,)).fetchone()
            if debit is None or debit[1] != "debit":
                raise StoredValueError(f"{of_ref} is no stored-value debit",
                                       code="UNKNOWN_DEBIT", details={"of_ref": of_ref})
            return debit[2] - self._credited(of_ref)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the moves") from exc

    def _credited(self, of_ref: str) -> int:
        return self.con.execute("SELECT COALESCE(SUM(amount_minor), 0) FROM sv_moves "
                                "WHERE of_ref = ? AND kind = 'credit'", (of_ref,)).fetchone()[0]

    # ------------------------------------------------------------------------------
    # Accounts
    # ------------------------------------------------------------------------------
    def open_account(self, member: str, *, pin: str | None = None) -> Account:
        """Open the member's account with balance 0 and, if given, a PIN. Idempotent:
        an account already there in this currency is returned unchanged — ``pin`` is
        then ignored (:meth:`set_pin` changes a PIN); in another currency it is
        ``BAD_CURRENCY``. ``BAD_PIN`` for a PIN that is not 4–64 printable
        characters."""
        member, pin = _member(member), _check_new_pin(pin)
        try:
            with _Txn(self.con):
                row = self._row(member, must=False)
                if row is None:
                    now = self.clock()
                    self.con.execute(
                        f"INSERT INTO sv_accounts ({_ACCOUNT_COLS}) VALUES (?, ?, 0, 0, ?, 0, "
                        "?, ?)", (member, self.currency, _hash_pin(pin), now, now))
                    row = self._row(member)
                return self._account(row)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot open the account") from exc

    def set_pin(self, member: str, pin: str | None) -> Account:
        """Set (or with None, remove) the member's PIN and clear the count of wrong
        PINs. A staff operation: the old PIN is not asked for. Does not unfreeze."""
        member, pin = _member(member), _check_new_pin(pin)
        return self._set(member, "pin_hash = ?, pin_failures = 0", (_hash_pin(pin),))

    def freeze(self, member: str) -> Account:
        """Stop debits from the account (a lost card). Idempotent."""
        return self._set(_member(member), "frozen = 1", ())

    def unfreeze(self, member: str) -> Account:
        """Allow debits again and clear the count of wrong PINs. Idempotent."""
        return self._set(_member(member), "frozen = 0, pin_failures = 0", ())

    def _set(self, member: str, sets: str, args: tuple) -> Account:
        try:
            with _Txn(self.con):
                self._row(member)
                self.con.execute(f"UPDATE sv_accounts SET {sets}, updated_at = ? "
                                 "WHERE member = ?", (*args, self.clock(), member))
                return self._account(self._row(member))
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot update the account") from exc

    # ------------------------------------------------------------------------------
    # Moves
    # ------------------------------------------------------------------------------
    def _terms(self, member: str, amount: int, **more) -> dict:
        return {"member": member, "currency": self.currency, "amount_minor": amount, **more}

    def _replay(self, ref: str, kind: str, terms: dict) -> Move | None:
        row = self.con.execute(f"SELECT {_MOVE_COLS}, terms FROM sv_moves WHERE ref = ?",
                               (ref,)).fetchone()
        if row is None:
            if self.con.execute("SELECT 1 FROM sv_voids WHERE ref = ?",
                                (ref,)).fetchone() is not None:
                raise StoredValueError(f"reference {ref!r} was closed with nothing moved "
                                       "(settle): no move may be made under it",
                                       code="REF_CONFLICT",
                                       details={"ref": ref, "voided": True})
            return None
        if row[2] != kind or json.loads(row[7]) != terms:
            raise StoredValueError(f"reference {ref!r} was used for another stored-value "
                                   "move", code="REF_CONFLICT",
                                   details={"ref": ref, "kind": row[2]})
        return Move(*row[:7])

    def _record(self, ref: str, member: str, kind: str, amount: int, balance_after: int,
                terms: dict, of_ref: str | None = None, pin_failures: int | None = None
                ) -> Move:
        now = self.clock()
        sets, args = "balance_minor = ?, updated_at = ?", [balance_after, now]
        if pin_failures is not None:
            sets += ", pin_failures = ?"
            args.append(pin_failures)
        self.con.execute(f"UPDATE sv_accounts SET {sets} WHERE member = ?", (*args, member))
        self.con.execute(f"INSERT INTO sv_moves ({_MOVE_COLS}, terms) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?)",
                         (ref, member, kind, amount, balance_after, of_ref, now,
                          json.dumps(terms, sort_keys=True)))
        return Move(ref, member, kind, amount, balance_after, of_ref, now)

    def topup(self, member: str, amount_minor: int, *, ref: str) -> Move:
        """Put ``amount_minor`` on the member's account (paid in at the desk).
        ``BALANCE_LIMIT`` if the balance would pass :data:`MAX_BALANCE_MINOR`."""
        member, amount, ref = _member(member), _amount(amount_minor), _ref(ref)
        terms = self._terms(member, amount)
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "topup", terms)
                if seen is not None:
                    return seen
                balance = self._row(member)[2]
                self._check_limit(member, balance, amount)
                return self._record(ref, member, "topup", amount, balance + amount, terms)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot top up") from exc

    @staticmethod
    def _check_limit(member: str, balance: int, amount: int) -> None:
        if balance + amount > MAX_BALANCE_MINOR:
            raise StoredValueError(f"the balance would pass {MAX_BALANCE_MINOR}",
                                   code="BALANCE_LIMIT",
                                   details={"member": member, "balance_minor": balance,
                                            "max_minor": MAX_BALANCE_MINOR})

    def debit(self, member: str, amount_minor: int, *, ref: str,
              pin: str | None = None, source: str | None = None,
              origin: str | None = None) -> Move:
        """Take ``amount_minor`` from the member's account (a checkout).

        ``source`` names where the attempt came from (the payment gateway passes
        ``terminal:<id>``; a string of 1–128 characters, else ``BAD_REQUEST``): a wrong
        PIN counts against it as well as against the account, and while the source
        is in backoff a debit that carries a PIN is ``THROTTLED`` (details
        ``retry_after_s``, ``until``) before the account is read or the PIN hashed —
        see ``core/pay/throttle.py``. None (callers with no network source: staff
        tools, tests) leaves only the account's own count.

        Refusals, checked in this order, none recorded under ``ref`` (the same ``ref``
        may be sent again later): ``THROTTLED``; ``ACCOUNT_FROZEN``; ``WRONG_PASSWORD``
        (the account has a PIN and ``pin`` is missing or wrong; details ``attempts_left``,
        ``frozen`` — the wrong count is committed even so, see the module's notes);
        ``BALANCE_NOT_ENOUGH`` (details ``balance_minor``, ``short_minor``). ``pin`` is
        ignored for an account without a PIN; a ``pin`` that is not a string is
        ``BAD_PIN`` and does not count.

        ``origin`` (1–100 of the ref's characters) names who made the debit — a
        payment gateway sharing the chain's database passes its own id — and is one
        of its terms: the same ``ref`` from another origin is ``REF_CONFLICT``, never
        answered with the other's move. Omitted, the terms are as they always were."""
        member, amount, ref = _member(member), _amount(amount_minor), _ref(ref)
        if pin is not None and not isinstance(pin, str):
            raise StoredValueError("a PIN is a string", code="BAD_PIN")
        if source is not None and not source_ok(source):
            raise StoredValueError("a source is a string of 1-128 characters",
                                   code="BAD_REQUEST", details={"field": "source"})
        terms = self._terms(member, amount) if origin is None else \
            self._terms(member, amount, origin=_ref(origin, "origin"))
        refusal: StoredValueError | None = None
        now = self.clock()
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "debit", terms)
                if seen is not None:
                    return seen
                if source is not None and pin is not None:
                    until = self.throttle.blocked_until(self.con, source, now)
                    if until is not None:
                        raise _throttled(until, now)
                _, _, balance, frozen, pin_hash, failures, _, _ = self._row(member)
                if frozen:
                    raise StoredValueError(f"member {member}'s account is frozen",
                                           code="ACCOUNT_FROZEN", details={"member": member})
                if pin_hash is not None:
                    if pin is None:
                        raise StoredValueError(
                            f"member {member}'s account needs its PIN", code="WRONG_PASSWORD",
                            details={"member": member, "pin_missing": True,
                                     "attempts_left": MAX_PIN_FAILURES - failures})
                    if not _pin_matches(pin, pin_hash):
                        failures += 1
                        lock = failures >= MAX_PIN_FAILURES
                        self.con.execute(
                            "UPDATE sv_accounts SET pin_failures = ?, frozen = ?, "
                            "updated_at = ? WHERE member = ?",
                            (failures, int(lock), now, member))
                        if source is not None:
                            self.throttle.fail(self.con, source, now)
                        refusal = StoredValueError(
                            f"wrong PIN for member {member}"
                            + (f"; {failures} in a row, the account is now frozen"
                               if lock else ""),
                            code="WRONG_PASSWORD",
                            details={"member": member, "pin_missing": False,
                                     "attempts_left": max(0, MAX_PIN_FAILURES - failures),
                                     "frozen": lock})
                    elif failures:
                        # The right PIN: the count goes back to 0 whatever happens next.
                        self.con.execute("UPDATE sv_accounts SET pin_failures = 0 "
                                         "WHERE member = ?", (member,))
                if refusal is None and balance < amount:
                    refusal = StoredValueError(
                        f"member {member} has {balance}, {amount - balance} short of "
                        f"{amount}", code="BALANCE_NOT_ENOUGH",
                        details={"member": member, "balance_minor": balance,
                                 "short_minor": amount - balance})
                if refusal is None:
                    return self._record(ref, member, "debit", amount, balance - amount, terms)
            # Leaving the block normally committed the PIN count, and nothing else.
            raise refusal
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot debit") from exc

    def settle(self, ref: str, *, origin: str | None = None) -> Move | None:
        """The debit made under ``ref`` (by ``origin``, when given), or None — and
        then never: with no move under ``ref`` the reference is voided in the same
        ``BEGIN IMMEDIATE`` transaction, so a debit under it still on its way (sent
        by a process that crashed, over a connection that broke) is ``REF_CONFLICT``
        when it arrives and moves nothing. What a payment gateway asks about a charge
        it left ``sent`` when the account lives in another database than its ledger:
        the answer is final either way. A move under ``ref`` that is no debit, or
        another origin's, is ``REF_CONFLICT``."""
        ref = _ref(ref)
        try:
            with _Txn(self.con):
                row = self.con.execute(f"SELECT {_MOVE_COLS}, terms FROM sv_moves "
                                       "WHERE ref = ?", (ref,)).fetchone()
                if row is None:
                    self.con.execute("INSERT OR IGNORE INTO sv_voids (ref, at) VALUES (?, ?)",
                                     (ref, self.clock()))
                    return None
                if row[2] != "debit" or json.loads(row[7]).get("origin") != origin:
                    raise StoredValueError(f"reference {ref!r} holds another stored-value "
                                           "move", code="REF_CONFLICT",
                                           details={"ref": ref, "kind": row[2]})
                return Move(*row[:7])
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot settle the debit") from exc

    def credit(self, member: str, amount_minor: int, *, ref: str, of_ref: str) -> Move:
        """Give back ``amount_minor`` of debit ``of_ref`` (a refund or a reversal) to
        the member's account. ``UNKNOWN_DEBIT`` if ``of_ref`` is no debit of this
        member; ``OVER_REFUND`` (details ``debited_minor``, ``credited_minor``,
        ``refundable_minor``) if it is more than the debit less earlier credits
        against it. Allowed on a frozen account; needs no PIN."""
        member, amount, ref = _member(member), _amount(amount_minor), _ref(ref)
        of_ref = _ref(of_ref, "of_ref")
        terms = self._terms(member, amount, of_ref=of_ref)
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "credit", terms)
                if seen is not None:
                    return seen
                balance = self._row(member)[2]
                debit = self.con.execute("SELECT member, kind, amount_minor FROM sv_moves "
                                         "WHERE ref = ?", (of_ref,)).fetchone()
                if debit is None or debit[1] != "debit" or debit[0] != member:
                    raise StoredValueError(f"{of_ref} is no stored-value debit of member "
                                           f"{member}", code="UNKNOWN_DEBIT",
                                           details={"member": member, "of_ref": of_ref})
                credited = self._credited(of_ref)
                if amount > debit[2] - credited:
                    raise StoredValueError(
                        f"debit {of_ref} took {debit[2]}, {credited} of it already given "
                        f"back: {amount} is too much", code="OVER_REFUND",
                        details={"of_ref": of_ref, "debited_minor": debit[2],
                                 "credited_minor": credited,
                                 "refundable_minor": debit[2] - credited})
                return self._record(ref, member, "credit", amount, balance + amount, terms,
                                    of_ref=of_ref)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot credit") from exc

    def adjust(self, member: str, delta_minor: int, *, ref: str, reason: str) -> Move:
        """A staff correction of ``delta_minor`` (signed, non-zero) with a ``reason``
        (1–200 characters) kept in the move's terms. Needs no PIN, works on a frozen
        account; ``BALANCE_NOT_ENOUGH`` if it would take the balance below 0,
        ``BALANCE_LIMIT`` above :data:`MAX_BALANCE_MINOR`."""
        member, delta, ref = _member(member), _amount(delta_minor, "delta_minor",
                                                      signed=True), _ref(ref)
        if not isinstance(reason, str) or not 1 <= len(reason.strip()) <= 200:
            raise StoredValueError("an adjust needs a reason of 1-200 characters",
                                   code="BAD_REQUEST", details={"field": "reason"})
        terms = self._terms(member, delta, reason=reason)
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "adjust", terms)
                if seen is not None:
                    return seen
                balance = self._row(member)[2]
                if balance + delta < 0:
                    raise StoredValueError(
                        f"member {member} has {balance}, cannot take {-delta}",
                        code="BALANCE_NOT_ENOUGH",
                        details={"member": member, "balance_minor": balance,
                                 "short_minor": -delta - balance})
                if delta > 0:
                    self._check_limit(member, balance, delta)
                return self._record(ref, member, "adjust", delta, balance + delta, terms)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot adjust") from exc


def debit_records(con: sqlite3.Connection, refs) -> dict[str, int]:
    """The member accounts' record of the debits among ``refs`` (merchant references):
    ``{ref: amount_minor}``. A stored-value channel's "bill" for reconciliation
    (``core/pay/recon.py`` :func:`local_bill`); ``con`` may be read-only."""
    refs = list(refs)
    out: dict[str, int] = {}
    try:
        for i in range(0, len(refs), 500):
            part = refs[i:i + 500]
            for ref, amount in con.execute(
                    "SELECT ref, amount_minor FROM sv_moves WHERE kind = 'debit' AND ref IN "
                    f"({','.join('?' * len(part))})", part):
                out[ref] = int(amount)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    return out
