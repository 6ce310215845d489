"""The payment ledger: every charge a durable state machine, so none is taken twice
and none is lost when a process dies.

A charge is one attempt to take ``amount_minor`` for an order through one channel.
It is written before anything is sent, and every step is a transaction
(SQLite, WAL, ``synchronous=FULL``) that moves it along::

    created ──► sent ──► paid
       │          ├────► failed
       │          └────► unknown ──► queried ──► paid | failed | reversed
       └────► failed (never sent: abandoned after a crash)
    paid ──► reversed (a cancel the same day)

* ``created``: in the ledger, **not yet sent** to the provider. The gateway marks a
  charge ``sent`` *before* it calls the provider (write-ahead), so after a crash a
  ``created`` charge certainly never reached the provider: recovery fails it
  (``NOT_SENT``); the shopper's code is never sent again later.
* ``sent``: the provider may have it. After a crash its outcome is unknown.
* ``unknown``: the provider's answer was "user paying", a timeout or a system error.
* ``queried``: being polled. The wallet rules (REFERENCE §3) decide what comes next:
  poll every ``poll_every_s`` (5–10 s), for at most ``give_up_after_s`` (30–60 s) after
  it was sent; then reverse — never earlier than ``reverse_not_before_s`` (15 s)
  after the deduction may have happened — and never re-scan the shopper's code.
* ``paid``, ``failed``, ``reversed``: final.

Idempotency is by the merchant reference (``merchant_ref``, the provider's
``out_trade_no``, ≤ 64 characters): the same order's attempt *n* is always
``<order_no>-<n>``, so a retried request, or a recovery after a crash, asks the
provider about the same trade it may already have.

**Namespaces.** An order number belongs to a ``scope``: the identity that charged it
(the payment gateway passes ``pos:<terminal>`` for an authenticated terminal, ``''``
without authentication). :meth:`Ledger.attempts` reads one scope's charges, so one
terminal's order ``K1-0042`` is not another's. Attempt numbers are counted over every
scope (:meth:`Ledger.last_attempt`), so merchant references stay ``<order_no>-<n>``
and unique at the provider.

Times stored in the ledger are Unix seconds (a monotonic clock does not survive a
restart, and the wallet rules count from when the charge was sent).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, replace

from lanecore.core.errors import LanecoreError
from lanecore.core.sqltxn import private_database

CREATED, SENT, PAID, FAILED, UNKNOWN, QUERIED, REVERSED = (
    "created", "sent", "paid", "failed", "unknown", "queried", "reversed")
STATES = (CREATED, SENT, PAID, FAILED, UNKNOWN, QUERIED, REVERSED)
FINAL = frozenset((PAID, FAILED, REVERSED))
OPEN = frozenset((CREATED, SENT, UNKNOWN, QUERIED))

#: Which state may follow which.
TRANSITIONS: dict[str, frozenset] = {
    CREATED: frozenset((SENT, FAILED)),
    SENT: frozenset((PAID, FAILED, UNKNOWN)),
    UNKNOWN: frozenset((QUERIED, PAID, FAILED)),
    QUERIED: frozenset((QUERIED, PAID, FAILED, REVERSED)),
    PAID: frozenset((REVERSED,)),
    FAILED: frozenset(),
    REVERSED: frozenset(),
}

METHODS = ("auth_code", "card", "cash", "qr", "stored_value")
_REF = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS charges (
        merchant_ref TEXT PRIMARY KEY, order_no TEXT NOT NULL, attempt INTEGER NOT NULL,
        amount_minor INTEGER NOT NULL, currency TEXT NOT NULL, method TEXT NOT NULL,
        channel TEXT NOT NULL, terminal TEXT NOT NULL, payer TEXT,
        state TEXT NOT NULL, provider_ref TEXT, reason TEXT,
        created_at REAL NOT NULL, sent_at REAL, paid_at REAL, updated_at REAL NOT NULL,
        queries INTEGER NOT NULL DEFAULT 0, reversals INTEGER NOT NULL DEFAULT 0,
        UNIQUE (order_no, attempt))""",
    "CREATE INDEX IF NOT EXISTS charges_open ON charges (state) "
    "WHERE state IN ('created', 'sent', 'unknown', 'queried')",
    "CREATE INDEX IF NOT EXISTS charges_terminal ON charges (terminal, created_at)",
    """CREATE TABLE IF NOT EXISTS refunds (
        refund_ref TEXT PRIMARY KEY, merchant_ref TEXT NOT NULL,
        amount_minor INTEGER NOT NULL, currency TEXT NOT NULL, channel TEXT NOT NULL,
        state TEXT NOT NULL, provider_ref TEXT, reason TEXT,
        created_at REAL NOT NULL, done_at REAL, updated_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS refunds_charge ON refunds (merchant_ref)",
    """CREATE TABLE IF NOT EXISTS charge_steps (
        step_id INTEGER PRIMARY KEY, merchant_ref TEXT NOT NULL, at REAL NOT NULL,
        from_state TEXT, to_state TEXT NOT NULL, detail TEXT)""",
    # What was sold, as the charge's request gave it (checked to add up to its
    # amount): what a receipt prints, never lines a later request sends.
    """CREATE TABLE IF NOT EXISTS charge_lines (
        merchant_ref TEXT PRIMARY KEY, lines TEXT NOT NULL)""",
)


class LedgerError(LanecoreError):
    """A ledger refusal: ``BAD_CHARGE`` (a field out of range), ``UNKNOWN_CHARGE``,
    ``BAD_TRANSITION`` (a step the state machine does not allow), ``DB_ERROR``."""


@dataclass(frozen=True)
class Charge:
    """One row of the ledger. Money in minor units, times in Unix seconds."""

    merchant_ref: str
    order_no: str
    attempt: int
    amount_minor: int
    currency: str
    method: str
    channel: str
    terminal: str
    payer: str | None
    state: str
    provider_ref: str | None
    reason: str | None
    created_at: float
    sent_at: float | None
    paid_at: float | None
    updated_at: float
    queries: int
    reversals: int
    #: Whose order number it is (``pos:<terminal>``; ``''`` without authentication).
    scope: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_dict(self) -> dict:
        return asdict(self)


def merchant_ref(order_no: str, attempt: int) -> str:
    """The provider-facing reference of an order's attempt: ``<order_no>-<attempt>``."""
    ref = f"{order_no}-{attempt}"
    if not _REF.match(ref):
        raise LedgerError(f"order {order_no!r} attempt {attempt} does not make a merchant "
                          "reference of 1..64 characters A-Z a-z 0-9 _ -", code="BAD_CHARGE")
    return ref


class Ledger:
    """The charges table in a SQLite database (its own connection, autocommit; every
    change is one ``BEGIN IMMEDIATE`` transaction)."""

    def __init__(self, con: sqlite3.Connection, *, clock=time.time, on_move=None) -> None:
        self.con = con
        self.clock = clock
        #: ``on_move(before, after)`` after every state change (``before`` None for a
        #: new charge): a caller keeping totals in memory follows the ledger with it.
        self.on_move = on_move
        for stmt in _SCHEMA:
            con.execute(stmt)
        if "scope" not in {r[1] for r in con.execute("PRAGMA table_info(charges)")}:
            # older files: every charge so far in the shared namespace
            con.execute("ALTER TABLE charges ADD COLUMN scope TEXT NOT NULL DEFAULT ''")
        con.execute("CREATE INDEX IF NOT EXISTS charges_order ON charges (order_no, scope)")

    @classmethod
    def open(cls, path: str | os.PathLike, **kw) -> "Ledger":
        """Open (or create) the ledger database at ``path``: WAL, synchronous=FULL."""
        try:
            private_database(path)      # 0600, and so its -wal and -shm
            con = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=10.0)
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}", code="DB_ERROR") from exc
        return cls(con, **kw)

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------------------
    def _txn(self):
        return _Txn(self.con)

    def create(self, order_no: str, attempt: int, amount_minor: int, currency: str,
               method: str, channel: str, terminal: str, payer: str | None = None,
               *, scope: str = "", lines: list | None = None,
               sent: bool = False) -> tuple[Charge, bool]:
        """Write a new charge in ``created`` (nothing sent yet). Returns
        ``(charge, created)``: when the attempt exists already (a retried request) it
        is returned unchanged with ``created`` False, after checking that it is the
        same charge (else ``BAD_CHARGE``). ``scope``: whose order number it is (module
        notes); ``lines``: what was sold (JSON-able maps, kept for the receipt).
        ``sent``: written and marked ``sent`` at once (both steps in its history),
        as ``create`` then ``move(ref, SENT)`` in one transaction would leave it — the
        payment gateway's intent before it asks the provider."""
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) \
                or amount_minor <= 0:
            raise LedgerError(f"amount_minor must be a positive integer, got {amount_minor!r}",
                              code="BAD_CHARGE")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()
                and currency.isupper()):
            raise LedgerError(f"currency must be an ISO 4217 code, got {currency!r}",
                              code="BAD_CHARGE")
        if method not in METHODS:
            raise LedgerError(f"method must be one of {', '.join(METHODS)}", code="BAD_CHARGE")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise LedgerError("attempt must be an integer ≥ 1", code="BAD_CHARGE")
        ref = merchant_ref(order_no, attempt)
        now = self.clock()
        with self._txn():
            row = self._row(ref)
            if row is not None:
                same = (row.amount_minor, row.currency, row.method, row.channel,
                        row.terminal, row.scope) == (amount_minor, currency, method,
                                                     channel, terminal, scope)
                if not same:
                    raise LedgerError(f"{ref} exists with other terms; a retry must repeat "
                                      "the same charge", code="BAD_CHARGE")
                return row, False
            state = SENT if sent else CREATED
            self.con.execute(
                "INSERT INTO charges (merchant_ref, order_no, attempt, amount_minor, "
                "currency, method, channel, terminal, payer, state, created_at, sent_at, "
                "updated_at, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ref, order_no, attempt, amount_minor, currency, method, channel, terminal,
                 payer, state, now, now if sent else None, now, scope))
            if lines:
                self.con.execute("INSERT INTO charge_lines (merchant_ref, lines) VALUES "
                                 "(?, ?)", (ref, json.dumps(lines, ensure_ascii=False,
                                                            separators=(",", ":"))))
            self._step(ref, None, CREATED, None, now)
            if sent:
                self._step(ref, CREATED, SENT, None, now)
            made = Charge(ref, order_no, attempt, amount_minor, currency, method, channel,
                          terminal, payer, state, None, None, now, now if sent else None,
                          None, now, 0, 0, scope)
        if self.on_move is not None:
            self.on_move(None, made)
        return made, True

    def move(self, ref: str, to: str, *, provider_ref: str | None = None,
             reason: str | None = None, detail: str | None = None) -> Charge:
        """Move charge ``ref`` to state ``to`` (validated against ``TRANSITIONS``).

        Moving to the state it is already in is a no-op for final states (a repeated
        provider notification), so recovery can be run again safely."""
        if to not in STATES:
            raise LedgerError(f"no state {to!r}", code="BAD_TRANSITION")
        now = self.clock()
        with self._txn():
            row = self._row(ref)
            if row is None:
                raise LedgerError(f"no charge {ref}", code="UNKNOWN_CHARGE")
            if row.state == to and to in FINAL:
                return row
            if to not in TRANSITIONS[row.state]:
                raise LedgerError(f"{ref}: {row.state} cannot become {to}",
                                  code="BAD_TRANSITION")
            sets = ["state = ?", "updated_at = ?"]
            args: list = [to, now]
            if to == SENT:
                sets.append("sent_at = ?")
                args.append(now)
            if to == PAID:
                sets.append("paid_at = ?")
                args.append(now)
            if to == QUERIED:
                sets.append("queries = queries + 1")
            if provider_ref is not None:
                sets.append("provider_ref = ?")
                args.append(provider_ref)
            if reason is not None:
                sets.append("reason = ?")
                args.append(reason)
            self.con.execute(f"UPDATE charges SET {', '.join(sets)} WHERE merchant_ref = ?",
                             (*args, ref))
            self._step(ref, row.state, to, detail or reason, now)
            # the row as the UPDATE left it (no second read)
            after = replace(
                row, state=to, updated_at=now,
                sent_at=now if to == SENT else row.sent_at,
                paid_at=now if to == PAID else row.paid_at,
                queries=row.queries + 1 if to == QUERIED else row.queries,
                provider_ref=row.provider_ref if provider_ref is None else provider_ref,
                reason=row.reason if reason is None else reason)
        if self.on_move is not None:
            self.on_move(row, after)
        return after

    def note_reversal_attempt(self, ref: str) -> Charge:
        """Count a reversal request the provider has not confirmed yet."""
        with self._txn():
            self.con.execute("UPDATE charges SET reversals = reversals + 1, updated_at = ? "
                             "WHERE merchant_ref = ?", (self.clock(), ref))
            row = self._row(ref)
            if row is None:
                raise LedgerError(f"no charge {ref}", code="UNKNOWN_CHARGE")
            return row

    # ------------------------------------------------------------------------------
    # refunds ------------------------------------------------------------------------
    def create_refund(self, merchant_ref: str, refund_ref: str, amount_minor: int
                      ) -> tuple[Refund, bool]:
        """A refund of a paid charge, written before anything is sent. Returns
        ``(refund, created)``; the same ``refund_ref`` with the same terms returns the
        first one (a retry). Refuses: ``UNKNOWN_CHARGE``, ``NOT_PAID``, ``BAD_CHARGE``
        (bad amount or reference, or the reference used with other terms),
        ``REFUND_EXCEEDS_PAID`` (refunds not failed would pass what was paid)."""
        if not _REF.match(refund_ref or ""):
            raise LedgerError("refund_ref must be 1..64 characters A-Z a-z 0-9 _ -",
                              code="BAD_CHARGE")
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) \
                or amount_minor <= 0:
            raise LedgerError("amount_minor must be a positive integer", code="BAD_CHARGE")
        now = self.clock()
        with self._txn():
            old = self._refund_row(refund_ref)
            if old is not None:
                if (old.merchant_ref, old.amount_minor) != (merchant_ref, amount_minor):
                    raise LedgerError(f"refund {refund_ref} exists with other terms",
                                      code="BAD_CHARGE")
                return old, False
            charge = self._row(merchant_ref)
            if charge is None:
                raise LedgerError(f"no charge {merchant_ref}", code="UNKNOWN_CHARGE")
            if charge.state != PAID:
                raise LedgerError(f"{merchant_ref} is {charge.state}, not paid",
                                  code="NOT_PAID")
            (taken,) = self.con.execute(
                "SELECT COALESCE(SUM(amount_minor), 0) FROM refunds WHERE merchant_ref = ? "
                "AND state != 'failed'", (merchant_ref,)).fetchone()
            if taken + amount_minor > charge.amount_minor:
                raise LedgerError(f"refunds of {merchant_ref} would be {taken + amount_minor}"
                                  f", more than the {charge.amount_minor} paid",
                                  code="REFUND_EXCEEDS_PAID")
            self.con.execute(
                f"INSERT INTO refunds ({_REFUND_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (refund_ref, merchant_ref, amount_minor, charge.currency, charge.channel,
                 CREATED, None, None, now, None, now))
            return self._refund_row(refund_ref), True

    def move_refund(self, refund_ref: str, to: str, *, provider_ref: str | None = None,
                    reason: str | None = None) -> Refund:
        """Move a refund along ``REFUND_TRANSITIONS`` (a final state again: no-op)."""
        now = self.clock()
        with self._txn():
            row = self._refund_row(refund_ref)
            if row is None:
                raise LedgerError(f"no refund {refund_ref}", code="UNKNOWN_CHARGE")
            if row.state == to and to in (PAID, FAILED):
                return row
            if to not in REFUND_TRANSITIONS.get(row.state, ()):
                raise LedgerError(f"refund {refund_ref}: {row.state} cannot become {to}",
                                  code="BAD_TRANSITION")
            self.con.execute(
                "UPDATE refunds SET state = ?, updated_at = ?, provider_ref = "
                "COALESCE(?, provider_ref), reason = COALESCE(?, reason), done_at = ? "
                "WHERE refund_ref = ?",
                (to, now, provider_ref, reason, now if to in (PAID, FAILED) else None,
                 refund_ref))
            return self._refund_row(refund_ref)

    def refunds(self, *, merchant_ref: str | None = None, open_only: bool = False
                ) -> list[Refund]:
        sql, args = f"SELECT {_REFUND_COLS} FROM refunds", []
        where = []
        if merchant_ref is not None:
            where.append("merchant_ref = ?")
            args.append(merchant_ref)
        if open_only:
            where.append("state IN ('created', 'sent', 'unknown')")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Refund(*r) for r in self.con.execute(sql + " ORDER BY created_at, rowid",
                                                     args)]

    def _refund_row(self, refund_ref: str) -> Refund | None:
        r = self.con.execute(f"SELECT {_REFUND_COLS} FROM refunds WHERE refund_ref = ?",
                             (refund_ref,)).fetchone()
        return None if r is None else Refund(*r)

    def day_rows(self, date: str, utc_offset_s: int = 0) -> list[dict]:
        """:func:`day_rows` of this ledger."""
        return day_rows(self.con, date, utc_offset_s)

    def get(self, ref: str) -> Charge:
        row = self._row(ref)
        if row is None:
            raise LedgerError(f"no charge {ref}", code="UNKNOWN_CHARGE")
        return row

    def attempts(self, order_no: str, scope: str | None = None) -> list[Charge]:
        """Every charge of an order in ``scope`` (None: in every scope), first
        attempt first."""
        if scope is None:
            cur = self.con.execute(f"SELECT {_COLS} FROM charges WHERE order_no = ? "
                                   "ORDER BY attempt", (order_no,))
        else:
            cur = self.con.execute(f"SELECT {_COLS} FROM charges WHERE order_no = ? AND "
                                   "scope = ? ORDER BY attempt", (order_no, scope))
        return [Charge(*r) for r in cur]

    def order(self, order_no: str) -> list[Charge]:
        """Every charge of an order in every scope (one read: :meth:`attempts` of one
        scope and :meth:`last_attempt` come from it), first attempt first."""
        return [Charge(*r) for r in self.con.execute(
            f"SELECT {_COLS} FROM charges WHERE order_no = ? ORDER BY attempt", (order_no,))]

    def last_attempt(self, order_no: str) -> int:
        """The highest attempt number of ``order_no`` in any scope (0: none): the next
        attempt, whoever makes it, is one more, so merchant references never clash."""
        (n,) = self.con.execute("SELECT COALESCE(MAX(attempt), 0) FROM charges WHERE "
                                "order_no = ?", (order_no,)).fetchone()
        return int(n)

    def lines(self, ref: str) -> list[dict]:
        """The lines kept with charge ``ref`` (``[]``: none were given)."""
        row = self.con.execute("SELECT lines FROM charge_lines WHERE merchant_ref = ?",
                               (ref,)).fetchone()
        return [] if row is None else json.loads(row[0])

    def open_charges(self) -> list[Charge]:
        """Charges not in a final state (what recovery drives on)."""
        cur = self.con.execute(f"SELECT {_COLS} FROM charges WHERE state IN "
                               "('created', 'sent', 'unknown', 'queried') ORDER BY created_at, rowid")
        return [Charge(*r) for r in cur]

    def charges(self, *, terminal: str | None = None, state: str | None = None,
                since: float | None = None, until: float | None = None) -> list[Charge]:
        """Charges filtered by terminal, state and creation time [since, until)."""
        where, args = [], []
        for col, op, value in (("terminal", "=", terminal), ("state", "=", state),
                               ("created_at", ">=", since), ("created_at", "<", until)):
            if value is not None:
                where.append(f"{col} {op} ?")
                args.append(value)
        sql = f"SELECT {_COLS} FROM charges"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Charge(*r) for r in self.con.execute(sql + " ORDER BY created_at, rowid", args)]

    def steps(self, ref: str) -> list[tuple[float, str | None, str, str | None]]:
        """The charge's history: (at, from_state, to_state, detail)."""
        return list(self.con.execute("SELECT at, from_state, to_state, detail FROM "
                                     "charge_steps WHERE merchant_ref = ? ORDER BY step_id",
                                     (ref,)))

    def _row(self, ref: str) -> Charge | None:
        r = self.con.execute(f"SELECT {_COLS} FROM charges WHERE merchant_ref = ?",
                             (ref,)).fetchone()
        return None if r is None else Charge(*r)

    def _step(self, ref, from_state, to_state, detail, at) -> None:
        self.con.execute("INSERT INTO charge_steps (merchant_ref, at, from_state, to_state, "
                         "detail) VALUES (?, ?, ?, ?, ?)", (ref, at, from_state, to_state,
                                                            detail))


_COLS = ", ".join(Charge.__dataclass_fields__)


@dataclass(frozen=True)
class Refund:
    """Money given back on a paid charge. ``state``: ``created``, ``sent``, ``paid``
    (refunded), ``failed``, ``unknown`` (sent, outcome not known: sent again with the
    same ``refund_ref``, which the provider treats as the same refund)."""

    refund_ref: str
    merchant_ref: str
    amount_minor: int
    currency: str
    channel: str
    state: str
    provider_ref: str | None
    reason: str | None
    created_at: float
    done_at: float | None
    updated_at: float

    def to_dict(self) -> dict:
        return asdict(self)


_REFUND_COLS = ", ".join(Refund.__dataclass_fields__)
REFUND_TRANSITIONS = {CREATED: frozenset((SENT, FAILED)), SENT: frozenset((PAID, FAILED,
                                                                           UNKNOWN)),
                      UNKNOWN: frozenset((UNKNOWN, PAID, FAILED)),
                      PAID: frozenset(), FAILED: frozenset()}


def day_bounds(date: str) -> tuple[float, float]:
    """Unix seconds of a UTC day ``YYYY-MM-DD``: [start, end)."""
    import datetime as dt
    try:
        start = dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise LedgerError(f"a date is YYYY-MM-DD, got {date!r}", code="BAD_DATE") from None
    return start.timestamp(), start.timestamp() + 86400.0


class _Txn:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on an exception); re-entrant."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        self.outer = False

    def __enter__(self):
        if not self.con.in_transaction:
            try:
                self.con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise LedgerError(f"the ledger is busy: {exc}", code="DB_BUSY") from exc
            self.outer = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.con.execute("COMMIT")
        else:
            self.con.execute("ROLLBACK")


# ----------------------------------------------------------------------------------
# What to do with an open charge (the wallet rules)
# ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnknownPolicy:
    """How an open charge is driven to a final state (seconds)."""

    poll_every_s: float = 5.0          # query the provider this often (5–10 s)
    give_up_after_s: float = 45.0      # after this long since sending, reverse (30–60 s)
    reverse_not_before_s: float = 15.0  # never reverse sooner after the deduction

    def __post_init__(self):
        if not (0 < self.poll_every_s <= self.give_up_after_s
                and 0 <= self.reverse_not_before_s):
            raise LedgerError("poll_every_s must be > 0 and ≤ give_up_after_s; "
                              "reverse_not_before_s ≥ 0", code="BAD_POLICY")


@dataclass(frozen=True)
class NextStep:
    """``action``: ``fail`` (never sent), ``query``, ``reverse``, ``wait`` or ``none``
    (final); ``at``: Unix seconds when it is due."""

    action: str
    at: float


def next_step(charge: Charge, now: float, policy: UnknownPolicy = UnknownPolicy(),
              last_query_at: float | None = None) -> NextStep:
    """What recovery (or the poller) does next with ``charge`` at Unix time ``now``.

    The shopper's code is never sent again: a charge that was never sent fails, one
    that may have been sent is queried until it is final or the cap passes, then
    reversed (not before ``reverse_not_before_s`` after it was sent)."""
    if charge.final:
        return NextStep("none", now)
    if charge.state == CREATED:
        return NextStep("fail", now)
    sent = charge.sent_at if charge.sent_at is not None else charge.created_at
    give_up = sent + policy.give_up_after_s
    if now >= give_up:
        return NextStep("reverse", max(now, sent + policy.reverse_not_before_s))
    if charge.state == SENT or last_query_at is None:
        return NextStep("query", now)
    due = last_query_at + policy.poll_every_s
    if due > now:
        return NextStep("wait", min(due, give_up))
    return NextStep("query", now)


def day_rows(con: sqlite3.Connection, date: str, utc_offset_s: int = 0) -> list[dict]:
    """One day's ledger rows as ``core.pay.recon.reconcile`` takes them: charges by
    the day they were paid (else sent, else created) — the day the provider's bill
    puts them on — and refunds by the day they were done (else created). The day is
    UTC's, or that of the zone ``utc_offset_s`` seconds ahead of UTC (a provider whose
    bill days are China Standard Time: 28800). ``con`` may be read-only
    (``lanecore recon``)."""
    start, end = day_bounds(date)
    start, end = start - utc_offset_s, end - utc_offset_s
    rows = [dict(zip(("merchant_ref", "channel", "amount_minor", "currency", "state"), r))
            for r in con.execute(
                "SELECT merchant_ref, channel, amount_minor, currency, state FROM charges "
                "WHERE COALESCE(paid_at, sent_at, created_at) >= ? "
                "AND COALESCE(paid_at, sent_at, created_at) < ?", (start, end))]
    rows += [{"type": "refund", "refund_ref": r[0], "merchant_ref": r[1],
              "channel": r[2], "amount_minor": r[3], "currency": r[4], "state": r[5]}
             for r in con.execute(
                 "SELECT refund_ref, merchant_ref, channel, amount_minor, currency, state "
                 "FROM refunds WHERE COALESCE(done_at, created_at) >= ? "
                 "AND COALESCE(done_at, created_at) < ?", (start, end))]
    return rows


def payment_mismatch(reply, order_no: str, amount_minor: int, currency: str) -> str | None:
    """Why a payment gateway's answer (the payment object of ``pay.charge`` or
    ``pay.status``) is not about the payment that was asked for — another order, another
    amount or currency, or a field missing — or None when it is. A caller that sees
    ``status: paid`` checks this too and treats a mismatch as a failed payment: a
    ``paid`` for 1 fen is not a ``paid`` for the 5,000 asked."""
    if not isinstance(reply, dict):
        return "the answer is not a map"
    for name, asked in (("order_no", order_no), ("amount_minor", amount_minor),
                        ("currency", currency)):
        got = reply.get(name)
        if got != asked or isinstance(got, bool):
            return f"the answer's {name} is {got!r}, not {asked!r}"
    return None
