"""The merchant's coupons page (issue 15, Build 4): manufacturers (issuers), coupon
definitions and the clearing report per manufacturer — all at the coupon gateway,
called as the console's own identity (``--coupons``).

* ``GET /coupons`` (manager, admin): ``issuer.list``, ``coupon.list`` and
  ``clearing.report`` for ``issuer`` (optional) and the date range ``from`` / ``to``
  (``YYYY-MM-DD``, the console machine's local days, ``to`` included); the forms.
* ``POST /coupons/issuer`` (``csrf``, ``issuer_id``, ``name``): ``issuer.add``.
* ``POST /coupons/define`` (``csrf``, ``coupon_def_id``, ``issuer_id``, what it
  applies to — ``applies_to`` ``item`` with ``target_gtin`` (8, 12, 13 or 14 digits)
  or ``family`` with ``target_family`` (a family of ``coupons.toml``'s
  ``[families]``) —, its value — ``discount`` ``amount`` with ``amount`` (money off
  each unit, at most the currency's decimals) or ``percent`` with ``percent``
  (``12.5`` is 12.5 %, at most 2 decimals) —, ``currency`` (ISO 4217, default the
  console's), ``valid_from`` / ``valid_until`` (``YYYY-MM-DD``, local days,
  ``valid_until`` included), ``min_qty``, ``per_customer_limit`` (optional)):
  ``coupon.define``. These are every kind the coupon book's ``Definition``
  (``core/promo/coupons.py``) has: one target (an item or a family) × one value (an
  amount or a percentage), with a minimum quantity and a per-customer limit. Without
  ``applies_to`` / ``discount`` the filled field decides (``target_family`` without
  ``target_gtin`` is a family; ``percent`` without ``amount`` a percentage). What
  the gateway refuses (``BAD_COUPON_DEF``) is shown with its message and the
  ``field`` it names.
* ``GET /coupons/clearing.csv?issuer=&from=&to=``: the same clearing rows as the
  page, as CSV.

Each create goes to the console's actions log with the staff name
(``coupon.issuer.add`` target the issuer id, ``coupon.define`` target the
definition id, ``coupon.clearing.csv``), and its result (``ok`` or the code).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console.i18n import N_, gettext_for

MESSAGES = {
    "BAD_FIELD": N_("A field of the form is not valid."),
    "BAD_DATE": N_("A date is not valid (YYYY-MM-DD)."),
    "BAD_COUPON_DEF": N_("The coupon gateway refused the coupon definition."),
    "UNKNOWN_ISSUER": N_("No such manufacturer: add it first."),
    "REF_CONFLICT": N_("That id exists already with other terms."),
    "UNAVAILABLE": N_("The coupon gateway is not connected to this console (--coupons)."),
}
GENERIC = N_("The coupon gateway answered with an error.")
_UNREACHABLE = ("TIMEOUT", "UNREACHABLE", "UNAVAILABLE", "CLOSED")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_GTIN = re.compile(r"[0-9]{8}|[0-9]{12,14}")
_CURRENCY = re.compile(r"[A-Z]{3}")
#: What a coupon may apply to and what it may take off (``Definition``'s targets
#: and values).
APPLIES_TO = {"item": N_("One item (GTIN)"), "family": N_("A family of items")}
DISCOUNTS = {"amount": N_("Amount off each unit"), "percent": N_("Percent off")}
#: The CSV's columns (``amount`` is ``amount_minor`` in the currency's units).
CSV_COLUMNS = ("issuer_id", "coupon_id", "coupon_def_id", "store_id", "order_no",
               "amount_minor", "amount", "currency", "redeemed_at", "reversed")


class FormError(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _day(text: str, field: str) -> dt.date | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise FormError(field) from None


def _midnight(day: dt.date) -> int:
    """The start of a local day, Unix seconds."""
    return int(dt.datetime.combine(day, dt.time()).timestamp())


def _positive(text: str, field: str, places: int) -> Decimal:
    """A number > 0 with at most ``places`` decimals; FormError(field) else."""
    try:
        v = Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise FormError(field) from None
    if not v.is_finite() or v <= 0 or -v.as_tuple().exponent > places:
        raise FormError(field)
    return v


def definition_of(form, default_currency: str) -> dict:
    """The ``coupon.define`` definition from the define form."""
    from babel.numbers import get_currency_precision
    get = lambda k: str(form.get(k) or "").strip()
    d: dict = {}
    for k in ("coupon_def_id", "issuer_id"):
        if not _ID.fullmatch(get(k)):
            raise FormError(k)
        d[k] = get(k)
    applies_to = get("applies_to") or (
        "family" if get("target_family") and not get("target_gtin") else "item")
    if applies_to == "item":
        if not _GTIN.fullmatch(get("target_gtin")):
            raise FormError("target_gtin")
        d["target_gtin"] = get("target_gtin").zfill(14)
    elif applies_to == "family":
        if not get("target_family"):
            raise FormError("target_family")
        d["target_family"] = get("target_family")      # its form: the gateway's check
    else:
        raise FormError("applies_to")
    currency = get("currency").upper() or default_currency
    if not _CURRENCY.fullmatch(currency):
        raise FormError("currency")
    d["currency"] = currency
    discount = get("discount") or ("percent" if get("percent") and not get("amount")
                                   else "amount")
    if discount == "amount":
        places = get_currency_precision(currency)
        amount = _positive(get("amount"), "amount", places)
        d["amount_off_minor"] = int(amount.scaleb(places))
    elif discount == "percent":
        d["percent_bp"] = int(_positive(get("percent"), "percent", 2) * 100)
    else:
        raise FormError("discount")
    start, end = _day(get("valid_from"), "valid_from"), _day(get("valid_until"),
                                                            "valid_until")
    if start is None:
        raise FormError("valid_from")
    if end is None or end < start:
        raise FormError("valid_until")
    d["valid_from"] = _midnight(start)
    d["valid_until"] = _midnight(end + dt.timedelta(days=1))
    for k, low in (("min_qty", 1), ("per_customer_limit", 1)):
        v = get(k)
        if v:
            if not v.isdigit() or int(v) < low or int(v) > 10 ** 6:
                raise FormError(k)
            d[k] = int(v)
    return d


def clearing_range(params) -> tuple[dict, dict]:
    """(``clearing.report`` fields, the range as the form shows it) from the query;
    FormError for a bad date or issuer."""
    issuer = (params.get("issuer") or "").strip()
    if issuer and not _ID.fullmatch(issuer):
        raise FormError("issuer")
    since, until = _day(params.get("from"), "from"), _day(params.get("to"), "to")
    if since and until and until < since:
        raise FormError("to")
    fields: dict = {}
    if issuer:
        fields["issuer_id"] = issuer
    if since:
        fields["since"] = _midnight(since)
    if until:
        fields["until"] = _midnight(until + dt.timedelta(days=1))
    shown = {"issuer": issuer, "from": since.isoformat() if since else "",
             "to": until.isoformat() if until else ""}
    return fields, shown


def _amount(minor: int, currency: str) -> str:
    from babel.numbers import get_currency_precision
    places = get_currency_precision(currency)
    return f"{Decimal(int(minor)).scaleb(-places):.{places}f}"


def clearing_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r["issuer_id"], r["coupon_id"], r["coupon_def_id"], r["store_id"],
                    r["order_no"], r["amount_minor"], _amount(r["amount_minor"],
                                                              r["currency"]),
                    r["currency"],
                    dt.datetime.fromtimestamp(r["redeemed_at"]).isoformat(timespec="seconds"),
                    "yes" if r["reversed"] else "no"])
    return out.getvalue()


def routes(ctx) -> list:
    """The coupons routes. ``ctx``: ``gate``, ``page``, ``render``, ``lang_of``,
    ``staff`` (the StaffDB), ``cpn`` (the coupon gateway's Upstream), ``currency``."""
    staff = ctx.staff
    cpn = ctx.cpn

    def role() -> str:
        return ctx.page("/coupons")

    async def gather(query) -> dict:
        """What the page shows; ``problem`` the first failure's code."""
        out = {"issuers": [], "definitions": [], "clearing": None, "problem": None}
        if not cpn.configured:
            out["problem"] = "UNAVAILABLE"
            return out
        try:
            out["issuers"] = (await cpn.call("issuer.list")).get("issuers", [])
            out["definitions"] = (await cpn.call("coupon.list")).get("definitions", [])
            out["clearing"] = await cpn.call("clearing.report", **query)
        except LanecoreError as exc:
            out["problem"] = exc.code
        return out

    async def show(request: Request, session, status: int = 200, problem=None,
                   form=None) -> Response:
        _ = gettext_for(ctx.lang_of(request, session))
        try:
            query, shown = clearing_range(request.query_params)
        except FormError:
            query, shown = {}, {"issuer": "", "from": "", "to": ""}
            if problem is None:
                problem = {"code": "BAD_DATE", "message": _(MESSAGES["BAD_DATE"]),
                           "detail": ""}
                status = 400
        got = await gather(query)
        if problem is None and got["problem"] is not None:
            code = got["problem"]
            problem = {"code": code, "message": _(MESSAGES.get(code, GENERIC)), "detail": ""}
        clearing = got["clearing"] or {}
        totals = [{"issuer_id": i, "currency": c, "amount_minor": a,
                   "count": (clearing.get("counts") or {}).get(i, {}).get(c, 0)}
                  for i, per in sorted((clearing.get("totals") or {}).items())
                  for c, a in sorted(per.items())]
        names = {i["issuer_id"]: i["name"] for i in got["issuers"]}
        resp = ctx.render(request, "coupons.html", session, status,
                          connected=got["problem"] is None, issuers=got["issuers"],
                          definitions=got["definitions"], names=names,
                          clearing_rows=clearing.get("rows", []), totals=totals,
                          store_id=clearing.get("store_id"), span=shown, problem=problem,
                          form=form or {}, default_currency=ctx.currency,
                          applies_to=[(k, _(v)) for k, v in APPLIES_TO.items()],
                          discounts=[(k, _(v)) for k, v in DISCOUNTS.items()])
        if problem is not None:
            resp.headers["X-Error-Code"] = problem["code"]
        return resp

    async def refused_with(request, session, code: str, detail: str = "", form=None,
                           field: str | None = None):
        _ = gettext_for(ctx.lang_of(request, session))
        status = 502 if code in _UNREACHABLE else 400
        message = _(MESSAGES.get(code, GENERIC))
        if "application/json" in request.headers.get("accept", ""):
            error = {"code": code, "message": message}
            if field:
                error["field"] = field
            return JSONResponse({"ok": False, "error": error},
                                status_code=status, headers={"X-Error-Code": code})
        return await show(request, session, status,
                          {"code": code, "message": message, "detail": detail,
                           "field": field}, form)

    def done(request: Request, reply: dict) -> Response:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": True, **reply})
        return RedirectResponse("/coupons", status_code=303)

    async def page(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        return await show(request, session)

    async def issuer_add(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        issuer_id = str(form.get("issuer_id") or "").strip()
        name = str(form.get("name") or "").strip()
        kept = {"issuer_id": issuer_id[:64], "name": name[:64]}
        bad = "issuer_id" if not _ID.fullmatch(issuer_id) else \
            "name" if not 1 <= len(name) <= 64 else None
        if bad:
            staff.record(session.name, session.role, "coupon.issuer.add",
                         target=issuer_id[:64] or None, detail=bad, result="BAD_FIELD")
            return await refused_with(request, session, "BAD_FIELD", bad, kept)
        if not cpn.configured:
            staff.record(session.name, session.role, "coupon.issuer.add", target=issuer_id,
                         result="UNAVAILABLE")
            return await refused_with(request, session, "UNAVAILABLE", form=kept)
        try:
            reply = await cpn.call("issuer.add", issuer_id=issuer_id, name=name)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "coupon.issuer.add", target=issuer_id,
                         detail=name, result=exc.code)
            return await refused_with(request, session, exc.code, exc.message, kept)
        staff.record(session.name, session.role, "coupon.issuer.add", target=issuer_id,
                     detail=name)
        return done(request, reply)

    async def define(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        kept = {k: str(form.get(k) or "")[:64] for k in (
            "coupon_def_id", "issuer_id", "applies_to", "target_gtin", "target_family",
            "discount", "amount", "percent", "currency", "valid_from", "valid_until",
            "min_qty", "per_customer_limit")}
        try:
            definition = definition_of(form, ctx.currency)
        except FormError as exc:
            staff.record(session.name, session.role, "coupon.define",
                         target=kept["coupon_def_id"] or None, detail=exc.field,
                         result="BAD_FIELD")
            return await refused_with(request, session, "BAD_FIELD", exc.field, kept,
                                      field=exc.field)
        detail = json.dumps(definition, sort_keys=True)
        target = definition["coupon_def_id"]
        if not cpn.configured:
            staff.record(session.name, session.role, "coupon.define", target=target,
                         detail=detail, result="UNAVAILABLE")
            return await refused_with(request, session, "UNAVAILABLE", form=kept)
        try:
            reply = await cpn.call("coupon.define", definition=definition)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "coupon.define", target=target,
                         detail=detail, result=exc.code)
            field = ((exc.details or {}).get("details") or {}).get("field")
            return await refused_with(request, session, exc.code, exc.message, kept,
                                      field=field if isinstance(field, str) else None)
        staff.record(session.name, session.role, "coupon.define", target=target,
                     detail=detail)
        return done(request, reply)

    async def clearing_export(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        try:
            query, shown = clearing_range(request.query_params)
        except FormError:
            return await refused_with(request, session, "BAD_DATE")
        if not cpn.configured:
            return await refused_with(request, session, "UNAVAILABLE")
        try:
            report = await cpn.call("clearing.report", **query)
        except LanecoreError as exc:
            return await refused_with(request, session, exc.code, exc.message)
        staff.record(session.name, session.role, "coupon.clearing.csv",
                     target=shown["issuer"] or None,
                     detail=f"{shown['from'] or '…'} – {shown['to'] or '…'}")
        name = "clearing" + "".join(f"-{v}" for v in (shown["issuer"], shown["from"],
                                                       shown["to"]) if v)
        return PlainTextResponse(clearing_csv(report.get("rows", [])),
                                 media_type="text/csv; charset=utf-8", headers={
                                     "Content-Disposition":
                                         f'attachment; filename="{name}.csv"'})

    return [Route("/coupons", page, methods=["GET"]),
            Route("/coupons/issuer", issuer_add, methods=["POST"]),
            Route("/coupons/define", define, methods=["POST"]),
            Route("/coupons/clearing.csv", clearing_export, methods=["GET"])]


__all__ = ["APPLIES_TO", "DISCOUNTS", "CSV_COLUMNS", "clearing_csv", "clearing_range", "definition_of", "routes"]
