"""Cash with change: a drawer's inventory of notes and coins, optimal change from it,
and the drawer's counts kept in the store database.

Every amount is an integer number of minor units (pence, cent, fen). A *denomination*
is the face value of one note or coin in minor units (``500`` is a £5 note in GBP); a
*piece* is one note or coin. Counts are maps ``{denomination: pieces}``.

**Change.** :func:`make_change` puts the shopper's tendered pieces into the drawer
first (they may be handed straight back), then pays ``tendered − due`` from what the
drawer holds with the **fewest pieces**. Greedy (largest piece first) is not optimal
for a drawer that has run short of some pieces — drawer ``{50: 1, 20: 3}``, change 60:
greedy takes the 50 and is stuck with 10 left, the right answer is 20+20+20 — so the
change is found by a bounded coin-change dynamic programme (see :func:`_min_pieces`).

**Tie-break.** Among all ways to pay the change with the fewest pieces, the one that
uses the most of the largest denomination is chosen, then the most of the next
largest, and so on (the lexicographically greatest count vector, denominations
ordered from largest to smallest). It keeps small coins in the drawer for later
change and makes the answer depend on nothing but the inventory.

**Cost.** For change ``A`` minor units and ``n`` usable denominations with counts
``c_j`` the programme takes ``O(A · Σ log₂(c_j + 1))`` vectorised steps and
``O(A · n)`` memory (``n + 1`` tables of ``A + 1`` int32): £500 of change over 15
denominations is about 50,000 × 15 cells, a few milliseconds. Change above
:data:`MAX_CHANGE_MINOR` is refused (``CHANGE_TOO_LARGE``) so a bad request cannot
make the programme allocate without bound.

**Errors** are :class:`CashError` with a stable ``code`` and a ``details`` map:
``BAD_AMOUNT``, ``BAD_DENOMINATION``, ``INSUFFICIENT_TENDER``, ``NO_EXACT_CHANGE``
(details say how much is short), ``CHANGE_TOO_LARGE``, ``DRAWER_SHORT`` (a pickup
asks for pieces the drawer does not hold), ``REF_CONFLICT`` (a reference reused with
other terms), ``BAD_CURRENCY``, ``DB_ERROR``/``DB_BUSY``.

**Persistence** is one small class, :class:`Drawer`, over a given ``sqlite3``
connection (the store database, opened as :func:`lanecore.core.scan.catalog.connect`
opens it): table ``drawer`` holds the counts, table ``drawer_moves`` one row per
payment, float-in or pickup, keyed by the caller's reference so a retried request is
answered from the record instead of moving cash twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError

__all__ = [
    "DENOMINATIONS", "EXPONENTS", "MAX_CHANGE_MINOR", "CashError", "Change", "Drawer",
    "denominations", "make_change", "total_minor",
]

#: Notes and coins in circulation per ISO 4217 currency, in minor units, ascending.
#: GBP 1p … £50; EUR 1 cent … €500 (no longer issued, still legal tender: 15
#: denominations); CNY 1 fen … 100 yuan (fen and 2-jiao pieces are rare but legal);
#: USD 1 cent … $100 (the 50-cent piece, $1 coin and $2 note included).
DENOMINATIONS: dict[str, tuple[int, ...]] = {
    "GBP": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    "EUR": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000),
    "CNY": (1, 2, 5, 10, 20, 50, 100, 500, 1000, 2000, 5000, 10000),
    "USD": (1, 5, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
}
#: Digits of the minor unit, for showing amounts to people.
EXPONENTS: dict[str, int] = {"GBP": 2, "EUR": 2, "CNY": 2, "USD": 2}

#: Largest change the programme will compute (minor units): 5,000.00 in a currency
#: with two decimals, far above any till's float, and about 36 MB of tables at worst.
MAX_CHANGE_MINOR = 500_000

# Larger than any piece count the programme can produce (≤ MAX_CHANGE_MINOR), small
# enough that INF + count never overflows int32.
_INF = 1 << 30


class CashError(LanecoreError):
    """A cash refusal with a stable ``code`` and machine-readable ``details``."""

    code = "CASH_ERROR"


def denominations(currency: str) -> tuple[int, ...]:
    """The denominations of ``currency`` (minor units, ascending); ``BAD_CURRENCY``
    for a currency without a table."""
    try:
        return DENOMINATIONS[currency]
    except (KeyError, TypeError):
        raise CashError(f"no cash denominations for currency {currency!r}; known: "
                        f"{', '.join(sorted(DENOMINATIONS))}", code="BAD_CURRENCY") from None


def total_minor(pieces: Mapping[int, int]) -> int:
    """Value of a ``{denomination: count}`` map in minor units."""
    return sum(d * c for d, c in pieces.items())


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_pieces(pieces, what: str, allowed: tuple[int, ...] | None) -> dict[int, int]:
    """Validate a ``{denomination: count}`` map; drop zero counts; plain ints out."""
    if not isinstance(pieces, Mapping):
        raise CashError(f"{what} must be a map of denomination to count",
                        code="BAD_AMOUNT", details={"field": what})
    out: dict[int, int] = {}
    for d, c in pieces.items():
        if not _is_int(d) or d <= 0 or (allowed is not None and d not in allowed):
            raise CashError(f"{what}: {d!r} is not a denomination"
                            + (f" of this currency {allowed}" if allowed else ""),
                            code="BAD_DENOMINATION", details={"field": what, "denomination": d})
        if not _is_int(c) or c < 0:
            raise CashError(f"{what}: count {c!r} of {d} must be an integer ≥ 0",
                            code="BAD_AMOUNT", details={"field": what, "denomination": int(d)})
        if c:
            out[int(d)] = out.get(int(d), 0) + int(c)
    return out


def _check_amount(value, what: str) -> int:
    if not _is_int(value) or value <= 0:
        raise CashError(f"{what} must be a positive integer of minor units, got {value!r}",
                        code="BAD_AMOUNT", details={"field": what})
    return int(value)


def _sorted_desc(pieces: Mapping[int, int]) -> dict[int, int]:
    return {d: pieces[d] for d in sorted(pieces, reverse=True) if pieces[d]}


@dataclass(frozen=True)
class Change:
    """The outcome of a cash payment. Money in minor units.

    ``pieces`` is the change handed to the shopper, largest denomination first;
    ``drawer_after`` the drawer's counts once the tendered pieces are in and the change
    is out."""

    due_minor: int
    tendered_minor: int
    change_minor: int
    pieces: dict[int, int]
    drawer_after: dict[int, int] = field(repr=False)

    @property
    def piece_count(self) -> int:
        """Notes and coins handed back."""
        return sum(self.pieces.values())

    def to_dict(self) -> dict:
        """JSON/MessagePack-friendly: denominations become decimal strings (map keys
        on the wire are strings)."""
        return {"due_minor": self.due_minor, "tendered_minor": self.tendered_minor,
                "change_minor": self.change_minor, "piece_count": self.piece_count,
                "pieces": {str(d): c for d, c in self.pieces.items()},
                "drawer_after": {str(d): c for d, c in self.drawer_after.items()}}


# --------------------------------------------------------------------------------------
# The programme
# --------------------------------------------------------------------------------------

def _shift(x: np.ndarray, m: int) -> np.ndarray:
    """``y[a] = x[a − m]``, INF where ``a < m``."""
    y = np.full_like(x, _INF)
    if m < len(x):
        y[m:] = x[:len(x) - m]
    return y


def _add_denomination(prev: np.ndarray, d: int, c: int) -> np.ndarray:
    """One layer of the bounded programme: ``new[a] = min_{0≤k≤c} prev[a − k·d] + k``.

    With ``q = a // d`` and ``s = prev − q`` this is ``q + min(s[a], s[a−d], …,
    s[a−c·d])``, a sliding minimum of ``c + 1`` terms along each residue class mod
    ``d``; it is built by doubling (windows of 1, 2, 4, … terms, then two overlapping
    windows for the rest), so a layer costs ``O(A · log₂(c + 1))`` instead of
    ``O(A · c)``."""
    q = np.arange(len(prev), dtype=np.int32) // d
    s = prev - q                      # INF − q stays far above any real count
    w = c + 1
    m, p = s, 1
    while 2 * p <= w:
        m = np.minimum(m, _shift(m, p * d))
        p *= 2
    if p < w:
        m = np.minimum(m, _shift(m, (w - p) * d))
    new = m + q
    new[new >= _INF // 2] = _INF
    return new


def _min_pieces(amount: int, stock: Mapping[int, int]) -> dict[int, int] | int:
    """Fewest pieces paying exactly ``amount`` from ``stock`` (tie-break: most of the
    largest denomination first). Returns the pieces, or — when no exact payment
    exists — the largest amount below ``amount`` that can be paid (an int)."""
    usable = sorted((d, min(c, amount // d)) for d, c in stock.items()
                    if c > 0 and d <= amount)
    layer = np.full(amount + 1, _INF, dtype=np.int32)
    layer[0] = 0
    # layers[j][a]: fewest pieces paying a with the j smallest usable denominations.
    layers = [layer]
    for d, c in usable:
        layers.append(_add_denomination(layers[-1], d, c))
    if layers[-1][amount] >= _INF:
        reachable = np.flatnonzero(layers[-1] < _INF)
        return int(reachable[-1])
    # Walk back from the largest denomination: take as many of it as still leaves the
    # rest payable optimally with the smaller ones — that is the tie-break.
    out: dict[int, int] = {}
    rest = amount
    for j in range(len(usable), 0, -1):
        d, c = usable[j - 1]
        target = layers[j][rest]
        ks = np.arange(min(c, rest // d), -1, -1)
        vals = layers[j - 1][rest - ks * d] + ks
        k = int(ks[np.argmax(vals == target)])
        if k:
            out[d] = k
            rest -= k * d
    assert rest == 0
    return out


def make_change(due_minor: int, tendered: Mapping[int, int], drawer: Mapping[int, int],
                *, currency: str | None = None) -> Change:
    """Pay ``due_minor`` with the ``tendered`` pieces and give optimal change.

    ``tendered`` and ``drawer`` map denominations (minor units) to counts. The
    tendered pieces go into the drawer first; the change ``tendered − due`` is then
    paid from the drawer with the fewest pieces (ties: most of the largest
    denomination). With ``currency`` every denomination must be in
    :data:`DENOMINATIONS` for it; without, any positive integer is a denomination.

    Raises :class:`CashError`: ``BAD_AMOUNT`` (due not a positive integer, a count not
    an integer ≥ 0), ``BAD_DENOMINATION``, ``BAD_CURRENCY``, ``INSUFFICIENT_TENDER``
    (details ``due_minor``, ``tendered_minor``, ``short_minor``), ``CHANGE_TOO_LARGE``,
    ``NO_EXACT_CHANGE`` (details ``change_minor``, ``closest_minor`` — the most the
    drawer can pay without exceeding the change — and ``short_minor``, the gap). Pure:
    the maps passed in are not changed."""
    allowed = denominations(currency) if currency is not None else None
    due = _check_amount(due_minor, "due_minor")
    given = _check_pieces(tendered, "tendered", allowed)
    held = _check_pieces(drawer, "drawer", allowed)
    paid = total_minor(given)
    if paid < due:
        raise CashError(f"tendered {paid} is less than the {due} due",
                        code="INSUFFICIENT_TENDER",
                        details={"due_minor": due, "tendered_minor": paid,
                                 "short_minor": due - paid})
    change = paid - due
    stock = dict(held)
    for d, c in given.items():
        stock[d] = stock.get(d, 0) + c
    if change == 0:
        return Change(due, paid, 0, {}, _sorted_desc(stock))
    if change > MAX_CHANGE_MINOR:
        raise CashError(f"change of {change} is above the {MAX_CHANGE_MINOR} this till "
                        "computes", code="CHANGE_TOO_LARGE",
                        details={"change_minor": change, "max_minor": MAX_CHANGE_MINOR})
    found = _min_pieces(change, stock)
    if isinstance(found, int):
        raise CashError(f"the drawer cannot make exact change of {change}: the closest "
                        f"it can pay is {found}, {change - found} short",
                        code="NO_EXACT_CHANGE",
                        details={"change_minor": change, "closest_minor": found,
                                 "short_minor": change - found})
    for d, k in found.items():
        stock[d] -= k
    return Change(due, paid, change, _sorted_desc(found), _sorted_desc(stock))


# --------------------------------------------------------------------------------------
# The drawer in the store database
# --------------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS drawer (
        drawer_id   TEXT NOT NULL,
        currency    TEXT NOT NULL,
        denom_minor INTEGER NOT NULL CHECK (denom_minor > 0),
        count       INTEGER NOT NULL CHECK (count >= 0),
        PRIMARY KEY (drawer_id, denom_minor))""",
    """CREATE TABLE IF NOT EXISTS drawer_moves (
        ref       TEXT NOT NULL,
        drawer_id TEXT NOT NULL,
        kind      TEXT NOT NULL CHECK (kind IN ('pay', 'float_in', 'float_out')),
        terms     TEXT NOT NULL,
        result    TEXT NOT NULL,
        PRIMARY KEY (drawer_id, ref))""",
)


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, "drawer_txn", _db_error, "drawer")


def _db_error(exc: sqlite3.Error, what: str) -> CashError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return CashError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


class Drawer:
    """One till's cash drawer, its counts in table ``drawer`` of ``con``.

    Every change (:meth:`pay_cash`, :meth:`float_in`, :meth:`float_out`) is one
    transaction: counts and the move record are written together or not at all. A
    ``ref`` (the merchant reference of the payment, or the attendant's slip number)
    makes a change idempotent: repeating it with the same terms returns the first
    result and moves nothing; other terms under the same ``ref`` are ``REF_CONFLICT``.
    """

    def __init__(self, con: sqlite3.Connection, drawer_id: str = "main",
                 currency: str = "CNY") -> None:
        self.con = con
        self.drawer_id = drawer_id
        self.currency = currency
        self.allowed = denominations(currency)
        try:
            with _Txn(con):
                for stmt in _SCHEMA:
                    con.execute(stmt)
                row = con.execute("SELECT DISTINCT currency FROM drawer WHERE drawer_id = ?",
                                  (drawer_id,)).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot open the drawer tables") from exc
        if row and {r[0] for r in row} != {currency}:
            raise CashError(f"drawer {drawer_id!r} holds {row[0][0]}, not {currency}",
                            code="BAD_CURRENCY")

    # ------------------------------------------------------------------------------
    def counts(self) -> dict[int, int]:
        """``{denomination: count}`` now held, largest denomination first, zero counts
        left out."""
        try:
            cur = self.con.execute("SELECT denom_minor, count FROM drawer WHERE drawer_id = ? "
                                   "AND count > 0 ORDER BY denom_minor DESC",
                                   (self.drawer_id,))
            return dict(cur.fetchall())
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the drawer") from exc

    def total_minor(self) -> int:
        """Value of the drawer in minor units."""
        return total_minor(self.counts())

    # ------------------------------------------------------------------------------
    def _replay(self, ref: str | None, kind: str, terms: dict) -> dict | None:
        if ref is None:
            return None
        row = self.con.execute("SELECT kind, terms, result FROM drawer_moves "
                               "WHERE drawer_id = ? AND ref = ?",
                               (self.drawer_id, ref)).fetchone()
        if row is None:
            return None
        if row[0] != kind or json.loads(row[1]) != terms:
            raise CashError(f"reference {ref!r} was used for another drawer move",
                            code="REF_CONFLICT", details={"ref": ref})
        return json.loads(row[2])

    def _write(self, counts: dict[int, int]) -> None:
        self.con.execute("DELETE FROM drawer WHERE drawer_id = ?", (self.drawer_id,))
        self.con.executemany(
            "INSERT INTO drawer (drawer_id, currency, denom_minor, count) VALUES (?, ?, ?, ?)",
            [(self.drawer_id, self.currency, d, c) for d, c in counts.items() if c])

    def _record(self, ref: str | None, kind: str, terms: dict, result: dict) -> None:
        if ref is not None:
            self.con.execute("INSERT INTO drawer_moves (ref, drawer_id, kind, terms, result) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (ref, self.drawer_id, kind, json.dumps(terms),
                              json.dumps(result)))

    def pay_cash(self, due_minor: int, tendered: Mapping[int, int], *,
                 ref: str | None = None) -> Change:
        """Take a cash payment: the tendered pieces in, the optimal change out, in one
        transaction. Raises what :func:`make_change` raises, with the drawer unchanged."""
        given = _check_pieces(tendered, "tendered", self.allowed)
        terms = {"due_minor": int(due_minor) if _is_int(due_minor) else repr(due_minor),
                 "tendered": {str(d): c for d, c in sorted(given.items())}}
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "pay", terms)
                if seen is not None:
                    return _change_from_dict(seen)
                change = make_change(due_minor, given, self.counts(), currency=self.currency)
                self._write(change.drawer_after)
                self._record(ref, "pay", terms, change.to_dict())
                return change
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot update the drawer") from exc

    def float_in(self, pieces: Mapping[int, int], *, ref: str | None = None) -> dict[int, int]:
        """An attendant adds ``pieces`` (a refill or the opening float). Returns the
        counts after."""
        return self._move("float_in", pieces, ref, +1)

    def float_out(self, pieces: Mapping[int, int], *, ref: str | None = None) -> dict[int, int]:
        """An attendant takes ``pieces`` out (a pickup). ``DRAWER_SHORT`` — and nothing
        moves — when the drawer holds fewer of a denomination than asked for."""
        return self._move("float_out", pieces, ref, -1)

    def _move(self, kind: str, pieces, ref: str | None, sign: int) -> dict[int, int]:
        moved = _check_pieces(pieces, "pieces", self.allowed)
        terms = {"pieces": {str(d): c for d, c in sorted(moved.items())}}
        try:
            with _Txn(self.con):
                seen = self._replay(ref, kind, terms)
                if seen is not None:
                    return {int(d): c for d, c in seen["counts"].items()}
                counts = self.counts()
                for d, c in moved.items():
                    counts[d] = counts.get(d, 0) + sign * c
                short = {d: -c for d, c in counts.items() if c < 0}
                if short:
                    raise CashError(f"the drawer lacks {short} for this pickup",
                                    code="DRAWER_SHORT",
                                    details={"short": {str(d): c for d, c in short.items()}})
                counts = _sorted_desc(counts)
                self._write(counts)
                self._record(ref, kind, terms,
                             {"counts": {str(d): c for d, c in counts.items()}})
                return counts
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot update the drawer") from exc


def _change_from_dict(d: dict) -> Change:
    return Change(d["due_minor"], d["tendered_minor"], d["change_minor"],
                  {int(k): v for k, v in d["pieces"].items()},
                  {int(k): v for k, v in d["drawer_after"].items()})


def paid_records(con: sqlite3.Connection, refs) -> dict[str, int]:
    """The drawer's record of the cash payments among ``refs`` (merchant references):
    ``{ref: due_minor}`` for each one a drawer took. This is a cash channel's "bill"
    for reconciliation (``core/pay/recon.py`` :func:`local_bill`). ``con`` may be
    read-only; a database whose drawer never took cash has no records."""
    refs = list(refs)
    out: dict[str, int] = {}
    try:
        for i in range(0, len(refs), 500):
            part = refs[i:i + 500]
            for ref, result in con.execute(
                    "SELECT ref, result FROM drawer_moves WHERE kind = 'pay' AND ref IN "
                    f"({','.join('?' * len(part))})", part):
                out[ref] = int(json.loads(result)["due_minor"])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    return out
