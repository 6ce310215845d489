"""The pricing engine: a basket's lines, the store's promotions, the shopper's
coupons and loyalty points in; every line's price and every discount out.

Pure: no I/O, no database, no clock (``now`` is passed in, Unix seconds). Money is
an integer number of minor units everywhere; no float ever touches an amount.

**Canonical basket.** Scanning the same item twice may give two lines; the result
must not depend on that, nor on the order of the lines. So input lines are first
merged: lines with the same ``(gtin, unit price, member price, family,
manufacturer)`` become one *canonical line* whose quantity is the sum, and the
canonical lines are sorted by that key. Every later step works on canonical lines
and their *units* (unit ``j`` of line ``i``), and every tie is broken by that order
or by an id (``promo_id``, ``coupon_id``), never by input order. A
:class:`PricedLine` names the input ``line_ids`` it covers (sorted).

**Order of the steps** (each step works on what the previous ones left)::

    1 member prices    a line's member price replaces its unit price when a member
                       is given and the member price is lower
    2 item discounts   ItemDiscount, in promo_id order: an amount or a percentage off
                       each unit of a GTIN or a family
    3 multi-buys       MultiBuy, in promo_id order: "3 for 2" (cheapest units free)
                       or "3 for 5.00" (bundles of the dearest units)
    4 coupons          CouponUse, in coupon_id order: a coupon's value off ``units``
                       units of one matching line, at most one coupon per unit
    5 basket           BasketThreshold, in promo_id order, qualifying on the net
                       after steps 1-4: an amount or a percentage off the basket
    6 points           loyalty points as money, capped at what is left to pay

**Rounding.** A percentage is in basis points (``percent_bp``, 1..10000; 1000 is
10 %). Item-level percentages (steps 2 and 4) are rounded once per line over the
units they touch: ``(net × bp + 5000) // 10000``, i.e. ``floor(net × bp / 10000 +
1/2)``, round half up, integers only. A basket percentage (step 5) is rounded once
on the basket's net the same way.

**Allocation.** An amount that covers several units (a per-line percentage, a
bundle's saving, a coupon on two units) or several lines (steps 5 and 6) is split
pro rata by value with the *largest remainder* method (:func:`allocate_minor`):
everyone gets the floor of their exact share, and the minor units left go one each
to the largest fractional parts, ties to the earlier unit or line. The parts add up
to the amount exactly and none exceeds its own value, so Σ line nets == total and
no line or unit goes below zero.

**Promotions** are ignored (not an error) outside ``valid_from <= now <
valid_until`` (either bound may be absent) and, when ``members_only``, without a
member. Promotions without an ``exclusive_group`` stack; promotions sharing a group
never discount the same unit: :func:`price` judges each candidate *alone* on the
prices after step 1 and gives the units to the one that saves the shopper most
(ties: lowest ``promo_id``), then judges the rest on the units still free, and so
on. The units a winner *claims* are the ones it discounts (an item discount) or
puts into a deal (a multi-buy, paid units included); the others of the group may
use only the rest. Basket thresholds of one group: only the one worth most applies.
A group holds item-level promotions or basket thresholds, not both.

**Coupons** are refused as a whole call (``DUPLICATE_COUPON``) when one
``coupon_id`` is given twice, since a coupon is redeemed at most once. A coupon
that cannot apply is reported in :attr:`Priced.coupons_rejected` with a reason
(:data:`REJECT_REASONS`), never raised; a coupon worth more than what is left on
its units is capped to that (``capped``), so it takes the units to zero, never below.

**Errors** are :class:`PricingError` with a stable ``code`` and ``details``:
``BAD_LINE``, ``DUPLICATE_LINE_ID``, ``BAD_PROMOTION``, ``BAD_COUPON``,
``DUPLICATE_COUPON``, ``BAD_MEMBER``, ``BAD_POINTS``, ``BAD_REQUEST``.
``docs/promo/pricing.md`` has the rules in full and worked examples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

from lanecore.core.errors import LanecoreError

__all__ = [
    "PricingError", "Line", "Target", "ItemDiscount", "MultiBuy", "BasketThreshold",
    "Member", "CouponUse", "Promotion", "Adjustment", "PricedLine", "AppliedCoupon", "Priced",
    "price", "percent_minor", "allocate_minor",
    "ADJUSTMENT_KINDS", "REJECT_REASONS", "BP_SCALE", "MAX_QTY", "MAX_UNITS",
    "MAX_LINES", "MAX_PRICE_MINOR",
]

#: Adjustment kinds, in the order of the steps that make them.
ADJUSTMENT_KINDS = ("member_price", "item_discount", "multibuy", "coupon", "basket",
                    "points")
#: Why a coupon was not applied (the values of :attr:`Priced.coupons_rejected`).
REJECT_REASONS = (
    "NO_MATCHING_ITEM",       # no line of its GTIN/family (and issuer's manufacturer)
    "MIN_QTY_NOT_MET",        # fewer matching units than min_qty, or no line with `units`
    "ALREADY_COUPONED",       # every matching line's units already carry a coupon
    "NO_VALUE_LEFT",          # the units it would take are already free
)
#: 100 % in basis points.
BP_SCALE = 10_000
#: Bounds, so a bad request cannot make the per-unit work unbounded.
MAX_LINES = 1000
MAX_QTY = 9_999                # one input line
MAX_UNITS = 50_000             # the whole basket
MAX_PRICE_MINOR = 10 ** 15 - 1  # as the catalogue's
_MAX_TIME = 2 ** 40
_GTIN = re.compile(r"[0-9]{14}")
_KIND_RANK = {k: n for n, k in enumerate(ADJUSTMENT_KINDS)}


class PricingError(LanecoreError):
    """A pricing refusal with a stable ``code`` and machine-readable ``details``."""

    code = "PRICING_ERROR"


# --------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """One scanned line. ``unit_price_minor`` is the list price of one unit;
    ``member_price_minor`` the members' price of one unit, if any. A weighed or
    label-priced line gives ``amount_minor`` (the label's price): then ``qty`` must
    be 1, the line's unit price *is* ``amount_minor`` (``unit_price_minor`` is kept
    only as information, e.g. the price per kg) and a member price is the members'
    price of the whole label."""

    line_id: str
    gtin: str
    qty: int
    unit_price_minor: int
    family: str | None = None
    manufacturer: str | None = None
    member_price_minor: int | None = None
    amount_minor: int | None = None

    @property
    def effective_unit_price_minor(self) -> int:
        """The list price of one unit the engine uses: ``amount_minor`` when given."""
        return self.unit_price_minor if self.amount_minor is None else self.amount_minor


@dataclass(frozen=True)
class Target:
    """What a promotion or coupon applies to: exactly one of a GTIN-14 or a family."""

    gtin: str | None = None
    family: str | None = None

    def matches(self, gtin: str, family: str | None) -> bool:
        if self.gtin is not None:
            return gtin == self.gtin
        return family is not None and family == self.family

    def to_dict(self) -> dict:
        return {"gtin": self.gtin} if self.gtin is not None else {"family": self.family}


@dataclass(frozen=True)
class ItemDiscount:
    """``amount_off_minor`` or ``percent_bp`` off each unit of ``target`` (step 2),
    when the basket holds at least ``min_qty`` such units; at most ``max_units``
    units (the dearest first) when given. An amount off is capped per unit at the
    unit's value."""

    promo_id: str
    target: Target
    amount_off_minor: int | None = None
    percent_bp: int | None = None
    min_qty: int = 1
    max_units: int | None = None
    _: KW_ONLY
    valid_from: int | None = None
    valid_until: int | None = None
    members_only: bool = False
    exclusive_group: str | None = None


@dataclass(frozen=True)
class MultiBuy:
    """Buy ``buy_qty`` units of ``target``, pay for ``pay_qty`` ("3 for 2": the
    cheapest units of the basket's matching units are the free ones) or pay
    ``bundle_price_minor`` for them ("3 for 5.00": bundles of the dearest units, as
    long as a bundle saves). Repeats for every full group (step 3)."""

    promo_id: str
    target: Target
    buy_qty: int
    pay_qty: int | None = None
    bundle_price_minor: int | None = None
    _: KW_ONLY
    valid_from: int | None = None
    valid_until: int | None = None
    members_only: bool = False
    exclusive_group: str | None = None


@dataclass(frozen=True)
class BasketThreshold:
    """``amount_off_minor`` or ``percent_bp`` off the basket when its net after the
    item-level steps (1-4) is at least ``threshold_minor`` (step 5)."""

    promo_id: str
    threshold_minor: int
    amount_off_minor: int | None = None
    percent_bp: int | None = None
    _: KW_ONLY
    valid_from: int | None = None
    valid_until: int | None = None
    members_only: bool = False
    exclusive_group: str | None = None


Promotion = ItemDiscount | MultiBuy | BasketThreshold


@dataclass(frozen=True)
class Member:
    """The identified shopper: member prices and members-only promotions apply."""

    member_id: str
    tier: str | None = None


@dataclass(frozen=True)
class CouponUse:
    """A coupon to apply (step 4): ``amount_off_minor`` (the coupon's whole value)
    or ``percent_bp`` off ``units`` units of one line of ``target``, when the basket
    holds at least ``min_qty`` matching units. With ``issuer`` (a manufacturer's
    coupon), only lines whose ``manufacturer`` is the issuer match."""

    coupon_id: str
    target: Target
    amount_off_minor: int | None = None
    percent_bp: int | None = None
    min_qty: int = 1
    units: int = 1
    issuer: str | None = None


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Adjustment:
    """One discount on one line: ``kind`` (:data:`ADJUSTMENT_KINDS`), ``ref_id`` (the
    promotion, coupon or member id) and ``amount_minor`` > 0 taken off the line."""

    kind: str
    ref_id: str
    amount_minor: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ref_id": self.ref_id, "amount_minor": self.amount_minor}


@dataclass(frozen=True)
class PricedLine:
    """A canonical line priced. ``unit_price_minor`` is after the member price,
    ``list_price_minor`` before; ``gross_minor = qty × list_price_minor`` and
    ``net_minor = gross_minor − Σ adjustments``."""

    line_ids: tuple[str, ...]
    gtin: str
    qty: int
    unit_price_minor: int
    gross_minor: int
    adjustments: tuple[Adjustment, ...]
    net_minor: int
    list_price_minor: int

    def to_dict(self) -> dict:
        return {"line_ids": list(self.line_ids), "gtin": self.gtin, "qty": self.qty,
                "list_price_minor": self.list_price_minor,
                "unit_price_minor": self.unit_price_minor, "gross_minor": self.gross_minor,
                "adjustments": [a.to_dict() for a in self.adjustments],
                "net_minor": self.net_minor}


@dataclass(frozen=True)
class AppliedCoupon:
    """A coupon that was applied: ``amount_minor`` off ``units`` units of the line of
    ``gtin`` (``line_ids``); ``capped`` when its value was more than those units had
    left, so they went to zero."""

    coupon_id: str
    amount_minor: int
    gtin: str
    units: int
    capped: bool
    line_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"amount_minor": self.amount_minor, "gtin": self.gtin, "units": self.units,
                "capped": self.capped, "line_ids": list(self.line_ids)}


@dataclass(frozen=True)
class Priced:
    """The priced basket. ``total_minor == gross_minor − discount_minor`` ==
    Σ line ``net_minor``; ``discount_minor`` is every adjustment, member prices
    included. ``promotions_applied`` maps each promotion that saved something to
    its amount; ``points_redeemed`` is how many points to take off the member's
    account (can be fewer than asked, when the basket was smaller)."""

    lines: tuple[PricedLine, ...]
    gross_minor: int
    discount_minor: int
    total_minor: int
    coupons_applied: dict[str, AppliedCoupon] = field(default_factory=dict)
    coupons_rejected: dict[str, str] = field(default_factory=dict)
    promotions_applied: dict[str, int] = field(default_factory=dict)
    points_redeemed: int = 0
    points_value_minor: int = 0
    member_id: str | None = None

    def to_dict(self) -> dict:
        """JSON/MessagePack-friendly (string keys, ints, lists, ``null``)."""
        return {"lines": [ln.to_dict() for ln in self.lines],
                "gross_minor": self.gross_minor, "discount_minor": self.discount_minor,
                "total_minor": self.total_minor,
                "coupons_applied": {k: v.to_dict() for k, v in self.coupons_applied.items()},
                "coupons_rejected": dict(self.coupons_rejected),
                "promotions_applied": dict(self.promotions_applied),
                "points_redeemed": self.points_redeemed,
                "points_value_minor": self.points_value_minor,
                "member_id": self.member_id}


# --------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------

def percent_minor(amount_minor: int, percent_bp: int) -> int:
    """``percent_bp`` basis points of ``amount_minor``, round half up:
    ``floor(amount × bp / 10000 + 1/2)`` in integers. Never more than the amount
    for ``bp ≤ 10000``."""
    return (amount_minor * percent_bp + BP_SCALE // 2) // BP_SCALE


def allocate_minor(amount_minor: int, weights: Sequence[int]) -> list[int]:
    """Split ``amount_minor`` pro rata over ``weights`` (integers ≥ 0) by largest
    remainder: floors first, then one minor unit each to the largest fractional
    parts, ties to the earlier weight. The parts sum to ``amount_minor`` exactly and,
    when ``amount_minor ≤ Σ weights``, none is larger than its weight."""
    total = sum(weights)
    if amount_minor == 0:
        return [0] * len(weights)
    if total <= 0:
        raise ValueError("cannot allocate over weights that sum to zero")
    shares = [amount_minor * w // total for w in weights]
    left = amount_minor - sum(shares)
    order = sorted(range(len(weights)),
                   key=lambda k: (-(amount_minor * weights[k] % total), k))
    for k in order[:left]:
        shares[k] += 1
    return shares


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 64 and v.isprintable()


def _fail(code: str, message: str, **details) -> PricingError:
    return PricingError(message, code=code, details=details)


def _check_lines(lines) -> list[Line]:
    if isinstance(lines, (str, bytes)) or not isinstance(lines, Sequence):
        raise _fail("BAD_LINE", "lines must be a list of Line")
    if len(lines) > MAX_LINES:
        raise _fail("BAD_LINE", f"more than {MAX_LINES} lines", count=len(lines))
    seen: set[str] = set()
    units = 0
    for n, ln in enumerate(lines):
        def bad(why: str, fld: str) -> PricingError:
            return _fail("BAD_LINE", f"line {n}: {why}", index=n, field=fld)
        if not isinstance(ln, Line):
            raise bad("not a Line", "line")
        if not _is_id(ln.line_id):
            raise bad("line_id must be a non-empty printable string ≤ 64 chars", "line_id")
        if not (isinstance(ln.gtin, str) and _GTIN.fullmatch(ln.gtin)):
            raise bad(f"gtin must be 14 digits, got {ln.gtin!r}", "gtin")
        if not _is_int(ln.qty) or not 1 <= ln.qty <= MAX_QTY:
            raise bad(f"qty must be an integer 1..{MAX_QTY}, got {ln.qty!r}", "qty")
        for fld in ("unit_price_minor", "member_price_minor", "amount_minor"):
            v = getattr(ln, fld)
            if v is None and fld != "unit_price_minor":
                continue
            if not _is_int(v) or not 0 <= v <= MAX_PRICE_MINOR:
                raise bad(f"{fld} must be an integer 0..{MAX_PRICE_MINOR} of minor units, "
                          f"got {v!r}", fld)
        if ln.amount_minor is not None and ln.qty != 1:
            raise bad("a line with amount_minor (weighed or label-priced) has qty 1", "qty")
        for fld in ("family", "manufacturer"):
            v = getattr(ln, fld)
            if v is not None and not _is_id(v):
                raise bad(f"{fld} must be None or a non-empty printable string ≤ 64 chars",
                          fld)
        if ln.line_id in seen:
            raise _fail("DUPLICATE_LINE_ID", f"line_id {ln.line_id!r} is given twice",
                        index=n, line_id=ln.line_id)
        seen.add(ln.line_id)
        units += ln.qty
    if units > MAX_UNITS:
        raise _fail("BAD_LINE", f"{units} units is more than the {MAX_UNITS} priced at once",
                    units=units)
    return list(lines)


def _check_target(t, code: str, where: dict) -> None:
    if not isinstance(t, Target):
        raise _fail(code, "target must be a Target", field="target", **where)
    if (t.gtin is None) == (t.family is None):
        raise _fail(code, "a target names exactly one of gtin or family",
                    field="target", **where)
    if t.gtin is not None and not (isinstance(t.gtin, str) and _GTIN.fullmatch(t.gtin)):
        raise _fail(code, f"target gtin must be 14 digits, got {t.gtin!r}",
                    field="target", **where)
    if t.family is not None and not _is_id(t.family):
        raise _fail(code, "target family must be a non-empty printable string",
                    field="target", **where)


def _check_off(obj, code: str, where: dict) -> None:
    """Exactly one of amount_off_minor (1..MAX) or percent_bp (1..10000)."""
    amount, bp = obj.amount_off_minor, obj.percent_bp
    if (amount is None) == (bp is None):
        raise _fail(code, "give exactly one of amount_off_minor or percent_bp",
                    field="amount_off_minor", **where)
    if amount is not None and not (_is_int(amount) and 1 <= amount <= MAX_PRICE_MINOR):
        raise _fail(code, f"amount_off_minor must be an integer 1..{MAX_PRICE_MINOR}, "
                    f"got {amount!r}", field="amount_off_minor", **where)
    if bp is not None and not (_is_int(bp) and 1 <= bp <= BP_SCALE):
        raise _fail(code, f"percent_bp must be an integer 1..{BP_SCALE}, got {bp!r}",
                    field="percent_bp", **where)


def _check_count(v, lo: int, code: str, fld: str, where: dict, *, optional=False) -> None:
    if optional and v is None:
        return
    if not (_is_int(v) and lo <= v <= MAX_UNITS):
        raise _fail(code, f"{fld} must be an integer {lo}..{MAX_UNITS}, got {v!r}",
                    field=fld, **where)


def _check_promotions(promotions) -> list[Promotion]:
    if isinstance(promotions, (str, bytes)) or not isinstance(promotions, Sequence):
        raise _fail("BAD_PROMOTION", "promotions must be a list")
    seen: set[str] = set()
    levels: dict[str, set[str]] = {}
    for n, p in enumerate(promotions):
        where = {"index": n}
        code = "BAD_PROMOTION"
        if not isinstance(p, (ItemDiscount, MultiBuy, BasketThreshold)):
            raise _fail(code, f"promotion {n} is not an ItemDiscount, MultiBuy or "
                        "BasketThreshold", field="promotion", **where)
        if not _is_id(p.promo_id):
            raise _fail(code, "promo_id must be a non-empty printable string ≤ 64 chars",
                        field="promo_id", **where)
        where["promo_id"] = p.promo_id
        if p.promo_id in seen:
            raise _fail(code, f"promo_id {p.promo_id!r} is given twice",
                        field="promo_id", **where)
        seen.add(p.promo_id)
        for fld in ("valid_from", "valid_until"):
            v = getattr(p, fld)
            if v is not None and not (_is_int(v) and 0 <= v < _MAX_TIME):
                raise _fail(code, f"{fld} must be None or Unix seconds (an integer ≥ 0)",
                            field=fld, **where)
        if (p.valid_from is not None and p.valid_until is not None
                and p.valid_until <= p.valid_from):
            raise _fail(code, "valid_until must be after valid_from", field="valid_until",
                        **where)
        if not isinstance(p.members_only, bool):
            raise _fail(code, "members_only must be a bool", field="members_only", **where)
        if p.exclusive_group is not None and not _is_id(p.exclusive_group):
            raise _fail(code, "exclusive_group must be None or a non-empty string",
                        field="exclusive_group", **where)
        if isinstance(p, ItemDiscount):
            _check_target(p.target, code, where)
            _check_off(p, code, where)
            _check_count(p.min_qty, 1, code, "min_qty", where)
            _check_count(p.max_units, 1, code, "max_units", where, optional=True)
        elif isinstance(p, MultiBuy):
            _check_target(p.target, code, where)
            _check_count(p.buy_qty, 2, code, "buy_qty", where)
            if (p.pay_qty is None) == (p.bundle_price_minor is None):
                raise _fail(code, "give exactly one of pay_qty or bundle_price_minor",
                            field="pay_qty", **where)
            pay = p.pay_qty
            if pay is not None and not (_is_int(pay) and 1 <= pay < p.buy_qty):
                raise _fail(code, f"pay_qty must be an integer 1..buy_qty − 1, got "
                            f"{p.pay_qty!r}", field="pay_qty", **where)
            bundle = p.bundle_price_minor
            if bundle is not None and not (_is_int(bundle) and 1 <= bundle <= MAX_PRICE_MINOR):
                raise _fail(code, "bundle_price_minor must be an integer "
                            f"1..{MAX_PRICE_MINOR}", field="bundle_price_minor", **where)
        else:
            if not (_is_int(p.threshold_minor) and 0 <= p.threshold_minor <= MAX_PRICE_MINOR):
                raise _fail(code, f"threshold_minor must be an integer 0..{MAX_PRICE_MINOR}",
                            field="threshold_minor", **where)
            _check_off(p, code, where)
        if p.exclusive_group is not None:
            level = "basket" if isinstance(p, BasketThreshold) else "item"
            levels.setdefault(p.exclusive_group, set()).add(level)
            if len(levels[p.exclusive_group]) > 1:
                raise _fail(code, f"exclusive group {p.exclusive_group!r} mixes item-level "
                            "promotions and basket thresholds", field="exclusive_group",
                            **where)
    return list(promotions)


def _check_coupons(coupons) -> list[CouponUse]:
    if isinstance(coupons, (str, bytes)) or not isinstance(coupons, Sequence):
        raise _fail("BAD_COUPON", "coupons must be a list of CouponUse")
    seen: set[str] = set()
    for n, c in enumerate(coupons):
        where = {"index": n}
        code = "BAD_COUPON"
        if not isinstance(c, CouponUse):
            raise _fail(code, f"coupon {n} is not a CouponUse", field="coupon", **where)
        if not _is_id(c.coupon_id):
            raise _fail(code, "coupon_id must be a non-empty printable string ≤ 64 chars",
                        field="coupon_id", **where)
        where["coupon_id"] = c.coupon_id
        if c.coupon_id in seen:
            raise _fail("DUPLICATE_COUPON", f"coupon {c.coupon_id!r} is given twice; a "
                        "coupon is redeemed at most once", **where)
        seen.add(c.coupon_id)
        _check_target(c.target, code, where)
        _check_off(c, code, where)
        _check_count(c.min_qty, 1, code, "min_qty", where)
        _check_count(c.units, 1, code, "units", where)
        if c.issuer is not None and not _is_id(c.issuer):
            raise _fail(code, "issuer must be None or a non-empty printable string",
                        field="issuer", **where)
    return list(coupons)


# --------------------------------------------------------------------------------------
# The working basket
# --------------------------------------------------------------------------------------

Unit = tuple[int, int]   # (canonical line index, unit index)


@dataclass
class _Canon:
    """A canonical line: input lines of one merge key, summed."""

    gtin: str
    list_price: int
    member_price: int | None
    family: str | None
    manufacturer: str | None
    qty: int = 0
    line_ids: list[str] = field(default_factory=list)


def _canonicalise(lines: list[Line]) -> list[_Canon]:
    merged: dict[tuple, _Canon] = {}
    for ln in lines:
        key = (ln.gtin, ln.effective_unit_price_minor,
               -1 if ln.member_price_minor is None else ln.member_price_minor,
               ln.family or "", ln.manufacturer or "")
        c = merged.get(key)
        if c is None:
            c = merged[key] = _Canon(ln.gtin, ln.effective_unit_price_minor,
                                     ln.member_price_minor, ln.family, ln.manufacturer)
        c.qty += ln.qty
        c.line_ids.append(ln.line_id)
    return [merged[k] for k in sorted(merged)]


class _Work:
    """Per-unit values of the canonical lines while steps 1-4 run; then line nets."""

    def __init__(self, canon: list[_Canon]) -> None:
        self.canon = canon
        self.values: list[list[int]] = []
        self.couponed: list[list[bool]] = [[False] * c.qty for c in canon]
        self.adj: list[dict[tuple[str, str], int]] = [{} for _ in canon]

    def value(self, u: Unit) -> int:
        return self.values[u[0]][u[1]]

    def units(self, target: Target) -> list[Unit]:
        return [(i, j) for i, c in enumerate(self.canon) if target.matches(c.gtin, c.family)
                for j in range(c.qty)]

    def take(self, cuts: dict[Unit, int], kind: str, ref: str) -> int:
        """Take ``cuts[u]`` off each unit ``u``; record one adjustment per line."""
        total = 0
        for (i, j), amount in cuts.items():
            assert 0 <= amount <= self.values[i][j], (kind, ref, amount)
            if amount:
                self.values[i][j] -= amount
                key = (kind, ref)
                self.adj[i][key] = self.adj[i].get(key, 0) + amount
                total += amount
        return total


# --------------------------------------------------------------------------------------
# Plans: what a promotion would take off which units (pure: values are only read)
# --------------------------------------------------------------------------------------

def _plan_item(p: ItemDiscount, work: _Work, units: list[Unit], *,
               qualified: bool = False) -> tuple[dict[Unit, int], list[Unit]]:
    """(cuts, claimed units) of an item discount over ``units``."""
    if not qualified and len(units) < p.min_qty:
        return {}, []
    chosen = sorted(units, key=lambda u: (-work.value(u), u))
    if p.max_units is not None:
        chosen = chosen[:p.max_units]
    cuts: dict[Unit, int] = {}
    if p.amount_off_minor is not None:
        for u in chosen:
            cuts[u] = min(p.amount_off_minor, work.value(u))
    else:
        by_line: dict[int, list[Unit]] = {}
        for u in chosen:
            by_line.setdefault(u[0], []).append(u)
        for us in by_line.values():
            vals = [work.value(u) for u in us]
            amount = percent_minor(sum(vals), p.percent_bp)
            cuts.update(zip(us, allocate_minor(amount, vals)))
    return cuts, chosen


def _plan_multibuy(p: MultiBuy, work: _Work,
                   units: list[Unit]) -> tuple[dict[Unit, int], list[Unit]]:
    """(cuts, claimed units) of a multi-buy over ``units``."""
    groups = len(units) // p.buy_qty
    if groups == 0:
        return {}, []
    if p.pay_qty is not None:
        cheapest = sorted(units, key=lambda u: (work.value(u), u))
        free = cheapest[:groups * (p.buy_qty - p.pay_qty)]
        return {u: work.value(u) for u in free}, cheapest[:groups * p.buy_qty]
    dearest = sorted(units, key=lambda u: (-work.value(u), u))
    cuts: dict[Unit, int] = {}
    claimed: list[Unit] = []
    for g in range(groups):
        bundle = dearest[g * p.buy_qty:(g + 1) * p.buy_qty]
        vals = [work.value(u) for u in bundle]
        if sum(vals) <= p.bundle_price_minor:
            break      # the next bundles are no dearer: none of them saves either
        cuts.update(zip(bundle, allocate_minor(sum(vals) - p.bundle_price_minor, vals)))
        claimed += bundle
    return cuts, claimed


def _plan(p, work: _Work, units: list[Unit], *, qualified: bool = False):
    if isinstance(p, ItemDiscount):
        return _plan_item(p, work, units, qualified=qualified)
    return _plan_multibuy(p, work, units)


def _resolve_exclusive(item_promos: list, work: _Work) -> dict[str, frozenset[Unit]]:
    """For the item-level promotions that share an exclusive group: which units each
    may use (a promotion absent from the result does not apply). Judged on the
    current values (after member prices), each candidate alone."""
    groups: dict[str, list] = {}
    for p in item_promos:
        if p.exclusive_group is not None:
            groups.setdefault(p.exclusive_group, []).append(p)
    masks: dict[str, frozenset[Unit]] = {}
    for name in sorted(groups):
        left = sorted(groups[name], key=lambda p: p.promo_id)
        taken: set[Unit] = set()
        while left:
            best = None
            for p in left:
                units = [u for u in work.units(p.target) if u not in taken]
                cuts, claimed = _plan(p, work, units)
                saving = sum(cuts.values())
                if best is None or saving > best[0]:       # ties: lowest promo_id
                    best = (saving, p, claimed)
            saving, p, claimed = best
            if saving <= 0:
                break
            masks[p.promo_id] = frozenset(claimed)
            taken.update(claimed)
            left.remove(p)
    return masks


def _active(p, now, member) -> bool:
    if p.valid_from is not None and now < p.valid_from:
        return False
    if p.valid_until is not None and now >= p.valid_until:
        return False
    return member is not None or not p.members_only


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------

def price(lines: Sequence[Line], promotions: Sequence[Promotion] = (), *,
          now: int | float, member: Member | None = None,
          coupons: Sequence[CouponUse] = (), points_to_redeem: int = 0,
          points_value_minor_per_point: int = 1,
          points_available: int | None = None) -> Priced:
    """Price a basket (see the module docstring for the steps and rules).

    ``now`` is Unix seconds, compared with each promotion's ``valid_from`` /
    ``valid_until``. ``points_to_redeem`` points are worth
    ``points_value_minor_per_point`` minor units each and need a ``member``; with
    ``points_available`` (the member's balance) asking for more is ``BAD_POINTS``.
    Points are capped at what is left to pay, in whole points.

    Raises :class:`PricingError`: ``BAD_LINE``, ``DUPLICATE_LINE_ID``,
    ``BAD_PROMOTION``, ``BAD_COUPON``, ``DUPLICATE_COUPON``, ``BAD_MEMBER``,
    ``BAD_POINTS``, ``BAD_REQUEST`` (``now``). Pure: nothing passed in is changed."""
    if not (isinstance(now, (int, float)) and not isinstance(now, bool)
            and 0 <= now < _MAX_TIME):
        raise _fail("BAD_REQUEST", f"now must be Unix seconds, got {now!r}", field="now")
    lines = _check_lines(lines)
    promotions = _check_promotions(promotions)
    coupons = _check_coupons(coupons)
    if member is not None and not (isinstance(member, Member) and _is_id(member.member_id)
                                   and (member.tier is None or _is_id(member.tier))):
        raise _fail("BAD_MEMBER", "member must be None or a Member with a non-empty "
                    "member_id (and tier None or a string)", field="member")
    if not _is_int(points_to_redeem) or points_to_redeem < 0:
        raise _fail("BAD_POINTS", f"points_to_redeem must be an integer ≥ 0, got "
                    f"{points_to_redeem!r}", field="points_to_redeem")
    if not (_is_int(points_value_minor_per_point)
            and 1 <= points_value_minor_per_point <= MAX_PRICE_MINOR):
        raise _fail("BAD_POINTS", "points_value_minor_per_point must be an integer ≥ 1",
                    field="points_value_minor_per_point")
    if points_available is not None and not (_is_int(points_available)
                                             and points_available >= 0):
        raise _fail("BAD_POINTS", "points_available must be None or an integer ≥ 0",
                    field="points_available")
    if points_available is not None and points_to_redeem > points_available:
        raise _fail("BAD_POINTS", f"{points_to_redeem} points asked, the member has "
                    f"{points_available}", field="points_to_redeem",
                    points_to_redeem=points_to_redeem, points_available=points_available)
    if points_to_redeem and member is None:
        raise _fail("BAD_POINTS", "points are redeemed from a member's account: give the "
                    "member", field="points_to_redeem")

    canon = _canonicalise(lines)
    work = _Work(canon)
    live = sorted((p for p in promotions if _active(p, now, member)),
                  key=lambda p: p.promo_id)
    applied: dict[str, int] = {}

    # 1 member prices: only ever lower a price.
    unit_prices = []
    for i, c in enumerate(canon):
        u = c.list_price
        if member is not None and c.member_price is not None and c.member_price < u:
            work.adj[i][("member_price", member.member_id)] = c.qty * (u - c.member_price)
            u = c.member_price
        unit_prices.append(u)
        work.values.append([u] * c.qty)

    # 2, 3 item discounts then multi-buys; exclusive groups judged after step 1.
    item_level = [p for p in live if not isinstance(p, BasketThreshold)]
    masks = _resolve_exclusive(item_level, work)
    for kind, cls in (("item_discount", ItemDiscount), ("multibuy", MultiBuy)):
        for p in item_level:
            if not isinstance(p, cls):
                continue
            units = work.units(p.target)
            if p.exclusive_group is not None:
                if p.promo_id not in masks:
                    continue
                units = [u for u in units if u in masks[p.promo_id]]
            cuts, _ = _plan(p, work, units, qualified=p.exclusive_group is not None)
            saved = work.take(cuts, kind, p.promo_id)
            if saved:
                applied[p.promo_id] = saved

    # 4 coupons, in coupon_id order, one coupon per unit.
    coupons_applied: dict[str, AppliedCoupon] = {}
    rejected: dict[str, str] = {}
    for cp in sorted(coupons, key=lambda c: c.coupon_id):
        matching = [i for i, c in enumerate(canon) if cp.target.matches(c.gtin, c.family)
                    and (cp.issuer is None or c.manufacturer == cp.issuer)]
        if not matching:
            rejected[cp.coupon_id] = "NO_MATCHING_ITEM"
            continue
        if (sum(canon[i].qty for i in matching) < cp.min_qty
                or max(canon[i].qty for i in matching) < cp.units):
            rejected[cp.coupon_id] = "MIN_QTY_NOT_MET"
            continue
        best = None
        for i in matching:
            free = [j for j in range(canon[i].qty) if not work.couponed[i][j]]
            if len(free) < cp.units:
                continue
            chosen = sorted(free, key=lambda j: (-work.values[i][j], j))[:cp.units]
            left = sum(work.values[i][j] for j in chosen)
            if cp.amount_off_minor is not None:
                worth = min(cp.amount_off_minor, left)
            else:
                worth = percent_minor(left, cp.percent_bp)
            if best is None or worth > best[0]:            # ties: the earlier line
                best = (worth, i, chosen, left)
        if best is None:
            rejected[cp.coupon_id] = "ALREADY_COUPONED"
            continue
        worth, i, chosen, left = best
        if worth == 0:
            rejected[cp.coupon_id] = "NO_VALUE_LEFT"
            continue
        vals = [work.values[i][j] for j in chosen]
        cuts = {(i, j): a for j, a in zip(chosen, allocate_minor(worth, vals))}
        taken = work.take(cuts, "coupon", cp.coupon_id)
        assert taken == worth
        for j in chosen:
            work.couponed[i][j] = True
        coupons_applied[cp.coupon_id] = AppliedCoupon(
            cp.coupon_id, worth, canon[i].gtin, cp.units,
            cp.amount_off_minor is not None and cp.amount_off_minor > left,
            tuple(sorted(canon[i].line_ids)))

    # 5 basket thresholds, qualifying on the net after steps 1-4.
    nets = [sum(v) for v in work.values]

    def take_basket(amount: int, kind: str, ref: str) -> None:
        for i, a in enumerate(allocate_minor(amount, nets)):
            if a:
                assert a <= nets[i]
                nets[i] -= a
                work.adj[i][(kind, ref)] = work.adj[i].get((kind, ref), 0) + a

    item_net = sum(nets)
    qualifying = [p for p in live if isinstance(p, BasketThreshold)
                  and item_net >= p.threshold_minor]

    def alone(p: BasketThreshold) -> int:
        if p.amount_off_minor is not None:
            return min(p.amount_off_minor, item_net)
        return percent_minor(item_net, p.percent_bp)

    best_of_group: dict[str, BasketThreshold] = {}
    for p in qualifying:                                  # promo_id order: ties keep the first
        g = p.exclusive_group
        if g is not None and (g not in best_of_group or alone(p) > alone(best_of_group[g])):
            best_of_group[g] = p
    for p in qualifying:
        if p.exclusive_group is not None and best_of_group[p.exclusive_group] is not p:
            continue
        left = sum(nets)
        amount = (min(p.amount_off_minor, left) if p.amount_off_minor is not None
                  else percent_minor(left, p.percent_bp))
        if amount:
            take_basket(amount, "basket", p.promo_id)
            applied[p.promo_id] = amount

    # 6 points, in whole points, never more than is left to pay.
    redeemed = min(points_to_redeem, sum(nets) // points_value_minor_per_point)
    points_value = redeemed * points_value_minor_per_point
    if points_value:
        take_basket(points_value, "points", member.member_id)

    # The result, and the invariants that make it a price.
    priced = []
    for i, c in enumerate(canon):
        ordered = sorted(work.adj[i].items(), key=lambda kv: (_KIND_RANK[kv[0][0]], kv[0][1]))
        adjs = tuple(Adjustment(k, r, a) for (k, r), a in ordered if a)
        gross = c.qty * c.list_price
        assert all(a.amount_minor > 0 for a in adjs)
        assert nets[i] >= 0 and nets[i] == gross - sum(a.amount_minor for a in adjs)
        priced.append(PricedLine(tuple(sorted(c.line_ids)), c.gtin, c.qty, unit_prices[i],
                                 gross, adjs, nets[i], c.list_price))
    gross = sum(pl.gross_minor for pl in priced)
    total = sum(nets)
    assert 0 <= total <= gross
    return Priced(tuple(priced), gross, gross - total, total, coupons_applied, rejected,
                  dict(sorted(applied.items())), redeemed, points_value,
                  member.member_id if member is not None else None)
