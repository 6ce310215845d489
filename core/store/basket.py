"""Baskets and orders: what a handheld scans while the shopper shops, and the order
that "submit" turns it into.

A basket is opened by a device (a handheld, lane or till), filled and emptied with
batches of scans, and submitted once: that closes it and creates the **order**, with
a human-readable order number and a signed order QR (:mod:`lanecore.core.store.orderqr`)
that kiosks take payment for and exit lanes weigh-check. Everything lives in the
store database (``store.db``) in tables this module creates: ``baskets``,
``basket_lines``, ``orders`` and ``order_counters`` (``docs/store/baskets.md`` lists their
columns and the rules).

**Transactions belong to the caller.** The ZeroMQ service runs each request as
``BEGIN IMMEDIATE``, one mutating call, its own idempotency record, ``COMMIT``: so
the mutating methods (:meth:`BasketStore.open`, ``add``, ``remove``, ``cancel``,
``submit``, ``set_order_status``) never begin or commit a transaction. They must be
called inside one (else NO_TRANSACTION) and wrap their own writes in a savepoint, so
a call that fails leaves the caller's transaction exactly as it was: all or
nothing per call, and nothing at all until the caller commits. :func:`atomic` is
that transaction for callers without one of their own::

    with atomic(con):
        basket = store.open("HH07")
    with atomic(con):
        store.add(basket["basket_id"], [{"code": "5012345678900", "qty": 2}])

Reading methods (``get``, ``order``, ``order_lines_for_verify``) work inside or
outside a transaction (outside, they read one consistent snapshot).

Money is integer minor units of ``currency``; weights are grams. Every error is a
:class:`BasketError` with a stable ``code``: UNKNOWN_BASKET, BASKET_CLOSED,
EMPTY_BASKET, BAD_SCAN, UNKNOWN_ITEM, NEEDS_WEIGHING, BAD_QUANTITY, BAD_LINE,
BAD_REQUEST, TOO_MANY_LINES, UNKNOWN_ORDER, BAD_STATUS, NO_TRANSACTION,
SCHEMA_TOO_NEW, DB_BUSY, DB_ERROR. Errors about one element of a batch carry its
position as ``index`` (and BAD_SCAN the scan's own error as ``scan_error``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping

from lanecore.core.store import orderqr
from lanecore.core.scan.catalog import flag_names, line_price_minor
from lanecore.core.scan.catalog import item as _catalog_item
from lanecore.core.errors import LanecoreError
from lanecore.ext.barcode import parse_scan, regions
from lanecore.ext.lookup import FLAG_VARIABLE_MEASURE, CatalogTable

__all__ = [
    "BasketError", "BasketStore", "atomic", "SCHEMA_VERSION", "MAX_LINES", "MAX_QTY",
    "MAX_BATCH", "MAX_TOTAL_MINOR", "BASKET_STATUSES", "ORDER_STATUSES",
    "ORDER_TRANSITIONS", "lines_digest", "order_number",
]

#: Version of the tables below, kept in ``meta`` as ``basket_schema_version``.
SCHEMA_VERSION = 1
#: Most lines one basket holds.
MAX_LINES = 500
#: Largest quantity of one line (and of one scan or removal).
MAX_QTY = 999
#: Most scans (or removals) in one call.
MAX_BATCH = 500
#: Largest basket total, minor units: far above any shop's, far inside int64.
MAX_TOTAL_MINOR = 10 ** 15 - 1
#: Longest device and member identifiers.
MAX_ID_LEN = 64
BASKET_STATUSES = ("open", "submitted", "cancelled")
ORDER_STATUSES = ("submitted", "paid", "exited", "cancelled")
#: status -> the statuses it may change to.
ORDER_TRANSITIONS = {
    "submitted": ("paid", "cancelled"),
    "paid": ("exited", "cancelled"),
    "exited": (),
    "cancelled": (),
}
#: The σ (g) of the weight printed on an in-store label, used for the derived weight
#: of a price-only label (see order_lines_for_verify); VerifyPolicy's default.
LABEL_WEIGHT_SD_G = 1.0

_BASKET_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"   # RFC 4648 base32
_BASKET_ID_LEN = 12                                      # 60 random bits
_BASKET_ID_RE = re.compile(f"[{_BASKET_ID_ALPHABET}]{{{_BASKET_ID_LEN}}}")
_ORDER_PREFIX_LEN = 16      # 16 + "-YYMMDD-" + up to 8 digits <= 32 characters
_SAVEPOINT = "lanecore_basket"
_META_KEY = "basket_schema_version"

_DDL = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS baskets (
        basket_id     TEXT PRIMARY KEY,
        device        TEXT NOT NULL,
        member        TEXT,
        status        TEXT NOT NULL CHECK (status IN ('open', 'submitted', 'cancelled')),
        next_line_no  INTEGER NOT NULL DEFAULT 1,
        opened_at     REAL NOT NULL,
        updated_at    REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS basket_lines (
        basket_id         TEXT NOT NULL REFERENCES baskets (basket_id),
        line_no           INTEGER NOT NULL,
        code              TEXT NOT NULL,
        gtin              TEXT NOT NULL,
        scan_gtin         TEXT NOT NULL,
        name              TEXT NOT NULL,
        qty               INTEGER NOT NULL CHECK (qty BETWEEN 1 AND 999),
        unit_price_minor  INTEGER NOT NULL,
        line_price_minor  INTEGER NOT NULL CHECK (line_price_minor >= 0),
        weight_g          REAL,
        count             INTEGER,
        label             INTEGER NOT NULL DEFAULT 0,
        flags             INTEGER NOT NULL,
        added_at          REAL NOT NULL,
        PRIMARY KEY (basket_id, line_no)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS orders (
        order_no      TEXT PRIMARY KEY,
        basket_id     TEXT NOT NULL UNIQUE REFERENCES baskets (basket_id),
        device        TEXT NOT NULL,
        member        TEXT,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL,
        total_minor   INTEGER NOT NULL,
        currency      TEXT NOT NULL,
        n_items       INTEGER NOT NULL,
        lines_digest  TEXT NOT NULL,
        status        TEXT NOT NULL
                      CHECK (status IN ('submitted', 'paid', 'exited', 'cancelled')),
        qr            TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS order_counters (
        prefix   TEXT NOT NULL,
        day      TEXT NOT NULL,
        last_no  INTEGER NOT NULL,
        PRIMARY KEY (prefix, day)
    ) WITHOUT ROWID""",
)
_TABLE_COLUMNS = {
    "baskets": {"basket_id", "device", "member", "status", "next_line_no", "opened_at",
                "updated_at"},
    "basket_lines": {"basket_id", "line_no", "code", "gtin", "scan_gtin", "name", "qty",
                     "unit_price_minor", "line_price_minor", "weight_g", "count",
                     "label", "flags", "added_at"},
    "orders": {"order_no", "basket_id", "device", "member", "created_at", "updated_at",
               "total_minor", "currency", "n_items", "lines_digest", "status", "qr"},
    "order_counters": {"prefix", "day", "last_no"},
}
_LINE_COLUMNS = ("line_no", "code", "gtin", "scan_gtin", "name", "qty",
                 "unit_price_minor", "line_price_minor", "weight_g", "count", "label",
                 "flags")


class BasketError(LanecoreError):
    """A basket or order request that cannot be done. ``index``: the position in the
    request's batch of the scan or removal at fault (None for the whole request);
    ``scan_error``: for BAD_SCAN, the scan's own ``{code, message}``."""

    code = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None,
                 index: int | None = None, scan_error: dict | None = None):
        super().__init__(message, code=code)
        self.index = index
        self.scan_error = scan_error

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.index is not None:
            out["index"] = self.index
        if self.scan_error is not None:
            out["scan_error"] = dict(self.scan_error)
        return out


def _db_error(exc: sqlite3.Error, what: str) -> BasketError:
    # The catalogue's split: a lock held past the busy timeout is DB_BUSY (retry).
    name = getattr(exc, "sqlite_errorname", "")
    busy = name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    err = BasketError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")
    err.__cause__ = exc
    return err


# --------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``con``: ``BEGIN IMMEDIATE`` … ``COMMIT``, or
    ``ROLLBACK`` when the block raises (the exception propagates). Inside a
    transaction that is already open it is a savepoint instead, released or rolled
    back to with the block. ``con`` should be in autocommit mode
    (``isolation_level=None``, as :func:`lanecore.core.scan.catalog.connect` opens it).
    Raises BasketError DB_BUSY / DB_ERROR when the database refuses."""
    if con.in_transaction:
        try:
            con.execute("SAVEPOINT lanecore_atomic")
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot open a savepoint") from exc
        try:
            yield con
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK TO lanecore_atomic")
                con.execute("RELEASE lanecore_atomic")
            raise
        try:
            con.execute("RELEASE lanecore_atomic")
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot release a savepoint") from exc
        return
    try:
        con.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if con.in_transaction:  # an interrupted BEGIN can leave it open
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise _db_error(exc, "cannot begin a transaction") from exc
    try:
        yield con
    except BaseException:
        if con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise
    try:
        con.execute("COMMIT")
    except sqlite3.Error as exc:
        if con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise _db_error(exc, "cannot commit") from exc


# --------------------------------------------------------------------------------------
# Order numbers and the lines digest
# --------------------------------------------------------------------------------------

def _order_prefix(device: str) -> str:
    """The device part of an order number: upper case, every run of characters
    other than A-Z and 0-9 one hyphen, at most 16 characters, "X" if nothing is
    left."""
    text = re.sub(r"[^A-Z0-9]+", "-", device.upper())
    text = text.strip("-")[:_ORDER_PREFIX_LEN].rstrip("-")
    return text or "X"


def order_number(prefix: str, day: str, n: int) -> str:
    """``{prefix}-{YYMMDD}-{n}``, ``n`` zero-padded to at least four digits."""
    return f"{prefix}-{day}-{n:04d}"


def lines_digest(lines) -> str:
    """SHA-256 (64 hex digits) of the canonical line list of an order.

    The list is the JSON array, in ``line_no`` order, of one array per line
    ``[line_no, gtin, qty, unit_price_minor, line_price_minor, weight_mg, count]``
    (``weight_mg``: the label weight in whole milligrams, rounded; ``weight_mg`` and
    ``count`` null when absent), serialised with no spaces, as ASCII bytes. ``lines``
    are the line dicts of :meth:`BasketStore.get`.
    """
    rows = []
    for ln in sorted(lines, key=lambda x: x["line_no"]):
        w = ln["weight_g"]
        rows.append([ln["line_no"], ln["gtin"], ln["qty"], ln["unit_price_minor"],
                     ln["line_price_minor"], None if w is None else int(round(w * 1000)),
                     ln["count"]])
    return hashlib.sha256(orderqr.canonical_json(rows)).hexdigest()


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ident(value, what: str, *, optional=False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LEN \
            or not value.isprintable() or value != value.strip():
        raise BasketError(f"{what} must be 1-{MAX_ID_LEN} printable characters without "
                          f"surrounding spaces, not {value!r:.80}", code="BAD_REQUEST")
    return value


def _qty(value, index: int | None, what: str = "qty") -> int:
    if not _is_int(value) or not 1 <= value <= MAX_QTY:
        raise BasketError(f"{what} {value!r:.40} must be a whole number 1..{MAX_QTY}",
                          code="BAD_QUANTITY", index=index)
    return value


def _batch(value, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise BasketError(f"{what} must be a list, not {type(value).__name__}",
                          code="BAD_REQUEST")
    if not 1 <= len(value) <= MAX_BATCH:
        raise BasketError(f"{what} must hold 1..{MAX_BATCH} entries, not {len(value)}",
                          code="BAD_REQUEST")
    return list(value)


def _entry(raw, i: int, allowed: frozenset, what: str) -> Mapping:
    if not isinstance(raw, Mapping):
        raise BasketError(f"{what} {i} must be an object, not {type(raw).__name__}",
                          code="BAD_REQUEST", index=i)
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise BasketError(f"{what} {i}: unknown key(s) {sorted(map(str, unknown))}; "
                          f"allowed: {sorted(allowed)}", code="BAD_REQUEST", index=i)
    return raw


_SCAN_KEYS = frozenset({"code", "qty"})
_REMOVE_KEYS = frozenset({"line_no", "gtin", "qty"})


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------

class BasketStore:
    """Baskets and orders in the store database.

    ``con``: a connection to ``store.db`` (from :func:`lanecore.core.scan.catalog.connect`:
    autocommit, WAL, ``synchronous=FULL``); the caller owns it and its transactions.
    ``table``: the :class:`~lanecore.ext.lookup.CatalogTable` scans are looked up in,
    or a zero-argument callable returning the current one (``Catalog.table``, which
    reloads after an import), or None to ask ``item`` directly. ``item(gtin14)``:
    the catalogue item dict or None (``Catalog.item``; default: read ``items`` on
    ``con``). ``region``: how in-store codes are read (``lanecore.parse_scan``).
    ``currency``: ISO 4217 code of every amount; default the region's currency, else
    GBP; a region whose codes carry another currency is refused. ``store``: the
    store identifier the order QR carries (1-32 of ``A-Z a-z 0-9 . _ -``).
    ``clock``: Unix time in seconds (tests pass a fixed one). Order numbers use the
    local calendar day of ``clock()``.

    Creates its tables if absent (a transaction of its own, or a savepoint inside
    the caller's). Raises BasketError SCHEMA_TOO_NEW, DB_ERROR, DB_BUSY, BAD_REQUEST.
    """

    def __init__(self, con: sqlite3.Connection, table=None, *, region: str | None = None,
                 currency: str | None = None,
                 item: Callable[[str], dict | None] | None = None,
                 store: str = "STORE", clock: Callable[[], float] = time.time):
        if not isinstance(con, sqlite3.Connection):
            raise TypeError(f"con must be a sqlite3.Connection, not {type(con).__name__}")
        if table is not None and not (isinstance(table, CatalogTable) or callable(table)):
            raise TypeError("table must be a CatalogTable, a callable returning one, "
                            "or None")
        if region is not None:
            if parse_scan("96385074", region).error_code == "UNKNOWN_REGION":
                raise BasketError(f"region {region!r} is not an ISO 3166 alpha-2 code",
                                  code="BAD_REQUEST")
            region = region.upper()
        rcn = regions().get(region) if region else None
        if currency is None:
            currency = rcn.currency if rcn is not None else "GBP"
        if not (isinstance(currency, str) and re.fullmatch(r"[A-Z]{3}", currency)):
            raise BasketError(f"currency {currency!r} is not an ISO 4217 code",
                              code="BAD_REQUEST")
        if rcn is not None and rcn.currency != currency:
            raise BasketError(f"region {region}'s in-store codes carry {rcn.currency} "
                              f"prices; the basket currency is {currency}",
                              code="BAD_REQUEST")
        if not (isinstance(store, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,32}", store)):
            raise BasketError(f"store {store!r} must be 1-32 of A-Z a-z 0-9 . _ -",
                              code="BAD_REQUEST")
        self.con = con
        self.region = region
        self.currency = currency
        self.store = store
        self._table = table
        self._item = item if item is not None else (lambda g: _catalog_item(con, g))
        self._clock = clock
        self._ensure_schema()

    # schema ----------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        con = self.con
        try:
            with atomic(con):
                con.execute(_DDL[0])
                row = con.execute("SELECT value FROM meta WHERE key = ?",
                                  (_META_KEY,)).fetchone()
                version = int(row[0]) if row is not None else 0
                if version > SCHEMA_VERSION:
                    raise BasketError(
                        f"the database has basket schema {version}; this lanecore "
                        f"reads up to {SCHEMA_VERSION}", code="SCHEMA_TOO_NEW")
                if version < SCHEMA_VERSION:
                    for stmt in _DDL[1:]:
                        con.execute(stmt)
                    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                (_META_KEY, str(SCHEMA_VERSION)))
                for table, want in _TABLE_COLUMNS.items():
                    have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                    if not want <= have:
                        raise BasketError(f"table {table} lacks columns "
                                          f"{sorted(want - have)}; it is not lanecore's",
                                          code="DB_ERROR")
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot create the basket tables") from exc
        except ValueError as exc:
            raise BasketError(f"meta {_META_KEY} is not a number: {exc}",
                              code="DB_ERROR") from exc

    # transaction plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _mutation(self, what: str) -> Iterator[sqlite3.Connection]:
        """A savepoint inside the caller's transaction: the call's writes all stay
        or all go, and the caller's earlier work is untouched either way."""
        con = self.con
        if not con.in_transaction:
            raise BasketError(f"{what} must run inside the caller's transaction "
                              "(BEGIN IMMEDIATE, or basket.atomic(con))",
                              code="NO_TRANSACTION")
        try:
            con.execute(f"SAVEPOINT {_SAVEPOINT}")
        except sqlite3.Error as exc:
            raise _db_error(exc, f"cannot {what}") from exc
        try:
            yield con
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute(f"ROLLBACK TO {_SAVEPOINT}")
                con.execute(f"RELEASE {_SAVEPOINT}")
            if isinstance(exc, sqlite3.Error):
                raise _db_error(exc, f"cannot {what}") from exc
            raise
        try:
            con.execute(f"RELEASE {_SAVEPOINT}")
        except sqlite3.Error as exc:
            raise _db_error(exc, f"cannot {what}") from exc

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """Reads in the caller's transaction, or in one read transaction of their
        own (one consistent snapshot across the queries)."""
        con = self.con
        own = not con.in_transaction
        try:
            if own:
                con.execute("BEGIN")
            try:
                yield con
            finally:
                if own and con.in_transaction:
                    con.execute("COMMIT")  # nothing was written: only ends the read
        except sqlite3.Error as exc:
            raise _db_error(exc, f"cannot {what}") from exc

    # helpers -----------------------------------------------------------------------

    def _basket_row(self, basket_id, *, want_open: bool) -> tuple:
        if not isinstance(basket_id, str):
            raise BasketError(f"basket_id must be a string, not {type(basket_id).__name__}",
                              code="BAD_REQUEST")
        row = None
        if _BASKET_ID_RE.fullmatch(basket_id):
            row = self.con.execute(
                "SELECT basket_id, device, member, status, next_line_no, opened_at, "
                "updated_at FROM baskets WHERE basket_id = ?", (basket_id,)).fetchone()
        if row is None:
            raise BasketError(f"no basket {basket_id[:40]!r}", code="UNKNOWN_BASKET")
        if want_open and row[3] != "open":
            raise BasketError(f"basket {basket_id} is {row[3]}", code="BASKET_CLOSED")
        return row

    def _lines(self, basket_id: str) -> list[dict]:
        rows = self.con.execute(
            f"SELECT {', '.join(_LINE_COLUMNS)} FROM basket_lines WHERE basket_id = ? "
            "ORDER BY line_no", (basket_id,)).fetchall()
        return [dict(zip(_LINE_COLUMNS, r)) for r in rows]

    @staticmethod
    def _public_line(ln: dict) -> dict:
        return {"line_no": ln["line_no"], "code": ln["code"], "gtin": ln["gtin"],
                "name": ln["name"], "qty": ln["qty"],
                "unit_price_minor": ln["unit_price_minor"],
                "line_price_minor": ln["line_price_minor"], "weight_g": ln["weight_g"],
                "count": ln["count"], "flags": flag_names(ln["flags"])}

    def _summary(self, row: tuple) -> dict:
        basket_id = row[0]
        lines = self._lines(basket_id)
        order = self.con.execute("SELECT order_no FROM orders WHERE basket_id = ?",
                                 (basket_id,)).fetchone()
        return {"basket_id": basket_id, "device": row[1], "member": row[2],
                "status": row[3], "order_no": order[0] if order else None,
                "opened_at": row[5], "updated_at": row[6],
                "lines": [self._public_line(ln) for ln in lines],
                "n_items": sum(ln["qty"] for ln in lines),
                "total_minor": sum(ln["line_price_minor"] for ln in lines),
                "currency": self.currency}

    def _current_table(self) -> CatalogTable | None:
        t = self._table
        if t is None or isinstance(t, CatalogTable):
            return t
        t = t()
        if not isinstance(t, CatalogTable):
            raise TypeError(f"the table callable returned {type(t).__name__}, "
                            "not a CatalogTable")
        return t

    def _resolve_scan(self, i: int, raw, table: CatalogTable | None) -> dict:
        """One scan of an ``add`` batch, read, looked up and priced: the line it
        makes (or adds to). Raises the scan's BasketError with ``index`` i."""
        raw = _entry(raw, i, _SCAN_KEYS, "scan")
        if "code" not in raw:
            raise BasketError(f"scan {i} has no \"code\"", code="BAD_REQUEST", index=i)
        code = raw["code"]
        if not isinstance(code, str):
            raise BasketError(f"scan {i}: code must be a string, not "
                              f"{type(code).__name__}", code="BAD_REQUEST", index=i)
        qty = 1 if raw.get("qty") is None else _qty(raw["qty"], i)  # null: absent
        r = parse_scan(code, self.region)
        if not r.ok:
            raise BasketError(f"scan {i}: {r.error_message} ({r.error_code})",
                              code="BAD_SCAN", index=i, scan_error=r.error)
        if r.lookup_key is None:
            raise BasketError(f"scan {i}: a {r.kind} scan names no item",
                              code="UNKNOWN_ITEM", index=i)
        gtin = r.lookup_gtin
        row = None
        if table is None or table.lookup(r.lookup_key) >= 0:
            try:
                row = self._item(gtin)
            except LanecoreError as exc:
                raise BasketError(f"cannot read item {gtin}: {exc.message}",
                                  code="DB_ERROR", index=i) from exc
        if row is None:
            raise BasketError(f"scan {i}: GTIN {gtin} is not in the catalogue",
                              code="UNKNOWN_ITEM", index=i)
        bits = row.get("flag_bits")
        if bits is None:
            bits = row["flags"] if _is_int(row.get("flags")) else 0
        unit_price = int(row["price_minor"])
        label = r.price_minor is not None or r.weight_g is not None or r.count is not None
        price = line_price_minor(dict(row, flag_bits=bits), r)
        if price is None:
            raise BasketError(f"scan {i}: {row['name']} ({gtin}) is sold by weight and "
                              "this code carries no weight or price: weigh it and scan "
                              "the label", code="NEEDS_WEIGHING", index=i)
        if (r.count is not None and r.kind != "rcn" and r.price_minor is None
                and not (bits & FLAG_VARIABLE_MEASURE and r.weight_g is not None)):
            price = unit_price * int(r.count)  # a GS1 (30) count: that many units
        if label and qty != 1:
            raise BasketError(f"scan {i}: a label carrying a price, weight or count is "
                              f"one item; scan each label (qty {qty})",
                              code="BAD_QUANTITY", index=i)
        return {"code": code, "gtin": gtin, "scan_gtin": r.gtin or gtin,
                "name": row["name"], "qty": qty, "unit_price_minor": unit_price,
                "line_price_minor": int(price) if label else unit_price * qty,
                "weight_g": None if r.weight_g is None else float(r.weight_g),
                "count": None if r.count is None else int(r.count),
                "label": 1 if label else 0, "flags": int(bits)}

    # the API -------------------------------------------------------------------------

    def open(self, device: str, *, member: str | None = None) -> dict:
        """Open an empty basket for ``device`` (the handheld, lane or till; 1-64
        printable characters) and optional ``member`` (card or phone number, same
        rule). Returns the basket (as :meth:`get`). Mutating: inside the caller's
        transaction."""
        device = _ident(device, "device")
        member = _ident(member, "member", optional=True)
        with self._mutation("open a basket") as con:
            now = self._clock()
            for _ in range(8):  # 60 random bits: a clash is for the tests to force
                basket_id = "".join(secrets.choice(_BASKET_ID_ALPHABET)
                                    for _ in range(_BASKET_ID_LEN))
                cur = con.execute(
                    "INSERT OR IGNORE INTO baskets (basket_id, device, member, status, "
                    "next_line_no, opened_at, updated_at) "
                    "VALUES (?, ?, ?, 'open', 1, ?, ?)",
                    (basket_id, device, member, now, now))
                if cur.rowcount == 1:
                    break
            else:  # pragma: no cover
                raise BasketError("cannot draw an unused basket id", code="DB_ERROR")
            return self._summary(self._basket_row(basket_id, want_open=True))

    def add(self, basket_id: str, scans) -> dict:
        """Add a batch of scans ``[{"code": str, "qty": int = 1}, ...]`` (1-500; a
        null qty is 1) to an open basket; returns the basket (as :meth:`get`).

        Each code is read with ``parse_scan(code, region)`` and looked up. A plain
        item code adds ``qty`` units to the newest line of the same item at the same
        price (or starts a line); a code that carries a price, weight or count (an
        in-store label, a GS1 element string) is one item and always gets its own
        line, with qty 1. The line's price is the label's price, else the per-kg
        price × the label's weight rounded half up, else the catalogue price × qty.
        All or nothing: the first bad scan raises with its ``index`` and nothing is
        added. Raises UNKNOWN_BASKET, BASKET_CLOSED, BAD_REQUEST, BAD_SCAN,
        UNKNOWN_ITEM, NEEDS_WEIGHING, BAD_QUANTITY, TOO_MANY_LINES."""
        scans = _batch(scans, "scans")
        with self._mutation("add to the basket") as con:
            row = self._basket_row(basket_id, want_open=True)
            table = self._current_table()
            resolved = [self._resolve_scan(i, raw, table) for i, raw in enumerate(scans)]
            lines = self._lines(row[0])
            # newest line of each plain item at each price: where more units go
            plain = {(ln["gtin"], ln["unit_price_minor"], ln["flags"]): ln
                     for ln in lines if not ln["label"]}
            next_no = row[4]
            n_lines = len(lines)
            total = sum(ln["line_price_minor"] for ln in lines)
            changed: dict[int, dict] = {}
            new: list[dict] = []
            for i, s in enumerate(resolved):
                key = (s["gtin"], s["unit_price_minor"], s["flags"])
                target = None if s["label"] else plain.get(key)
                if target is not None:
                    qty = target["qty"] + s["qty"]
                    if qty > MAX_QTY:
                        raise BasketError(
                            f"scan {i}: line {target['line_no']} would hold {qty} units; "
                            f"at most {MAX_QTY}", code="BAD_QUANTITY", index=i)
                    target["qty"] = qty
                    target["line_price_minor"] = qty * target["unit_price_minor"]
                    total += s["line_price_minor"]
                    if not target.get("new"):
                        changed[target["line_no"]] = target
                else:
                    if n_lines >= MAX_LINES:
                        raise BasketError(f"scan {i}: the basket already has "
                                          f"{MAX_LINES} lines", code="TOO_MANY_LINES",
                                          index=i)
                    line = dict(s, line_no=next_no, new=True)
                    next_no += 1
                    n_lines += 1
                    total += s["line_price_minor"]
                    new.append(line)
                    if not s["label"]:
                        plain[key] = line
                if total > MAX_TOTAL_MINOR:
                    raise BasketError(f"scan {i}: the basket total would exceed "
                                      f"{MAX_TOTAL_MINOR} minor units",
                                      code="BAD_QUANTITY", index=i)
            now = self._clock()
            con.executemany(
                "UPDATE basket_lines SET qty = ?, line_price_minor = ? "
                "WHERE basket_id = ? AND line_no = ?",
                [(ln["qty"], ln["line_price_minor"], row[0], ln["line_no"])
                 for ln in changed.values()])
            con.executemany(
                "INSERT INTO basket_lines (basket_id, line_no, code, gtin, scan_gtin, "
                "name, qty, unit_price_minor, line_price_minor, weight_g, count, label, "
                "flags, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(row[0], ln["line_no"], ln["code"], ln["gtin"], ln["scan_gtin"],
                  ln["name"], ln["qty"], ln["unit_price_minor"], ln["line_price_minor"],
                  ln["weight_g"], ln["count"], ln["label"], ln["flags"], now)
                 for ln in new])
            con.execute("UPDATE baskets SET next_line_no = ?, updated_at = ? "
                        "WHERE basket_id = ?", (next_no, now, row[0]))
            return self._summary(self._basket_row(row[0], want_open=False))

    def remove(self, basket_id: str, items) -> dict:
        """Remove units from an open basket; returns the basket (as :meth:`get`).

        ``items`` (1-500): ``{"line_no": int, "qty"?: int}`` takes ``qty`` units off
        that line (default: the whole line); ``{"gtin": str, "qty"?: int}`` takes
        ``qty`` units of that item (8-14 digits: the catalogue GTIN, or the GTIN an
        in-store label carried), newest line first (default: every unit of it). A
        line left with no units is deleted; line numbers are never reused.
        Applied in order, all or nothing. Raises UNKNOWN_BASKET, BASKET_CLOSED,
        BAD_REQUEST, BAD_QUANTITY, BAD_LINE (no such line or item, or fewer units
        than asked for)."""
        items = _batch(items, "items")
        with self._mutation("remove from the basket") as con:
            row = self._basket_row(basket_id, want_open=True)
            lines = {ln["line_no"]: ln for ln in self._lines(row[0])}
            before = {no: ln["qty"] for no, ln in lines.items()}
            for i, raw in enumerate(items):
                raw = _entry(raw, i, _REMOVE_KEYS, "item")
                if ("line_no" in raw) == ("gtin" in raw):
                    raise BasketError(f"item {i} needs exactly one of line_no and gtin",
                                      code="BAD_REQUEST", index=i)
                qty = None if raw.get("qty") is None else _qty(raw["qty"], i)
                if "line_no" in raw:
                    no = raw["line_no"]
                    if not _is_int(no):
                        raise BasketError(f"item {i}: line_no must be an integer",
                                          code="BAD_REQUEST", index=i)
                    ln = lines.get(no)
                    if ln is None or ln["qty"] == 0:
                        raise BasketError(f"item {i}: the basket has no line {no}",
                                          code="BAD_LINE", index=i)
                    take = ln["qty"] if qty is None else qty
                    if take > ln["qty"]:
                        raise BasketError(f"item {i}: line {no} holds {ln['qty']} "
                                          f"units; cannot remove {take}",
                                          code="BAD_LINE", index=i)
                    ln["qty"] -= take
                    continue
                g = raw["gtin"]
                if not (isinstance(g, str) and g.isascii() and g.isdigit()
                        and len(g) in (8, 12, 13, 14)):
                    raise BasketError(f"item {i}: gtin must be 8, 12, 13 or 14 digits",
                                      code="BAD_REQUEST", index=i)
                g = g.zfill(14)
                matching = [ln for no, ln in sorted(lines.items(), reverse=True)
                            if ln["qty"] and g in (ln["gtin"], ln["scan_gtin"])]
                have = sum(ln["qty"] for ln in matching)
                if not have:
                    raise BasketError(f"item {i}: the basket holds no {g}",
                                      code="BAD_LINE", index=i)
                take = have if qty is None else qty
                if take > have:
                    raise BasketError(f"item {i}: the basket holds {have} of {g}; "
                                      f"cannot remove {take}", code="BAD_LINE", index=i)
                for ln in matching:
                    k = min(take, ln["qty"])
                    ln["qty"] -= k
                    take -= k
                    if not take:
                        break
            gone = [no for no, ln in lines.items() if ln["qty"] == 0]
            kept = [ln for no, ln in lines.items() if ln["qty"] and ln["qty"] != before[no]]
            con.executemany("DELETE FROM basket_lines WHERE basket_id = ? AND line_no = ?",
                            [(row[0], no) for no in gone])
            # only plain lines can keep some units (a label line holds exactly one)
            con.executemany(
                "UPDATE basket_lines SET qty = ?, line_price_minor = ? "
                "WHERE basket_id = ? AND line_no = ?",
                [(ln["qty"], ln["qty"] * ln["unit_price_minor"], row[0], ln["line_no"])
                 for ln in kept])
            con.execute("UPDATE baskets SET updated_at = ? WHERE basket_id = ?",
                        (self._clock(), row[0]))
            return self._summary(self._basket_row(row[0], want_open=False))

    def cancel(self, basket_id: str) -> dict:
        """Cancel an open basket (the handheld left the floor, the shopper gave up);
        its lines are kept for the record. Returns the basket. Raises UNKNOWN_BASKET,
        BASKET_CLOSED."""
        with self._mutation("cancel the basket") as con:
            row = self._basket_row(basket_id, want_open=True)
            con.execute("UPDATE baskets SET status = 'cancelled', updated_at = ? "
                        "WHERE basket_id = ?", (self._clock(), row[0]))
            return self._summary(self._basket_row(row[0], want_open=False))

    def get(self, basket_id: str) -> dict:
        """The basket: ``{basket_id, device, member, status, order_no, opened_at,
        updated_at, lines, n_items, total_minor, currency}``, each line ``{line_no,
        code, gtin, name, qty, unit_price_minor, line_price_minor, weight_g, count,
        flags}`` (``unit_price_minor`` is the catalogue price at the scan: per kg for
        a variable-measure item). Raises UNKNOWN_BASKET."""
        with self._reading("read the basket"):
            return self._summary(self._basket_row(basket_id, want_open=False))

    def submit(self, basket_id: str, signer: orderqr.Signer) -> dict:
        """Close an open basket and create its order; returns ``{order_no, basket_id,
        status, created_at, total_minor, currency, n_items, lines_digest, qr,
        lines}``.

        The order number is ``{DEVICE}-{YYMMDD}-{NNNN}`` (see ``docs/store/baskets.md``);
        ``qr`` is the signed order QR text (:func:`lanecore.core.store.orderqr.make_qr`).
        Raises UNKNOWN_BASKET, BASKET_CLOSED (already submitted or cancelled: a
        retried request is the caller's idempotency layer's to answer),
        EMPTY_BASKET, BAD_REQUEST (no signer)."""
        if not callable(getattr(signer, "sign", None)):
            raise BasketError("submit needs a signer (lanecore.core.signing.Signer)",
                              code="BAD_REQUEST")
        with self._mutation("submit the basket") as con:
            row = self._basket_row(basket_id, want_open=True)
            lines = self._lines(row[0])
            if not lines:
                raise BasketError(f"basket {row[0]} is empty", code="EMPTY_BASKET")
            public = [self._public_line(ln) for ln in lines]
            n_items = sum(ln["qty"] for ln in lines)
            total = sum(ln["line_price_minor"] for ln in lines)
            digest = lines_digest(public)
            now = self._clock()
            order_no = self._next_order_no(row[1], now)
            qr = orderqr.make_qr(signer, store=self.store, order_no=order_no,
                                 total_minor=total, currency=self.currency,
                                 n_items=n_items, lines_digest=digest, issued_at=now)
            con.execute(
                "INSERT INTO orders (order_no, basket_id, device, member, created_at, "
                "updated_at, total_minor, currency, n_items, lines_digest, status, qr) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitted', ?)",
                (order_no, row[0], row[1], row[2], now, now, total, self.currency,
                 n_items, digest, qr))
            con.execute("UPDATE baskets SET status = 'submitted', updated_at = ? "
                        "WHERE basket_id = ?", (now, row[0]))
            return {"order_no": order_no, "basket_id": row[0], "status": "submitted",
                    "created_at": now, "total_minor": total, "currency": self.currency,
                    "n_items": n_items, "lines_digest": digest, "qr": qr,
                    "lines": public}

    def _next_order_no(self, device: str, now: float) -> str:
        prefix = _order_prefix(device)
        day = _dt.datetime.fromtimestamp(now).strftime("%y%m%d")
        while True:
            n = self.con.execute(
                "INSERT INTO order_counters (prefix, day, last_no) VALUES (?, ?, 1) "
                "ON CONFLICT (prefix, day) DO UPDATE SET last_no = last_no + 1 "
                "RETURNING last_no", (prefix, day)).fetchone()[0]
            order_no = order_number(prefix, day, n)
            # The counter alone makes numbers unique; this guards a counter row
            # deleted by hand from handing out a number twice.
            if self.con.execute("SELECT 1 FROM orders WHERE order_no = ?",
                                (order_no,)).fetchone() is None:
                return order_no

    def _order_row(self, order_no) -> dict:
        if not isinstance(order_no, str):
            raise BasketError(f"order_no must be a string, not {type(order_no).__name__}",
                              code="BAD_REQUEST")
        cols = ("order_no", "basket_id", "device", "member", "status", "created_at",
                "updated_at", "total_minor", "currency", "n_items", "lines_digest", "qr")
        row = self.con.execute(f"SELECT {', '.join(cols)} FROM orders WHERE order_no = ?",
                               (order_no.strip().upper(),)).fetchone()
        if row is None:
            raise BasketError(f"no order {order_no[:40]!r}", code="UNKNOWN_ORDER")
        return dict(zip(cols, row))

    def order(self, order_no: str) -> dict:
        """The order: ``{order_no, basket_id, device, member, status, created_at,
        updated_at, total_minor, currency, n_items, lines_digest, qr, lines}`` (lines
        as in :meth:`get`). ``order_no`` is matched ignoring case and surrounding
        spaces (it may have been typed). Raises UNKNOWN_ORDER, BAD_REQUEST."""
        with self._reading("read the order"):
            out = self._order_row(order_no)
            out["lines"] = [self._public_line(ln) for ln in self._lines(out["basket_id"])]
            return out

    def order_lines_for_verify(self, order_no: str, *,
                               label_sd_g: float = LABEL_WEIGHT_SD_G) -> dict:
        """The order as :func:`lanecore.core.weigh.verify.verify` takes it (ORDER.json):
        ``{"lines": [{"gtin", "qty", "unit_weight_g"?, "weight_sd_g"?}]}``, one
        entry per basket line, ``gtin`` the catalogue GTIN (14 digits).

        * A label that carried a weight: qty 1, ``unit_weight_g`` = that weight.
        * A label that carried a count: qty = the count (the catalogue's unit weight).
        * A price-only label of a variable-measure item: qty 1, ``unit_weight_g``
          derived as price ÷ price per kg (the catalogue's at the scan) and a
          ``weight_sd_g`` that adds the price's rounding (±0.5 minor unit) to
          ``label_sd_g`` (omitted when the price per kg is 0: verify then refuses
          with NO_WEIGHT_DATA rather than guessing).
        * Anything else: the line's qty; verify takes the weight from the catalogue.

        It does not check the order's status: an exit lane asks :meth:`order` whether
        it is paid. Raises UNKNOWN_ORDER, BAD_REQUEST.
        """
        with self._reading("read the order"):
            row = self._order_row(order_no)
            lines = self._lines(row["basket_id"])
        out = []
        for ln in lines:
            entry = {"gtin": ln["gtin"], "qty": ln["qty"]}
            if ln["weight_g"] is not None:
                entry["qty"] = 1
                entry["unit_weight_g"] = ln["weight_g"]
            elif ln["count"] is not None:
                entry["qty"] = ln["qty"] * ln["count"]
            elif ln["label"] and ln["flags"] & FLAG_VARIABLE_MEASURE \
                    and ln["unit_price_minor"] > 0:
                per_kg = ln["unit_price_minor"]
                entry["qty"] = 1
                entry["unit_weight_g"] = ln["line_price_minor"] * 1000.0 / per_kg
                half_step_g = 500.0 / per_kg  # ±0.5 minor unit of the printed price
                entry["weight_sd_g"] = math.sqrt(label_sd_g ** 2 + half_step_g ** 2 / 3)
            out.append(entry)
        return {"lines": out}

    def set_order_status(self, order_no: str, status: str) -> dict:
        """Move an order along: submitted → paid → exited; submitted or paid →
        cancelled. Returns the order (as :meth:`order`). Raises UNKNOWN_ORDER,
        BAD_STATUS (an unknown status, or a move not listed, the same status again
        included)."""
        if status not in ORDER_STATUSES:
            raise BasketError(f"unknown order status {status!r:.40}; one of "
                              f"{', '.join(ORDER_STATUSES)}", code="BAD_STATUS")
        with self._mutation("change the order status") as con:
            row = self._order_row(order_no)
            if status not in ORDER_TRANSITIONS[row["status"]]:
                raise BasketError(f"order {row['order_no']} is {row['status']}; it "
                                  f"cannot become {status}", code="BAD_STATUS")
            con.execute("UPDATE orders SET status = ?, updated_at = ? WHERE order_no = ?",
                        (status, self._clock(), row["order_no"]))
            out = self._order_row(row["order_no"])
            out["lines"] = [self._public_line(ln) for ln in self._lines(out["basket_id"])]
            return out
