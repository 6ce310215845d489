"""Membership: members found by card number or bound phone number, member prices per
tier, and loyalty points earned and redeemed at payment, kept in the store database.

A **member** has a ``member_id`` and at least one of a **card number** (8–19 digits)
and a **phone number** (E.164: ``+``, then 8–15 digits, the first not 0). At the
handheld or the kiosk the shopper gives either; :meth:`Members.find` takes the card
number, the phone number or the member id and answers with the member. Spaces and
dashes in a card or phone number are dropped (``+86 138-0013-8000`` is
``+8613800138000``); a phone number must start with ``+`` once they are gone — no
country code is guessed, so a national form such as ``138 0013 8000`` is refused as a
phone number (to :meth:`Members.find` it is a card number, 11 digits). A member id
holds at least one letter, so it can never be read as a card or phone number.

**Member prices.** Table ``member_prices`` maps ``(gtin, tier)`` to the members' price
of one unit; the pricing engine reads them into each line's ``member_price_minor``
(:meth:`Members.member_prices` answers for a whole basket at once).

**Points.** A payment of ``paid_minor`` earns ``paid_minor // earn_per_minor`` points
(:meth:`Members.earn`). A redemption (:meth:`Members.redeem`) turns points into
``points × point_value_minor`` minor units off the basket, at most
``max_redeem_share_bp`` basis points of the basket total. A reversal of a refunded
order (:meth:`Members.reverse_order`) gives the redeemed points back first, then
claws the earned points back — never below zero: what could not be clawed back (the
member spent it meanwhile) is recorded, not owed. Every change of a balance is one
row of ``point_moves`` with the balance after it, so the balance is always the sum
of the member's moves; ``points >= 0`` is a table constraint as well as a check made
before every write.

**Transactions.** Every change is one ``BEGIN IMMEDIATE`` transaction — the write lock
is taken before the balance is read, so two lanes redeeming from one member cannot
both spend the same points — or, when the connection is already inside a
transaction, a savepoint in it (the caller's ``COMMIT`` makes it durable; a refusal
undoes only this module's part).

**Idempotency.** Moves are keyed by a reference made from the order number:
``earn:<order_no>``, ``redeem:<order_no>``, ``return:<order_no>`` and
``clawback:<order_no>`` (the reversal), ``adjust:<ref>``. Sending a move again with
the same terms answers with the first result and moves nothing; other terms under
the same reference are ``REF_CONFLICT``. Purchases are keyed by order number the same
way, an enrolment by a ``member_id`` given by the caller. A refused move is not
recorded: it may be sent again, with other terms too. An order belongs to one member
(``ORDER_CONFLICT`` otherwise), earns once, redeems once, and after its reversal
earns and redeems nothing more (``ORDER_REVERSED``).

**Errors** are :class:`MemberError` with a stable ``code`` and a ``details`` map; all
codes are in :data:`CODES` and in ``docs/promo/members.md``.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lanecore.core.sqlschema import migrate
from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError

__all__ = [
    "CODES", "KINDS", "MAX_AMOUNT_MINOR", "MAX_HISTORY", "MAX_LINES", "MAX_PAGE",
    "MAX_POINTS", "MAX_QUERY",
    "Member", "MemberError", "Members", "PointMove", "Purchase", "Reversal",
    "normalise_card", "normalise_phone",
]

#: Largest amount of money (minor units) any call takes: as the catalogue's prices.
MAX_AMOUNT_MINOR = 10 ** 15 - 1
#: Largest number of points one move may carry.
MAX_POINTS = 10 ** 12
#: Most lines one purchase record may hold.
MAX_LINES = 10_000
#: Most purchases :meth:`Members.history` answers with.
MAX_HISTORY = 1000
#: Longest text :meth:`Members.search` takes, and the most members one page holds.
MAX_QUERY = 32
MAX_PAGE = 200
#: The kinds of move in ``point_moves``.
KINDS = ("earn", "redeem", "return", "clawback", "adjust")
#: Every code a :class:`MemberError` carries.
CODES = (
    "BAD_CONFIG", "BAD_MEMBER", "BAD_TIER", "BAD_GTIN", "BAD_AMOUNT", "BAD_POINTS",
    "BAD_ORDER", "BAD_REF", "BAD_CURRENCY", "BAD_LINES", "BAD_TIME", "BAD_REQUEST",
    "UNKNOWN_MEMBER", "CARD_TAKEN", "PHONE_TAKEN", "INSUFFICIENT_POINTS", "REDEEM_LIMIT",
    "REF_CONFLICT", "ORDER_CONFLICT", "ORDER_REVERSED", "UNKNOWN_ORDER", "DB_ERROR",
    "DB_BUSY",
)

_MEMBER_ID_RE = re.compile(r"[A-Za-z0-9_.@+:-]{1,64}")
_LETTER_RE = re.compile(r"[A-Za-z]")
_CARD_RE = re.compile(r"[0-9]{8,19}")
_PHONE_RE = re.compile(r"\+[1-9][0-9]{7,14}")
_SEPARATORS = str.maketrans("", "", " -")
_TIER_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_ORDER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_GTIN_RE = re.compile(r"[0-9]{8}|[0-9]{12,14}")
_NAME_MAX = 100
_REASON_MAX = 200
_BP = 10_000
_CHUNK = 500          # GTINs per query, well inside SQLite's bound on variables


class MemberError(LanecoreError):
    """A membership refusal with a stable ``code`` and machine-readable ``details``."""

    code = "MEMBER_ERROR"


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One member. ``points`` is the balance; ``created_at`` Unix seconds."""

    member_id: str
    card_no: str | None
    phone: str | None
    name: str
    tier: str
    points: int
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PointMove:
    """One row of ``point_moves``. ``points`` is signed: positive for earn and return,
    negative (or 0) for redeem and clawback, either way for adjust. ``balance_after``
    is the member's balance once it was made; ``terms`` the request it answered and
    what it worked out (see ``docs/promo/members.md``)."""

    ref: str
    member_id: str
    kind: str
    points: int
    balance_after: int
    order_no: str | None
    terms: dict
    at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reversal:
    """The outcome of :meth:`Members.reverse_order`: ``points_returned`` redeemed
    points given back, ``points_clawed_back`` earned points taken back, and
    ``points_not_clawed_back`` earned points the member had already spent."""

    order_no: str
    member_id: str
    points_returned: int
    points_clawed_back: int
    points_not_clawed_back: int
    balance_after: int
    at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Purchase:
    """One row of ``purchases``: a member's order as paid. ``reversed_at`` is set by
    :meth:`Members.reverse_order`."""

    order_no: str
    member_id: str
    total_minor: int
    currency: str
    points_earned: int
    points_redeemed: int
    lines: list
    at: float
    reversed_at: float | None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _fail(code: str, message: str, **details) -> MemberError:
    return MemberError(message, code=code, details=details)


def normalise_card(value) -> str:
    """A member card number as stored: spaces and dashes dropped, then 8–19 ASCII
    digits; else ``BAD_MEMBER``."""
    if isinstance(value, str):
        card = value.strip().translate(_SEPARATORS)
        if _CARD_RE.fullmatch(card):
            return card
    raise _fail("BAD_MEMBER", f"a card number is 8-19 digits, not {value!r:.40}",
                field="card_no")


def normalise_phone(value) -> str:
    """A phone number as stored, E.164: spaces and dashes dropped, then ``+`` and
    8–15 digits, the first not 0; else ``BAD_MEMBER``. No country code is guessed."""
    if isinstance(value, str):
        phone = value.strip().translate(_SEPARATORS)
        if _PHONE_RE.fullmatch(phone):
            return phone
    raise _fail("BAD_MEMBER", f"a phone number is + and 8-15 digits (E.164), not "
                f"{value!r:.40}", field="phone")


def _member_id(value) -> str:
    if isinstance(value, str) and _MEMBER_ID_RE.fullmatch(value) and _LETTER_RE.search(value):
        return value
    raise _fail("BAD_MEMBER", f"a member id is 1-64 of A-Z a-z 0-9 _ . @ + : - with at "
                f"least one letter, not {value!r:.80}", field="member_id")


def _identify(identifier) -> tuple[str, str]:
    """``(column, value)`` to look ``identifier`` up by: member id, phone or card."""
    if isinstance(identifier, str):
        text = identifier.strip()
        if _MEMBER_ID_RE.fullmatch(text) and _LETTER_RE.search(text):
            return "member_id", text
        compact = text.translate(_SEPARATORS)
        if compact.startswith("+"):
            return "phone", normalise_phone(compact)
        if _CARD_RE.fullmatch(compact):
            return "card_no", compact
    raise _fail("BAD_MEMBER", f"{identifier!r:.60} is no card number, phone number or "
                "member id", field="identifier")


def _tier(value) -> str:
    if isinstance(value, str) and _TIER_RE.fullmatch(value):
        return value
    raise _fail("BAD_TIER", f"a tier is 1-32 of A-Z a-z 0-9 _ . -, not {value!r:.40}",
                field="tier")


def _name(value) -> str:
    if isinstance(value, str) and len(value) <= _NAME_MAX and value.isprintable():
        return value.strip()
    raise _fail("BAD_MEMBER", f"a name is at most {_NAME_MAX} printable characters",
                field="name")


def _gtin14(value) -> str:
    if isinstance(value, str):
        g = value.strip()
        if _GTIN_RE.fullmatch(g):
            return g.zfill(14)
    elif _is_int(value) and 0 <= value < 10 ** 14:
        return "%014d" % value
    raise _fail("BAD_GTIN", f"{value!r:.40} is not a GTIN (8, 12, 13 or 14 digits)",
                field="gtin")


def _amount(value, what: str) -> int:
    if _is_int(value) and 0 <= value <= MAX_AMOUNT_MINOR:
        return int(value)
    raise _fail("BAD_AMOUNT", f"{what} must be an integer of minor units, 0 to "
                f"{MAX_AMOUNT_MINOR}, not {value!r:.40}", field=what)


def _points(value, what: str = "points", *, low: int = 1, signed: bool = False) -> int:
    ok = _is_int(value) and (0 < abs(value) <= MAX_POINTS if signed
                             else low <= value <= MAX_POINTS)
    if ok:
        return int(value)
    want = "a non-zero integer" if signed else f"an integer of at least {low}"
    raise _fail("BAD_POINTS", f"{what} must be {want}, at most {MAX_POINTS} in size, "
                f"not {value!r:.40}", field=what)


def _order_no(value) -> str:
    if isinstance(value, str) and _ORDER_RE.fullmatch(value):
        return value
    raise _fail("BAD_ORDER", f"an order number is 1-100 of A-Z a-z 0-9 _ . : -, not "
                f"{value!r:.80}", field="order_no")


def _ref(value) -> str:
    if isinstance(value, str) and _ORDER_RE.fullmatch(value):
        return value
    raise _fail("BAD_REF", f"a ref is 1-100 of A-Z a-z 0-9 _ . : -, not {value!r:.80}",
                field="ref")


def _now(value) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        t = float(value)
        if math.isfinite(t) and t >= 0:
            return t
    raise _fail("BAD_TIME", f"now must be Unix seconds (a finite number >= 0), not "
                f"{value!r:.40}", field="now")


def _lines(value) -> list:
    """The lines as they will read back: a JSON round trip of a list of objects."""
    if isinstance(value, (list, tuple)) and len(value) <= MAX_LINES \
            and all(isinstance(ln, dict) for ln in value):
        try:
            return json.loads(json.dumps(list(value), allow_nan=False))
        except (TypeError, ValueError):
            pass
    raise _fail("BAD_LINES", f"lines must be a list of at most {MAX_LINES} JSON objects "
                "(string keys; strings, numbers, booleans, null, lists, objects)",
                field="lines")


# --------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS members (
        member_id  TEXT PRIMARY KEY,
        card_no    TEXT UNIQUE,
        phone      TEXT UNIQUE,
        name       TEXT NOT NULL,
        tier       TEXT NOT NULL,
        points     INTEGER NOT NULL CHECK (points >= 0),
        created_at REAL NOT NULL,
        CHECK (card_no IS NOT NULL OR phone IS NOT NULL))""",
    """CREATE TABLE IF NOT EXISTS member_prices (
        gtin        TEXT NOT NULL,
        tier        TEXT NOT NULL,
        price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
        PRIMARY KEY (gtin, tier)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS point_moves (
        ref           TEXT PRIMARY KEY,
        member_id     TEXT NOT NULL,
        kind          TEXT NOT NULL
                      CHECK (kind IN ('earn', 'redeem', 'return', 'clawback', 'adjust')),
        points        INTEGER NOT NULL,
        balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
        order_no      TEXT,
        terms         TEXT NOT NULL,
        at            REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS point_moves_member ON point_moves (member_id)",
    "CREATE INDEX IF NOT EXISTS point_moves_order ON point_moves (order_no) "
    "WHERE order_no IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS purchases (
        order_no        TEXT PRIMARY KEY,
        member_id       TEXT NOT NULL,
        total_minor     INTEGER NOT NULL CHECK (total_minor >= 0),
        currency        TEXT NOT NULL,
        points_earned   INTEGER NOT NULL CHECK (points_earned >= 0),
        points_redeemed INTEGER NOT NULL CHECK (points_redeemed >= 0),
        lines           TEXT NOT NULL,
        at              REAL NOT NULL,
        reversed_at     REAL)""",
    "CREATE INDEX IF NOT EXISTS purchases_member ON purchases (member_id, at)",
)
#: The members' tables' versions (``core/sqlschema.py``): version 1 is ``_SCHEMA``.
MIGRATIONS = (_SCHEMA,)

_MEMBER_COLS = "member_id, card_no, phone, name, tier, points, created_at"
_MOVE_COLS = "ref, member_id, kind, points, balance_after, order_no, terms, at"
_PURCHASE_COLS = ("order_no, member_id, total_minor, currency, points_earned, "
                  "points_redeemed, lines, at, reversed_at")


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, "members_txn", _db_error, "members")


def _db_error(exc: sqlite3.Error, what: str) -> MemberError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return MemberError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


def _move(row: tuple) -> PointMove:
    return PointMove(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]),
                     row[7])


def _purchase(row: tuple) -> Purchase:
    return Purchase(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]),
                    row[7], row[8])


def _reversal(move: PointMove) -> Reversal:
    t = move.terms
    return Reversal(move.order_no, move.member_id, t["returned"], t["clawed_back"],
                    t["not_clawed_back"], move.balance_after, move.at)


class Members:
    """Members, member prices and points on tables ``members``, ``member_prices``,
    ``point_moves`` and ``purchases`` of ``con`` (an autocommit connection, as
    :func:`lanecore.core.scan.catalog.connect` opens it; the tables are created if absent).

    ``earn_per_minor``: minor units paid per point earned (100: one point per yuan).
    ``point_value_minor``: what one point is worth off a basket, in minor units.
    ``max_redeem_share_bp``: the most of a basket's total points may pay, in basis
    points (5000: half). ``BAD_CONFIG`` for values out of range."""

    def __init__(self, con: sqlite3.Connection, *, earn_per_minor: int = 100,
                 point_value_minor: int = 1, max_redeem_share_bp: int = 5000) -> None:
        for name, value, low, high in (("earn_per_minor", earn_per_minor, 1, MAX_AMOUNT_MINOR),
                                       ("point_value_minor", point_value_minor, 1,
                                        MAX_AMOUNT_MINOR),
                                       ("max_redeem_share_bp", max_redeem_share_bp, 0, _BP)):
            if not (_is_int(value) and low <= value <= high):
                raise _fail("BAD_CONFIG", f"{name} must be an integer {low}..{high}, not "
                            f"{value!r:.40}", field=name)
        self.con = con
        self.earn_per_minor = int(earn_per_minor)
        self.point_value_minor = int(point_value_minor)
        self.max_redeem_share_bp = int(max_redeem_share_bp)
        try:
            with _Txn(con):
                migrate(con, "members", MIGRATIONS)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot open the members tables") from exc

    # ------------------------------------------------------------------------------
    # Members
    # ------------------------------------------------------------------------------
    def _row(self, column: str, value: str, *, must: bool = True) -> tuple | None:
        row = self.con.execute(f"SELECT {_MEMBER_COLS} FROM members WHERE {column} = ?",
                               (value,)).fetchone()
        if row is None and must:
            raise _fail("UNKNOWN_MEMBER", f"no member with {column} {value}",
                        **{column: value})
        return row

    def _member(self, member_id: str) -> Member:
        return Member(*self._row("member_id", member_id))

    def enrol(self, *, card_no: str | None = None, phone: str | None = None,
              name: str = "", tier: str = "basic", member_id: str | None = None,
              now: float) -> Member:
        """Enrol a member with a card number, a phone number or both, 0 points.

        ``member_id`` (1–64 of ``A-Z a-z 0-9 _ . @ + : -``, at least one letter) is
        made up (``M`` and 16 hex digits) when not given. Given, it makes the enrolment
        safe to repeat: the same ``member_id`` with the same card, phone, name and tier
        answers with the member as it is now; with other terms it is ``REF_CONFLICT``.
        Raises ``BAD_MEMBER`` (neither number, a malformed one, a bad id or name),
        ``BAD_TIER``, ``BAD_TIME``, ``CARD_TAKEN``, ``PHONE_TAKEN``."""
        if card_no is None and phone is None:
            raise _fail("BAD_MEMBER", "a member needs a card number or a phone number",
                        field="card_no")
        card = None if card_no is None else normalise_card(card_no)
        tel = None if phone is None else normalise_phone(phone)
        name, tier, at = _name(name), _tier(tier), _now(now)
        given = None if member_id is None else _member_id(member_id)
        try:
            with _Txn(self.con):
                if given is not None:
                    row = self._row("member_id", given, must=False)
                    if row is not None:
                        if (row[1], row[2], row[3], row[4]) != (card, tel, name, tier):
                            raise _fail("REF_CONFLICT", f"member {given} was enrolled with "
                                        "other terms", ref=given)
                        return Member(*row)
                self._check_free(card, tel, None)
                mid = given
                while mid is None:
                    mid = "M" + secrets.token_hex(8).upper()
                    if self._row("member_id", mid, must=False) is not None:
                        mid = None
                self.con.execute(f"INSERT INTO members ({_MEMBER_COLS}) VALUES "
                                 "(?, ?, ?, ?, ?, 0, ?)", (mid, card, tel, name, tier, at))
                return self._member(mid)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot enrol the member") from exc

    def _check_free(self, card: str | None, phone: str | None, member_id: str | None
                    ) -> None:
        for column, value, code in (("card_no", card, "CARD_TAKEN"),
                                    ("phone", phone, "PHONE_TAKEN")):
            if value is None:
                continue
            row = self._row(column, value, must=False)
            if row is not None and row[0] != member_id:
                what = "card number" if column == "card_no" else "phone number"
                raise _fail(code, f"{what} {value} belongs to another member",
                            **{column: value})

    def bind_phone(self, member_id: str, phone: str) -> Member:
        """Bind ``phone`` to the member, replacing the phone bound before (which is
        then free for others). Binding the member's own phone again changes nothing.
        Raises ``BAD_MEMBER``, ``UNKNOWN_MEMBER``, ``PHONE_TAKEN``."""
        mid, tel = _member_id(member_id), normalise_phone(phone)
        try:
            with _Txn(self.con):
                self._row("member_id", mid)
                self._check_free(None, tel, mid)
                self.con.execute("UPDATE members SET phone = ? WHERE member_id = ?",
                                 (tel, mid))
                return self._member(mid)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot bind the phone number") from exc

    def set_tier(self, member_id: str, tier: str) -> Member:
        """Move the member to another tier (member prices follow the tier). Raises
        ``BAD_MEMBER``, ``BAD_TIER``, ``UNKNOWN_MEMBER``."""
        mid, tier = _member_id(member_id), _tier(tier)
        try:
            with _Txn(self.con):
                self._row("member_id", mid)
                self.con.execute("UPDATE members SET tier = ? WHERE member_id = ?",
                                 (tier, mid))
                return self._member(mid)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot change the tier") from exc

    def search(self, query: str | None = None, *, tier: str | None = None,
               limit: int = 50, offset: int = 0) -> tuple[list[Member], int]:
        """``(members, total)``: the members whose card number, phone number, name or
        member id starts with ``query`` (at most :data:`MAX_QUERY` characters; none or
        blank: every member), in ``tier`` if given, newest first, ``limit`` (1–
        :data:`MAX_PAGE`) of them from ``offset``; ``total`` counts them all. Names
        match without regard to ASCII case; spaces and dashes in a query of card or
        phone digits are dropped, and digits also match a phone number after its
        ``+``. Raises ``BAD_REQUEST`` (``details.field``), ``BAD_TIER``."""
        text = "" if query is None else query
        if not (isinstance(text, str) and len(text) <= MAX_QUERY and
                (not text or text.isprintable())):
            raise _fail("BAD_REQUEST", f"query is at most {MAX_QUERY} printable "
                        "characters", field="query")
        if not (_is_int(limit) and 1 <= limit <= MAX_PAGE):
            raise _fail("BAD_REQUEST", f"limit must be an integer 1..{MAX_PAGE}",
                        field="limit")
        if not (_is_int(offset) and 0 <= offset <= MAX_POINTS):
            raise _fail("BAD_REQUEST", "offset must be an integer >= 0", field="offset")
        where, args = [], []
        if tier is not None:
            where.append("tier = ?")
            args.append(_tier(tier))
        text = text.strip()
        if text:
            like = lambda v: v.replace("\\", "\\\\").replace("%", "\\%").replace(
                "_", "\\_") + "%"
            compact = text.translate(_SEPARATORS)
            alts = ["name LIKE ? ESCAPE '\\'", "member_id LIKE ? ESCAPE '\\'",
                    "card_no LIKE ? ESCAPE '\\'", "phone LIKE ? ESCAPE '\\'"]
            args += [like(text), like(text), like(compact), like(compact)]
            if compact.isdigit():
                alts.append("phone LIKE ? ESCAPE '\\'")
                args.append(like("+" + compact))
            where.append("(" + " OR ".join(alts) + ")")
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        try:
            total = self.con.execute(f"SELECT COUNT(*) FROM members{cond}",
                                     args).fetchone()[0]
            rows = self.con.execute(
                f"SELECT {_MEMBER_COLS} FROM members{cond} ORDER BY created_at DESC, "
                "member_id LIMIT ? OFFSET ?", (*args, int(limit), int(offset))).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the members") from exc
        return [Member(*r) for r in rows], total

    def find(self, identifier: str) -> Member:
        """The member with this card number, phone number or member id. Card and phone
        numbers are normalised first (spaces and dashes dropped); text with a letter is
        a member id, text starting with ``+`` a phone number, digits a card number.
        Raises ``BAD_MEMBER`` (none of the three), ``UNKNOWN_MEMBER``."""
        column, value = _identify(identifier)
        try:
            return Member(*self._row(column, value))
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the members") from exc

    # ------------------------------------------------------------------------------
    # Member prices
    # ------------------------------------------------------------------------------
    def set_member_price(self, gtin14: str, tier: str, price_minor: int | None) -> int | None:
        """Set the members' price of one unit of ``gtin14`` for ``tier``; None removes
        it. GTIN-8/12/13 are zero-padded to 14 digits (the catalogue's key). Returns the
        price now set. Raises ``BAD_GTIN``, ``BAD_TIER``, ``BAD_AMOUNT``."""
        gtin, tier = _gtin14(gtin14), _tier(tier)
        price = None if price_minor is None else _amount(price_minor, "price_minor")
        try:
            with _Txn(self.con):
                if price is None:
                    self.con.execute("DELETE FROM member_prices WHERE gtin = ? AND tier = ?",
                                     (gtin, tier))
                else:
                    self.con.execute(
                        "INSERT INTO member_prices (gtin, tier, price_minor) VALUES (?, ?, ?) "
                        "ON CONFLICT (gtin, tier) DO UPDATE SET price_minor = excluded."
                        "price_minor", (gtin, tier, price))
                return price
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot set the member price") from exc

    def member_price(self, gtin14: str, tier: str) -> int | None:
        """The members' price of one unit of ``gtin14`` for ``tier``, or None."""
        return self.member_prices([gtin14], tier).get(_gtin14(gtin14))

    def member_prices(self, gtins: Iterable[str], tier: str) -> dict[str, int]:
        """``{gtin14: price_minor}`` for those of ``gtins`` with a members' price in
        ``tier`` (keys are 14-digit GTINs, as the pricing engine's lines carry them;
        GTINs without a price are left out). Raises ``BAD_GTIN``, ``BAD_TIER``."""
        tier = _tier(tier)
        if isinstance(gtins, (str, bytes)):
            raise _fail("BAD_GTIN", "gtins must be a collection of GTINs, not one string",
                        field="gtins")
        keys = sorted({_gtin14(g) for g in gtins})
        out: dict[str, int] = {}
        try:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i:i + _CHUNK]
                cur = self.con.execute(
                    f"SELECT gtin, price_minor FROM member_prices WHERE tier = ? AND gtin IN "
                    f"({', '.join('?' * len(part))})", (tier, *part))
                out.update(cur.fetchall())
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the member prices") from exc
        return out

    # ------------------------------------------------------------------------------
    # Points
    # ------------------------------------------------------------------------------
    def balance(self, member_id: str) -> int:
        """The member's points. Raises ``BAD_MEMBER``, ``UNKNOWN_MEMBER``."""
        mid = _member_id(member_id)
        try:
            return self._row("member_id", mid)[5]
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the balance") from exc

    def moves(self, member_id: str) -> list[PointMove]:
        """The member's point moves, oldest first. Their ``points`` add up to the
        balance. Raises ``BAD_MEMBER``, ``UNKNOWN_MEMBER``."""
        mid = _member_id(member_id)
        try:
            self._row("member_id", mid)
            cur = self.con.execute(f"SELECT {_MOVE_COLS} FROM point_moves WHERE "
                                   "member_id = ? ORDER BY rowid", (mid,))
            return [_move(r) for r in cur.fetchall()]
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the point moves") from exc

    def _newest(self, member_id: str, limit, sql: str, what: str) -> list[tuple]:
        """Rows of ``sql`` (``member_id = ?`` then ``LIMIT ?``) for the member's last
        ``limit`` (1–:data:`MAX_HISTORY`) entries. Raises ``BAD_MEMBER``,
        ``BAD_REQUEST``, ``UNKNOWN_MEMBER``."""
        mid = _member_id(member_id)
        if not (_is_int(limit) and 1 <= limit <= MAX_HISTORY):
            raise _fail("BAD_REQUEST", f"limit must be an integer 1..{MAX_HISTORY}",
                        field="limit")
        try:
            self._row("member_id", mid)
            return self.con.execute(sql, (mid, int(limit))).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, f"cannot read the {what}") from exc

    def recent_moves(self, member_id: str, limit: int = 50) -> list[PointMove]:
        """The member's last ``limit`` (1–:data:`MAX_HISTORY`) point moves, newest
        first. Raises ``BAD_MEMBER``, ``BAD_REQUEST``, ``UNKNOWN_MEMBER``."""
        return [_move(r) for r in self._newest(
            member_id, limit, f"SELECT {_MOVE_COLS} FROM point_moves WHERE member_id = ? "
            "ORDER BY rowid DESC LIMIT ?", "point moves")]

    def _get_move(self, ref: str) -> PointMove | None:
        row = self.con.execute(f"SELECT {_MOVE_COLS} FROM point_moves WHERE ref = ?",
                               (ref,)).fetchone()
        return None if row is None else _move(row)

    def _replay(self, ref: str, kind: str, request: dict) -> PointMove | None:
        """The move already made under ``ref`` if its request was ``request``; None if
        there is none; ``REF_CONFLICT`` if it was made for another request."""
        seen = self._get_move(ref)
        if seen is None:
            return None
        if seen.kind != kind or any(seen.terms.get(k) != v for k, v in request.items()):
            raise _fail("REF_CONFLICT", f"{ref} was already made with other terms",
                        ref=ref, kind=seen.kind)
        return seen

    def _write(self, ref: str, member_id: str, kind: str, points: int, order_no: str | None,
               terms: dict, at: float) -> PointMove:
        balance = self._row("member_id", member_id)[5] + points
        if balance < 0:      # callers check first; this is the last line of defence
            raise _fail("INSUFFICIENT_POINTS", f"member {member_id} would go below 0 points",
                        member_id=member_id)
        self.con.execute("UPDATE members SET points = ? WHERE member_id = ?",
                         (balance, member_id))
        self.con.execute(f"INSERT INTO point_moves ({_MOVE_COLS}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?)",
                         (ref, member_id, kind, points, balance, order_no,
                          json.dumps(terms, sort_keys=True), at))
        return PointMove(ref, member_id, kind, points, balance, order_no, terms, at)

    def _check_order(self, order_no: str, member_id: str) -> None:
        """``ORDER_CONFLICT`` if the order is another member's; ``ORDER_REVERSED`` if it
        has been reversed."""
        row = self.con.execute("SELECT member_id FROM point_moves WHERE order_no = ? "
                               "LIMIT 1", (order_no,)).fetchone() \
            or self.con.execute("SELECT member_id FROM purchases WHERE order_no = ?",
                                (order_no,)).fetchone()
        if row is not None and row[0] != member_id:
            raise _fail("ORDER_CONFLICT", f"order {order_no} belongs to another member",
                        order_no=order_no)
        if self._get_move(f"clawback:{order_no}") is not None:
            raise _fail("ORDER_REVERSED", f"order {order_no} has been reversed",
                        order_no=order_no)

    def earn(self, member_id: str, order_no: str, paid_minor: int, *, now: float
             ) -> PointMove:
        """Points for paying ``paid_minor`` on ``order_no``: ``paid_minor //
        earn_per_minor`` (a move of 0 points is recorded too). Once per order: again
        with the same member and amount answers with the first move (ref
        ``earn:<order_no>``), other terms are ``REF_CONFLICT``. Raises ``BAD_MEMBER``,
        ``BAD_ORDER``, ``BAD_AMOUNT``, ``BAD_TIME``, ``UNKNOWN_MEMBER``,
        ``ORDER_CONFLICT``, ``ORDER_REVERSED``."""
        mid, order, paid = _member_id(member_id), _order_no(order_no), \
            _amount(paid_minor, "paid_minor")
        at = _now(now)
        ref, request = f"earn:{order}", {"member_id": mid, "paid_minor": paid}
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "earn", request)
                if seen is not None:
                    return seen
                self._row("member_id", mid)
                self._check_order(order, mid)
                points = paid // self.earn_per_minor
                return self._write(ref, mid, "earn", points, order,
                                   {**request, "earn_per_minor": self.earn_per_minor}, at)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot earn points") from exc

    def redeem_limit(self, basket_total_minor: int) -> int:
        """The most points a basket of ``basket_total_minor`` may take."""
        total = _amount(basket_total_minor, "basket_total_minor")
        return total * self.max_redeem_share_bp // _BP // self.point_value_minor

    def redeem(self, member_id: str, points: int, *, order_no: str,
               basket_total_minor: int, now: float) -> int:
        """Spend ``points`` on ``order_no``; returns their value, ``points ×
        point_value_minor`` minor units, to take off the basket.

        Refusals, checked in this order, none recorded: ``ORDER_CONFLICT``,
        ``ORDER_REVERSED``, ``REDEEM_LIMIT`` (the value is above
        ``max_redeem_share_bp`` of ``basket_total_minor``; details ``max_points``,
        ``max_value_minor``), ``INSUFFICIENT_POINTS`` (details ``balance``,
        ``short``). Once per order: again with the same member, points and basket
        total answers with the same value and spends nothing (ref
        ``redeem:<order_no>``), other terms are ``REF_CONFLICT``. Also ``BAD_MEMBER``,
        ``BAD_POINTS`` (not an integer >= 1), ``BAD_ORDER``, ``BAD_AMOUNT``,
        ``BAD_TIME``, ``UNKNOWN_MEMBER``."""
        mid, order, want = _member_id(member_id), _order_no(order_no), _points(points)
        total, at = _amount(basket_total_minor, "basket_total_minor"), _now(now)
        ref = f"redeem:{order}"
        request = {"member_id": mid, "points": want, "basket_total_minor": total}
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "redeem", request)
                if seen is not None:
                    return seen.terms["value_minor"]
                balance = self._row("member_id", mid)[5]
                self._check_order(order, mid)
                value = want * self.point_value_minor
                most = self.redeem_limit(total)
                if want > most:
                    raise _fail("REDEEM_LIMIT", f"{want} points are worth {value}, more "
                                f"than {self.max_redeem_share_bp / 100:g}% of {total}: at "
                                f"most {most} points", member_id=mid, points=want,
                                max_points=most,
                                max_value_minor=most * self.point_value_minor)
                if want > balance:
                    raise _fail("INSUFFICIENT_POINTS", f"member {mid} has {balance} points, "
                                f"{want - balance} short of {want}", member_id=mid,
                                balance=balance, short=want - balance)
                self._write(ref, mid, "redeem", -want, order,
                            {**request, "value_minor": value,
                             "point_value_minor": self.point_value_minor}, at)
                return value
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot redeem points") from exc

    def reverse_order(self, order_no: str, *, now: float) -> Reversal:
        """The order was refunded or reversed: give back the points it redeemed (move
        ``return:<order_no>``), then claw back the points it earned (move
        ``clawback:<order_no>``, always written: it marks the order reversed) — as many
        as the balance holds, never below 0; the rest is ``points_not_clawed_back``.
        The purchase record, if any, gets ``reversed_at``. Idempotent: again answers
        with the first reversal. Raises ``BAD_ORDER``, ``BAD_TIME``, ``UNKNOWN_ORDER``
        (no earn, redeem or purchase for this order)."""
        order, at = _order_no(order_no), _now(now)
        try:
            with _Txn(self.con):
                seen = self._get_move(f"clawback:{order}")
                if seen is not None:
                    return _reversal(seen)
                earned = self._get_move(f"earn:{order}")
                redeemed = self._get_move(f"redeem:{order}")
                bought = self.con.execute("SELECT member_id FROM purchases WHERE "
                                          "order_no = ?", (order,)).fetchone()
                if earned is None and redeemed is None and bought is None:
                    raise _fail("UNKNOWN_ORDER", f"no points or purchase for order {order}",
                                order_no=order)
                first = earned if earned is not None else redeemed
                mid = first.member_id if first is not None else bought[0]
                back = -redeemed.points if redeemed is not None else 0
                if back:
                    self._write(f"return:{order}", mid, "return", back, order,
                                {"member_id": mid, "of_ref": f"redeem:{order}"}, at)
                owed = earned.points if earned is not None else 0
                claw = min(owed, self._row("member_id", mid)[5])
                move = self._write(f"clawback:{order}", mid, "clawback", -claw, order,
                                   {"member_id": mid,
                                    "of_ref": None if earned is None else f"earn:{order}",
                                    "earned": owed, "returned": back, "clawed_back": claw,
                                    "not_clawed_back": owed - claw}, at)
                self.con.execute("UPDATE purchases SET reversed_at = ? WHERE order_no = ? "
                                 "AND reversed_at IS NULL", (at, order))
                return _reversal(move)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot reverse the order") from exc

    def adjust(self, member_id: str, points: int, *, ref: str, reason: str, now: float,
               staff: str | None = None, principal: str | None = None) -> PointMove:
        """A staff correction of ``points`` (signed, non-zero) with a ``reason`` (1–200
        characters), move ``adjust:<ref>``; idempotent by ``ref`` like the others (the
        terms compared are the member, the points and the reason). ``staff`` (1–64
        printable characters: the person a console vouches for) and ``principal``
        (the caller's proved identity) are kept in the move's ``terms`` as they were
        the first time. Raises ``BAD_MEMBER``, ``BAD_POINTS``, ``BAD_REF``,
        ``BAD_REQUEST`` (the reason or staff), ``BAD_TIME``, ``UNKNOWN_MEMBER``,
        ``INSUFFICIENT_POINTS`` (it would go below 0; details ``balance``,
        ``short``), ``REF_CONFLICT``."""
        mid, delta, key = _member_id(member_id), _points(points, signed=True), _ref(ref)
        if not (isinstance(reason, str) and 1 <= len(reason.strip()) <= _REASON_MAX):
            raise _fail("BAD_REQUEST", f"an adjust needs a reason of 1-{_REASON_MAX} "
                        "characters", field="reason")
        who = {}
        for name, value in (("staff", staff), ("principal", principal)):
            if value is None:
                continue
            if not (isinstance(value, str) and 1 <= len(value.strip()) <= 64
                    and value.isprintable()):
                raise _fail("BAD_REQUEST", f"{name} is 1-64 printable characters",
                            field=name)
            who[name] = value.strip()
        at = _now(now)
        ref = f"adjust:{key}"
        request = {"member_id": mid, "points": delta, "reason": reason}
        try:
            with _Txn(self.con):
                seen = self._replay(ref, "adjust", request)
                if seen is not None:
                    return seen
                balance = self._row("member_id", mid)[5]
                if balance + delta < 0:
                    raise _fail("INSUFFICIENT_POINTS", f"member {mid} has {balance} points, "
                                f"cannot take {-delta}", member_id=mid, balance=balance,
                                short=-delta - balance)
                return self._write(ref, mid, "adjust", delta, None, {**request, **who}, at)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot adjust points") from exc

    # ------------------------------------------------------------------------------
    # Purchases
    # ------------------------------------------------------------------------------
    def record_purchase(self, member_id: str, order_no: str, total_minor: int,
                        currency: str, lines: list[dict], points_earned: int,
                        points_redeemed: int, *, now: float) -> Purchase:
        """Keep the member's paid order for :meth:`history`. ``lines`` is a list of JSON
        objects (the receipt's lines, as the caller likes them). Once per order: again
        with the same terms answers with the first record (its ``at``), other terms are
        ``REF_CONFLICT``. An order already reversed is recorded with its
        ``reversed_at``. Raises ``BAD_MEMBER``, ``BAD_ORDER``, ``BAD_AMOUNT``,
        ``BAD_CURRENCY``, ``BAD_LINES``, ``BAD_POINTS``, ``BAD_TIME``,
        ``UNKNOWN_MEMBER``, ``ORDER_CONFLICT``."""
        mid, order = _member_id(member_id), _order_no(order_no)
        total = _amount(total_minor, "total_minor")
        if not (isinstance(currency, str) and _CURRENCY_RE.fullmatch(currency)):
            raise _fail("BAD_CURRENCY", f"currency must be an ISO 4217 code, not "
                        f"{currency!r:.20}", field="currency")
        rows = _lines(lines)
        earned = _points(points_earned, "points_earned", low=0)
        spent = _points(points_redeemed, "points_redeemed", low=0)
        at = _now(now)
        try:
            with _Txn(self.con):
                row = self.con.execute(f"SELECT {_PURCHASE_COLS} FROM purchases WHERE "
                                       "order_no = ?", (order,)).fetchone()
                if row is not None:
                    seen = _purchase(row)
                    if (seen.member_id, seen.total_minor, seen.currency, seen.lines,
                            seen.points_earned, seen.points_redeemed) != \
                            (mid, total, currency, rows, earned, spent):
                        raise _fail("REF_CONFLICT", f"order {order} was recorded with other "
                                    "terms", ref=order)
                    return seen
                self._row("member_id", mid)
                try:
                    self._check_order(order, mid)
                    reversed_at = None
                except MemberError as exc:
                    if exc.code != "ORDER_REVERSED":
                        raise
                    reversed_at = self._get_move(f"clawback:{order}").at
                self.con.execute(f"INSERT INTO purchases ({_PURCHASE_COLS}) VALUES "
                                 "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (order, mid, total, currency, earned, spent,
                                  json.dumps(rows, sort_keys=True), at, reversed_at))
                return Purchase(order, mid, total, currency, earned, spent, rows, at,
                                reversed_at)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot record the purchase") from exc

    def history(self, member_id: str, limit: int = 50) -> list[Purchase]:
        """The member's last ``limit`` (1–:data:`MAX_HISTORY`) purchases, newest
        first. Raises ``BAD_MEMBER``, ``BAD_REQUEST``, ``UNKNOWN_MEMBER``."""
        return [_purchase(r) for r in self._newest(
            member_id, limit, f"SELECT {_PURCHASE_COLS} FROM purchases WHERE member_id = ? "
            "ORDER BY at DESC, rowid DESC LIMIT ?", "purchases")]
