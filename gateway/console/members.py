"""The merchant's members page (issue 15, Build 4): list and search the members, see
one member's tier, points, point moves and purchases, enrol one, change a member's
tier and adjust their points — at the coupon gateway, as the console's own identity
(``--coupons``).

* ``GET /members?q=&tier=&page=&id=`` (manager, admin): ``member.list`` — the members
  whose card number, phone number, name or member id starts with ``q`` (at most 32
  characters are searched), in ``tier`` if given, :data:`PAGE_SIZE` a page, newest
  first, with the count and the pages. One member is shown in full — the one ``id``
  names, else the one ``q`` names exactly (card, phone or id), else the only match —
  with ``member.history``: the member, their point moves (newest first: kind, points,
  balance after, and for an adjustment the reason and who made it) and purchases. A
  ``q`` that names nobody and matches nobody is ``UNKNOWN_MEMBER`` (or the gateway's
  code for it).
* ``POST /members/enrol`` (``csrf``, ``card_no`` and/or ``phone``, ``name``,
  ``tier`` (default ``basic``)): ``member.enrol``; 303 to the member's page.
* ``POST /members/tier`` (``csrf``, ``member_id``, ``tier``): ``member.tier``; 303 to
  the member's page.
* ``POST /members/points`` (``csrf``, ``member_id``, ``points`` (a signed whole
  number, not 0, at most 10⁹ either way), ``reason`` (1–200 characters), ``ref`` (the
  form's own key, made when the page was drawn: a second submit of the same form is
  the same adjustment)): ``member.points`` with ``staff`` the logged-in name; 303 to
  the member's page.

Every change goes to the console's actions log (``member.enrol``, ``member.tier``,
``member.points``; target the member id) with the staff name and its result. A form
the console cannot read is ``BAD_FIELD``; what the gateway refuses
(``INSUFFICIENT_POINTS``, ``REF_CONFLICT``, ``BAD_TIER``, ``UNKNOWN_MEMBER``, …) is shown
on the page with its code (400; 502 when the gateway cannot be reached).
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console.i18n import N_, gettext_for

MESSAGES = {
    "BAD_FIELD": N_("A field of the form is not valid."),
    "BAD_MEMBER": N_("That is not a valid card number, phone number or member id."),
    "BAD_TIER": N_("A tier is 1 to 32 letters, digits, '.', '_' or '-'."),
    "BAD_POINTS": N_("Points are a whole number, not 0."),
    "BAD_REQUEST": N_("A reason is needed."),
    "CARD_TAKEN": N_("That card number belongs to another member."),
    "PHONE_TAKEN": N_("That phone number belongs to another member."),
    "UNKNOWN_MEMBER": N_("No such member."),
    "INSUFFICIENT_POINTS": N_("The member does not have that many points."),
    "REF_CONFLICT": N_("This form was already sent with other values: load the page again."),
    "UNAVAILABLE": N_("The coupon gateway is not connected to this console (--coupons)."),
}
GENERIC = N_("The coupon gateway answered with an error.")
#: What each kind of point move is called on the page.
MOVE_KINDS = {"earn": N_("earned"), "redeem": N_("spent"), "return": N_("given back"),
              "clawback": N_("taken back"), "adjust": N_("adjusted")}
#: Members on one page of the list.
PAGE_SIZE = 20
#: The most points one adjustment may add or take (the gateway's bound).
MAX_ADJUST = 10 ** 9
_UNREACHABLE = ("TIMEOUT", "UNREACHABLE", "UNAVAILABLE", "CLOSED")
_TIER = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_MEMBER_ID = re.compile(r"[A-Za-z0-9_.@+:-]{1,32}")
_REF = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_POINTS = re.compile(r"[+-]?[0-9]{1,10}")


class FormError(ValueError):
    """A field of a form the console cannot read (BAD_FIELD)."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def points_of(text: str) -> int:
    """The signed points of the adjustment form (``+50``, ``-20``, ``50``)."""
    text = text.strip().replace(" ", "")
    if not _POINTS.fullmatch(text):
        raise FormError("points")
    value = int(text)
    if value == 0 or abs(value) > MAX_ADJUST:
        raise FormError("points")
    return value


def new_ref() -> str:
    """The key of one adjustment form as drawn (``member.points``' ``ref``)."""
    return "web-" + secrets.token_hex(8)


def routes(ctx) -> list:
    """The members routes. ``ctx``: ``gate``, ``page``, ``render``, ``lang_of``,
    ``staff``, ``cpn`` (the coupon gateway's Upstream)."""
    staff = ctx.staff
    cpn = ctx.cpn

    def role() -> str:
        return ctx.page("/members")

    def wants_json(request: Request) -> bool:
        return "application/json" in request.headers.get("accept", "")

    def problem_of(request, session, code: str, detail: str = "") -> dict:
        _ = gettext_for(ctx.lang_of(request, session))
        return {"code": code, "message": _(MESSAGES.get(code, GENERIC)), "detail": detail}

    async def listing(q: str, tier: str, page_no: int) -> tuple[dict | None, str | None]:
        fields = {"limit": PAGE_SIZE, "offset": (page_no - 1) * PAGE_SIZE}
        if q:
            fields["query"] = q[:32]
        if tier:
            fields["tier"] = tier
        try:
            return await cpn.call("member.list", **fields), None
        except LanecoreError as exc:
            return None, exc.code

    async def show(request: Request, session, status: int = 200, problem=None,
                   form=None, focus: str | None = None) -> Response:
        """The page: the list for the query, and one member in full."""
        params = request.query_params
        q = (params.get("q") or "").strip()[:64]
        tier = (params.get("tier") or "").strip()[:32]
        page_s = (params.get("page") or "1").strip()
        page_no = int(page_s) if page_s.isdigit() and 0 < int(page_s) <= 10 ** 6 else 1
        focus = focus or (params.get("id") or "").strip()[:64] or None
        _ = gettext_for(ctx.lang_of(request, session))
        listed, member, history, moves = None, None, [], []
        if cpn.configured:
            listed, trouble = await listing(q, tier if _TIER.fullmatch(tier) else "",
                                            page_no)
            if trouble is not None and problem is None:
                problem = problem_of(request, session, trouble)
                status = 502 if trouble in _UNREACHABLE else status
            found = (listed or {}).get("members") or []
            # the member to show: the one named, else the one q names exactly, else
            # the only match
            wanted = [w for w in (focus or q,) if w]
            if not focus and len(found) == 1 and found[0]["member_id"] not in wanted:
                wanted.append(found[0]["member_id"])
            first_error = None
            for ident in wanted if trouble is None else ():
                try:
                    reply = await cpn.call("member.history", identifier=ident[:32])
                except LanecoreError as exc:
                    first_error = first_error or exc.code
                    continue
                member = reply.get("member")
                history = reply.get("purchases") or []
                moves = reply.get("moves") or []
                break
            if member is None and first_error and (focus or not found) \
                    and problem is None:
                problem = problem_of(request, session, first_error)
                status = 502 if first_error in _UNREACHABLE else status
        total = (listed or {}).get("total", 0)
        pages = max(1, -(-total // PAGE_SIZE))
        link = lambda n: "/members?" + urlencode(
            {k: v for k, v in (("q", q), ("tier", tier), ("page", str(n))) if v})
        resp = ctx.render(
            request, "members.html", session, status, q=q, tier=tier, member=member,
            history=history, moves=moves, members=(listed or {}).get("members") or [],
            total=total, page_no=page_no, pages=pages,
            prev_link=link(page_no - 1) if page_no > 1 else None,
            next_link=link(page_no + 1) if page_no < pages else None,
            problem=problem, configured=cpn.configured, form=form or {}, ref=new_ref(),
            move_kinds={k: _(v) for k, v in MOVE_KINDS.items()})
        if problem is not None:
            resp.headers["X-Error-Code"] = problem["code"]
        return resp

    async def refused_with(request, session, code: str, detail: str = "", form=None,
                           focus: str | None = None) -> Response:
        status = 502 if code in _UNREACHABLE else 400
        problem = problem_of(request, session, code, detail)
        if wants_json(request):
            return JSONResponse({"ok": False, "error": {"code": code,
                                                        "message": problem["message"]}},
                                status_code=status, headers={"X-Error-Code": code})
        return await show(request, session, status, problem, form, focus)

    def done(request: Request, reply: dict, member_id: str | None) -> Response:
        if wants_json(request):
            return JSONResponse({"ok": True, **reply})
        return RedirectResponse("/members?id=" + quote(member_id or ""), status_code=303)

    async def page(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        return await show(request, session)

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
            return await refused_with(request, session, code, bad or "", kept)
        try:
            reply = await cpn.call("member.enrol", **fields)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "member.enrol", target=target,
                         detail=f"tier {fields['tier']}", result=exc.code)
            return await refused_with(request, session, exc.code, exc.message, kept)
        member = reply.get("member") or {}
        staff.record(session.name, session.role, "member.enrol",
                     target=member.get("member_id"), detail=f"tier {member.get('tier')}")
        if wants_json(request):
            return JSONResponse({"ok": True, "member": member})
        return RedirectResponse("/members?q=" + quote(member.get("member_id") or ""),
                                status_code=303)

    async def change(request: Request, action: str):
        """``member.tier`` or ``member.points`` from their forms."""
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        get = lambda k: str(form.get(k) or "").strip()
        member_id = get("member_id")
        keys = ("tier",) if action == "member.tier" else ("points", "reason", "ref")
        kept = {k: get(k)[:200] for k in keys}
        focus = member_id[:64] if _MEMBER_ID.fullmatch(member_id) else None
        try:
            if focus is None:
                raise FormError("member_id")
            if action == "member.tier":
                if not _TIER.fullmatch(kept["tier"]):
                    raise FormError("tier")
                fields = {"identifier": member_id, "tier": kept["tier"]}
                detail = f"tier {kept['tier']}"
            else:
                points = points_of(kept["points"])
                reason = get("reason")
                if not 1 <= len(reason) <= 200 or not reason.isprintable():
                    raise FormError("reason")
                if not _REF.fullmatch(kept["ref"]):
                    raise FormError("ref")
                fields = {"identifier": member_id, "points": points, "reason": reason,
                          "ref": kept["ref"], "staff": session.name}
                detail = f"{points:+d} points: {reason}"
        except FormError as exc:
            staff.record(session.name, session.role, action, target=focus,
                         detail=exc.field, result="BAD_FIELD")
            return await refused_with(request, session, "BAD_FIELD", exc.field, kept, focus)
        if not cpn.configured:
            staff.record(session.name, session.role, action, target=member_id,
                         detail=detail, result="UNAVAILABLE")
            return await refused_with(request, session, "UNAVAILABLE", form=kept,
                                      focus=focus)
        try:
            reply = await cpn.call(action, **fields)
        except LanecoreError as exc:
            staff.record(session.name, session.role, action, target=member_id,
                         detail=detail, result=exc.code)
            return await refused_with(request, session, exc.code, exc.message, kept, focus)
        member = reply.get("member") or {}
        staff.record(session.name, session.role, action,
                     target=member.get("member_id") or member_id, detail=detail)
        return done(request, reply, member.get("member_id") or member_id)

    async def tier(request: Request):
        return await change(request, "member.tier")

    async def points(request: Request):
        return await change(request, "member.points")

    return [Route("/members", page, methods=["GET"]),
            Route("/members/enrol", enrol, methods=["POST"]),
            Route("/members/tier", tier, methods=["POST"]),
            Route("/members/points", points, methods=["POST"])]


__all__ = ["MOVE_KINDS", "PAGE_SIZE", "points_of", "routes"]
