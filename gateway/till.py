"""The till of seed 002: a cash register with a customer QR display.

The register loads the payment data (amount, register number, order number, the
shopping list) into the QR display over its serial cable, has it show the payment
QR on the cashier's "QR pay", waits for the display's result and records the
transaction in the store database, one row per order in ``till_transactions``. A
card read at the display's reader is either settled by the display itself (it sends
a masked card number, then the result) or, when the reader hands over a network
token, charged by the register through the payment gateway (``pay.charge`` with
method ``card``).

:class:`Register` is the till; :class:`Sale` is what it answers (a row of the table,
or an open sale). ``docs/store/till.md`` documents the flow, the table and every code;
the serial protocol is ``docs/drivers/qr-display.md``.

Threads: the display driver runs its own thread and only queues events here; every
database write and every payment gateway request happens on the caller's thread
(a :class:`~lanecore.gateway.net.client.Client` is not thread-safe).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from lanecore.core.pay.emvqr import decode_mpm
from lanecore.core.pay.ledger import payment_mismatch
from lanecore.core.errors import LanecoreError
from lanecore.core.sqltxn import private_database
from lanecore.drivers.link import DeviceFault, LineSettings
from lanecore.drivers.qrdisplay import (CardRead, Item, PaymentData, PayResult,
                                        ProtocolError, QrDisplayDriver, QrDisplayError,
                                        QrShown)

__all__ = ["Register", "Sale", "TillError", "TILL_CODES", "STATUSES", "CHANNELS",
           "TABLE", "qr_problems", "mask_payer", "open_store_db", "add_arguments",
           "run_commands", "main"]

log = logging.getLogger("lanecore.gateway.till")

#: The table of till transactions in the store database (one row per order).
TABLE = "till_transactions"
#: A row's ``status``; an unrecorded sale in progress is ``open`` (never stored).
STATUSES = ("paid", "failed", "cancelled")
#: A row's ``channel``: paid by scanning the display's QR, or by a card.
CHANNELS = ("qr", "card")

#: The till's own codes (``TillError.code`` and, where marked, a row's ``reason``).
#: A display refusal passes through with the display's code (``BUSY``,
#: ``ORDER_DONE``, ``NO_ANSWER``, ``BAD_AMOUNT``, … ``docs/drivers/qr-display.md``).
TILL_CODES = {
    "DISPLAY_MISMATCH": "the QR the display drew does not carry the order, amount or "
                        "currency sent, or is not a dynamic QR: never a sale (reason of "
                        "a failed row)",
    "TIMEOUT": "no result within the wait; STATUS then CANCEL were sent (reason of a "
               "cancelled row)",
    "NO_PAYMENTS": "a card token was read but the register has no payment gateway "
                   "client (reason of a failed row)",
    "DECLINED:<code>": "the payment gateway's card charge failed with the bank's "
                       "decline code (reason of a failed row)",
    "EXPIRED": "a wallet QR (wallet_pay) was not paid before it expired; the gateway "
               "closed it at the wallet (reason of a cancelled row)",
    "PAYMENT_MISMATCH": "the gateway's paid answer is for another order, amount or "
                        "currency: never a sale (reason of a failed row)",
    "REVERSED": "the gateway answered with a charge that was reversed (reason of a "
                "failed row)",
    "PAYMENT_UNKNOWN": "the gateway's answer to a card charge is not known yet; the "
                       "sale stays open, wait again (nothing is charged twice)",
    "ORDER_CONFLICT": "sell() of a paid order with another amount or currency",
    "NO_SALE": "qr_pay(), wait_result() or cancel() with no sale open",
    "BUSY": "sell() of another order while one is being paid (its QR is up)",
    "BAD_LINES": "shopping list lines that cannot be read",
    "BAD_CARD": "charge_card() with something else than a card token",
    "BAD_REGISTER": "a register number that is not 1-8 of A-Z a-z 0-9 -",
    "DB_ERROR": "the store database cannot be opened or written",
    "DB_BUSY": "the store database stayed locked for 10 s",
}

_REGISTER_RE = re.compile(r"[A-Za-z0-9-]{1,8}")
_MASKED_PAN_RE = re.compile(r"[0-9]{0,6}\*{4,}[0-9]{4}")
_MAX_LINES = 100
_MAX_NAME = 40
#: Gateway errors after which the charge's outcome is unknown: ask again, same id.
_TRANSIENT = ("TIMEOUT", "UNREACHABLE", "UNAVAILABLE", "INTERNAL", "DB_BUSY", "DB_ERROR",
              "CLOSED")

_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    order_no     TEXT PRIMARY KEY,
    register_no  TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('paid', 'failed', 'cancelled')),
    reason       TEXT,
    txn_ref      TEXT,
    payer        TEXT,
    channel      TEXT NOT NULL CHECK (channel IN ('qr', 'card')),
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL)"""
_COLUMNS = ("order_no", "register_no", "amount_minor", "currency", "status", "reason",
            "txn_ref", "payer", "channel", "created_at", "updated_at")


class TillError(LanecoreError):
    """A till call that did not succeed; ``code`` from :data:`TILL_CODES` or the
    display's. ``sale``: the row recorded on the way, if any (a DISPLAY_MISMATCH
    records the order failed)."""

    code = "TILL_ERROR"

    def __init__(self, message: str, *, code: str | None = None,
                 sale: "Sale | None" = None) -> None:
        super().__init__(message, code=code)
        self.sale = sale


@dataclass(frozen=True)
class Sale:
    """One order at the till: a row of ``till_transactions`` (``status`` ``paid``,
    ``failed`` or ``cancelled``) or a sale in progress (``open``, not stored).

    ``reason``: None when paid, else why (a display reason from
    :data:`~lanecore.drivers.qrdisplay.REASONS`, ``UNKNOWN``, or a till code).
    ``txn_ref``: the payment's reference (the wallet's through the display, the
    bank's through the gateway); also kept on an ``AMOUNT_MISMATCH`` row, for the
    refund. ``payer``: a masked card number or token, never a clear one. Times are
    Unix seconds from the register's clock. ``replayed``: answered from the table,
    nothing was sent to the display or the gateway.
    """

    order_no: str
    register_no: str
    amount_minor: int
    currency: str
    status: str
    reason: str | None = None
    txn_ref: str | None = None
    payer: str | None = None
    channel: str = "qr"
    created_at: float | None = None
    updated_at: float | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        """Paid."""
        return self.status == "paid"

    @property
    def final(self) -> bool:
        return self.status in STATUSES

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------

def qr_problems(payload: str, order_no: str, amount_minor: int, currency: str) -> list[str]:
    """Why ``payload`` is not the QR of this sale (empty: it is). Read with
    :func:`~lanecore.core.pay.emvqr.decode_mpm`: a readable EMV payload with a good CRC,
    dynamic (01 = ``12``), tag 54 = ``amount_minor`` of ``currency``, bill number
    (62-01) = ``order_no``."""
    d = decode_mpm(payload)
    if not d["ok"]:
        return [f"{d['error']['code']}: {d['error']['message']}"]
    f = d["fields"]
    out = []
    if f.get("01") != "12":
        out.append(f"not a dynamic QR (01 = {f.get('01')!r})")
    if d.get("currency") != currency:
        out.append(f"currency {d.get('currency')!r}, the sale's is {currency}")
    if d.get("amount_minor") != amount_minor:
        out.append(f"amount {d.get('amount_minor')!r}, the sale's is {amount_minor}")
    extra = f.get("62") if isinstance(f.get("62"), dict) else {}
    if extra.get("01") != order_no:
        out.append(f"bill number {extra.get('01')!r}, the order is {order_no}")
    return out


def mask_payer(card: str | None) -> str | None:
    """What the table keeps of a card: a masked number as read (at most first 6 and
    last 4 digits), a token as ``tok_****`` + its last 4; anything else masked to
    its last 4."""
    if not card:
        return None
    if card.startswith("tok_"):
        return "tok_****" + card[-4:]
    if _MASKED_PAN_RE.fullmatch(card):
        return card
    return "****" + card[-4:]


def _items(lines: Iterable, total_minor: int) -> tuple[Item, ...]:
    """The shopping list as the display takes it: names cut to 40 characters, and a
    list longer than 100 lines folded into 99 and a "+N more" line (the display only
    shows it; the lines still add up to the total)."""
    items = []
    for n, line in enumerate(lines or ()):
        try:
            if isinstance(line, Item):
                name, qty, amount, unit = line.name, line.qty, line.amount_minor, line.unit
            elif isinstance(line, Mapping):
                name, qty = line["name"], line.get("qty", 1)
                amount = line["amount_minor"] if "amount_minor" in line else line["amount"]
                unit = line.get("unit", "pc")
            else:
                name, qty, amount, *rest = line
                unit = rest[0] if rest else "pc"
        except (KeyError, TypeError, ValueError):
            raise TillError(f"line {n}: not an Item, a map {{name, qty, amount_minor}} "
                            "or a (name, qty, amount_minor) tuple", code="BAD_LINES") from None
        if not isinstance(name, str) or not name.strip():
            raise TillError(f"line {n}: the name is not a non-empty string", code="BAD_LINES")
        items.append(Item(name.strip()[:_MAX_NAME], qty, amount, unit))
    if len(items) > _MAX_LINES:
        rest = items[_MAX_LINES - 1:]
        items = items[:_MAX_LINES - 1] + [Item(f"+{len(rest)} more lines", len(rest),
                                               sum(i.amount_minor for i in rest))]
    return tuple(items)


def open_store_db(path: str | os.PathLike) -> sqlite3.Connection:
    """The store database (a file, or a data directory's ``store.db``) with the
    ``till_transactions`` table: WAL, ``synchronous=FULL``, autocommit."""
    p = Path(path)
    if p.is_dir():
        from lanecore.core.config import DATABASE_FILE
        p = p / DATABASE_FILE
    try:
        private_database(p)             # 0600, and so its -wal and -shm
        con = sqlite3.connect(os.fspath(p), isolation_level=None, timeout=10.0,
                              check_same_thread=False)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.execute(_SCHEMA)
    except sqlite3.Error as exc:
        raise _db_error(exc, f"cannot open the store database {p}") from exc
    return con


def _db_error(exc: sqlite3.Error, what: str) -> TillError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return TillError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


@dataclass
class _Open:
    """The sale on the display now."""
    data: PaymentData
    started: bool = False          # a QR was shown or a card read: it blocks another sale
    payer: str | None = None       # a masked card the display's reader read
    qr_stopped: bool = False       # cancelled on the display for a card token: the
    card_charging: bool = False    # display's CANCELLED is not the sale's result


# --------------------------------------------------------------------------------------
# The register
# --------------------------------------------------------------------------------------

class Register:
    """One till: a cash register with its customer QR display on ``display_port``
    (anything :func:`serial.serial_for_url` opens: ``/dev/ttyUSB0``, a pty,
    ``loop://``).

    ``store_db_path``: the store database (file, or data directory) that gets the
    ``till_transactions`` rows. ``register_no``: this register's number (1-8 of
    ``A-Z a-z 0-9 -``; it goes into the QR). ``payments``: a client of the payment
    gateway for card tokens (None: a token read is recorded failed ``NO_PAYMENTS``).
    ``clock``: wall-clock Unix seconds for the rows. ``terminal``: the name the
    gateway knows this register by (default ``register_no``). ``paying_grace_s``:
    after a wait runs out while the shopper is already paying (display state
    ``PAYING``), how much longer to wait before cancelling. ``charge_timeout_s``:
    how long a card charge may stay pending at the gateway. ``driver_kw``: more
    :class:`~lanecore.drivers.qrdisplay.QrDisplayDriver` options.

    Calls, in the cashier's order: :meth:`sell`, :meth:`qr_pay`,
    :meth:`wait_result` (or :meth:`cancel`). Use as a context manager, or
    :meth:`start` / :meth:`close`.
    """

    def __init__(self, display_port: str, *, store_db_path: str | os.PathLike,
                 register_no: str, payments=None, clock: Callable[[], float] = time.time,
                 terminal: str | None = None, line: LineSettings | None = None,
                 paying_grace_s: float = 10.0, charge_timeout_s: float = 30.0,
                 driver_kw: Mapping | None = None) -> None:
        if not isinstance(register_no, str) or not _REGISTER_RE.fullmatch(register_no):
            raise TillError(f"register number {register_no!r} is not 1-8 of A-Z a-z 0-9 -",
                            code="BAD_REGISTER")
        self.register_no = register_no
        self.payments = payments
        self.clock = clock
        self.terminal = terminal or register_no
        self.paying_grace_s = paying_grace_s
        self.charge_timeout_s = charge_timeout_s
        self.db = open_store_db(store_db_path)
        self._db_lock = threading.Lock()
        self.driver = QrDisplayDriver(display_port, line=line, on_event=self._on_event,
                                      **dict(driver_kw or {}))
        #: the QR the display showed for the current (or last) sale
        self.shown: QrShown | None = None
        #: display results and card reads of no open sale (ignored and logged)
        self.ignored: list = []
        #: DISPLAY_MISMATCH faults (messages) and the driver's device faults
        self.faults: list = []
        self._cv = threading.Condition()
        self._events = 0
        self._cards: deque[CardRead] = deque()
        self._open: _Open | None = None
        self._closed: dict[str, tuple] = {}   # order -> (status, txn_ref) closed here

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "Register":
        self.driver.start()
        return self

    def close(self) -> None:
        self.driver.stop()
        with self._db_lock:
            self.db.close()

    def __enter__(self) -> "Register":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the table -------------------------------------------------------------------
    def transaction(self, order_no: str) -> Sale | None:
        """The recorded row of ``order_no`` (None: none)."""
        with self._db_lock:
            try:
                row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} "
                                      "WHERE order_no = ?", (order_no,)).fetchone()
            except sqlite3.Error as exc:
                raise _db_error(exc, "cannot read the till transactions") from exc
        return Sale(*row) if row else None

    def transactions(self, limit: int = 1000) -> list[Sale]:
        """The latest ``limit`` rows, oldest first."""
        with self._db_lock:
            try:
                rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} "
                                       "ORDER BY updated_at DESC, order_no LIMIT ?",
                                       (limit,)).fetchall()
            except sqlite3.Error as exc:
                raise _db_error(exc, "cannot read the till transactions") from exc
        return [Sale(*r) for r in reversed(rows)]

    def _record(self, data: PaymentData, status: str, reason: str | None,
                txn_ref: str | None, payer: str | None, channel: str) -> Sale:
        """Write the order's final result: a new row, or the row of an earlier failed
        or cancelled attempt updated. A paid row is never changed (a second payment
        for it is logged for a refund) and there is never a second row."""
        now = self.clock()
        new = (data.order_no, self.register_no, data.amount_minor, data.currency, status,
               reason, txn_ref or None, payer, channel)
        with self._db_lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} "
                                          "WHERE order_no = ?", (data.order_no,)).fetchone()
                    if row is not None and row[4] == "paid":
                        self.db.execute("COMMIT")
                        kept = Sale(*row)
                        if status == "paid" and txn_ref != kept.txn_ref:
                            log.error("order %s paid again (%s) after %s: refund it",
                                      data.order_no, txn_ref, kept.txn_ref)
                        return kept
                    if row is None:
                        self.db.execute(f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) "
                                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                        new + (now, now))
                        created = now
                    else:
                        self.db.execute(f"UPDATE {TABLE} SET register_no = ?, amount_minor "
                                        "= ?, currency = ?, status = ?, reason = ?, "
                                        "txn_ref = ?, payer = ?, channel = ?, updated_at = ? "
                                        "WHERE order_no = ?", new[1:] + (now, data.order_no))
                        created = row[9]
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _db_error(exc, f"cannot record order {data.order_no}") from exc
        sale = Sale(*new, created, now)
        log.info("order %s %s%s", sale.order_no, sale.status,
                 f" ({sale.reason})" if sale.reason else f" {sale.txn_ref}")
        return sale

    # ---- events from the display (the driver's thread) ------------------------------
    def _on_event(self, ev) -> None:
        with self._cv:
            if isinstance(ev, DeviceFault):
                self.faults.append(ev)
                del self.faults[:-100]
                return
            if not isinstance(ev, (PayResult, CardRead)):
                return
            cur = self._open.data.order_no if self._open is not None else None
            if isinstance(ev, CardRead) and cur is not None and ev.order_no in (None, cur):
                self._cards.append(ev)
            elif isinstance(ev, PayResult) and cur is not None and ev.order_no == cur:
                pass                              # the driver holds it for wait_result
            elif (isinstance(ev, PayResult) and ev.order_no in self._closed
                  and (not ev.ok or self._closed[ev.order_no] == ("paid", ev.txn_ref))):
                # the echo of a result this register already used (e.g. the one a
                # CANCEL answered), delivered to listeners after the caller got it
                log.debug("result of closed order %s: %s", ev.order_no, ev.to_dict())
            else:
                self.ignored.append(ev)
                del self.ignored[:-100]
                if isinstance(ev, PayResult) and ev.ok:
                    log.warning("a payment for order %s, which is not being sold here "
                                "(txn %s, %d %s): not recorded; check and refund it",
                                ev.order_no, ev.txn_ref, ev.paid_minor, ev.currency)
                else:
                    log.info("ignored %s for order %s: no such sale open here",
                             type(ev).__name__, ev.order_no)
            self._events += 1
            self._cv.notify_all()

    # ---- the cashier's calls ---------------------------------------------------------
    def sell(self, order_no: str, lines: Iterable = (), *, total_minor: int,
             currency: str = "CNY") -> Sale:
        """Send the payment data of ``order_no`` (the shopping list ``lines``:
        :class:`Item`, maps ``{name, qty, amount_minor, unit?}`` or tuples
        ``(name, qty, amount_minor)``, adding up to ``total_minor`` minor units of
        ``currency``) to the display. Returns the ``open`` sale — or, for an order
        already paid, its row (``replayed``; nothing is sent). An order the display
        says is paid (``ORDER_DONE``) but the table does not have is recovered from
        the display's STATUS and recorded. Raises :class:`TillError`: the display's
        code, ``BUSY``, ``ORDER_CONFLICT``, ``BAD_LINES``, ``ITEMS_MISMATCH``…"""
        row = self.transaction(order_no)
        if row is not None and row.ok:
            if (row.amount_minor, row.currency) != (total_minor, currency):
                raise TillError(f"order {order_no} was paid {row.amount_minor} "
                                f"{row.currency}, not {total_minor} {currency}",
                                code="ORDER_CONFLICT", sale=row)
            log.info("order %s is paid (%s): answered from the table", order_no, row.txn_ref)
            return replace(row, replayed=True)
        try:
            data = PaymentData(order_no, self.register_no, total_minor, currency,
                               _items(lines, total_minor))
        except ProtocolError as exc:
            raise TillError(f"order {order_no}: {exc.message}", code=exc.code) from None
        with self._cv:
            cur = self._open
            if cur is not None and cur.started:
                if cur.data.order_no == order_no and cur.data == data:
                    return self._open_sale()
                raise TillError(f"order {cur.data.order_no} is being paid: wait for its "
                                "result or cancel it first", code="BUSY")
            self._open = _Open(data)
            self._cards.clear()
        try:
            self.driver.send_payment(data)
        except QrDisplayError as exc:
            if exc.code == "ORDER_DONE":
                sale = self._recover_paid(data)
                if sale is not None:
                    return sale
            with self._cv:
                self._open = None
            raise TillError(f"order {order_no}: {exc.message}", code=exc.code) from None
        self.shown = None
        return self._open_sale()

    def qr_pay(self, timeout_s: float = 3.0) -> QrShown:
        """The cashier's "QR pay": the display shows the payment QR of the open sale.
        Returns what the display reports it drew, after reading the payload back
        (:func:`qr_problems`). A QR for another order or amount is a
        ``DISPLAY_MISMATCH`` fault: the display's attempt is cancelled, the order
        recorded failed, and :class:`TillError` raised — never a sale."""
        sale = self._need_open()
        with self._cv:
            sale.started = True
        try:
            shown = self.driver.qr_pay(timeout_s)
        except QrDisplayError as exc:
            if exc.code == "QR_MISMATCH":
                raise self._mismatch(sale, exc.message) from None
            if exc.code in ("NO_PAYMENT_DATA", "ORDER_MISMATCH"):
                with self._cv:        # the display lost the data (restarted): sell again
                    self._open = None
            raise TillError(f"QR pay: {exc.message}", code=exc.code) from None
        d = sale.data
        problems = qr_problems(shown.payload, d.order_no, d.amount_minor, d.currency)
        if problems:
            raise self._mismatch(sale, "; ".join(problems))
        self.shown = shown
        return shown

    def wait_result(self, timeout_s: float = 60.0) -> Sale:
        """The open sale's final result, recorded: the display's PAY_RESULT (QR, or a
        card its own reader settled), or a card token read at the display charged
        through the payment gateway. After ``timeout_s`` without one: STATUS (a
        result the register missed comes back from it; a shopper already paying
        gets ``paying_grace_s`` more), then CANCEL — recorded ``cancelled`` with
        reason ``TIMEOUT``, or the payment that beat the cancel. Raises
        :class:`TillError` (``NO_SALE``; ``NO_ANSWER`` when the display does not
        answer, ``PAYMENT_UNKNOWN``: the sale stays open, ask again)."""
        sale = self._need_open()
        end = time.monotonic() + timeout_s
        grace_given = False
        while True:
            with self._cv:
                seen = self._events
            result = self._display_result()
            if result is not None and sale.qr_stopped and not result.ok:
                result = None        # the cancel that made way for the card
            card = self._take_card()
            while card is not None and not card.pan_masked.startswith("tok_"):
                self._card(sale, card)             # the display's reader settles it
                card = self._take_card()
            if result is not None:
                if card is not None:
                    log.info("order %s has its result: card %s not charged",
                             sale.data.order_no, mask_payer(card.pan_masked))
                return self._close(sale, result)
            if card is not None:
                return self._card(sale, card)
            left = end - time.monotonic()
            if left <= 0:
                if not grace_given and self._shopper_paying():
                    grace_given = True
                    end = time.monotonic() + self.paying_grace_s
                    continue
                return self._timed_out(sale)
            with self._cv:
                if self._events == seen:
                    self._cv.wait(min(left, 0.5))

    def cancel(self, timeout_s: float = 2.0) -> Sale:
        """The cashier stops the open sale: recorded ``cancelled`` (reason
        ``CANCELLED``), or paid when the shopper paid first."""
        sale = self._need_open()
        if sale.card_charging:
            raise TillError(f"order {sale.data.order_no}: a card charge is in doubt; "
                            "wait_result() learns its outcome", code="PAYMENT_UNKNOWN")
        try:
            result = self.driver.cancel(timeout_s)
        except QrDisplayError as exc:
            raise TillError(f"cancel: {exc.message}", code=exc.code) from None
        return self._close(sale, result)

    def wallet_pay(self, *, wallet: str | None = None, timeout_s: float | None = None,
                   poll_every_s: float = 0.5) -> Sale:
        """The cashier's "wallet QR": the open sale paid by the wallet's own
        merchant-presented QR (WeChat Pay's native order, Alipay's precreate). Asks
        the payment gateway for it (``pay.present``, ``wallet``: ``wechat`` or
        ``alipay``, default the gateway's routing), has the display draw its code
        URL (SHOW_QR), follows the gateway (``pay.status`` every ``poll_every_s``)
        until the payment is final — the gateway learns it from the wallet's
        notification or its own poll — then shows the result (SHOW_RESULT, the QR
        comes down) and records the sale: ``paid`` (txn_ref: the wallet's
        transaction id), ``cancelled`` (``EXPIRED``: not paid before the QR's
        expiry; ``CANCELLED``: closed after ``timeout_s``), or ``failed``
        (``DECLINED:<code>``). ``timeout_s`` (default: until the QR expires, plus
        a poll): then the QR is closed at the wallet (``pay.present`` with
        ``cancel``), which ends it paid if the shopper beat the close. Raises
        :class:`TillError`: ``NO_PAYMENTS``, the gateway's refusal (``NO_ELIGIBLE_
        CHANNEL``, ``NO_NOTIFY_URL``, …), ``PAYMENT_UNKNOWN`` (the gateway did not
        answer: the sale stays open, call again: the same QR comes back)."""
        sale = self._need_open()
        if self.payments is None:
            raise TillError("a wallet QR needs the payment gateway (payments=)",
                            code="NO_PAYMENTS")
        d = sale.data
        fields = {"order_no": d.order_no, "amount_minor": d.amount_minor,
                  "currency": d.currency, "terminal": self.terminal}
        if wallet is not None:
            fields["wallet"] = wallet
        with self._cv:
            sale.started = True
        reply = self._gateway("pay.present", fields)
        if reply.get("status") == "pending" and not reply.get("code_url"):
            reply = self._gateway("pay.present", fields)      # asked again: same order
        if reply.get("status") == "pending":
            if not reply.get("code_url"):
                raise TillError(f"order {d.order_no}: the wallet has not given a QR yet; "
                                "ask again", code="PAYMENT_UNKNOWN")
            try:
                self.shown = self.driver.show_qr(reply["code_url"])
            except QrDisplayError as exc:
                # the QR is not up: close it at the wallet so nobody pays it unseen
                reply = self._gateway("pay.present", dict(fields, cancel=True))
                if reply.get("status") != "paid":
                    self._finish(sale, "failed", exc.code, None, None, "qr")
                    raise TillError(f"order {d.order_no}: the display did not show the "
                                    f"wallet's QR ({exc.message})", code=exc.code) from None
            else:
                wait = timeout_s if timeout_s is not None else \
                    max(0.0, float(reply.get("expires_at") or 0) - self.clock()) \
                    + 2 * poll_every_s + 1.0
                end = time.monotonic() + wait
                while reply.get("status") == "pending":
                    if time.monotonic() >= end:
                        reply = self._gateway("pay.present", dict(fields, cancel=True))
                        break
                    time.sleep(poll_every_s)
                    reply = self._gateway("pay.status", {"order_no": d.order_no})
        return self._wallet_result(sale, reply)

    def _gateway(self, op: str, fields: dict) -> dict:
        """One gateway request, repeated with the same id while its answer is not
        known (TIMEOUT and the like); a refusal is a :class:`TillError`."""
        from lanecore.gateway.net.client import ServiceError
        rid = self.payments.new_id()
        end = time.monotonic() + self.charge_timeout_s
        while True:
            try:
                return self.payments.call_with_id(rid, op, **fields)
            except ServiceError as exc:
                if exc.code not in _TRANSIENT:
                    raise TillError(f"{op}: {exc}", code=exc.code) from None
                if time.monotonic() >= end:
                    raise TillError(f"{op}: the payment gateway did not answer ({exc})",
                                    code="PAYMENT_UNKNOWN") from None
            time.sleep(0.2)

    def _wallet_result(self, sale: _Open, reply: dict) -> Sale:
        """A wallet QR's final answer from the gateway: shown, then recorded."""
        d = sale.data
        status, code = reply.get("status"), reply.get("decline_code") or ""
        if status == "pending":
            raise TillError(f"order {d.order_no}: the wallet QR is not final yet",
                            code="PAYMENT_UNKNOWN")
        if status == "paid":
            why = payment_mismatch(reply, d.order_no, d.amount_minor, d.currency)
            if why is not None:
                log.warning("order %s: the gateway's paid answer is not this sale's: %s",
                            d.order_no, why)
                shown, row = ("failed", "PAYMENT_MISMATCH"), (
                    "failed", "PAYMENT_MISMATCH", reply.get("provider_ref"))
            else:
                shown, row = ("paid", ""), (
                    "paid", None, reply.get("provider_ref") or reply.get("merchant_ref"))
        elif code == "EXPIRED":
            shown, row = ("expired", ""), ("cancelled", "EXPIRED", None)
        elif code == "CANCELLED":
            shown, row = ("cancelled", ""), ("cancelled", "CANCELLED", None)
        else:
            reason = "REVERSED" if status == "reversed" else f"DECLINED:{code}"
            shown, row = ("failed", code[:40]), ("failed", reason, None)
        try:
            self.driver.show_result(shown[0], text=shown[1])
        except QrDisplayError as exc:      # the sale stands; the screen is the display's
            log.warning("order %s: the display did not take the result (%s)",
                        d.order_no, exc.code)
        return self._finish(sale, row[0], row[1], row[2], None, "qr")

    def charge_card(self, card: str, *, kind: str = "NFC") -> Sale:
        """A card token read by a reader on the register itself (seed 002's other
        wiring): the same as a token read at the display's reader (on
        ``PAYMENT_UNKNOWN`` the card is kept and :meth:`wait_result` asks again)."""
        sale = self._need_open()
        if not (isinstance(card, str) and card.startswith("tok_")):
            raise TillError("the register charges card tokens only (tok_...); a card "
                            "number never passes through it", code="BAD_CARD")
        return self._card(sale, CardRead(kind, card, sale.data.order_no, time.monotonic()))

    def abandon(self) -> Sale | None:
        """Forget the open sale without recording anything (a display that no longer
        answers even a CANCEL). Logged: if the shopper paid after all, the result
        arrives as one of no open sale (:attr:`ignored`, a warning)."""
        with self._cv:
            sale, self._open = self._open, None
            self._cards.clear()
        if sale is None:
            return None
        log.warning("order %s abandoned open at register %s", sale.data.order_no,
                    self.register_no)
        d = sale.data
        return Sale(d.order_no, self.register_no, d.amount_minor, d.currency, "open")

    def display_status(self, timeout_s: float = 2.0):
        """The display's STATUS (state, loaded order, last result)."""
        try:
            return self.driver.status(timeout_s)
        except QrDisplayError as exc:
            raise TillError(f"status: {exc.message}", code=exc.code) from None

    @property
    def open_sale(self) -> Sale | None:
        """The sale on the display now (``open``), if any."""
        with self._cv:
            return self._open_sale() if self._open is not None else None

    # ---- internals ---------------------------------------------------------------------
    def _open_sale(self) -> Sale:
        d = self._open.data
        return Sale(d.order_no, self.register_no, d.amount_minor, d.currency, "open")

    def _need_open(self) -> _Open:
        with self._cv:
            if self._open is None:
                raise TillError("no sale is open: sell() first", code="NO_SALE")
            return self._open

    def _display_result(self) -> PayResult | None:
        try:
            return self.driver.wait_result(0)
        except QrDisplayError:
            return None

    def _take_card(self) -> CardRead | None:
        with self._cv:
            return self._cards.popleft() if self._cards else None

    def _close(self, sale: _Open, r: PayResult) -> Sale:
        if r.ok:
            status, reason = "paid", None
        elif r.reason == "CANCELLED":
            status, reason = "cancelled", "CANCELLED"
        else:
            status, reason = "failed", r.reason
        channel = "card" if r.channel == "CARD" else "qr"
        payer = sale.payer if channel == "card" else None
        return self._finish(sale, status, reason, r.txn_ref, payer, channel)

    def _finish(self, sale: _Open, status, reason, txn_ref, payer, channel) -> Sale:
        row = self._record(sale.data, status, reason, txn_ref, payer, channel)
        with self._cv:
            if self._open is sale:
                self._open = None
                self._cards.clear()
            self._closed[sale.data.order_no] = (row.status, row.txn_ref)
            if len(self._closed) > 1000:
                del self._closed[next(iter(self._closed))]
        return row

    def _recover_paid(self, data: PaymentData) -> Sale | None:
        """The display refused the data as paid: take the result from its STATUS."""
        try:
            self.driver.status()
        except QrDisplayError:
            return None
        r = self._display_result()
        if r is None or not r.ok or r.order_no != data.order_no:
            return None
        log.warning("order %s: the display has it paid (%s) but the table did not: "
                    "recorded now", data.order_no, r.txn_ref)
        with self._cv:
            sale = self._open
        return self._close(sale, r)

    def _mismatch(self, sale: _Open, why: str) -> TillError:
        """The display drew another QR than asked: stop it and record no sale."""
        msg = f"order {sale.data.order_no}: the QR shown is not this sale's: {why}"
        log.error("DISPLAY_MISMATCH: %s", msg)
        with self._cv:
            self.faults.append(f"DISPLAY_MISMATCH: {msg}")
        self.shown = None
        try:
            r = self.driver.cancel()
        except QrDisplayError as exc:
            log.error("order %s: the mismatched QR could not be cancelled (%s)",
                      sale.data.order_no, exc.code)
            r = None
        if r is not None and r.ok:
            # the driver only passes a payment of the sale's own amount and order as ok
            row = self._close(sale, r)
        else:
            row = self._finish(sale, "failed", "DISPLAY_MISMATCH", r.txn_ref if r else None,
                               None, "qr")
        return TillError(msg, code="DISPLAY_MISMATCH", sale=row)

    def _shopper_paying(self) -> bool:
        try:
            return self.driver.status().state == "PAYING"
        except QrDisplayError:
            return False

    def _timed_out(self, sale: _Open) -> Sale:
        # STATUS first: a result whose every resend was lost is in its `last`
        try:
            self.driver.status()
        except QrDisplayError as exc:
            log.warning("order %s: no STATUS (%s); cancelling", sale.data.order_no, exc.code)
        r = self._display_result()
        if r is not None:
            return self._close(sale, r)
        try:
            r = self.driver.cancel()
        except QrDisplayError as exc:
            raise TillError(f"order {sale.data.order_no}: no result and the display does "
                            f"not answer the cancel ({exc.message}); the sale stays open",
                            code=exc.code) from None
        if not r.ok and r.reason == "CANCELLED":
            return self._finish(sale, "cancelled", "TIMEOUT", None, None,
                                "card" if r.channel == "CARD" else "qr")
        return self._close(sale, r)

    # ---- cards -------------------------------------------------------------------------
    def _card(self, sale: _Open, card: CardRead) -> Sale | None:
        """A card at the reader. A masked number: the display's reader settles it
        (its result follows; None). A token: stop the QR, then charge it through the
        payment gateway and record the result."""
        with self._cv:
            sale.started = True
        if not card.pan_masked.startswith("tok_"):
            sale.payer = mask_payer(card.pan_masked)
            log.info("order %s: card %s at the display's reader", sale.data.order_no,
                     sale.payer)
            return None
        try:
            return self._card_token(sale, card)
        except TillError:
            # nothing final was recorded: keep the card, so waiting again retries it
            # (the QR is already down and the gateway never charges an order twice)
            with self._cv:
                if self._open is sale:
                    self._cards.appendleft(card)
            raise

    def _card_token(self, sale: _Open, card: CardRead) -> Sale:
        payer = mask_payer(card.pan_masked)
        # the QR first: a shopper must not pay by phone while the card is charged
        try:
            r = self.driver.cancel()
        except QrDisplayError as exc:
            raise TillError(f"order {sale.data.order_no}: the display's QR could not be "
                            f"stopped before charging the card ({exc.message})",
                            code=exc.code) from None
        if r.ok:
            log.info("order %s: paid by QR before the card %s; the card is not charged",
                     sale.data.order_no, payer)
            return self._close(sale, r)
        sale.qr_stopped = True
        if self.payments is None:
            return self._finish(sale, "failed", "NO_PAYMENTS", None, payer, "card")
        sale.card_charging = True
        reply = self._charge(sale.data, card)
        if isinstance(reply, str):                   # the gateway refused the request
            return self._finish(sale, "failed", reply, None, payer, "card")
        status = reply.get("status")
        if status == "paid":
            # paid — for this order, amount and currency, or it is not this sale's
            why = payment_mismatch(reply, sale.data.order_no, sale.data.amount_minor,
                                   sale.data.currency)
            if why is not None:
                log.warning("order %s: the gateway's paid answer is not this sale's: %s",
                            sale.data.order_no, why)
                return self._finish(sale, "failed", "PAYMENT_MISMATCH",
                                    reply.get("provider_ref"), payer, "card")
            return self._finish(sale, "paid", None,
                                reply.get("provider_ref") or reply.get("merchant_ref"),
                                payer, "card")
        if status == "reversed":
            return self._finish(sale, "failed", "REVERSED", reply.get("provider_ref"),
                                payer, "card")
        return self._finish(sale, "failed", f"DECLINED:{reply.get('decline_code') or ''}",
                            None, payer, "card")

    def _charge(self, data: PaymentData, card: CardRead) -> dict | str:
        """``pay.charge`` (method ``card``) for the order: the final payment object,
        or the gateway's error code when it refused the request. Retries with the
        same request id while the answer is unknown; a pending charge is followed
        with ``pay.status`` (the gateway never charges an order twice)."""
        from lanecore.gateway.net.client import ServiceError
        entry = "nfc" if card.kind == "NFC" else "chip"
        fields = {"order_no": data.order_no, "amount_minor": data.amount_minor,
                  "currency": data.currency, "method": "card", "terminal": self.terminal,
                  "card": {"entry": entry, "token": card.pan_masked}}
        end = time.monotonic() + self.charge_timeout_s
        rid = self.payments.new_id()
        op, req = "pay.charge", fields
        while True:
            try:
                reply = self.payments.call_with_id(rid, op, **req)
            except ServiceError as exc:
                if op == "pay.charge" and exc.code not in _TRANSIENT:
                    log.info("order %s: the gateway refused the card charge: %s",
                             data.order_no, exc)
                    return exc.code
                last = str(exc)           # unknown: the same request again, same id
            else:
                if reply.get("status") in ("paid", "failed", "reversed"):
                    return reply
                last = f"status {reply.get('status')}"
                # pending: the gateway keeps asking the provider; we follow by status
                op, req = "pay.status", {"order_no": data.order_no}
            if time.monotonic() >= end:
                raise TillError(f"order {data.order_no}: the card charge is not final "
                                f"after {self.charge_timeout_s:g} s ({last}); wait again",
                                code="PAYMENT_UNKNOWN")
            time.sleep(0.2)
            if op == "pay.status":
                rid = self.payments.new_id()      # a read: a fresh id every time


# --------------------------------------------------------------------------------------
# A till on the command line: JSON commands in, JSON answers out
# --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lanecore till`` (proposed)."""
    parser.add_argument("--display", required=True, metavar="PORT",
                        help="the QR display's serial port (or a simulator's pty path)")
    parser.add_argument("--store-db", required=True, metavar="PATH",
                        help="the store database file or data directory")
    parser.add_argument("--register", required=True, metavar="NO",
                        help="this register's number (1-8 of A-Z a-z 0-9 -)")
    parser.add_argument("--payments", metavar="ENDPOINT",
                        help="the payment gateway, for card tokens (default: none)")
    parser.add_argument("--terminal", help="the gateway's name for this register")
    parser.add_argument("--wait", type=float, default=60.0, metavar="S",
                        help="default seconds to wait for a result")


def run_commands(register: Register, lines: Iterable[str], out, *,
                 wait_s: float = 60.0) -> int:
    """Run JSON commands, one per line, answering one JSON line each:
    ``{"op": "sell", "order_no", "lines"?, "total_minor", "currency"?}``,
    ``{"op": "qr_pay"}`` (answers ``payload``), ``{"op": "wait", "timeout_s"?}``,
    ``{"op": "cancel"}``, ``{"op": "get", "order_no"}``, ``{"op": "status"}``,
    ``{"op": "wallet_pay", "wallet"?, "timeout_s"?}`` (the wallet's own QR through
    the payment gateway: :meth:`Register.wallet_pay`).
    Answers ``{"ok": true, "sale": {...}}`` or ``{"ok": false, "error": {code,
    message}}``. Returns the number of errors."""
    errors = 0
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        try:
            cmd = json.loads(raw)
            if not isinstance(cmd, dict):
                raise TillError("a command is a JSON object", code="BAD_COMMAND")
            op = cmd.get("op")
            if op == "sell":
                ans = {"sale": register.sell(cmd["order_no"], cmd.get("lines") or (),
                                             total_minor=cmd["total_minor"],
                                             currency=cmd.get("currency", "CNY")).to_dict()}
            elif op == "qr_pay":
                shown = register.qr_pay()
                ans = {"payload": shown.payload, "attempt": shown.attempt}
            elif op == "wallet_pay":
                ans = {"sale": register.wallet_pay(wallet=cmd.get("wallet"),
                                                   timeout_s=cmd.get("timeout_s")).to_dict()}
            elif op == "wait":
                ans = {"sale": register.wait_result(cmd.get("timeout_s", wait_s)).to_dict()}
            elif op == "cancel":
                ans = {"sale": register.cancel().to_dict()}
            elif op == "get":
                row = register.transaction(cmd["order_no"])
                ans = {"sale": row.to_dict() if row else None}
            elif op == "status":
                ans = {"status": register.display_status().to_dict()}
            else:
                raise TillError(f"unknown op {op!r}", code="BAD_COMMAND")
            reply = {"ok": True, **ans}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            errors += 1
            reply = {"ok": False, "error": {"code": "BAD_COMMAND", "message": str(exc)}}
        except LanecoreError as exc:
            errors += 1
            reply = {"ok": False, "error": exc.to_dict()}
        print(json.dumps(reply, ensure_ascii=False), file=out, flush=True)
    return errors


def main(argv: list[str] | None = None) -> int:
    """``lanecore till`` (proposed): a register on a display, commands on stdin."""
    p = argparse.ArgumentParser(prog="lanecore till", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    payments = None
    if args.payments:
        from lanecore.gateway.net.client import Client
        payments = Client(args.payments, client_id=f"till-{args.register}")
    try:
        with Register(args.display, store_db_path=args.store_db, register_no=args.register,
                      payments=payments, terminal=args.terminal) as reg:
            run_commands(reg, sys.stdin, sys.stdout, wait_s=args.wait)
    except TillError as exc:
        print(json.dumps({"ok": False, "error": exc.to_dict()}), file=sys.stderr)
        return 2
    finally:
        if payments is not None:
            payments.close()
    return 0
