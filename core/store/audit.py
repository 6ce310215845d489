"""Scan-and-go audits: which handheld orders an attendant checks, how much of each,
and how far the store trusts each shopper (docs/store/handheld.md, REFERENCE.md §5).

**Whether to audit.** A shopper's *trust* ``t`` is a number in [0, 1] (1: nothing
against them). The store's base chance ``r`` is the policy's rate for its risk level
(shopreme's 5 / 10 / 15 % for low / medium / high risk stores), or ``base_rate`` (the
SAP/GK offline fallback's 0.05) when no risk level is given. Then
:func:`audit_probability` is ::

    p(t) = 1                                   t ≤ trust_floor
    p(t) = r + (1 − r) · ((1 − t) / (1 − trust_floor)) ** curve_power   otherwise

so a fully trusted shopper is audited at exactly the store's rate, the chance climbs
smoothly to certainty at the floor, and with the default ``curve_power`` 2 the curve
is flat near t = 1 — a void or two barely moves it — and steep near the floor.

**What to check.** A basket of at most ``small_basket_items`` items (sum of line
quantities) gets a *visual* check; a larger one a *rescan* of ``k`` of its ``n``
lines, ``k = min(n, clamp(⌈rescan_share · n⌉, min_items, max_items))`` (shopreme: 30 %
of items, min 1, max 10), the lines chosen uniformly without replacement by the
caller's ``random.Random``. Each decision draws exactly one ``rng.random()`` (then
``rng.sample`` for a rescan), so a seeded generator reproduces every decision.

**Trust.** Every shopper starts at 1.0. Events move it (:func:`update_trust`)::

    penalty event, n times:  t ← t · (1 − w) ** n
    clean audit:             t ← 1 − (1 − t) · (1 − clean_gain)

with ``w`` = ``void_penalty`` (a removed line, 0.02), ``unknown_penalty`` (a scan of
an unknown item, 0.05), ``weigh_alarm_penalty`` (an exit-lane weight alarm, 0.15),
``discrepancy_penalty`` (a failed audit, 0.5). A clean audit wins back
``clean_gain`` (10 %) of the lost trust: losing is fast, regaining slow (the Walmart
trust score of WO2019177714 falls with voids and unknown items). Both maps keep t in
[0, 1]. With the defaults, two failed audits (1 → 0.5 → 0.25) reach the floor 0.25:
every later trip is audited until clean audits lift the score.

**Persistence.** :class:`TrustScore` keeps scores in table ``trust`` (and idempotent
events in ``trust_events``); :class:`Audits` keeps outcomes in table ``audits``, one
row per order (idempotent by ``order_no``), and applies each outcome to the shopper's
trust in the same transaction. The queue (``audit_queue``, :meth:`Audits.request`,
:meth:`Audits.resolve`) keeps one decision per order — asked again, the stored one,
never a fresh draw — pending until an attendant records its outcome. Both work on the caller's ``sqlite3`` connection in
autocommit mode, each change one ``BEGIN IMMEDIATE`` transaction or a savepoint inside
the caller's.

**Errors** are :class:`AuditError` with a stable ``code`` and a ``details`` map:
BAD_POLICY, BAD_TRUST, BAD_RISK, BAD_ORDER, BAD_OUTCOME, BAD_EVENT, NOT_AUDITED,
UNKNOWN_AUDIT, AUDIT_CONFLICT, REF_CONFLICT, BAD_REQUEST, DB_ERROR, DB_BUSY.
"""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError

__all__ = [
    "AUDIT_KINDS", "DEFAULT_POLICY", "FINDINGS", "OUTCOMES", "QUEUE_STATES",
    "SAP_GK_FALLBACK", "TRUST_EVENTS",
    "AuditDecision", "AuditError", "AuditPolicy", "Audits", "TrustScore",
    "audit_probability", "decide", "rescan_count", "update_trust",
]

AUDIT_KINDS = ("none", "visual", "rescan")
OUTCOMES = ("clean", "discrepancy")
#: What an attendant made of a discrepancy.
FINDINGS = ("theft", "mistake")
#: An order's place in the audit queue (:meth:`Audits.request`): not chosen, waiting
#: for an attendant, checked.
QUEUE_STATES = ("none", "pending", "done")
#: Events that move a shopper's trust, and the policy field holding each one's weight.
TRUST_EVENTS = {"void": "void_penalty", "unknown_item": "unknown_penalty",
                "weigh_alarm": "weigh_alarm_penalty",
                "discrepancy": "discrepancy_penalty", "clean_audit": "clean_gain"}
_COUNTERS = {"void": "voids", "unknown_item": "unknown_items", "weigh_alarm": "weigh_alarms",
             "discrepancy": "discrepancies", "clean_audit": "clean_audits"}

_ID_RE = re.compile(r"[A-Za-z0-9._:@+-]{1,64}")
_SAVEPOINT = "lanecore_audit"
#: Most entries of ``found`` kept with one audit.
MAX_FOUND = 500


class AuditError(LanecoreError):
    """An audit request refused, with a stable ``code`` and a ``details`` map."""

    code = "AUDIT_ERROR"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditPolicy:
    """How a store audits scan-and-go orders and scores its shoppers' trust.

    Rates and shares are fractions in [0, 1]; item bounds are counts. See the module
    docstring for the curve and the trust formula. Raises AuditError BAD_POLICY for
    a value out of range."""

    #: Chance of a fully trusted shopper's audit when no store risk is given
    #: (SAP/GK's offline fallback, 0.05).
    base_rate: float = 0.05
    #: Chance by store risk level (shopreme: 5 / 10 / 15 %).
    risk_rates: Mapping[str, float] = field(
        default_factory=lambda: {"low": 0.05, "medium": 0.10, "high": 0.15})
    #: Share of a larger basket's lines rescanned, and the bounds on their number.
    rescan_share: float = 0.3
    min_items: int = 1
    max_items: int = 10
    #: Baskets of at most this many items get a visual check instead of a rescan.
    small_basket_items: int = 3
    #: At or below this trust every order is audited.
    trust_floor: float = 0.25
    #: Shape of the curve between the floor and full trust (1: straight line).
    curve_power: float = 2.0
    #: Trust lost per event: t ← t · (1 − penalty).
    void_penalty: float = 0.02
    unknown_penalty: float = 0.05
    weigh_alarm_penalty: float = 0.15
    discrepancy_penalty: float = 0.5
    #: Share of the lost trust a clean audit wins back.
    clean_gain: float = 0.1

    def __post_init__(self) -> None:
        def bad(name, value, want):
            raise AuditError(f"audit policy {name} = {value!r:.40} must be {want}",
                             code="BAD_POLICY", details={"field": name})

        for name in ("base_rate", "rescan_share", "void_penalty", "unknown_penalty",
                     "weigh_alarm_penalty", "discrepancy_penalty", "clean_gain"):
            v = getattr(self, name)
            if not _is_num(v) or not 0 <= v <= 1:
                bad(name, v, "a number in [0, 1]")
        if not isinstance(self.risk_rates, Mapping) or not self.risk_rates:
            bad("risk_rates", self.risk_rates, "a non-empty map of risk level to rate")
        for k, v in self.risk_rates.items():
            if not isinstance(k, str) or not _is_num(v) or not 0 <= v <= 1:
                bad("risk_rates", {k: v}, "risk level (text) → a number in [0, 1]")
        # A private copy: a frozen policy must not change under its holder.
        object.__setattr__(self, "risk_rates", dict(self.risk_rates))
        if not _is_num(self.trust_floor) or not 0 <= self.trust_floor < 1:
            bad("trust_floor", self.trust_floor, "a number in [0, 1)")
        if not _is_num(self.curve_power) or self.curve_power <= 0:
            bad("curve_power", self.curve_power, "a number > 0")
        if not _is_int(self.min_items) or self.min_items < 1:
            bad("min_items", self.min_items, "an integer ≥ 1")
        if not _is_int(self.max_items) or self.max_items < self.min_items:
            bad("max_items", self.max_items, f"an integer ≥ min_items ({self.min_items})")
        if not _is_int(self.small_basket_items) or self.small_basket_items < 0:
            bad("small_basket_items", self.small_basket_items, "an integer ≥ 0")

    def rate(self, store_risk: str | None) -> float:
        """The audit chance of a fully trusted shopper: ``risk_rates[store_risk]``,
        or ``base_rate`` for None. Raises BAD_RISK for an unknown level."""
        if store_risk is None:
            return float(self.base_rate)
        try:
            return float(self.risk_rates[store_risk])
        except (KeyError, TypeError):
            raise AuditError(f"store risk {store_risk!r:.40} is not one of "
                             f"{', '.join(sorted(self.risk_rates))}", code="BAD_RISK",
                             details={"store_risk": str(store_risk)[:40]}) from None

    def decide(self, order, *, shopper_trust: float, store_risk: str | None,
               rng: random.Random) -> AuditDecision:
        """:func:`decide` under this policy."""
        return decide(order, shopper_trust=shopper_trust, store_risk=store_risk, rng=rng,
                      policy=self)


#: shopreme's spot checks by store risk (the defaults).
DEFAULT_POLICY = AuditPolicy()
#: SAP/GK scan-and-go's offline fallback: 5 % of trips, half the lines rescanned
#: (min 1, max 5), no visual checks (``decide(..., store_risk=None)``).
SAP_GK_FALLBACK = AuditPolicy(base_rate=0.05, rescan_share=0.5, min_items=1, max_items=5,
                              small_basket_items=0)


@dataclass(frozen=True)
class AuditDecision:
    """What the attendant does with one order.

    ``audit``: whether it is checked; ``kind``: "none", "visual" or "rescan";
    ``items``: the 0-based indices into the order's lines to rescan, ascending
    (empty unless a rescan); ``reason``: ``trust_floor`` (trust at or below the
    floor), ``spot_check`` (drawn), ``not_selected`` or ``empty_order``;
    ``probability``: the audit chance the draw was made against."""

    audit: bool
    kind: str
    items: list[int]
    reason: str
    probability: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AuditDecision:
        """The decision from its :meth:`to_dict` (e.g. as it came over the wire).
        Raises BAD_REQUEST for a malformed one."""
        try:
            dec = cls(audit=d["audit"], kind=d["kind"], items=list(d["items"]),
                      reason=d["reason"], probability=d.get("probability", 0.0))
        except (KeyError, TypeError) as exc:
            raise AuditError(f"not an audit decision: {exc}", code="BAD_REQUEST") from None
        _check_decision(dec)
        return dec


def _check_decision(dec) -> AuditDecision:
    if isinstance(dec, Mapping):
        return AuditDecision.from_dict(dec)
    if not isinstance(dec, AuditDecision):
        raise AuditError("decision must be an AuditDecision or its dict",
                         code="BAD_REQUEST")
    ok = (isinstance(dec.audit, bool) and dec.kind in AUDIT_KINDS
          and (dec.kind == "none") == (not dec.audit)
          and isinstance(dec.items, list) and all(_is_int(i) and i >= 0 for i in dec.items)
          and (dec.kind == "rescan" or not dec.items)
          and isinstance(dec.reason, str) and _is_num(dec.probability))
    if not ok:
        raise AuditError(f"inconsistent audit decision {dec!r:.120}", code="BAD_REQUEST")
    return dec


# --------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------

def _trust(value, what: str = "shopper_trust") -> float:
    if not _is_num(value) or not 0 <= value <= 1:
        raise AuditError(f"{what} must be a number in [0, 1], got {value!r:.40}",
                         code="BAD_TRUST", details={"field": what})
    return float(value)


def audit_probability(trust: float, store_risk: str | None,
                      policy: AuditPolicy = DEFAULT_POLICY) -> float:
    """Chance in [0, 1] that an order of a shopper with ``trust`` (in [0, 1]) is
    audited in a store of risk level ``store_risk`` (None: the policy's
    ``base_rate``). 1 at or below ``trust_floor``; the store's rate at trust 1;
    ``r + (1 − r)·((1 − t)/(1 − floor))**curve_power`` between (never decreasing
    as trust falls). Raises BAD_TRUST, BAD_RISK."""
    t = _trust(trust, "trust")
    r = policy.rate(store_risk)
    if t <= policy.trust_floor:
        return 1.0
    x = (1.0 - t) / (1.0 - policy.trust_floor)
    return min(1.0, r + (1.0 - r) * x ** policy.curve_power)


def rescan_count(n_lines: int, policy: AuditPolicy = DEFAULT_POLICY) -> int:
    """Lines rescanned out of ``n_lines``: ``⌈rescan_share · n⌉`` held within
    [min_items, max_items] and never more than ``n`` (0 for no lines)."""
    if not _is_int(n_lines) or n_lines < 0:
        raise AuditError(f"n_lines must be an integer ≥ 0, got {n_lines!r:.40}",
                         code="BAD_REQUEST")
    if n_lines == 0:
        return 0
    # round() first: 0.3 · 10 is 3.0000000000000004 in binary, and must stay 3.
    k = math.ceil(round(policy.rescan_share * n_lines, 9))
    return min(n_lines, max(policy.min_items, min(policy.max_items, k)))


def _order_lines(order) -> tuple[list, int]:
    """(lines, items) of an order: a map with ``lines`` (as BasketStore.order and
    submit return it; ``n_items`` used when present) or a plain list of lines."""
    if isinstance(order, Mapping):
        lines = order.get("lines")
        n_items = order.get("n_items")
    else:
        lines, n_items = order, None
    if not isinstance(lines, Sequence) or isinstance(lines, (str, bytes)):
        raise AuditError("order must be a map with a list of lines, or a list of lines",
                         code="BAD_ORDER")
    lines = list(lines)
    if n_items is None:
        n_items = 0
        for i, ln in enumerate(lines):
            qty = ln.get("qty", 1) if isinstance(ln, Mapping) else None
            if not _is_int(qty) or qty < 1:
                raise AuditError(f"order line {i} has no quantity ≥ 1", code="BAD_ORDER",
                                 details={"index": i})
            n_items += qty
    elif not _is_int(n_items) or n_items < 0:
        raise AuditError(f"order n_items {n_items!r:.40} is not a count", code="BAD_ORDER")
    return lines, n_items


def decide(order, *, shopper_trust: float, store_risk: str | None, rng: random.Random,
           policy: AuditPolicy = DEFAULT_POLICY) -> AuditDecision:
    """Whether and how to audit ``order`` (a map with ``lines`` — BasketStore's order
    or submit answer — or a list of lines), for a shopper of trust ``shopper_trust``
    in a store of risk ``store_risk`` ("low"/"medium"/"high", None: base rate).

    Draws one ``rng.random()`` against :func:`audit_probability`; a chosen order of
    at most ``small_basket_items`` items gets a visual check, a larger one a rescan
    of :func:`rescan_count` lines drawn with ``rng.sample`` (indices ascending). An
    order without lines is never audited (and draws nothing). Raises BAD_ORDER,
    BAD_TRUST, BAD_RISK, BAD_REQUEST (``rng`` without ``random``/``sample``)."""
    if not (callable(getattr(rng, "random", None)) and callable(getattr(rng, "sample", None))):
        raise AuditError("rng must be a random.Random (seed it to reproduce decisions)",
                         code="BAD_REQUEST")
    lines, n_items = _order_lines(order)
    p = audit_probability(shopper_trust, store_risk, policy)
    if not lines:
        return AuditDecision(False, "none", [], "empty_order", p)
    # Always one draw, even at p = 1, so a seeded stream stays aligned across shoppers.
    u = rng.random()
    if not u < p:
        return AuditDecision(False, "none", [], "not_selected", p)
    reason = "trust_floor" if shopper_trust <= policy.trust_floor else "spot_check"
    if n_items <= policy.small_basket_items:
        return AuditDecision(True, "visual", [], reason, p)
    k = rescan_count(len(lines), policy)
    return AuditDecision(True, "rescan", sorted(rng.sample(range(len(lines)), k)), reason, p)


def update_trust(trust: float, event: str, n: int = 1,
                 policy: AuditPolicy = DEFAULT_POLICY) -> float:
    """Trust after ``n`` events of kind ``event`` (one of :data:`TRUST_EVENTS`):
    ``t · (1 − w)**n`` for a penalty, ``1 − (1 − t)·(1 − clean_gain)**n`` for clean
    audits. Stays in [0, 1]. Raises BAD_TRUST, BAD_EVENT, BAD_REQUEST (n not an
    integer ≥ 0)."""
    t = _trust(trust, "trust")
    if event not in TRUST_EVENTS:
        raise AuditError(f"trust event {event!r:.40} is not one of "
                         f"{', '.join(TRUST_EVENTS)}", code="BAD_EVENT",
                         details={"event": str(event)[:40]})
    if not _is_int(n) or n < 0:
        raise AuditError(f"n must be an integer ≥ 0, got {n!r:.40}", code="BAD_REQUEST",
                         details={"field": "n"})
    w = getattr(policy, TRUST_EVENTS[event])
    if event == "clean_audit":
        # (max: in floating point 1 − (1 − t)·… can round a hair below t)
        out = max(t, 1.0 - (1.0 - t) * (1.0 - w) ** n)
    else:
        out = min(t, t * (1.0 - w) ** n)
    return min(1.0, max(0.0, out))


# --------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trust (
        shopper       TEXT PRIMARY KEY,
        score         REAL NOT NULL CHECK (score BETWEEN 0 AND 1),
        voids         INTEGER NOT NULL DEFAULT 0,
        unknown_items INTEGER NOT NULL DEFAULT 0,
        weigh_alarms  INTEGER NOT NULL DEFAULT 0,
        discrepancies INTEGER NOT NULL DEFAULT 0,
        clean_audits  INTEGER NOT NULL DEFAULT 0,
        updated_at    REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS trust_events (
        ref         TEXT PRIMARY KEY,
        shopper     TEXT NOT NULL,
        event       TEXT NOT NULL,
        n           INTEGER NOT NULL,
        score_after REAL NOT NULL,
        at          REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audits (
        order_no     TEXT PRIMARY KEY,
        shopper      TEXT,
        kind         TEXT NOT NULL CHECK (kind IN ('visual', 'rescan')),
        items        TEXT NOT NULL,
        reason       TEXT NOT NULL,
        probability  REAL NOT NULL,
        outcome      TEXT NOT NULL CHECK (outcome IN ('clean', 'discrepancy')),
        found        TEXT NOT NULL,
        trust_before REAL,
        trust_after  REAL,
        recorded_at  REAL NOT NULL,
        staff        TEXT,
        finding      TEXT,
        principal    TEXT)""",
    # the decisions made for orders (Audits.request): one per order, so a shopper
    # cannot ask again for a fresh draw; ``state`` none (not chosen), pending (an
    # attendant is to check it), done (its outcome is in ``audits``)
    """CREATE TABLE IF NOT EXISTS audit_queue (
        order_no     TEXT PRIMARY KEY,
        shopper      TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('none', 'pending', 'done')),
        decision     TEXT NOT NULL,
        items        TEXT NOT NULL,
        voids        INTEGER NOT NULL DEFAULT 0,
        requested_by TEXT,
        requested_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_queue_state ON audit_queue (state, requested_at)",
)
#: Columns added to ``audits`` after its first layout: added to an older table at open.
_AUDIT_ADDED = (("staff", "TEXT"), ("finding", "TEXT"), ("principal", "TEXT"))
_AUDIT_COLUMNS = ("order_no", "shopper", "kind", "items", "reason", "probability",
                  "outcome", "found", "trust_before", "trust_after", "recorded_at",
                  "staff", "finding", "principal")


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, _SAVEPOINT, _db_error, "audit", wrap_body_errors=True)


def _db_error(exc: sqlite3.Error, what: str) -> AuditError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return AuditError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


def _ident(value, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise AuditError(f"{what} must be 1-64 of A-Z a-z 0-9 . _ : @ + -, got "
                         f"{value!r:.40}", code="BAD_REQUEST", details={"field": what})
    return value


def _ensure_schema(con: sqlite3.Connection) -> None:
    if not isinstance(con, sqlite3.Connection):
        raise TypeError(f"con must be a sqlite3.Connection, not {type(con).__name__}")
    with _Txn(con):
        for stmt in _SCHEMA:
            con.execute(stmt)
        have = {r[1] for r in con.execute("PRAGMA table_info(audits)")}
        for name, kind in _AUDIT_ADDED:
            if name not in have:
                con.execute(f"ALTER TABLE audits ADD COLUMN {name} {kind}")


def _now(clock, now) -> float:
    if now is None:
        return float(clock())
    if not _is_num(now):
        raise AuditError(f"now must be Unix seconds, got {now!r:.40}", code="BAD_REQUEST",
                         details={"field": "now"})
    return float(now)


class TrustScore:
    """Each shopper's (member number's, or session id's) trust, in table ``trust``
    of ``con``. A shopper never seen has trust 1.0. ``clock`` gives Unix seconds when
    a call passes no ``now``."""

    def __init__(self, con: sqlite3.Connection, *, policy: AuditPolicy = DEFAULT_POLICY,
                 clock: Callable[[], float] = time.time) -> None:
        _ensure_schema(con)
        self.con = con
        self.policy = policy
        self.clock = clock

    def score(self, shopper: str) -> float:
        """The shopper's trust in [0, 1] (1.0 when never seen). Raises BAD_REQUEST."""
        _ident(shopper, "shopper")
        try:
            row = self.con.execute("SELECT score FROM trust WHERE shopper = ?",
                                   (shopper,)).fetchone()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read trust") from exc
        return 1.0 if row is None else float(row[0])

    def get(self, shopper: str) -> dict:
        """``{shopper, score, voids, unknown_items, weigh_alarms, discrepancies,
        clean_audits, updated_at}`` (zeros and score 1.0 when never seen)."""
        _ident(shopper, "shopper")
        cols = ("shopper", "score", "voids", "unknown_items", "weigh_alarms",
                "discrepancies", "clean_audits", "updated_at")
        try:
            row = self.con.execute(f"SELECT {', '.join(cols)} FROM trust WHERE shopper = ?",
                                   (shopper,)).fetchone()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read trust") from exc
        if row is None:
            return {"shopper": shopper, "score": 1.0, "voids": 0, "unknown_items": 0,
                    "weigh_alarms": 0, "discrepancies": 0, "clean_audits": 0,
                    "updated_at": None}
        return dict(zip(cols, row))

    def note(self, shopper: str, event: str, n: int = 1, *, ref: str | None = None,
             now: float | None = None) -> float:
        """``n`` events of kind ``event`` (``void``, ``unknown_item``, ``weigh_alarm``,
        ``discrepancy``, ``clean_audit``) for ``shopper``; returns the new trust.
        With ``ref`` (e.g. the basket id and line of a void) a repeat answers the
        score recorded then and changes nothing; the same ``ref`` with another
        shopper, event or n is REF_CONFLICT. Raises BAD_EVENT, BAD_REQUEST."""
        _ident(shopper, "shopper")
        update_trust(1.0, event, n, self.policy)   # validates event and n
        if ref is not None:
            _ident(ref, "ref")
        t = _now(self.clock, now)
        with _Txn(self.con):
            if ref is not None:
                row = self.con.execute("SELECT shopper, event, n, score_after FROM "
                                       "trust_events WHERE ref = ?", (ref,)).fetchone()
                if row is not None:
                    if tuple(row[:3]) != (shopper, event, n):
                        raise AuditError(f"reference {ref!r} was used for another "
                                         "trust event", code="REF_CONFLICT",
                                         details={"ref": ref})
                    return float(row[3])
            after = self._apply(shopper, event, n, t)
            if ref is not None:
                self.con.execute("INSERT INTO trust_events (ref, shopper, event, n, "
                                 "score_after, at) VALUES (?, ?, ?, ?, ?, ?)",
                                 (ref, shopper, event, n, after, t))
            return after

    def _apply(self, shopper: str, event: str, n: int, t: float) -> float:
        """Inside a transaction: move the shopper's score and counter."""
        row = self.con.execute("SELECT score FROM trust WHERE shopper = ?",
                               (shopper,)).fetchone()
        before = 1.0 if row is None else float(row[0])
        after = update_trust(before, event, n, self.policy)
        counter = _COUNTERS[event]
        self.con.execute(
            f"INSERT INTO trust (shopper, score, {counter}, updated_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (shopper) DO UPDATE SET score = excluded.score, "
            f"{counter} = {counter} + excluded.{counter}, updated_at = excluded.updated_at",
            (shopper, after, n, t))
        return after


class Audits:
    """Audit decisions and outcomes of one store, in table ``audits`` of ``con``,
    with the shoppers' trust (:attr:`trust`, a :class:`TrustScore` on the same
    connection) moved by every outcome."""

    def __init__(self, con: sqlite3.Connection, *, policy: AuditPolicy = DEFAULT_POLICY,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(policy, AuditPolicy):
            raise AuditError("policy must be an AuditPolicy", code="BAD_POLICY")
        self.con = con
        self.policy = policy
        self.clock = clock
        self.trust = TrustScore(con, policy=policy, clock=clock)

    def decide(self, order, *, store_risk: str | None, rng: random.Random,
               shopper_trust: float | None = None,
               shopper: str | None = None) -> AuditDecision:
        """:func:`decide` under this store's policy; the trust is ``shopper_trust``,
        or the stored score of ``shopper`` (1.0 when neither is given)."""
        if shopper_trust is None:
            shopper_trust = self.trust.score(shopper) if shopper is not None else 1.0
        return decide(order, shopper_trust=shopper_trust, store_risk=store_risk, rng=rng,
                      policy=self.policy)

    def record(self, order_no: str, decision, outcome: str, found: Sequence = (), *,
               shopper: str | None = None, finding: str | None = None,
               staff: str | None = None, principal: str | None = None,
               now: float | None = None) -> dict:
        """The outcome of the audit ``decision`` (an AuditDecision or its dict) of
        ``order_no``: ``clean`` (``found`` empty) or ``discrepancy`` (``found``: what
        the attendant found — line indices, codes, or small JSON maps). With
        ``shopper`` the outcome moves their trust (a ``clean_audit`` or a
        ``discrepancy`` event) in the same transaction. ``finding`` (one of
        :data:`FINDINGS`, only with a discrepancy): what the attendant made of it;
        ``staff``: who checked (the name a console vouches for) and ``principal``:
        the identity that recorded it, kept beside it.

        Idempotent by ``order_no``: recording it again with the same terms (outcome,
        found, finding) returns the first record and moves no trust; other terms are
        AUDIT_CONFLICT. Returns the record (see :meth:`get`). Raises NOT_AUDITED (the
        decision was not to audit), BAD_OUTCOME, BAD_REQUEST, AUDIT_CONFLICT."""
        _ident(order_no, "order_no")
        dec = _check_decision(decision)
        if not dec.audit:
            raise AuditError(f"order {order_no} was not chosen for an audit",
                             code="NOT_AUDITED", details={"order_no": order_no})
        if outcome not in OUTCOMES:
            raise AuditError(f"outcome {outcome!r:.40} is not one of {', '.join(OUTCOMES)}",
                             code="BAD_OUTCOME", details={"outcome": str(outcome)[:40]})
        if isinstance(found, (str, bytes)) or not isinstance(found, Sequence) \
                or len(found) > MAX_FOUND:
            raise AuditError(f"found must be a list of at most {MAX_FOUND} entries",
                             code="BAD_REQUEST", details={"field": "found"})
        found = list(found)
        if outcome == "clean" and found:
            raise AuditError("a clean audit found nothing; found must be empty",
                             code="BAD_OUTCOME", details={"outcome": outcome})
        if finding is not None and (outcome != "discrepancy" or finding not in FINDINGS):
            raise AuditError(f"finding {finding!r:.40} must be one of "
                             f"{', '.join(FINDINGS)}, and goes with a discrepancy only",
                             code="BAD_OUTCOME", details={"finding": str(finding)[:40]})
        for name, value in (("staff", staff), ("principal", principal)):
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= 128):
                raise AuditError(f"{name} must be text of 1-128 characters",
                                 code="BAD_REQUEST", details={"field": name})
        try:
            found_json = json.dumps(found, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise AuditError(f"found must be JSON data: {exc}", code="BAD_REQUEST",
                             details={"field": "found"}) from None
        if shopper is not None:
            _ident(shopper, "shopper")
        t = _now(self.clock, now)
        items_json = json.dumps(dec.items)
        with _Txn(self.con):
            row = self.con.execute(f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audits "
                                   "WHERE order_no = ?", (order_no,)).fetchone()
            if row is not None:
                have = dict(zip(_AUDIT_COLUMNS, row))
                if (have["shopper"], have["kind"], have["items"], have["outcome"],
                        have["found"], have["finding"]) != (shopper, dec.kind, items_json,
                                                            outcome, found_json, finding):
                    raise AuditError(f"order {order_no} was already recorded with "
                                     "another outcome", code="AUDIT_CONFLICT",
                                     details={"order_no": order_no})
                return _public_audit(have)
            before = after = None
            if shopper is not None:
                before = self.trust.score(shopper)
                after = self.trust._apply(
                    shopper, "clean_audit" if outcome == "clean" else "discrepancy", 1, t)
            self.con.execute(
                f"INSERT INTO audits ({', '.join(_AUDIT_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (order_no, shopper, dec.kind, items_json, dec.reason,
                 float(dec.probability), outcome, found_json, before, after, t, staff,
                 finding, principal))
            return self.get(order_no)

    def get(self, order_no: str) -> dict | None:
        """The audit of ``order_no``: ``{order_no, shopper, kind, items, reason,
        probability, outcome, found, trust_before, trust_after, recorded_at, staff,
        finding, principal}``, or
        None when it was not audited (or not yet recorded)."""
        _ident(order_no, "order_no")
        try:
            row = self.con.execute(f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audits "
                                   "WHERE order_no = ?", (order_no,)).fetchone()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the audit") from exc
        return None if row is None else _public_audit(dict(zip(_AUDIT_COLUMNS, row)))

    # -- the queue: one decision per order, pending until an attendant records it ----
    def request(self, order_no: str, order, *, shopper: str, store_risk: str | None,
                rng: random.Random, voids: int = 0, by: str | None = None,
                now: float | None = None) -> tuple[dict, bool]:
        """The audit decision of ``order_no`` (``order``: its map with ``lines``, as
        BasketStore.order returns it), made once: ``(entry, True)`` the first time
        (``voids`` lines the shopper removed first noted against their trust, then
        the draw against that trust; a chosen order queued ``pending``), ``(entry,
        False)`` with the stored decision ever after — never a fresh draw, so
        nobody asks their way out of an audit. ``by``: the identity that asked.
        Returns the queue entry (:meth:`entry`). Raises BAD_REQUEST, BAD_ORDER,
        BAD_RISK, DB_ERROR, DB_BUSY."""
        _ident(order_no, "order_no")
        _ident(shopper, "shopper")
        if not _is_int(voids) or voids < 0:
            raise AuditError(f"voids must be an integer ≥ 0, got {voids!r:.40}",
                             code="BAD_REQUEST", details={"field": "voids"})
        lines, _n = _order_lines(order)
        self.policy.rate(store_risk)                 # BAD_RISK before anything moves
        t = _now(self.clock, now)
        with _Txn(self.con):
            if self._queue_row(order_no) is not None:
                return self.entry(order_no), False
            if voids:
                self.trust._apply(shopper, "void", voids, t)
            dec = decide(order, shopper_trust=self.trust.score(shopper),
                         store_risk=store_risk, rng=rng, policy=self.policy)
            items = []
            for i in dec.items:
                ln = lines[i] if isinstance(lines[i], Mapping) else {}
                items.append({"line": ln.get("line_no", i), "gtin": ln.get("gtin"),
                              "name": ln.get("name"), "qty": ln.get("qty", 1)})
            self.con.execute(
                "INSERT INTO audit_queue (order_no, shopper, state, decision, items, voids, "
                "requested_by, requested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (order_no, shopper, "pending" if dec.audit else "none",
                 json.dumps(dec.to_dict()), json.dumps(items), voids, by, t))
            return self.entry(order_no), True

    def resolve(self, order_no: str, outcome: str, found: Sequence = (), *,
                finding: str | None = None, staff: str | None = None,
                principal: str | None = None, now: float | None = None) -> tuple[dict, bool]:
        """An attendant's check of the queued order ``order_no``: :meth:`record` of
        its decision for its shopper (their trust moved), and the entry ``done``.
        ``(entry, True)`` when this call recorded it; ``(entry, False)`` when it was
        recorded before with the same terms (outcome, found, finding). Raises
        UNKNOWN_AUDIT (never decided), NOT_AUDITED (decided, not chosen),
        AUDIT_CONFLICT (recorded with other terms), BAD_OUTCOME, BAD_REQUEST."""
        _ident(order_no, "order_no")
        with _Txn(self.con):
            row = self._queue_row(order_no)
            if row is None:
                raise AuditError(f"order {order_no} has no audit decision",
                                 code="UNKNOWN_AUDIT", details={"order_no": order_no})
            shopper, state, decision = row
            if state == "none":
                raise AuditError(f"order {order_no} was not chosen for an audit",
                                 code="NOT_AUDITED", details={"order_no": order_no})
            new = state == "pending"
            self.record(order_no, json.loads(decision), outcome, found, shopper=shopper,
                        finding=finding, staff=staff, principal=principal, now=now)
            if new:
                self.con.execute("UPDATE audit_queue SET state = 'done' WHERE order_no = ?",
                                 (order_no,))
            return self.entry(order_no), new

    def _queue_row(self, order_no: str):
        return self.con.execute("SELECT shopper, state, decision FROM audit_queue "
                                "WHERE order_no = ?", (order_no,)).fetchone()

    _ENTRY_SQL = ("SELECT q.order_no, q.shopper, q.state, q.decision, q.items, "
                  "q.requested_at, a.outcome, a.finding, a.found, a.staff, a.principal, "
                  "a.recorded_at, a.trust_before, a.trust_after "
                  "FROM audit_queue q LEFT JOIN audits a ON a.order_no = q.order_no")

    def entry(self, order_no: str) -> dict | None:
        """The queue entry of ``order_no``, or None when it was never decided:
        ``{order_no, audit, kind (visual, rescan or None), items ([{line, gtin,
        name, qty}]: the lines to rescan), reason, probability, state (none,
        pending, done), outcome, finding, found, staff, principal, shopper,
        trust_before, trust_after, requested_at, recorded_at}`` (the outcome's
        fields None, ``found`` empty, until it is done)."""
        if not isinstance(order_no, str) or not _ID_RE.fullmatch(order_no):
            return None
        try:
            row = self.con.execute(self._ENTRY_SQL + " WHERE q.order_no = ?",
                                   (order_no,)).fetchone()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the audit queue") from exc
        return None if row is None else _public_entry(row)

    def queue(self, state: str = "pending", *, limit: int = 100) -> list[dict]:
        """Queue entries in ``state`` (``pending``, ``done``, ``none`` or ``all``),
        newest decision first, at most ``limit``. Raises BAD_REQUEST."""
        if state not in (*QUEUE_STATES, "all"):
            raise AuditError(f"state {state!r:.40} is not one of "
                             f"{', '.join(QUEUE_STATES)}, all", code="BAD_REQUEST",
                             details={"field": "state"})
        if not _is_int(limit) or limit < 1:
            raise AuditError("limit must be an integer ≥ 1", code="BAD_REQUEST",
                             details={"field": "limit"})
        try:
            where, args = ("", ()) if state == "all" else (" WHERE q.state = ?", (state,))
            rows = self.con.execute(
                self._ENTRY_SQL + where + " ORDER BY q.requested_at DESC, q.rowid DESC "
                "LIMIT ?", (*args, limit)).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the audit queue") from exc
        return [_public_entry(r) for r in rows]

    def stats(self, *, since: float | None = None) -> dict:
        """Audits recorded (since ``since``, Unix seconds, when given): ``{audits,
        discrepancies, rate (discrepancies ÷ audits, 0.0 when none), by_kind: {kind:
        {audits, discrepancies, rate}}}``. Partial audits in the trade find errors
        in 2-3 % of baskets (REFERENCE §5); a rate far from that is worth a look."""
        if since is not None and not _is_num(since):
            raise AuditError("since must be Unix seconds", code="BAD_REQUEST",
                             details={"field": "since"})
        try:
            rows = self.con.execute(
                "SELECT kind, COUNT(*), SUM(outcome = 'discrepancy') FROM audits "
                "WHERE ? IS NULL OR recorded_at >= ? GROUP BY kind ORDER BY kind",
                (since, since)).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot read the audits") from exc

        def block(n, d):
            return {"audits": n, "discrepancies": d, "rate": d / n if n else 0.0}

        by_kind = {k: block(int(n), int(d or 0)) for k, n, d in rows}
        n = sum(b["audits"] for b in by_kind.values())
        d = sum(b["discrepancies"] for b in by_kind.values())
        return {**block(n, d), "by_kind": by_kind}


def _public_audit(row: dict) -> dict:
    out = dict(row)
    out["items"] = json.loads(out["items"])
    out["found"] = json.loads(out["found"])
    return out


def _public_entry(row) -> dict:
    (order_no, shopper, state, decision, items, requested_at, outcome, finding, found,
     staff, principal, recorded_at, trust_before, trust_after) = row
    dec = json.loads(decision)
    return {"order_no": order_no, "audit": bool(dec["audit"]),
            "kind": dec["kind"] if dec["audit"] else None, "items": json.loads(items),
            "reason": dec["reason"], "probability": dec["probability"], "state": state,
            "outcome": outcome, "finding": finding,
            "found": json.loads(found) if found is not None else [], "staff": staff,
            "principal": principal, "shopper": shopper, "trust_before": trust_before,
            "trust_after": trust_after, "requested_at": requested_at,
            "recorded_at": recorded_at}
