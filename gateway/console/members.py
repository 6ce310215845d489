"""The merchant's members page (issue 15, Build 4): find a member, their tier, points
and purchase history, and enrol one — at the coupon gateway, as the console's own
identity (``--coupons``).

* ``GET /members?q=`` (manager, admin): ``member.find`` and ``member.history`` for a
  card number, phone number or member id: the member (id, name, card, phone, tier,
  points, since) and their purchases (newest first, at most the gateway's 50: order,
  total, lines, points earned and spent, time, reversed).
* ``POST /members/enrol`` (``csrf``, ``card_no`` and/or ``phone``, ``name``,
  ``tier`` (default ``basic``)): ``member.enrol``; 303 to the member's page.

There is no op to list members or tiers, nor to change a member's tier or points:
the page shows what ``member.find`` / ``member.history`` answer. An enrolment goes
to the console's actions log (``member.enrol``, target the new member id) with the
staff name.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console.i18n import N_, gettext_for

MESSAGES = {
    "BAD_FIELD": N_("A field of the form is not valid."),
    "BAD_MEMBER": N_("That is not a valid card number, phone number or member id."),
    "BAD_TIER": N_("A tier is 1 to 32 letters, digits, '.', '_' or '-'."),
    "CARD_TAKEN": N_("That card number belongs to another member."),
    "PHONE_TAKEN": N_("That phone number belongs to another member."),
    "UNKNOWN_MEMBER": N_("No such member."),
    "UNAVAILABLE": N_("The coupon gateway is not connected to this console (--coupons)."),
}
GENERIC = N_("The coupon gateway answered with an error.")
_UNREACHABLE = ("TIMEOUT", "UNREACHABLE", "UNAVAILABLE", "CLOSED")
_TIER = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def routes(ctx) -> list:
    """The members routes. ``ctx``: ``gate``, ``page``, ``render``, ``lang_of``,
    ``staff``, ``cpn`` (the coupon gateway's Upstream)."""
    staff = ctx.staff
    cpn = ctx.cpn

    def role() -> str:
        return ctx.page("/members")

    def problem_of(request, session, code: str, detail: str = "") -> dict:
        _ = gettext_for(ctx.lang_of(request, session))
        return {"code": code, "message": _(MESSAGES.get(code, GENERIC)), "detail": detail}

    async def show(request: Request, session, q: str, status: int = 200, problem=None,
                   form=None) -> Response:
        member = None
        history: list = []
        if q and cpn.configured and problem is None:
            try:
                reply = await cpn.call("member.history", identifier=q)
                member, history = reply.get("member"), reply.get("purchases") or []
            except LanecoreError as exc:
                problem = problem_of(request, session, exc.code)
                status = 502 if exc.code in _UNREACHABLE else 200
        resp = ctx.render(request, "members.html", session, status, q=q, member=member,
                          history=history, problem=problem, configured=cpn.configured,
                          form=form or {})
        if problem is not None:
            resp.headers["X-Error-Code"] = problem["code"]
        return resp

    async def page(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        return await show(request, session, (request.query_params.get("q") or "")
                          .strip()[:64])

    async def enrol(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        get = lambda k: str(form.get(k) or "").strip()
        kept = {k: get(k)[:64] for k in ("card_no", "phone", "name", "tier")}
        fields = {k: kept[k] for k in ("card_no", "phone", "name") if kept[k]}
        fields["tier"] = kept["tier"] or "basic"
        bad = None
        if "card_no" not in fields and "phone" not in fields:
            bad = "card_no"
        elif not _TIER.fullmatch(fields["tier"]):
            bad = "tier"
        target = fields.get("card_no") or fields.get("phone")
        if bad or not cpn.configured:
            code = "BAD_FIELD" if bad else "UNAVAILABLE"
            staff.record(session.name, session.role, "member.enrol", target=target,
                         detail=bad, result=code)
            if "application/json" in request.headers.get("accept", ""):
                return JSONResponse({"ok": False, "error": problem_of(request, session, code)},
                                    status_code=400, headers={"X-Error-Code": code})
            return await show(request, session, "", 400,
                              problem_of(request, session, code, bad or ""), kept)
        try:
            reply = await cpn.call("member.enrol", **fields)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "member.enrol", target=target,
                         detail=f"tier {fields['tier']}", result=exc.code)
            status = 502 if exc.code in _UNREACHABLE else 400
            if "application/json" in request.headers.get("accept", ""):
                return JSONResponse({"ok": False, "error": problem_of(request, session,
                                                                      exc.code)},
                                    status_code=status, headers={"X-Error-Code": exc.code})
            return await show(request, session, "", status,
                              problem_of(request, session, exc.code, exc.message), kept)
        member = reply.get("member") or {}
        staff.record(session.name, session.role, "member.enrol",
                     target=member.get("member_id"), detail=f"tier {member.get('tier')}")
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": True, "member": member})
        return RedirectResponse("/members?q=" + quote(member.get("member_id") or ""),
                                status_code=303)

    return [Route("/members", page, methods=["GET"]),
            Route("/members/enrol", enrol, methods=["POST"])]


__all__ = ["routes"]
