"""The merchant's promotions page (issue 15, Build 4): create, schedule, end — live at
the coupon gateway, which prices the very next basket with them (no restart).

* ``GET /promotions`` (manager, admin): the coupon gateway's ``promo.list`` (ended
  ones too) as three lists — active, scheduled, ended (or past their window) — and
  ``coupons.toml``'s promotions (source ``file``: their terms are the file's, but
  each not yet ended has "End now" too — the gateway records the end in coupons.db
  and the next basket is priced without it); the create form.
* ``POST /promotions`` (``csrf``; ``kind`` one of :data:`KINDS`, ``gtin``,
  ``percent`` (``12.5`` is 12.5 %), ``amount`` (money, ``1.50``), ``buy_qty`` /
  ``pay_qty`` (multi-buy), ``threshold`` (money, basket discounts), ``valid_from`` /
  ``valid_until`` (``YYYY-MM-DDTHH:MM``, the console's local time; from empty: now,
  until empty: until ended), ``promo_id`` (optional)): ``promo.create``.
* ``POST /promotions/end`` (``csrf``, ``promo_id``): ``promo.end``, of a database or
  a ``coupons.toml`` promotion alike.

Both go through the console's own identity at the coupon gateway with ``staff``
named, and to the console's actions log (``promo.create`` / ``promo.end``) with the
staff name and the result. A form the console cannot read is ``BAD_FIELD``; what the
gateway refuses (``BAD_PROMOTION``, ``PROMO_EXISTS``, ``UNKNOWN_PROMOTION``) is shown
on the page with its code (400).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal, InvalidOperation

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console.i18n import N_, gettext_for
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

#: The kinds the create form offers (the pricing engine's, core/promo/pricing.py).
KINDS = {"item_percent": N_("Percent off an item"),
         "item_amount": N_("Amount off an item"),
         "multibuy": N_("Buy N, pay for M"),
         "threshold_amount": N_("Amount off a basket over a threshold"),
         "threshold_percent": N_("Percent off a basket over a threshold")}
STATES = {"active": N_("active"), "scheduled": N_("scheduled"), "expired": N_("expired"),
          "ended": N_("ended")}
MESSAGES = {
    "BAD_FIELD": N_("A field of the form is not valid."),
    "BAD_PROMOTION": N_("The coupon gateway refused the promotion."),
    "PROMO_EXISTS": N_("A promotion with that id exists already."),
    "UNKNOWN_PROMOTION": N_("No such promotion."),
    "UNAVAILABLE": N_("The coupon gateway is not connected to this console (--coupons)."),
}
GENERIC = N_("The coupon gateway answered with an error.")
_UNREACHABLE = ("TIMEOUT", "UNREACHABLE", "UNAVAILABLE", "CLOSED")
_DIGITS = re.compile(r"[0-9]{8}|[0-9]{12,14}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class FormError(ValueError):
    """A field of the create form the console cannot read (BAD_FIELD)."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _decimal(text: str, field: str, places: int) -> Decimal:
    try:
        v = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise FormError(field) from None
    if not v.is_finite() or v <= 0 or -v.as_tuple().exponent > places:
        raise FormError(field)
    return v


def _minor(text: str, field: str, decimals: int) -> int:
    return int(_decimal(text, field, decimals).scaleb(decimals))


def _count(text: str, field: str) -> int:
    if not text.strip().isdigit():
        raise FormError(field)
    return int(text.strip())


def _when(text: str, field: str) -> int | None:
    """A ``datetime-local`` value (local time) as Unix seconds; empty: None."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(dt.datetime.fromisoformat(text).timestamp())
    except (ValueError, OverflowError, OSError):
        raise FormError(field) from None


def definition_of(form, decimals: int) -> tuple[dict, dict]:
    """(the ``promo.create`` definition, its window fields) from the create form."""
    get = lambda k: str(form.get(k) or "")
    kind = get("kind")
    if kind not in KINDS:
        raise FormError("kind")
    d: dict = {}
    if kind in ("item_percent", "item_amount", "multibuy"):
        gtin = get("gtin").strip()
        if not _DIGITS.fullmatch(gtin):
            raise FormError("gtin")
        d.update(kind="multibuy" if kind == "multibuy" else "item", gtin=gtin.zfill(14))
    else:
        d.update(kind="threshold", threshold_minor=_minor(get("threshold"), "threshold",
                                                          decimals))
    if kind in ("item_percent", "threshold_percent"):
        d["percent_bp"] = int(_decimal(get("percent"), "percent", 2) * 100)
    elif kind in ("item_amount", "threshold_amount"):
        d["amount_off_minor"] = _minor(get("amount"), "amount", decimals)
    else:
        d.update(buy_qty=_count(get("buy_qty"), "buy_qty"),
                 pay_qty=_count(get("pay_qty"), "pay_qty"))
    promo_id = get("promo_id").strip()
    if promo_id:
        if not _ID.fullmatch(promo_id):
            raise FormError("promo_id")
        d["id"] = promo_id
    window = {}
    for k in ("valid_from", "valid_until"):
        t = _when(get(k), k)
        if t is not None:
            window[k] = t
    return d, window


def routes(ctx) -> list:
    """The promotions routes. ``ctx``: ``gate(request, role, post=)``, ``page(path)``,
    ``render(request, name, session, status=, **kw)``, ``lang_of(request, session)``,
    ``staff`` (the StaffDB), ``cpn`` (the coupon gateway's Upstream), ``currency``."""
    from babel.numbers import get_currency_precision
    decimals = get_currency_precision(ctx.currency)
    staff = ctx.staff
    cpn = ctx.cpn

    def role() -> str:
        return ctx.page("/promotions")

    async def listing() -> tuple[dict | None, str | None]:
        if not cpn.configured:
            return None, "UNAVAILABLE"
        try:
            return await cpn.call("promo.list", include_ended=True), None
        except LanecoreError as exc:
            return None, exc.code

    async def show(request: Request, session, status: int = 200, problem=None,
                   form=None) -> Response:
        _ = gettext_for(ctx.lang_of(request, session))
        listed, trouble = await listing()
        groups = {"active": [], "scheduled": [], "ended": []}
        for p in (listed or {}).get("promotions", []):
            groups["scheduled" if p.get("state") == "scheduled" else
                   "active" if p.get("state") == "active" else "ended"].append(p)
        if problem is None and trouble is not None:
            problem = {"code": trouble, "message": _(MESSAGES.get(trouble, GENERIC)),
                       "detail": ""}
        resp = ctx.render(
            request, "promotions.html", session, status, groups=groups,
            configured=(listed or {}).get("configured", []), connected=listed is not None,
            kinds=[(k, _(v)) for k, v in KINDS.items()],
            state_labels={k: _(v) for k, v in STATES.items()},
            problem=problem, form=form or {}, decimals=decimals)
        if problem is not None:
            resp.headers["X-Error-Code"] = problem["code"]
        return resp

    async def refused_with(request: Request, session, code: str, detail: str = "",
                     form=None) -> Response:
        _ = gettext_for(ctx.lang_of(request, session))
        status = 502 if code in _UNREACHABLE else 400
        problem = {"code": code, "message": _(MESSAGES.get(code, GENERIC)), "detail": detail}
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": False, "error": {"code": code,
                                                        "message": problem["message"]}},
                                status_code=status, headers={"X-Error-Code": code})
        return await show(request, session, status, problem, form)

    def done(request: Request, reply: dict) -> Response:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": True, "promotion": reply.get("promotion")})
        return RedirectResponse("/promotions", status_code=303)

    async def page(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        return await show(request, session)

    async def create(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        kept = {k: str(form.get(k) or "")[:64] for k in (
            "kind", "gtin", "percent", "amount", "buy_qty", "pay_qty", "threshold",
            "valid_from", "valid_until", "promo_id")}
        try:
            definition, window = definition_of(form, decimals)
        except FormError as exc:
            staff.record(session.name, session.role, "promo.create",
                         target=kept["promo_id"] or None, detail=exc.field,
                         result="BAD_FIELD")
            return await refused_with(request, session, "BAD_FIELD", exc.field, kept)
        detail = json.dumps({**definition, **window}, sort_keys=True)
        if not cpn.configured:
            staff.record(session.name, session.role, "promo.create", detail=detail,
                         result="UNAVAILABLE")
            return await refused_with(request, session, "UNAVAILABLE", form=kept)
        try:
            reply = await cpn.call("promo.create", definition=definition, staff=session.name,
                                   **window)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "promo.create",
                         target=definition.get("id"), detail=detail, result=exc.code)
            return await refused_with(request, session, exc.code, exc.message, kept)
        promo_id = (reply.get("promotion") or {}).get("promo_id")
        staff.record(session.name, session.role, "promo.create", target=promo_id,
                     detail=detail)
        return done(request, reply)

    async def end(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        promo_id = str(form.get("promo_id") or "").strip()
        if not _ID.fullmatch(promo_id):
            staff.record(session.name, session.role, "promo.end", target=promo_id[:64] or None,
                         result="BAD_FIELD")
            return await refused_with(request, session, "BAD_FIELD", "promo_id")
        if not cpn.configured:
            staff.record(session.name, session.role, "promo.end", target=promo_id,
                         result="UNAVAILABLE")
            return await refused_with(request, session, "UNAVAILABLE")
        try:
            reply = await cpn.call("promo.end", promo_id=promo_id, staff=session.name)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "promo.end", target=promo_id,
                         result=exc.code)
            return await refused_with(request, session, exc.code, exc.message)
        staff.record(session.name, session.role, "promo.end", target=promo_id)
        return done(request, reply)

    return [Route("/promotions", page, methods=["GET"]),
            Route("/promotions", create, methods=["POST"]),
            Route("/promotions/end", end, methods=["POST"])]


__all__ = ["KINDS", "definition_of", "routes"]
