"""The merchant's POS terminals page (issue 15, Build 4): the payment gateway's
terminals — list, add, disable, enable, change limits, give a new key.

The payment gateway has no op for its terminal registry (it is managed with
``lanecore terminal add|list|disable|enable|limits|rotate`` on its ledger database), so the console goes
to the same registry, table ``pos_terminals`` of ``payments.db``, given to it with
``--ledger-db``. That is an explicit choice, documented in ``docs/console.md``:

* the listing reads over a ``mode=ro`` connection, as analytics does;
* add, disable, enable, limits and rotate — and only these handlers — open a separate read-write
  connection for that one change, through the registry code the CLI uses
  (``gateway/payments/terminals.py``'s ``open_registry`` and ``Terminals``, handed to
  ``create_app`` as ``terminals`` by the command line: the console does not import
  the payment gateway), and close it at once. The gateway reads the registry on every
  request, so a change holds from the next one.

A new terminal's key (and a rotated one) is made by the registry, shown **once** in
the answer to the add or the rotation (the page says it is a secret) and never stored
by the console nor logged: the actions log records the terminal id, roles and limits.
Managers may add terminals with the selling roles in :data:`ADDABLE_ROLES` only
(``pos`` by default), and give a new key to or enable only such terminals (else
``BAD_ROLE``: a staff terminal's key would give its roles); staff, ``hq`` and
``admin`` terminals are the command line's (``lanecore terminal add|rotate|enable``).

* ``GET /terminals`` (manager, admin).
* ``POST /terminals/add`` (``csrf``, ``terminal_id``, ``roles`` (one or more of
  ADDABLE_ROLES), ``max_payment``, ``max_day`` (money, empty: no limit), ``methods``
  (several; none: every method)): 200 with the key shown once.
* ``POST /terminals/disable`` (``csrf``, ``terminal_id``); ``POST /terminals/enable``
  (the same fields): its requests accepted again, its key unchanged.
* ``POST /terminals/rotate`` (``csrf``, ``terminal_id``): a new key, shown once as
  for an add; roles, limits and state kept (a disabled terminal stays disabled), the
  old key refused from the gateway's next request.
* ``POST /terminals/limits`` (``csrf``, ``terminal_id``, ``max_payment``, ``max_day``,
  ``methods``): the limits replaced, key and roles kept.
"""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lanecore.core.errors import LanecoreError
from lanecore.core.pay.ledger import METHODS
from lanecore.gateway.console.i18n import N_, gettext_for

#: The roles a manager may give a terminal here.
ADDABLE_ROLES = ("pos", "till", "kiosk", "handheld")
METHOD_NAMES = {"auth_code": N_("wallet code"), "card": N_("card"), "cash": N_("cash"),
                "qr": N_("QR"), "stored_value": N_("stored value")}
MESSAGES = {
    "BAD_FIELD": N_("A field of the form is not valid."),
    "BAD_TERMINAL_ID": N_("A terminal id is 1 to 32 letters, digits, '.', '_' or '-'."),
    "BAD_LIMIT": N_("A limit is not valid: a positive amount, and known payment methods."),
    "BAD_ROLE": N_("Terminals with that role are managed with the command line."),
    "TERMINAL_EXISTS": N_("A terminal with that id exists already."),
    "UNKNOWN_TERMINAL": N_("No such terminal."),
    "NO_LEDGER_DB": N_("This console was started without the payments database (--ledger-db)."),
    "DB_ERROR": N_("The terminal registry could not be read or written."),
}
GENERIC = N_("The terminal registry could not be read or written.")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
assert set(METHOD_NAMES) == set(METHODS)


class FormError(ValueError):
    def __init__(self, field: str, code: str = "BAD_FIELD") -> None:
        super().__init__(field)
        self.field = field
        self.code = code


def limits_of(form, decimals: int) -> dict:
    """``max_payment_minor``, ``max_day_minor``, ``methods`` from a form."""
    out: dict = {}
    for field, key in (("max_payment", "max_payment_minor"), ("max_day", "max_day_minor")):
        text = str(form.get(field) or "").strip()
        if not text:
            out[key] = None
            continue
        try:
            v = Decimal(text)
        except InvalidOperation:
            raise FormError(field, "BAD_LIMIT") from None
        if not v.is_finite() or v <= 0 or -v.as_tuple().exponent > decimals:
            raise FormError(field, "BAD_LIMIT")
        out[key] = int(v.scaleb(decimals))
    methods = [str(m) for m in form.getlist("methods")]
    if any(m not in METHODS for m in methods):
        raise FormError("methods", "BAD_LIMIT")
    out["methods"] = sorted(set(methods)) or None
    return out


def terminal_id_of(form) -> str:
    tid = str(form.get("terminal_id") or "").strip()
    if not _ID.fullmatch(tid):
        raise FormError("terminal_id", "BAD_TERMINAL_ID")
    return tid


def _describe(t: dict) -> str:
    return (f"roles {','.join(t['roles'])}; max_payment_minor {t['max_payment_minor']}; "
            f"max_day_minor {t['max_day_minor']}; methods "
            f"{','.join(t['methods']) if t['methods'] else 'any'}")


def routes(ctx) -> list:
    """The terminals routes. ``ctx``: ``gate``, ``page``, ``render``, ``lang_of``,
    ``staff``, ``currency``, ``terminals`` (None, or ``open(readonly=False) -> (con,
    registry)``: the payment gateway's registry over ``--ledger-db``)."""
    from babel.numbers import get_currency_precision
    decimals = get_currency_precision(ctx.currency)
    staff = ctx.staff
    opener = ctx.terminals

    def role() -> str:
        return ctx.page("/terminals")

    def _list() -> list[dict]:
        con, reg = opener(readonly=True)
        try:
            return [] if reg is None else [t.to_dict() for t in reg.list()]
        finally:
            con.close()

    def _write(action: str, terminal_id: str, **kw):
        """One change on its own read-write connection, closed at once."""
        con, reg = opener()
        try:
            if action == "add":
                t, key = reg.register(terminal_id, **kw)
                return t.to_dict(), key
            if action == "disable":
                return reg.disable(terminal_id).to_dict(), None
            if action == "limits":
                return reg.set_limits(terminal_id, **kw).to_dict(), None
            held = reg.get(terminal_id)         # rotate, enable: selling terminals only
            if held is not None and not held.roles <= set(ADDABLE_ROLES):
                raise LanecoreError(f"terminal {terminal_id} holds a role the command "
                                    "line manages", code="BAD_ROLE")
            if action == "enable":
                return reg.enable(terminal_id).to_dict(), None
            t, key = reg.rotate_key(terminal_id)
            return t.to_dict(), key
        finally:
            con.close()

    async def show(request: Request, session, status: int = 200, problem=None,
                   added=None, form=None, rotated: bool = False) -> Response:
        _ = gettext_for(ctx.lang_of(request, session))
        rows, trouble = [], None
        if opener is None:
            trouble = "NO_LEDGER_DB"
        else:
            try:
                rows = await asyncio.to_thread(_list)
            except LanecoreError as exc:
                trouble = exc.code
        if problem is None and trouble is not None:
            problem = {"code": trouble, "message": _(MESSAGES.get(trouble, GENERIC)),
                       "detail": ""}
        for t in rows:                          # the limits form's values
            for k in ("max_payment_minor", "max_day_minor"):
                t[k[:-6] + "_text"] = "" if t[k] is None else \
                    f"{Decimal(t[k]).scaleb(-decimals):.{decimals}f}"
        resp = ctx.render(request, "terminals.html", session, status, terminals=rows,
                          connected=trouble is None, problem=problem, added=added,
                          form=form or {}, addable_roles=ADDABLE_ROLES, rotated=rotated,
                          methods=[(m, _(METHOD_NAMES[m])) for m in METHODS],
                          method_names={m: _(n) for m, n in METHOD_NAMES.items()})
        if problem is not None:
            resp.headers["X-Error-Code"] = problem["code"]
        return resp

    async def refused_with(request, session, code: str, detail: str = "", form=None):
        _ = gettext_for(ctx.lang_of(request, session))
        status = 404 if code == "UNKNOWN_TERMINAL" else 409 if code == "TERMINAL_EXISTS" \
            else 503 if code in ("NO_LEDGER_DB", "DB_ERROR") else 400
        message = _(MESSAGES.get(code, GENERIC))
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": False, "error": {"code": code, "message": message}},
                                status_code=status, headers={"X-Error-Code": code})
        return await show(request, session, status,
                          {"code": code, "message": message, "detail": detail}, form=form)

    async def page(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        return await show(request, session)

    async def add(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        kept = {k: str(form.get(k) or "")[:32] for k in ("terminal_id", "max_payment",
                                                         "max_day")}
        target = kept["terminal_id"] or None
        try:
            tid = terminal_id_of(form)
            wanted = [str(r) for r in form.getlist("roles")] or ["pos"]
            if any(r not in ADDABLE_ROLES for r in wanted):
                raise FormError("roles", "BAD_ROLE")
            limits = limits_of(form, decimals)
        except FormError as exc:
            staff.record(session.name, session.role, "terminal.add", target=target,
                         detail=exc.field, result=exc.code)
            return await refused_with(request, session, exc.code, exc.field, kept)
        if opener is None:
            staff.record(session.name, session.role, "terminal.add", target=tid,
                         result="NO_LEDGER_DB")
            return await refused_with(request, session, "NO_LEDGER_DB", form=kept)
        try:
            t, key = await asyncio.to_thread(_write, "add", tid, roles=sorted(set(wanted)),
                                             **limits)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "terminal.add", target=tid,
                         result=exc.code)
            return await refused_with(request, session, exc.code, form=kept)
        # the key: in this one answer only — never recorded, logged or kept
        staff.record(session.name, session.role, "terminal.add", target=tid,
                     detail=_describe(t))
        return await shown_once(request, session, t, key)

    async def change(request: Request, action: str):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        target = str(form.get("terminal_id") or "")[:32] or None
        try:
            tid = terminal_id_of(form)
            limits = limits_of(form, decimals) if action == "limits" else {}
        except FormError as exc:
            staff.record(session.name, session.role, f"terminal.{action}", target=target,
                         detail=exc.field, result=exc.code)
            return await refused_with(request, session, exc.code, exc.field)
        if opener is None:
            staff.record(session.name, session.role, f"terminal.{action}", target=tid,
                         result="NO_LEDGER_DB")
            return await refused_with(request, session, "NO_LEDGER_DB")
        try:
            t, key = await asyncio.to_thread(_write, action, tid, **limits)
        except LanecoreError as exc:
            staff.record(session.name, session.role, f"terminal.{action}", target=tid,
                         result=exc.code)
            return await refused_with(request, session, exc.code)
        staff.record(session.name, session.role, f"terminal.{action}", target=tid,
                     detail=_describe(t) if action == "limits" else None)
        if key is not None:                 # rotate: the new key, in this answer only
            return await shown_once(request, session, t, key, rotated=True)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": True, "terminal": t})
        return RedirectResponse("/terminals", status_code=303)

    async def shown_once(request, session, t: dict, key: bytes, *, rotated: bool = False):
        from lanecore.gateway.net.auth import key_text
        added = {"id": t["id"], "key": key_text(key)}
        del key
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": True, "terminal": t, "key": added["key"]},
                                headers={"Cache-Control": "no-store"})
        resp = await show(request, session, added=added, rotated=rotated)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def disable(request: Request):
        return await change(request, "disable")

    async def limits(request: Request):
        return await change(request, "limits")

    async def enable(request: Request):
        return await change(request, "enable")

    async def rotate(request: Request):
        return await change(request, "rotate")

    return [Route("/terminals", page, methods=["GET"]),
            Route("/terminals/add", add, methods=["POST"]),
            Route("/terminals/disable", disable, methods=["POST"]),
            Route("/terminals/limits", limits, methods=["POST"]),
            Route("/terminals/enable", enable, methods=["POST"]),
            Route("/terminals/rotate", rotate, methods=["POST"])]


__all__ = ["ADDABLE_ROLES", "limits_of", "routes"]
