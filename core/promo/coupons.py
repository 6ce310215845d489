"""Coupons: the GS1 North-American coupon element strings, and a wallet of digital
coupons with a single-use redemption ledger and the issuers' clearing report.

**Parsing.** :func:`parse_8110` reads the value of AI (8110), the North American
Coupon Code (NACAG R2.0: company prefix, offer code, save value, purchase
requirements, family codes and the optional fields 1–6 and 9), and
:func:`parse_8112` the value of AI (8112), the paperless coupon checked online
against the positive offer file (format code, funder ID, offer code, serial number).
The barcode kernel (:mod:`lanecore.ext.barcode`) finds these element strings in a
scan and checks they are at most 70 characters; this module reads what they say.
:func:`build_8110` and :func:`build_8112` write them. Dates are ``YYMMDD`` read as
20YY (a coupon lives months, not a century). Every refusal is ``COUPON_FORMAT`` with
``details`` naming the ``field`` and the 1-based ``pos`` in the value.

**The book.** :class:`CouponBook` keeps, in a caller's SQLite connection (the store
database, autocommit, ``isolation_level=None``), the issuers (manufacturers), the
coupon definitions (:class:`Definition`), the coupons issued into customers'
wallets and the clearing rows the issuers are billed from. A coupon moves::

    issued ──reserve──► reserved ──commit──► redeemed
      ▲                    │                    │
      └──── release ───────┘                    │
      └──── reverse (clearing row marked reversed) ┘

Every mutating method is one ``BEGIN IMMEDIATE`` transaction (or a savepoint when
the caller already holds a transaction), so it is all or nothing, and two tills
racing for the same coupon serialise on the write lock: exactly one reserves it,
the other gets ``COUPON_USED``. A partial unique index keeps at most one live
(not reversed) clearing row per coupon, so even a bug above this module cannot
bill an issuer twice for one coupon.

**Orders.** The coupons of one sale are reserved under the merchant's ``order_no``;
the order is ``open`` until :meth:`CouponBook.commit` (``committed``),
:meth:`CouponBook.release` (``released``; it may be reopened by reserving again)
or :meth:`CouponBook.reverse` (``reversed``, final). Repeating a call with the
same terms is harmless: reserving again for the same order returns the same
reservations, a commit repeated with the same amounts returns the same rows,
releasing or reversing twice returns nothing the second time.

**Errors** are :class:`CouponError` with a stable ``code`` and a ``details`` map:
``COUPON_FORMAT``, ``BAD_COUPON_DEF``, ``BAD_REQUEST``, ``BAD_AMOUNT``,
``UNKNOWN_ISSUER``, ``UNKNOWN_COUPON_DEF``, ``UNKNOWN_COUPON``, ``UNKNOWN_ORDER``,
``NOT_YOUR_COUPON``, ``COUPON_EXPIRED``, ``COUPON_NOT_YET_VALID``, ``COUPON_USED``,
``COUPON_NOT_RESERVED``, ``CUSTOMER_LIMIT``, ``ORDER_CLOSED``, ``REF_CONFLICT``,
``DB_BUSY``, ``DB_ERROR``. ``docs/promo/coupons.md`` says when each is raised.

Money is integer minor units of the definition's ``currency``; times are Unix
seconds passed in as ``now`` (nothing here reads the clock).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from lanecore.core.sqlschema import migrate
from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError
from lanecore.ext.barcode import gs1_check_digit

__all__ = [
    "CouponError", "QualifyingPurchase", "NACoupon", "PositiveOfferCoupon",
    "parse_8110", "parse_8112", "build_8110", "build_8112", "coupons_in_ais",
    "Issuer", "Definition", "Coupon", "Reservation", "ClearingRow", "ClearingReport",
    "CouponOrder", "CouponBook", "COUPON_STATES", "ORDER_STATES", "MAX_AI_LEN",
    "MAX_RESERVE", "MAX_AMOUNT_MINOR",
]

#: Longest value of AI (8110) and (8112) (both X..70).
MAX_AI_LEN = 70
#: Most coupons one :meth:`CouponBook.reserve` call takes.
MAX_RESERVE = 100
#: Largest amount a definition or a redemption may carry (minor units).
MAX_AMOUNT_MINOR = 10 ** 12

COUPON_STATES = ("issued", "reserved", "redeemed")
ORDER_STATES = ("open", "committed", "released", "reversed")

_DIGITS = re.compile(r"[0-9]*")
# Coupon ids travel in the signed multi-information QR (core/promo/mqr.py), whose ids are
# 1-40 of these characters; other ids (orders, customers, stores) may be 64 long.
_COUPON_ID = re.compile(r"[A-Za-z0-9._-]{1,40}")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_GTIN14 = re.compile(r"[0-9]{14}")
_MAX_TIME = 2 ** 40


class CouponError(LanecoreError):
    """A coupon refusal with a stable ``code`` and machine-readable ``details``."""

    code = "COUPON_ERROR"


# ======================================================================================
# GS1 coupon element strings
# ======================================================================================

@dataclass(frozen=True)
class QualifyingPurchase:
    """One purchase a (8110) coupon asks for.

    ``requirement`` is a number whose unit ``requirement_code`` gives (0 = units of
    the product, 1 = cash value of the qualifying items in minor units; 2, 3, 4 and 9
    as NACAG R2.0 defines them — lanecore passes the digit through). ``family_code``
    is the 3-digit family of the manufacturer's products that qualify.
    ``company_prefix`` is the GS1 Company Prefix of those products: for the primary
    purchase always the coupon's own; for the second and third ``None`` when the
    coupon says "the primary company prefix" (length indicator 9)."""

    requirement: int
    requirement_code: int
    family_code: str
    company_prefix: str | None = None


@dataclass(frozen=True)
class NACoupon:
    """The value of AI (8110), a North American coupon (NACAG R2.0).

    Required: ``company_prefix`` (6–12 digits; the funder billed at clearing),
    ``offer_code`` (6 digits), ``save_value`` (0–99999; minor units when
    ``save_value_code`` is 0 or absent), ``primary`` purchase. Optional field 1:
    ``additional_rules_code`` (0–3, how the purchases combine) and ``second``;
    2: ``third``; 3: ``expiration_date``; 4: ``start_date``; 5: ``serial_number``
    (6–15 digits); 6: ``retailer_id`` (a retailer's GS1 Company Prefix or GLN,
    7–13 digits); 9: ``save_value_code`` (0, 1, 2, 5 or 6; 0 = cents off, 1 = free
    item, 2 = percent off), ``applies_to_item`` (0 primary, 1 second, 2 third
    purchase), ``store_coupon`` (a digit) and ``dont_multiply`` (the store must not
    double the coupon)."""

    company_prefix: str
    offer_code: str
    save_value: int
    primary: QualifyingPurchase
    additional_rules_code: int | None = None
    second: QualifyingPurchase | None = None
    third: QualifyingPurchase | None = None
    expiration_date: _dt.date | None = None
    start_date: _dt.date | None = None
    serial_number: str | None = None
    retailer_id: str | None = None
    save_value_code: int | None = None
    applies_to_item: int | None = None
    store_coupon: int | None = None
    dont_multiply: bool | None = None

    @property
    def coupon_id(self) -> str | None:
        """``<company prefix>-<offer code>-<serial>`` for a serialised coupon (a valid
        :class:`CouponBook` coupon id), else ``None``: without a serial number two
        printed coupons of one offer cannot be told apart."""
        if self.serial_number is None:
            return None
        return f"{self.company_prefix}-{self.offer_code}-{self.serial_number}"

    def valid_on(self, day: _dt.date) -> bool:
        """Whether ``day`` is within the start and expiration dates (inclusive; an
        absent date does not limit)."""
        return ((self.start_date is None or self.start_date <= day)
                and (self.expiration_date is None or day <= self.expiration_date))

    def to_dict(self) -> dict:
        """JSON/MessagePack-friendly: dates as ``YYYY-MM-DD``."""
        out = asdict(self)
        for k in ("expiration_date", "start_date"):
            if out[k] is not None:
                out[k] = out[k].isoformat()
        out["coupon_id"] = self.coupon_id
        return out


@dataclass(frozen=True)
class PositiveOfferCoupon:
    """The value of AI (8112), a paperless coupon the till checks online against the
    positive offer file: ``format_code`` (0 or 1), ``funder_id`` (6–12 digits, the
    funder's GS1 Company Prefix or a GTIN), ``offer_code`` (6 digits),
    ``serial_number`` (6–15 digits)."""

    format_code: int
    funder_id: str
    offer_code: str
    serial_number: str

    @property
    def coupon_id(self) -> str:
        """``<funder id>-<offer code>-<serial>``: a valid :class:`CouponBook` coupon
        id (at most 35 characters), one per single-use coupon."""
        return f"{self.funder_id}-{self.offer_code}-{self.serial_number}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["coupon_id"] = self.coupon_id
        return out


def _format_error(ai: str, field: str, why: str, pos: int | None = None) -> CouponError:
    where = f" (position {pos})" if pos is not None else ""
    details = {"ai": ai, "field": field}
    if pos is not None:
        details["pos"] = pos
    return CouponError(f"({ai}) {field.replace('_', ' ')}: {why}{where}",
                       code="COUPON_FORMAT", details=details)


class _Reader:
    """A cursor over an all-digit AI value; every failure names the field."""

    def __init__(self, ai: str, value) -> None:
        if not isinstance(value, str):
            raise _format_error(ai, "value", f"must be a str, not {type(value).__name__}")
        if len(value) > MAX_AI_LEN:
            raise _format_error(ai, "value", f"has {len(value)} characters; at most "
                                f"{MAX_AI_LEN}", MAX_AI_LEN + 1)
        bad = _DIGITS.match(value).end()
        if bad != len(value):
            raise _format_error(ai, "value", f"{value[bad]!r} is not a digit", bad + 1)
        self.ai = ai
        self.s = value
        self.pos = 0

    def fail(self, field: str, why: str, at: int | None = None) -> CouponError:
        return _format_error(self.ai, field, why, (self.pos if at is None else at) + 1)

    def more(self) -> bool:
        return self.pos < len(self.s)

    def at(self, ch: str) -> bool:
        """Whether the next digit is ``ch`` (an optional field's number); consumes it."""
        if self.pos < len(self.s) and self.s[self.pos] == ch:
            self.pos += 1
            return True
        return False

    def digit(self, field: str, allowed=None) -> int:
        if self.pos >= len(self.s):
            raise self.fail(field, "missing: the value ends here")
        d = ord(self.s[self.pos]) - 48
        if allowed is not None and d not in allowed:
            raise self.fail(field, f"{d} is not one of {', '.join(map(str, allowed))}")
        self.pos += 1
        return d

    def take(self, n: int, field: str) -> str:
        left = len(self.s) - self.pos
        if left < n:
            raise self.fail(field, f"needs {n} digits, only {left} left")
        out = self.s[self.pos:self.pos + n]
        self.pos += n
        return out

    def counted(self, field: str, lengths: range, plus: int) -> str:
        """A length digit (in ``lengths``) then that many + ``plus`` digits."""
        n = self.digit(field + "_length", lengths) + plus
        return self.take(n, field)

    def date(self, field: str) -> _dt.date:
        start = self.pos
        v = self.take(6, field)
        yy, mm, dd = int(v[:2]), int(v[2:4]), int(v[4:])
        try:
            return _dt.date(2000 + yy, mm, dd)
        except ValueError:
            raise self.fail(field, f"{v} is not a date YYMMDD", start) from None


_REQUIREMENT_CODES = (0, 1, 2, 3, 4, 9)
_SAVE_VALUE_CODES = (0, 1, 2, 5, 6)


def _read_purchase(r: _Reader, prefix: str, with_gcp: bool,
                   gcp: str | None = None) -> QualifyingPurchase:
    req = int(r.counted(prefix + "purchase_requirement", range(1, 6), 0))
    code = r.digit(prefix + "purchase_requirement_code", _REQUIREMENT_CODES)
    family = r.take(3, prefix + "family_code")
    if with_gcp:
        vli = r.digit(prefix + "company_prefix_length", (0, 1, 2, 3, 4, 5, 6, 9))
        gcp = None if vli == 9 else r.take(vli + 6, prefix + "company_prefix")
    return QualifyingPurchase(req, code, family, gcp)


def parse_8110(value: str) -> NACoupon:
    """Read the value of AI (8110) (the digits after ``8110``, up to a GS or the end).

    Fields in order: company prefix length digit 0–6 and 6–12 digits; 6-digit offer
    code; save value length 1–5 and value; primary purchase requirement length 1–5
    and value, requirement code (0–4 or 9) and 3-digit family code; then optional
    fields, each at most once and in this order: ``1`` additional rules code 0–3 and
    the second purchase (requirement, code, family, company prefix length 0–6 or 9
    and prefix), ``2`` the third purchase (the same without a rules code), ``3``
    expiration date, ``4`` start date (not after the expiration date), ``5`` serial
    number (length 0–9, 6–15 digits), ``6`` retailer GCP/GLN (length 1–7, 7–13
    digits), ``9`` save value code, applies-to-item, store coupon flag and don't
    multiply flag. Anything else is ``COUPON_FORMAT``. Example::

        >>> parse_8110("012345612345611110123").offer_code
        '123456'
    """
    r = _Reader("8110", value)
    gcp = r.counted("company_prefix", range(0, 7), 6)
    offer = r.take(6, "offer_code")
    save = int(r.counted("save_value", range(1, 6), 0))
    primary = _read_purchase(r, "", False, gcp)
    out: dict = {}
    if r.at("1"):
        out["additional_rules_code"] = r.digit("additional_rules_code", (0, 1, 2, 3))
        out["second"] = _read_purchase(r, "second_", True)
    if r.at("2"):
        out["third"] = _read_purchase(r, "third_", True)
    if r.at("3"):
        out["expiration_date"] = r.date("expiration_date")
    if r.at("4"):
        start_pos = r.pos
        out["start_date"] = start = r.date("start_date")
        expiry = out.get("expiration_date")
        if expiry is not None and start > expiry:
            raise r.fail("start_date", f"{start} is after the expiration date {expiry}",
                         start_pos)
    if r.at("5"):
        out["serial_number"] = r.counted("serial_number", range(0, 10), 6)
    if r.at("6"):
        out["retailer_id"] = r.counted("retailer_id", range(1, 8), 6)
    if r.at("9"):
        out["save_value_code"] = r.digit("save_value_code", _SAVE_VALUE_CODES)
        out["applies_to_item"] = r.digit("applies_to_item", (0, 1, 2))
        out["store_coupon"] = r.digit("store_coupon")
        out["dont_multiply"] = bool(r.digit("dont_multiply", (0, 1)))
    if r.more():
        raise r.fail("value", f"unexpected {r.s[r.pos:]!r}: optional fields are 1, 2, 3, "
                     "4, 5, 6 and 9, each at most once and in that order")
    return NACoupon(gcp, offer, save, primary, **out)


def parse_8112(value: str) -> PositiveOfferCoupon:
    """Read the value of AI (8112): format code 0 or 1; funder ID length 0–6 and
    6–12 digits; 6-digit offer code; serial number length 0–9 and 6–15 digits;
    nothing after (``COUPON_FORMAT`` otherwise). The retailer is not in the value:
    the till checks the serial online against the positive offer file."""
    r = _Reader("8112", value)
    fmt = r.digit("format_code", (0, 1))
    funder = r.counted("funder_id", range(0, 7), 6)
    offer = r.take(6, "offer_code")
    serial = r.counted("serial_number", range(0, 10), 6)
    if r.more():
        raise r.fail("value", f"unexpected {r.s[r.pos:]!r} after the serial number")
    return PositiveOfferCoupon(fmt, funder, offer, serial)


def coupons_in_ais(ais: Mapping[str, str]) -> list:
    """The coupons in a scan's element strings (``ScanResult.ais`` of
    :func:`lanecore.ext.barcode.parse_scan`): (8110) then (8112), each parsed;
    ``[]`` when there are none. Raises ``COUPON_FORMAT`` for a bad one."""
    out: list = []
    if "8110" in ais:
        out.append(parse_8110(ais["8110"]))
    if "8112" in ais:
        out.append(parse_8112(ais["8112"]))
    return out


# --------------------------------------------------------------------------------------
# Writing them
# --------------------------------------------------------------------------------------

def _need(ok: bool, ai: str, field: str, why: str) -> None:
    if not ok:
        raise _format_error(ai, field, why)


def _digits(v, ai: str, field: str, lo: int, hi: int) -> str:
    _need(isinstance(v, str) and _DIGITS.fullmatch(v) is not None and lo <= len(v) <= hi,
          ai, field, f"must be {lo}–{hi} digits, not {v!r:.40}" if lo != hi
          else f"must be {lo} digits, not {v!r:.40}")
    return v


def _small(v, ai: str, field: str, allowed) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and v in allowed, ai, field,
          f"must be one of {', '.join(map(str, allowed))}, not {v!r:.40}")
    return v


def _counted(v: int, ai: str, field: str) -> str:
    _need(_is_int(v) and 0 <= v <= 99999, ai, field,
          f"must be a whole number 0–99999, not {v!r:.40}")
    s = str(v)
    return f"{len(s)}{s}"


def _write_purchase(p, prefix: str, with_gcp: bool) -> str:
    ai = "8110"
    _need(isinstance(p, QualifyingPurchase), ai, prefix + "purchase",
          "must be a QualifyingPurchase")
    out = _counted(p.requirement, ai, prefix + "purchase_requirement")
    out += str(_small(p.requirement_code, ai, prefix + "purchase_requirement_code",
                      _REQUIREMENT_CODES))
    out += _digits(p.family_code, ai, prefix + "family_code", 3, 3)
    if with_gcp:
        if p.company_prefix is None:
            out += "9"
        else:
            gcp = _digits(p.company_prefix, ai, prefix + "company_prefix", 6, 12)
            out += f"{len(gcp) - 6}{gcp}"
    return out


def _write_date(d, field: str) -> str:
    _need(isinstance(d, _dt.date) and not isinstance(d, _dt.datetime)
          and 2000 <= d.year <= 2099, "8110", field, "must be a date in 2000–2099")
    return d.strftime("%y%m%d")


def build_8110(coupon: NACoupon) -> str:
    """The value of AI (8110) for ``coupon`` (what :func:`parse_8110` reads back).
    Numbers are written with as many digits as they need. ``COUPON_FORMAT`` for a
    field the format cannot carry, an optional group given in part (field 1 needs
    both ``additional_rules_code`` and ``second``; field 9 all four of its values),
    a start after the expiration date, or more than 70 characters in all."""
    ai = "8110"
    c = coupon
    _need(isinstance(c, NACoupon), ai, "value", "must be an NACoupon")
    gcp = _digits(c.company_prefix, ai, "company_prefix", 6, 12)
    out = [f"{len(gcp) - 6}{gcp}", _digits(c.offer_code, ai, "offer_code", 6, 6),
           _counted(c.save_value, ai, "save_value")]
    _need(isinstance(c.primary, QualifyingPurchase)
          and c.primary.company_prefix in (None, gcp), ai, "primary",
          "must be a QualifyingPurchase whose company prefix is the coupon's")
    out.append(_write_purchase(c.primary, "", False))
    _need((c.additional_rules_code is None) == (c.second is None), ai,
          "additional_rules_code", "optional field 1 needs both the rules code and the "
          "second purchase")
    if c.second is not None:
        out.append("1" + str(_small(c.additional_rules_code, ai, "additional_rules_code",
                                    (0, 1, 2, 3)))
                   + _write_purchase(c.second, "second_", True))
    if c.third is not None:
        out.append("2" + _write_purchase(c.third, "third_", True))
    if c.expiration_date is not None:
        out.append("3" + _write_date(c.expiration_date, "expiration_date"))
    if c.start_date is not None:
        out.append("4" + _write_date(c.start_date, "start_date"))
        _need(c.expiration_date is None or c.start_date <= c.expiration_date, ai,
              "start_date", "is after the expiration date")
    if c.serial_number is not None:
        s = _digits(c.serial_number, ai, "serial_number", 6, 15)
        out.append(f"5{len(s) - 6}{s}")
    if c.retailer_id is not None:
        s = _digits(c.retailer_id, ai, "retailer_id", 7, 13)
        out.append(f"6{len(s) - 6}{s}")
    nine = (c.save_value_code, c.applies_to_item, c.store_coupon, c.dont_multiply)
    _need(all(v is None for v in nine) or all(v is not None for v in nine), ai,
          "save_value_code", "optional field 9 needs the save value code, "
          "applies-to-item, store coupon and don't multiply flags together")
    if c.save_value_code is not None:
        _need(isinstance(c.dont_multiply, bool), ai, "dont_multiply", "must be a bool")
        out.append("9" + str(_small(c.save_value_code, ai, "save_value_code",
                                    _SAVE_VALUE_CODES))
                   + str(_small(c.applies_to_item, ai, "applies_to_item", (0, 1, 2)))
                   + str(_small(c.store_coupon, ai, "store_coupon", range(10)))
                   + ("1" if c.dont_multiply else "0"))
    value = "".join(out)
    _need(len(value) <= MAX_AI_LEN, ai, "value",
          f"these fields take {len(value)} digits; (8110) holds at most {MAX_AI_LEN}")
    return value


def build_8112(coupon: PositiveOfferCoupon) -> str:
    """The value of AI (8112) for ``coupon``; ``COUPON_FORMAT`` for a field the format
    cannot carry."""
    ai = "8112"
    c = coupon
    _need(isinstance(c, PositiveOfferCoupon), ai, "value", "must be a PositiveOfferCoupon")
    fmt = _small(c.format_code, ai, "format_code", (0, 1))
    funder = _digits(c.funder_id, ai, "funder_id", 6, 12)
    offer = _digits(c.offer_code, ai, "offer_code", 6, 6)
    serial = _digits(c.serial_number, ai, "serial_number", 6, 15)
    return f"{fmt}{len(funder) - 6}{funder}{offer}{len(serial) - 6}{serial}"


# ======================================================================================
# The book: definitions, wallets, redemptions, clearing
# ======================================================================================

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad_def(field: str, why: str) -> CouponError:
    return CouponError(f"coupon definition: {field} {why}", code="BAD_COUPON_DEF",
                       details={"field": field})


@dataclass(frozen=True)
class Issuer:
    """A manufacturer (or other funder) billed for its coupons at clearing."""

    issuer_id: str
    name: str


@dataclass(frozen=True, kw_only=True)
class Definition:
    """What a coupon is worth and where it applies; coupons issued from it share it.

    Exactly one target: ``target_gtin`` (GTIN-14 with a valid check digit) or
    ``target_family`` (a family or category id, 1–40 of ``A-Z a-z 0-9 . _ -``).
    Exactly one value: ``amount_off_minor`` (minor units of ``currency``, 1 ..
    10¹²) or ``percent_bp`` (basis points, 1–10000: 2500 is 25 %). ``min_qty``
    (≥ 1) units of the target must be bought. Valid from ``valid_from`` (inclusive)
    until ``valid_until`` (exclusive), Unix seconds. ``per_customer_limit``: most
    coupons of this definition one customer may be issued (``None``: no limit).
    Constructing one with impossible values raises ``BAD_COUPON_DEF`` (``details``
    name the ``field``)."""

    coupon_def_id: str
    issuer_id: str
    target_gtin: str | None = None
    target_family: str | None = None
    amount_off_minor: int | None = None
    percent_bp: int | None = None
    currency: str
    min_qty: int = 1
    valid_from: int
    valid_until: int
    per_customer_limit: int | None = None

    def __post_init__(self) -> None:
        for f in ("coupon_def_id", "issuer_id"):
            v = getattr(self, f)
            if not isinstance(v, str) or not _ID.fullmatch(v):
                raise _bad_def(f, f"must be 1-64 of A-Z a-z 0-9 . _ -, not {v!r:.40}")
        if (self.target_gtin is None) == (self.target_family is None):
            raise _bad_def("target_gtin", "or target_family: give exactly one")
        if self.target_gtin is not None:
            g = self.target_gtin
            if not isinstance(g, str) or not _GTIN14.fullmatch(g):
                raise _bad_def("target_gtin", f"must be 14 digits, not {g!r:.40}")
            if gs1_check_digit(g[:13]) != int(g[13]):
                raise _bad_def("target_gtin", f"{g} has a bad check digit")
        elif not isinstance(self.target_family, str) \
                or not _COUPON_ID.fullmatch(self.target_family):
            raise _bad_def("target_family", "must be 1-40 of A-Z a-z 0-9 . _ -")
        if (self.amount_off_minor is None) == (self.percent_bp is None):
            raise _bad_def("amount_off_minor", "or percent_bp: give exactly one")
        if self.amount_off_minor is not None and not (
                _is_int(self.amount_off_minor) and 1 <= self.amount_off_minor
                <= MAX_AMOUNT_MINOR):
            raise _bad_def("amount_off_minor", f"must be a whole number 1..10^12 of minor "
                           f"units, not {self.amount_off_minor!r:.40}")
        if self.percent_bp is not None and not (
                _is_int(self.percent_bp) and 1 <= self.percent_bp <= 10000):
            raise _bad_def("percent_bp", f"must be 1..10000 basis points, not "
                           f"{self.percent_bp!r:.40}")
        if not isinstance(self.currency, str) or not _CURRENCY.fullmatch(self.currency):
            raise _bad_def("currency",
                           f"must be an ISO 4217 code, not {self.currency!r:.40}")
        if not _is_int(self.min_qty) or not 1 <= self.min_qty <= 10 ** 6:
            raise _bad_def("min_qty",
                           f"must be a whole number ≥ 1, not {self.min_qty!r:.40}")
        for f in ("valid_from", "valid_until"):
            v = getattr(self, f)
            if not _is_int(v) or not 0 <= v < _MAX_TIME:
                raise _bad_def(f, f"must be Unix seconds (a whole number ≥ 0), "
                               f"not {v!r:.40}")
        if self.valid_until <= self.valid_from:
            raise _bad_def("valid_until", "must be after valid_from")
        lim = self.per_customer_limit
        if lim is not None and not (_is_int(lim) and 1 <= lim <= 10 ** 6):
            raise _bad_def("per_customer_limit", f"must be ≥ 1 or None, not {lim!r:.40}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Coupon:
    """One coupon in a customer's wallet. ``state`` is one of :data:`COUPON_STATES`;
    ``order_no`` is the order it is reserved for or redeemed in (``None`` when
    issued)."""

    coupon_id: str
    coupon_def_id: str
    customer_id: str
    state: str
    order_no: str | None
    issued_at: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reservation:
    """A coupon held for an order until it is committed or released, with the
    definition pricing needs (target, value, ``min_qty``, currency)."""

    coupon_id: str
    order_no: str
    customer_id: str
    reserved_at: int
    definition: Definition

    def to_dict(self) -> dict:
        return {"coupon_id": self.coupon_id, "order_no": self.order_no,
                "customer_id": self.customer_id, "reserved_at": self.reserved_at,
                "definition": self.definition.to_dict()}


@dataclass(frozen=True)
class ClearingRow:
    """One redemption, as the issuer is billed for it: ``amount_minor`` (> 0) of
    ``currency`` deducted in ``order_no`` at ``store_id`` at ``redeemed_at``.
    ``reversed`` rows (a refund or reversal, at ``reversed_at``) are not billed."""

    issuer_id: str
    coupon_id: str
    coupon_def_id: str
    store_id: str
    order_no: str
    amount_minor: int
    currency: str
    redeemed_at: int
    reversed: bool
    reversed_at: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClearingReport:
    """:meth:`CouponBook.clearing`: ``rows`` oldest first, and ``totals``
    ``{issuer_id: {currency: amount_minor}}`` over the rows not reversed (an issuer
    with only reversed rows has no entry); ``counts`` the same for row counts."""

    rows: tuple[ClearingRow, ...]
    totals: dict[str, dict[str, int]]
    counts: dict[str, dict[str, int]]

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows], "totals": self.totals,
                "counts": self.counts}


@dataclass(frozen=True)
class CouponOrder:
    """The coupons of one order: ``state`` one of :data:`ORDER_STATES`,
    ``coupon_ids`` those reserved for or redeemed in it now (sorted)."""

    order_no: str
    customer_id: str
    state: str
    store_id: str | None
    coupon_ids: tuple[str, ...]


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS coupon_issuers (
        issuer_id TEXT PRIMARY KEY,
        name      TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS coupon_defs (
        coupon_def_id      TEXT PRIMARY KEY,
        issuer_id          TEXT NOT NULL REFERENCES coupon_issuers (issuer_id),
        target_gtin        TEXT,
        target_family      TEXT,
        amount_off_minor   INTEGER CHECK (amount_off_minor > 0),
        percent_bp         INTEGER CHECK (percent_bp BETWEEN 1 AND 10000),
        currency           TEXT NOT NULL,
        min_qty            INTEGER NOT NULL CHECK (min_qty >= 1),
        valid_from         INTEGER NOT NULL,
        valid_until        INTEGER NOT NULL,
        per_customer_limit INTEGER CHECK (per_customer_limit >= 1),
        CHECK ((target_gtin IS NULL) <> (target_family IS NULL)),
        CHECK ((amount_off_minor IS NULL) <> (percent_bp IS NULL)),
        CHECK (valid_until > valid_from))""",
    """CREATE TABLE IF NOT EXISTS coupons (
        coupon_id     TEXT PRIMARY KEY,
        coupon_def_id TEXT NOT NULL REFERENCES coupon_defs (coupon_def_id),
        customer_id   TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('issued', 'reserved', 'redeemed')),
        order_no      TEXT,
        issued_at     INTEGER NOT NULL,
        reserved_at   INTEGER,
        CHECK ((state = 'issued') = (order_no IS NULL)))""",
    """CREATE INDEX IF NOT EXISTS coupons_by_customer
        ON coupons (customer_id, coupon_def_id)""",
    "CREATE INDEX IF NOT EXISTS coupons_by_order ON coupons (order_no)",
    """CREATE TABLE IF NOT EXISTS coupon_orders (
        order_no    TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        state       TEXT NOT NULL
                    CHECK (state IN ('open', 'committed', 'released', 'reversed')),
        store_id    TEXT,
        terms       TEXT)""",
    """CREATE TABLE IF NOT EXISTS coupon_clearing (
        clearing_id   INTEGER PRIMARY KEY AUTOINCREMENT,
        issuer_id     TEXT NOT NULL,
        coupon_id     TEXT NOT NULL,
        coupon_def_id TEXT NOT NULL,
        store_id      TEXT NOT NULL,
        order_no      TEXT NOT NULL,
        amount_minor  INTEGER NOT NULL CHECK (amount_minor > 0),
        currency      TEXT NOT NULL,
        redeemed_at   INTEGER NOT NULL,
        reversed      INTEGER NOT NULL DEFAULT 0 CHECK (reversed IN (0, 1)),
        reversed_at   INTEGER)""",
    # The last line of defence for single use: one live redemption per coupon.
    """CREATE UNIQUE INDEX IF NOT EXISTS coupon_clearing_live
        ON coupon_clearing (coupon_id) WHERE reversed = 0""",
    """CREATE INDEX IF NOT EXISTS coupon_clearing_by_issuer
        ON coupon_clearing (issuer_id, redeemed_at)""",
    "CREATE INDEX IF NOT EXISTS coupon_clearing_by_order ON coupon_clearing (order_no)",
)

#: The coupon tables' versions (``core/sqlschema.py``): version 1 is ``_SCHEMA``.
MIGRATIONS = (_SCHEMA,)

_DEF_COLS = ("coupon_def_id", "issuer_id", "target_gtin", "target_family",
             "amount_off_minor", "percent_bp", "currency", "min_qty", "valid_from",
             "valid_until", "per_customer_limit")
_CLEARING_COLS = ("issuer_id", "coupon_id", "coupon_def_id", "store_id", "order_no",
                  "amount_minor", "currency", "redeemed_at", "reversed", "reversed_at")


def _db_error(exc: sqlite3.Error, what: str) -> CouponError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return CouponError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, "coupon_txn", _db_error, "coupon")


def _ident(v, what: str, rx: re.Pattern = _ID) -> str:
    if not isinstance(v, str) or not rx.fullmatch(v):
        n = 40 if rx is _COUPON_ID else 64
        raise CouponError(f"{what} must be 1-{n} of A-Z a-z 0-9 . _ -, not {v!r:.80}",
                          code="BAD_REQUEST", details={"field": what})
    return v


def _now(v, what: str = "now") -> int:
    """Unix seconds (an int, or a float floored to one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) \
            or (isinstance(v, float) and not math.isfinite(v)) or not 0 <= v < _MAX_TIME:
        raise CouponError(f"{what} must be Unix seconds, not {v!r:.40}", code="BAD_REQUEST",
                          details={"field": what})
    return int(v)


def _coupon_error(code: str, coupon_id: str, message: str, **more) -> CouponError:
    return CouponError(message, code=code, details={"coupon_id": coupon_id, **more})


class CouponBook:
    """Issuers, definitions, wallets and the redemption ledger in ``con`` (a
    ``sqlite3`` connection in autocommit mode, ``isolation_level=None``; the
    tables are created if missing). Safe for many connections (tills) on one WAL
    database file; one connection must not be shared between threads."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con
        try:
            with _Txn(con):
                migrate(con, "coupons", MIGRATIONS)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot create the coupon tables") from exc

    # ------------------------------------------------------------------------------
    # Issuers and definitions
    # ------------------------------------------------------------------------------
    def add_issuer(self, issuer_id: str, name: str) -> Issuer:
        """Register an issuer. Repeating it with the same name is harmless;
        another name under the same id is ``REF_CONFLICT``."""
        _ident(issuer_id, "issuer_id")
        if not isinstance(name, str) or not 1 <= len(name) <= 200 or not name.isprintable():
            raise CouponError("issuer name must be 1-200 printable characters",
                              code="BAD_REQUEST", details={"field": "name"})
        try:
            with _Txn(self.con):
                row = self.con.execute("SELECT name FROM coupon_issuers "
                                       "WHERE issuer_id = ?", (issuer_id,)).fetchone()
                if row is None:
                    self.con.execute("INSERT INTO coupon_issuers (issuer_id, name) "
                                     "VALUES (?, ?)", (issuer_id, name))
                elif row[0] != name:
                    raise CouponError(f"issuer {issuer_id!r} is registered as {row[0]!r}",
                                      code="REF_CONFLICT", details={"issuer_id": issuer_id})
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot register the issuer") from exc
        return Issuer(issuer_id, name)

    def issuers(self) -> list[Issuer]:
        """Every issuer, by id."""
        rows = self._read("SELECT issuer_id, name FROM coupon_issuers ORDER BY issuer_id")
        return [Issuer(*r) for r in rows]

    def define(self, definition: Definition) -> Definition:
        """Store a coupon definition. ``UNKNOWN_ISSUER`` if its issuer is not
        registered; repeating a definition is harmless, other terms under the same
        ``coupon_def_id`` are ``REF_CONFLICT`` (a definition never changes once
        coupons may have been issued from it)."""
        if not isinstance(definition, Definition):
            raise CouponError("define() takes a Definition", code="BAD_REQUEST")
        d = definition
        try:
            with _Txn(self.con):
                if self.con.execute("SELECT 1 FROM coupon_issuers WHERE issuer_id = ?",
                                    (d.issuer_id,)).fetchone() is None:
                    raise CouponError(f"no issuer {d.issuer_id!r}", code="UNKNOWN_ISSUER",
                                      details={"issuer_id": d.issuer_id})
                old = self._definition(d.coupon_def_id)
                if old is None:
                    self.con.execute(
                        f"INSERT INTO coupon_defs ({', '.join(_DEF_COLS)}) VALUES "
                        f"({', '.join('?' * len(_DEF_COLS))})",
                        tuple(getattr(d, c) for c in _DEF_COLS))
                elif old != d:
                    raise CouponError(f"coupon definition {d.coupon_def_id!r} exists with "
                                      "other terms", code="REF_CONFLICT",
                                      details={"coupon_def_id": d.coupon_def_id})
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot store the coupon definition") from exc
        return d

    def definition(self, coupon_def_id: str) -> Definition:
        """The definition ``coupon_def_id``; ``UNKNOWN_COUPON_DEF`` if there is none."""
        _ident(coupon_def_id, "coupon_def_id")
        try:
            d = self._definition(coupon_def_id)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the coupon definition") from exc
        if d is None:
            raise CouponError(f"no coupon definition {coupon_def_id!r}",
                              code="UNKNOWN_COUPON_DEF",
                              details={"coupon_def_id": coupon_def_id})
        return d

    def definitions(self, issuer_id: str | None = None) -> list[Definition]:
        """Every coupon definition (or ``issuer_id``'s), by id."""
        where, params = ("WHERE issuer_id = ?", (_ident(issuer_id, "issuer_id"),)) \
            if issuer_id is not None else ("", ())
        rows = self._read(f"SELECT {', '.join(_DEF_COLS)} FROM coupon_defs {where} "
                          "ORDER BY coupon_def_id", params)
        return [Definition(**dict(zip(_DEF_COLS, r))) for r in rows]

    def _definition(self, coupon_def_id: str) -> Definition | None:
        row = self.con.execute(f"SELECT {', '.join(_DEF_COLS)} FROM coupon_defs "
                               "WHERE coupon_def_id = ?", (coupon_def_id,)).fetchone()
        return None if row is None else Definition(**dict(zip(_DEF_COLS, row)))

    # ------------------------------------------------------------------------------
    # Wallets
    # ------------------------------------------------------------------------------
    def issue(self, coupon_def_id: str, customer_id: str, *, coupon_id: str | None = None,
              now: int) -> Coupon:
        """Put a coupon of ``coupon_def_id`` into ``customer_id``'s wallet.

        ``coupon_id`` (1–40 of ``A-Z a-z 0-9 . _ -``) defaults to ``C`` and 20
        random hex digits. Idempotent by ``coupon_id``: issuing it again to the same
        customer from the same definition returns the coupon as it is now (whatever
        its state); another customer or definition is ``REF_CONFLICT``. Refused:
        ``UNKNOWN_COUPON_DEF``; ``COUPON_EXPIRED`` at or after the definition's
        ``valid_until`` (a coupon may be issued before ``valid_from``);
        ``CUSTOMER_LIMIT`` when the customer already holds ``per_customer_limit``
        coupons of it (redeemed ones count)."""
        _ident(coupon_def_id, "coupon_def_id")
        _ident(customer_id, "customer_id")
        if coupon_id is None:
            coupon_id = "C" + secrets.token_hex(10)
        _ident(coupon_id, "coupon_id", _COUPON_ID)
        t = _now(now)
        try:
            with _Txn(self.con):
                old = self._coupon(coupon_id)
                if old is not None:
                    if (old.coupon_def_id, old.customer_id) != (coupon_def_id, customer_id):
                        raise _coupon_error("REF_CONFLICT", coupon_id,
                                            f"coupon {coupon_id!r} was issued from another "
                                            "definition or to another customer")
                    return old
                d = self._definition(coupon_def_id)
                if d is None:
                    raise CouponError(f"no coupon definition {coupon_def_id!r}",
                                      code="UNKNOWN_COUPON_DEF",
                                      details={"coupon_def_id": coupon_def_id})
                if t >= d.valid_until:
                    raise _coupon_error("COUPON_EXPIRED", coupon_id,
                                        f"coupon definition {coupon_def_id!r} expired at "
                                        f"{d.valid_until}", valid_until=d.valid_until)
                if d.per_customer_limit is not None:
                    (held,) = self.con.execute(
                        "SELECT COUNT(*) FROM coupons WHERE coupon_def_id = ? AND "
                        "customer_id = ?", (coupon_def_id, customer_id)).fetchone()
                    if held >= d.per_customer_limit:
                        raise _coupon_error("CUSTOMER_LIMIT", coupon_id,
                                            f"customer {customer_id!r} already has {held} "
                                            f"coupon(s) of {coupon_def_id!r}, the limit",
                                            limit=d.per_customer_limit)
                self.con.execute("INSERT INTO coupons (coupon_id, coupon_def_id, "
                                 "customer_id, state, order_no, issued_at) "
                                 "VALUES (?, ?, ?, 'issued', NULL, ?)",
                                 (coupon_id, coupon_def_id, customer_id, t))
                return Coupon(coupon_id, coupon_def_id, customer_id, "issued", None, t)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot issue the coupon") from exc

    def coupon(self, coupon_id: str) -> Coupon:
        """The coupon ``coupon_id`` as it is now; ``UNKNOWN_COUPON`` if never issued."""
        _ident(coupon_id, "coupon_id", _COUPON_ID)
        try:
            c = self._coupon(coupon_id)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the coupon") from exc
        if c is None:
            raise _coupon_error("UNKNOWN_COUPON", coupon_id, f"no coupon {coupon_id!r}")
        return c

    def wallet(self, customer_id: str) -> list[Coupon]:
        """Every coupon issued to ``customer_id`` (any state), in the order issued."""
        _ident(customer_id, "customer_id")
        rows = self._read("SELECT coupon_id, coupon_def_id, customer_id, state, order_no, "
                          "issued_at FROM coupons WHERE customer_id = ? "
                          "ORDER BY issued_at, rowid", (customer_id,))
        return [Coupon(*r) for r in rows]

    def _coupon(self, coupon_id: str) -> Coupon | None:
        row = self.con.execute("SELECT coupon_id, coupon_def_id, customer_id, state, "
                               "order_no, issued_at FROM coupons WHERE coupon_id = ?",
                               (coupon_id,)).fetchone()
        return None if row is None else Coupon(*row)

    def _read(self, sql: str, params=()) -> list:
        try:
            return self.con.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the coupon book") from exc

    # ------------------------------------------------------------------------------
    # The redemption ledger
    # ------------------------------------------------------------------------------
    def order(self, order_no: str) -> CouponOrder | None:
        """The coupons of ``order_no``, or ``None`` if no coupon was ever reserved
        for it (what a gateway asks after a crash)."""
        _ident(order_no, "order_no")
        rows = self._read("SELECT customer_id, state, store_id FROM coupon_orders "
                          "WHERE order_no = ?", (order_no,))
        if not rows:
            return None
        ids = self._read("SELECT coupon_id FROM coupons WHERE order_no = ? "
                         "ORDER BY coupon_id", (order_no,))
        return CouponOrder(order_no, rows[0][0], rows[0][1], rows[0][2],
                           tuple(r[0] for r in ids))

    def reserve(self, coupon_ids, *, order_no: str, customer_id: str,
                now: int) -> list[Reservation]:
        """Hold ``coupon_ids`` for ``order_no``: all of them or none.

        Each coupon must exist (``UNKNOWN_COUPON``), be ``customer_id``'s
        (``NOT_YOUR_COUPON``), be neither redeemed nor reserved for another order
        (``COUPON_USED``) and be valid at ``now`` (``COUPON_NOT_YET_VALID`` before
        the definition's ``valid_from``, ``COUPON_EXPIRED`` at or after its
        ``valid_until``). If any fails, nothing is reserved and the error is the
        first failing coupon's, with ``details["failures"]`` listing every failing
        coupon and its code. A coupon already reserved for this order is returned
        as it is (a retried request). The order must be new, ``open`` or
        ``released`` and belong to ``customer_id`` (``ORDER_CLOSED`` once committed
        or reversed; ``REF_CONFLICT`` for another customer's order). Returns one
        :class:`Reservation` per coupon, in the order asked (duplicates once)."""
        if not isinstance(coupon_ids, (list, tuple)):
            raise CouponError("coupon_ids must be a list of coupon ids", code="BAD_REQUEST",
                              details={"field": "coupon_ids"})
        ids = list(dict.fromkeys(_ident(c, "coupon_id", _COUPON_ID) for c in coupon_ids))
        if len(ids) > MAX_RESERVE:
            raise CouponError(f"at most {MAX_RESERVE} coupons per call, not {len(ids)}",
                              code="BAD_REQUEST", details={"field": "coupon_ids"})
        _ident(order_no, "order_no")
        _ident(customer_id, "customer_id")
        t = _now(now)
        try:
            with _Txn(self.con):
                self._open_order(order_no, customer_id)
                out: list[Reservation] = []
                failures: list[tuple[str, str, str]] = []
                fresh: list[str] = []
                for cid in ids:
                    row = self.con.execute(
                        "SELECT customer_id, state, order_no, reserved_at, coupon_def_id "
                        "FROM coupons WHERE coupon_id = ?", (cid,)).fetchone()
                    if row is None:
                        failures.append((cid, "UNKNOWN_COUPON", f"no coupon {cid!r}"))
                        continue
                    owner, state, held_for, reserved_at, def_id = row
                    if owner != customer_id:
                        failures.append((cid, "NOT_YOUR_COUPON",
                                         f"coupon {cid!r} is not {customer_id!r}'s"))
                        continue
                    d = self._definition(def_id)
                    if state == "reserved" and held_for == order_no:
                        out.append(Reservation(cid, order_no, customer_id, reserved_at, d))
                        continue
                    if state != "issued":
                        failures.append((cid, "COUPON_USED", f"coupon {cid!r} is already "
                                         + ("redeemed" if state == "redeemed"
                                            else "reserved for another order")))
                        continue
                    if t < d.valid_from:
                        failures.append((cid, "COUPON_NOT_YET_VALID",
                                         f"coupon {cid!r} is valid from {d.valid_from}"))
                        continue
                    if t >= d.valid_until:
                        failures.append((cid, "COUPON_EXPIRED",
                                         f"coupon {cid!r} expired at {d.valid_until}"))
                        continue
                    out.append(Reservation(cid, order_no, customer_id, t, d))
                    fresh.append(cid)
                if failures:
                    cid, code, msg = failures[0]
                    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
                    raise _coupon_error(code, cid, msg + more + "; nothing reserved",
                                        failures=[{"coupon_id": c, "code": k}
                                                  for c, k, _ in failures])
                self.con.executemany(
                    "UPDATE coupons SET state = 'reserved', order_no = ?, reserved_at = ? "
                    "WHERE coupon_id = ? AND state = 'issued'",
                    [(order_no, t, cid) for cid in fresh])
                return out
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot reserve the coupons") from exc

    def _open_order(self, order_no: str, customer_id: str) -> None:
        row = self.con.execute("SELECT customer_id, state FROM coupon_orders "
                               "WHERE order_no = ?", (order_no,)).fetchone()
        if row is None:
            self.con.execute("INSERT INTO coupon_orders (order_no, customer_id, state) "
                             "VALUES (?, ?, 'open')", (order_no, customer_id))
            return
        owner, state = row
        if owner != customer_id:
            raise CouponError(f"order {order_no!r} holds another customer's coupons",
                              code="REF_CONFLICT", details={"order_no": order_no})
        if state in ("committed", "reversed"):
            raise CouponError(f"order {order_no!r} is {state}; its coupons cannot change",
                              code="ORDER_CLOSED",
                              details={"order_no": order_no, "state": state})
        if state == "released":
            self.con.execute("UPDATE coupon_orders SET state = 'open' WHERE order_no = ?",
                             (order_no,))

    def _order_state(self, order_no: str) -> str | None:
        row = self.con.execute("SELECT state FROM coupon_orders WHERE order_no = ?",
                               (order_no,)).fetchone()
        return None if row is None else row[0]

    def commit(self, order_no: str, amounts: Mapping[str, int], *, store_id: str,
               now: int) -> list[ClearingRow]:
        """The sale is paid: redeem ``order_no``'s reserved coupons.

        ``amounts`` maps coupon id to the amount actually deducted (minor units,
        ≥ 0; at most the definition's ``amount_off_minor`` when it has one, else
        ``BAD_AMOUNT``). A coupon with an amount > 0 becomes ``redeemed`` and gets a
        clearing row (``store_id``, ``now``); reserved coupons with amount 0 or
        left out of ``amounts`` go back to ``issued`` (the basket did not use them).
        A key that is not reserved for this order is ``COUPON_NOT_RESERVED``.
        ``UNKNOWN_ORDER`` if nothing was ever reserved for it; ``ORDER_CLOSED``
        once released or reversed. Repeating a commit with the same ``amounts`` and
        ``store_id`` returns the same rows; other terms are ``REF_CONFLICT``.
        Returns the clearing rows of the order, oldest first."""
        _ident(order_no, "order_no")
        _ident(store_id, "store_id")
        t = _now(now)
        if not isinstance(amounts, Mapping):
            raise CouponError("amounts must be a map of coupon id to minor units",
                              code="BAD_REQUEST", details={"field": "amounts"})
        clean: dict[str, int] = {}
        for cid, amt in amounts.items():
            _ident(cid, "coupon_id", _COUPON_ID)
            if not _is_int(amt) or not 0 <= amt <= MAX_AMOUNT_MINOR:
                raise _coupon_error("BAD_AMOUNT", cid,
                                    f"amount for {cid!r} must be a whole number of "
                                    f"minor units ≥ 0, not {amt!r:.40}")
            clean[cid] = int(amt)
        terms = json.dumps({"store_id": store_id, "amounts": dict(sorted(clean.items()))},
                           separators=(",", ":"))
        try:
            with _Txn(self.con):
                row = self.con.execute("SELECT state, terms FROM coupon_orders "
                                       "WHERE order_no = ?", (order_no,)).fetchone()
                if row is None:
                    raise CouponError(f"no coupons were reserved for order {order_no!r}",
                                      code="UNKNOWN_ORDER", details={"order_no": order_no})
                state, old_terms = row
                if state == "committed":
                    if old_terms != terms:
                        raise CouponError(f"order {order_no!r} was committed with other "
                                          "amounts or another store", code="REF_CONFLICT",
                                          details={"order_no": order_no})
                    return self._clearing_rows("WHERE order_no = ? AND reversed = 0",
                                               (order_no,))
                if state != "open":
                    raise CouponError(f"order {order_no!r} is {state}", code="ORDER_CLOSED",
                                      details={"order_no": order_no, "state": state})
                held = {cid: def_id for cid, def_id in self.con.execute(
                    "SELECT coupon_id, coupon_def_id FROM coupons WHERE order_no = ? AND "
                    "state = 'reserved'", (order_no,))}
                defs = {def_id: self._definition(def_id) for def_id in set(held.values())}
                for cid, amt in clean.items():
                    if cid not in held:
                        raise _coupon_error("COUPON_NOT_RESERVED", cid,
                                            f"coupon {cid!r} is not reserved for order "
                                            f"{order_no!r}", order_no=order_no)
                    face = defs[held[cid]].amount_off_minor
                    if face is not None and amt > face:
                        raise _coupon_error("BAD_AMOUNT", cid,
                                            f"{amt} for coupon {cid!r} is more than "
                                            f"its {face} off", face_minor=face)
                for cid in sorted(held):
                    amt = clean.get(cid, 0)
                    if amt == 0:
                        self.con.execute("UPDATE coupons SET state = 'issued', order_no = "
                                         "NULL, reserved_at = NULL WHERE coupon_id = ?",
                                         (cid,))
                        continue
                    d = defs[held[cid]]
                    self.con.execute("UPDATE coupons SET state = 'redeemed' "
                                     "WHERE coupon_id = ?", (cid,))
                    self.con.execute(
                        "INSERT INTO coupon_clearing (issuer_id, coupon_id, coupon_def_id, "
                        "store_id, order_no, amount_minor, currency, redeemed_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (d.issuer_id, cid, d.coupon_def_id, store_id, order_no, amt,
                         d.currency, t))
                self.con.execute("UPDATE coupon_orders SET state = 'committed', "
                                 "store_id = ?, terms = ? WHERE order_no = ?",
                                 (store_id, terms, order_no))
                return self._clearing_rows("WHERE order_no = ? AND reversed = 0",
                                           (order_no,))
        except sqlite3.IntegrityError as exc:
            # Only the live-redemption index can say this: a coupon redeemed twice.
            raise CouponError(f"a coupon of order {order_no!r} is already redeemed: {exc}",
                              code="COUPON_USED", details={"order_no": order_no}) from exc
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot commit the coupons") from exc

    def release(self, order_no: str) -> list[str]:
        """The sale failed before payment: ``order_no``'s reserved coupons go back
        to ``issued`` and the order is ``released`` (reserving for it again reopens
        it). Returns the coupon ids released (``[]`` for an unknown or already
        released order). ``ORDER_CLOSED`` for a committed or reversed order: use
        :meth:`reverse`."""
        _ident(order_no, "order_no")
        try:
            with _Txn(self.con):
                state = self._order_state(order_no)
                if state is None or state == "released":
                    return []
                if state != "open":
                    raise CouponError(f"order {order_no!r} is {state}; reverse it instead",
                                      code="ORDER_CLOSED",
                                      details={"order_no": order_no, "state": state})
                return self._release(order_no)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot release the coupons") from exc

    def _release(self, order_no: str) -> list[str]:
        ids = [r[0] for r in self.con.execute(
            "SELECT coupon_id FROM coupons WHERE order_no = ? AND state = 'reserved' "
            "ORDER BY coupon_id", (order_no,))]
        self.con.execute("UPDATE coupons SET state = 'issued', order_no = NULL, "
                         "reserved_at = NULL WHERE order_no = ? AND state = 'reserved'",
                         (order_no,))
        self.con.execute("UPDATE coupon_orders SET state = 'released' WHERE order_no = ?",
                         (order_no,))
        return ids

    def reverse(self, order_no: str, *, now: int) -> list[str]:
        """The sale was refunded or its payment reversed: every coupon of
        ``order_no`` returns to ``issued``. Redeemed coupons' clearing rows are
        marked ``reversed`` at ``now`` (no longer billed) and the order becomes
        ``reversed`` (final); an order still ``open`` is released instead (the
        payment never completed). Returns the coupon ids returned to the wallet;
        ``[]`` for an unknown, released or already reversed order."""
        _ident(order_no, "order_no")
        t = _now(now)
        try:
            with _Txn(self.con):
                state = self._order_state(order_no)
                if state == "open":
                    return self._release(order_no)
                if state != "committed":
                    return []
                ids = [r[0] for r in self.con.execute(
                    "SELECT coupon_id FROM coupons WHERE order_no = ? "
                    "AND state = 'redeemed' ORDER BY coupon_id", (order_no,))]
                self.con.execute("UPDATE coupons SET state = 'issued', order_no = NULL, "
                                 "reserved_at = NULL WHERE order_no = ? AND "
                                 "state = 'redeemed'", (order_no,))
                self.con.execute("UPDATE coupon_clearing SET reversed = 1, reversed_at = ? "
                                 "WHERE order_no = ? AND reversed = 0", (t, order_no))
                self.con.execute("UPDATE coupon_orders SET state = 'reversed' "
                                 "WHERE order_no = ?", (order_no,))
                return ids
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot reverse the coupons") from exc

    # ------------------------------------------------------------------------------
    # Clearing
    # ------------------------------------------------------------------------------
    def clearing(self, issuer_id: str | None = None, since: int | None = None,
                 until: int | None = None) -> ClearingReport:
        """The redemptions issuers are billed for: rows redeemed in
        ``since <= redeemed_at < until`` (either bound optional), of ``issuer_id``
        or of all issuers, oldest first, reversed ones included and flagged; totals
        per issuer and currency over the rows not reversed."""
        where, params = [], []
        if issuer_id is not None:
            where.append("issuer_id = ?")
            params.append(_ident(issuer_id, "issuer_id"))
        if since is not None:
            where.append("redeemed_at >= ?")
            params.append(_now(since, "since"))
        if until is not None:
            where.append("redeemed_at < ?")
            params.append(_now(until, "until"))
        try:
            rows = self._clearing_rows(("WHERE " + " AND ".join(where)) if where else "",
                                       tuple(params))
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the clearing rows") from exc
        totals: dict[str, dict[str, int]] = {}
        counts: dict[str, dict[str, int]] = {}
        for r in rows:
            if r.reversed:
                continue
            per = totals.setdefault(r.issuer_id, {})
            per[r.currency] = per.get(r.currency, 0) + r.amount_minor
            n = counts.setdefault(r.issuer_id, {})
            n[r.currency] = n.get(r.currency, 0) + 1
        return ClearingReport(tuple(rows), totals, counts)

    def _clearing_rows(self, where: str, params: tuple) -> list[ClearingRow]:
        cur = self.con.execute(f"SELECT {', '.join(_CLEARING_COLS)} FROM coupon_clearing "
                               f"{where} ORDER BY redeemed_at, clearing_id", params)
        out = []
        for row in cur.fetchall():
            d = dict(zip(_CLEARING_COLS, row))
            d["reversed"] = bool(d["reversed"])
            out.append(ClearingRow(**d))
        return out
