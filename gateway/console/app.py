"""The console's pages and routes (Starlette), and ``create_app``.

Pages render on the server (Jinja2, ``templates/``); ``static/console.js`` keeps
``/lanes``, ``/alarms``, ``/audits`` and ``/devices`` live from ``/events/stream``
(server-sent events). Every page and POST checks the session (none: a redirect to
``/login``) and the role (``PAGES``: ``FORBIDDEN``, 403); every POST checks the
form's ``csrf`` field against the session's token (``CSRF``, 403). Each action goes
to the actions log of ``console.db`` with the staff name and role, and what the
service was asked goes to it as the console's own identity (``key:console``) with
``staff`` named.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import json
import logging
import re
import secrets
import threading
import time
from decimal import Decimal
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (JSONResponse, PlainTextResponse, RedirectResponse,
                                 Response, StreamingResponse)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console import auth
from lanecore.gateway.console.i18n import HTML_LANG, LANG_NAMES, LANGS, N_, gettext_for
from lanecore.gateway.console.live import Floor, Hub

log = logging.getLogger("lanecore.console")
HERE = Path(__file__).parent
SESSION_COOKIE = "lanecore_session"
LOGIN_CSRF_COOKIE = "lanecore_login_csrf"
LANG_COOKIE = "lanecore_lang"
ALARM_ACTIONS = ("ack", "override", "rescan")
#: What staff found behind an alarm (``alarm.resolve``'s ``finding``) or an audit's
#: discrepancy (``audit.record``: theft or mistake only).
FINDINGS = ("theft", "mistake", "false_alarm")
AUDIT_FINDINGS = ("theft", "mistake")
AUDIT_OUTCOMES = ("clean", "discrepancy")
#: Most "found" rows one audit result carries from the form.
MAX_FOUND_ROWS = 50

#: Every page, its title and the least role that sees it (``admin`` sees all).
PAGES = (("/lanes", N_("Lanes"), "attendant"), ("/alarms", N_("Alarms"), "attendant"),
         ("/audits", N_("Audits"), "attendant"), ("/devices", N_("Devices"), "attendant"),
         ("/products", N_("Products"), "manager"),
         ("/promotions", N_("Promotions"), "manager"), ("/coupons", N_("Coupons"), "manager"),
         ("/members", N_("Members"), "manager"), ("/terminals", N_("POS terminals"), "manager"),
         ("/analytics", N_("Analytics"), "manager"), ("/staff", N_("Staff"), "admin"))
#: The page of a console given HQ's database (``--hq``), in the menu before Staff.
HQ_PAGE = ("/hq", N_("Chain analytics"), "manager")
#: The pages of a console run against HQ only (``--hq`` and no store): the store's
#: pages are hidden and answer 404 (docs/console.md, "Across stores").
HQ_ONLY_PAGES = ("/hq", "/staff")
#: What a console of HQ only does not have (every store page, the live floor).
STORE_ONLY = frozenset({p for p, _t, _r in PAGES} - set(HQ_ONLY_PAGES)
                       | {"/floor.json", "/events"})

#: What each error code says to a person.
ERRORS = {
    "FORBIDDEN": N_("Your role may not use this page or action."),
    "CSRF": N_("The form was stale or not from this console: reload the page and try again."),
    "BAD_LOGIN": N_("Wrong user name or password."),
    "LOCKED": N_("Too many failed logins for this user: try again later."),
    "REASON_REQUIRED": N_("An override needs a reason."),
    "BAD_ACTION": N_("Unknown action."),
    "BAD_FIELD": N_("A field of the form is not valid."),
    "BAD_DATE": N_("A date is not valid (YYYY-MM-DD)."),
    "NOT_FOUND": N_("No such page."),
    "UNKNOWN_VIEW": N_("No such report."),
    "UNAVAILABLE": N_("That part of the store is not connected to this console."),
    "SERVICE": N_("The store's service answered with an error."),
    "AUDIT_CONFLICT": N_("This audit already has a different result."),
    "UNKNOWN_AUDIT": N_("The service has no audit for this order."),
    "NOT_AUDITED": N_("This order was not picked for an audit."),
    "FINDING_REQUIRED": N_("A discrepancy needs a finding: theft or mistake."),
    "FOUND_REQUIRED": N_("A discrepancy needs what was found (GTIN and quantity)."),
    "TIMEOUT": N_("The store's service did not answer in time."),
    "UNREACHABLE": N_("The store's service cannot be reached."),
}
STATE_NAMES = {"idle": N_("idle"), "settled": N_("settled"), "fault": N_("fault"),
               "ok": N_("ok"), "alarm": N_("alarm")}
CAUSE_NAMES = {"weight_short": N_("weight short"), "weight_over": N_("weight over"),
               "eas": N_("EAS gate"), "device": N_("device")}
ROLE_NAMES = {"attendant": N_("attendant"), "manager": N_("manager"), "admin": N_("admin")}
ACTION_NAMES = {"open": N_("open"), "ack": N_("acknowledged"), "override": N_("overridden"),
                "rescan": N_("rescan requested")}
FINDING_NAMES = {"theft": N_("theft"), "mistake": N_("mistake"),
                 "false_alarm": N_("false alarm")}
AUDIT_KIND_NAMES = {"visual": N_("visual"), "rescan": N_("rescan")}
#: The analytics views' titles (``analytics.VIEWS``) that have a translation, and the
#: codes a view's rows and chart show as words (the CSV keeps the codes).
VIEW_TITLES = (N_("Thefts and mistakes caught"),)
VIEW_LABELS = {"caught": {"audit": N_("audit"), "exit": N_("exit lane"),
                          "theft": N_("theft"), "mistake": N_("mistake"),
                          "false_alarm": N_("false alarm")}}
VIEW_COLUMNS = (N_("source"), N_("finding"), N_("n"))
OUTCOME_NAMES = {"clean": N_("clean"), "discrepancy": N_("discrepancy")}
#: Verdicts (core/weigh/verify.py) and order statuses (core/store/basket.py) as shown.
VERDICT_NAMES = {"ok": N_("ok"), "short": N_("short"), "over": N_("over")}
ORDER_STATUS_NAMES = {"submitted": N_("submitted"), "paid": N_("paid"),
                      "exited": N_("exited"), "cancelled": N_("cancelled")}
#: Messages the page's script shows (rendered into the page as JSON).
SCRIPT_MESSAGES = (N_("idle"), N_("settled"), N_("fault"), N_("ok"), N_("alarm"),
                   N_("short"), N_("over"), N_("submitted"), N_("paid"), N_("exited"),
                   N_("cancelled"),
                   N_("weight short"), N_("weight over"), N_("EAS gate"), N_("device"),
                   N_("open"), N_("acknowledged"), N_("overridden"),
                   N_("rescan requested"), N_("Acknowledge"), N_("Override"),
                   N_("Request rescan"), N_("Reason"), N_("Confirmed weight (g)"),
                   N_("missing"), N_("extra"), N_("Order"), N_("Verdict"),
                   N_("Live weight"), N_("Settled"), N_("EAS"), N_("Faults"), N_("none"),
                   N_("clear"), N_("live"), N_("reconnecting"), N_("Lane"),
                   N_("theft"), N_("mistake"), N_("false alarm"), N_("visual"),
                   N_("rescan"), N_("clean"), N_("discrepancy"))


class Upstream:
    """One of the store's processes, called as its client: a blocking
    ``gateway.net.client.Client`` used from worker threads, one call at a time."""

    def __init__(self, endpoint: str | None, curve=None, *, timeout_s: float = 3.0) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.client = None

    @property
    def configured(self) -> bool:
        return bool(self.endpoint)

    def _call(self, op: str, fields: dict) -> dict:
        from lanecore.gateway.net.client import Client
        with self.lock:
            if self.client is None:
                self.client = Client(self.endpoint, client_id="console",
                                     timeout_s=self.timeout_s, retries=1, curve=self.curve)
            return self.client.call(op, **fields)

    async def call(self, op: str, **fields) -> dict:
        if not self.endpoint:
            raise LanecoreError("not connected to this console", code="UNAVAILABLE")
        return await asyncio.to_thread(self._call, op, fields)

    def close(self) -> None:
        with self.lock:
            if self.client is not None:
                self.client.close()
                self.client = None


def _grams(value) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):,.1f}"
    except (TypeError, ValueError):
        return "–"


def _when(ts) -> str:
    if not ts:
        return "–"
    try:
        return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OSError):
        return "–"


def _money(minor, currency: str = "GBP", lang: str = "en") -> str:
    from babel.numbers import format_currency
    if minor is None:
        return "–"
    return format_currency(Decimal(int(minor)).scaleb(-2), currency,
                           locale="zh_Hans_CN" if lang == "zh_Hans" else "en_GB")


def _date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise LanecoreError(f"not a date: {text!r:.40}", code="BAD_DATE") from None


def create_app(data_dir, *, service: str | None = None, events: str | None = None,
               curve=None, coupons: str | None = None, coupons_curve=None,
               store_db=None, ledger_db=None, coupons_db=None,
               analytics=None, clock=time.time, secure_cookies: bool = False,
               ready=None, currency: str = "GBP", terminals=None,
               hq=None) -> Starlette:
    """The console app over ``DATA_DIR/console.db``.

    ``service``/``events``: the verification service's ROUTER and PUB endpoints
    (``curve``: the console's CurveKeys there); ``coupons``: the coupon gateway
    (``coupons_curve``); ``store_db``, ``ledger_db``, ``coupons_db``: what analytics
    reads. ``analytics``: an object with the ``Analytics`` interface (default:
    ``console.analytics``'s, made lazily over those databases). ``ready``: called
    once the app has started. The alarm and audit history, and the audits page, come
    from the service (``alarm.list``, ``audit.list``, ``audit.record``).
    ``terminals``: the payment gateway's terminal registry for ``/terminals``, as
    ``open(readonly=False) -> (con, registry)`` (the command line passes
    ``gateway/payments/terminals.py``'s ``open_registry`` over ``--ledger-db``).
    ``hq``: the analytics across stores on ``/hq`` (``console/hqviews.py``'s
    ``HQAnalytics`` over HQ's PostgreSQL, ``--hq``); with it and none of the store's
    parts the console is HQ's: only ``/hq`` and ``/staff``."""
    data_dir = Path(data_dir)
    from lanecore.core.config import private_dir
    private_dir(data_dir)
    staff = auth.StaffDB(auth.database_path(data_dir), clock=clock)
    svc = Upstream(service, curve)
    # the alarm and audit history comes from the service (alarm.list, audit.list)
    hub = Hub(events, curve=curve, floor=Floor(clock),
              history=svc.call if svc.configured else None)
    cpn = Upstream(coupons, coupons_curve)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["grams"] = _grams
    templates.env.filters["when"] = _when
    state: dict = {"analytics": analytics, "analytics_tried": analytics is not None}
    hq_only = hq is not None and not any((service, events, coupons, store_db, ledger_db,
                                          coupons_db, analytics, terminals))
    home = "/hq" if hq_only else "/lanes"

    pages = PAGES[:-1] + ((HQ_PAGE,) if hq is not None else ()) + PAGES[-1:]

    def shown(path: str) -> bool:
        """Whether the menu shows the page (HQ only: HQ's pages)."""
        return not hq_only or path in HQ_ONLY_PAGES

    def get_analytics():
        if not state["analytics_tried"]:
            state["analytics_tried"] = True
            if store_db is not None:
                try:
                    from lanecore.gateway.console.analytics import Analytics
                    state["analytics"] = Analytics(Path(store_db), ledger_db and Path(
                        ledger_db), coupons_db and Path(coupons_db))
                except ImportError:
                    log.warning("analytics is not available in this lanecore")
                except LanecoreError as exc:
                    log.warning("analytics cannot start: %s", exc)
        return state["analytics"]

    # -- helpers ------------------------------------------------------------------
    def lang_of(request: Request, session) -> str:
        if session is not None and session.lang in LANGS:
            return session.lang
        lang = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
        return lang if lang in LANGS else "en"

    def render(request: Request, name: str, session, status: int = 200, **ctx) -> Response:
        lang = lang_of(request, session)
        _ = gettext_for(lang)
        nav = [(p, _(t)) for p, t, r in pages
               if session is not None and session.may(r) and shown(p)]
        script = {m: _(m) for m in SCRIPT_MESSAGES}
        context = dict(
            _=_, lang=lang, html_lang=HTML_LANG[lang], langs=[(k, LANG_NAMES[k]) for k in LANGS],
            session=session, nav=nav, path=request.url.path,
            csrf=session.csrf if session is not None else ctx.pop("login_csrf", ""),
            script_messages=json.dumps(script, ensure_ascii=False),
            state_names={k: _(v) for k, v in STATE_NAMES.items()},
            cause_names={k: _(v) for k, v in CAUSE_NAMES.items()},
            action_names={k: _(v) for k, v in ACTION_NAMES.items()},
            verdict_names={k: _(v) for k, v in VERDICT_NAMES.items()},
            finding_names={k: _(v) for k, v in FINDING_NAMES.items()},
            audit_kind_names={k: _(v) for k, v in AUDIT_KIND_NAMES.items()},
            outcome_names={k: _(v) for k, v in OUTCOME_NAMES.items()},
            status_names={k: _(v) for k, v in ORDER_STATUS_NAMES.items()},
            money=lambda m, c=currency: _money(m, c, lang), **ctx)
        resp = templates.TemplateResponse(request, name, context, status_code=status)
        return resp

    def error(request: Request, session, code: str, status: int, detail: str = "") -> Response:
        lang = lang_of(request, session)
        _ = gettext_for(lang)
        message = _(ERRORS[code]) if code in ERRORS else _(ERRORS["SERVICE"])
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": False, "error": {"code": code, "message": message}},
                                status_code=status, headers={"X-Error-Code": code})
        resp = render(request, "error.html", session, status, code=code, message=message,
                      detail=detail)
        resp.headers["X-Error-Code"] = code
        return resp

    def current(request: Request):
        return staff.session(request.cookies.get(SESSION_COOKIE))

    async def gate(request: Request, role: str, *, post: bool = False):
        """(session, form, None) when the request may go on, else (…, response)."""
        session = current(request)
        if session is None:
            return None, None, RedirectResponse("/login", status_code=303)
        root = "/" + request.url.path.strip("/").split("/")[0]
        if hq_only and root in STORE_ONLY:
            return session, None, error(request, session, "NOT_FOUND", 404)
        form = None
        if post:
            form = await request.form()
        if not session.may(role):
            staff.record(session.name, session.role, f"refused {request.method} "
                         f"{request.url.path}", result="FORBIDDEN")
            return session, form, error(request, session, "FORBIDDEN", 403)
        if post and not auth.same(form.get("csrf"), session.csrf):
            staff.record(session.name, session.role, f"refused {request.method} "
                         f"{request.url.path}", result="CSRF")
            return session, form, error(request, session, "CSRF", 403)
        return session, form, None

    def page(path: str):
        for p, _t, role in pages:
            if p == path:
                return role
        raise KeyError(path)

    # -- routes -------------------------------------------------------------------
    async def healthz(request: Request):
        return JSONResponse({"ok": True, "process": "console",
                             "events": {"endpoint": hub.endpoint, "connected": hub.connected,
                                        "received": hub.received},
                             "service": bool(service)})

    async def index(request: Request):
        return RedirectResponse(home if current(request) else "/login", status_code=303)

    async def login_page(request: Request):
        session = current(request)
        if session is not None:
            return RedirectResponse(home, status_code=303)
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        resp = render(request, "login.html", None, login_csrf=token, failed=None)
        _set_cookie(resp, LOGIN_CSRF_COOKIE, token, max_age=3600)
        lang = request.query_params.get("lang")
        if lang in LANGS:
            _set_cookie(resp, LANG_COOKIE, lang, max_age=365 * 86400)
        return resp

    def _set_cookie(resp: Response, name: str, value: str, *, max_age: int) -> None:
        resp.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=secure_cookies, path="/")

    async def login_post(request: Request):
        form = await request.form()
        if not auth.same(form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)):
            return error(request, None, "CSRF", 403)
        name = str(form.get("username") or "")[:64]
        password = str(form.get("password") or "")
        try:
            token, session = staff.login(name, password)
        except auth.ConsoleError as exc:
            user = staff.user(name)
            staff.record(name or "-", user["role"] if user else "-", "login",
                         result=exc.code)
            lang = lang_of(request, None)
            _ = gettext_for(lang)
            status = 429 if exc.code == "LOCKED" else 401
            resp = render(request, "login.html", None, status,
                          login_csrf=request.cookies.get(LOGIN_CSRF_COOKIE),
                          failed={"code": exc.code, "message": _(ERRORS[exc.code]),
                                  "retry_after_s": (exc.details or {}).get("retry_after_s")})
            resp.headers["X-Error-Code"] = exc.code
            return resp
        staff.record(session.name, session.role, "login")
        resp = RedirectResponse(home, status_code=303)
        _set_cookie(resp, SESSION_COOKIE, token, max_age=int(auth.SESSION_S))
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return resp

    async def logout(request: Request):
        session, form, refused = await gate(request, "attendant", post=True)
        if refused is not None:
            return refused
        staff.logout(request.cookies.get(SESSION_COOKIE))
        staff.record(session.name, session.role, "logout")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def set_lang(request: Request):
        session, form, refused = await gate(request, "attendant", post=True)
        if refused is not None:
            return refused
        lang = form.get("lang")
        if lang not in LANGS:
            return error(request, session, "BAD_FIELD", 400)
        staff.set_lang(session.name, lang)
        staff.record(session.name, session.role, "lang", detail=lang)
        back = form.get("next") or home
        if not (isinstance(back, str) and back.startswith("/") and not back.startswith("//")):
            back = home
        return RedirectResponse(back, status_code=303)

    async def lanes(request: Request):
        session, _f, refused = await gate(request, page("/lanes"))
        if refused is not None:
            return refused
        return render(request, "lanes.html", session, floor=hub.floor.snapshot(),
                      live=bool(hub.endpoint))

    async def alarms(request: Request):
        session, _f, refused = await gate(request, page("/alarms"))
        if refused is not None:
            return refused
        return render(request, "alarms.html", session, floor=hub.floor.snapshot(),
                      history=staff.actions(prefix="alarm.", limit=100),
                      live=bool(hub.endpoint))

    async def alarm_resolve(request: Request):
        session, form, refused = await gate(request, page("/alarms"), post=True)
        if refused is not None:
            return refused
        lane = str(form.get("lane") or "")
        order_no = str(form.get("order_no") or "")
        action = str(form.get("action") or "")
        reason = str(form.get("reason") or "").strip()[:256]
        weight = str(form.get("weight_g") or "").strip()
        finding = str(form.get("finding") or "").strip()
        target = f"{lane}/{order_no}"
        if action not in ALARM_ACTIONS:
            staff.record(session.name, session.role, "alarm.?", target=target,
                         result="BAD_ACTION")
            return error(request, session, "BAD_ACTION", 400)
        if finding and finding not in FINDINGS:
            staff.record(session.name, session.role, f"alarm.{action}", target=target,
                         result="BAD_FIELD")
            return error(request, session, "BAD_FIELD", 400)
        if action == "override" and not reason:
            staff.record(session.name, session.role, f"alarm.{action}", target=target,
                         result="REASON_REQUIRED")
            return error(request, session, "REASON_REQUIRED", 400)
        weight_g = None
        if weight and action == "override":
            try:
                weight_g = float(weight)
                if not 0 < weight_g <= 1e6:
                    raise ValueError
            except ValueError:
                staff.record(session.name, session.role, f"alarm.{action}", target=target,
                             result="BAD_FIELD")
                return error(request, session, "BAD_FIELD", 400)
        fields = {"lane": lane, "order_no": order_no, "action": action,
                  "staff": session.name}
        if reason:
            fields["reason"] = reason
        if weight_g is not None:
            fields["weight_g"] = weight_g
        if finding:
            fields["finding"] = finding
        detail = " · ".join(x for x in (reason, finding) if x) or None
        try:
            reply = await svc.call("alarm.resolve", **fields)
        except LanecoreError as exc:
            staff.record(session.name, session.role, f"alarm.{action}", target=target,
                         detail=detail, result=exc.code)
            return error(request, session, exc.code, 502 if exc.code in (
                "TIMEOUT", "UNREACHABLE", "UNAVAILABLE") else 400, detail=exc.code)
        record = reply.get("resolved") or {}
        staff.record(session.name, session.role, f"alarm.{action}", target=target,
                     detail=detail,
                     result=f"ok #{record.get('action_id')}")
        hub.feed("alarm", {"resolved": record})
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": True, "resolved": record})
        return RedirectResponse("/alarms", status_code=303)

    async def audits_render(request: Request, session, *, status: int = 200,
                            problem: dict | None = None,
                            recorded: str | None = None) -> Response:
        """The audits page: the pending queue, the recorded list and the stats, read
        from the service (``audit.list``) on every view."""
        pending, done, stats, unavailable = [], [], None, None
        if not svc.configured:
            unavailable = "UNAVAILABLE"
        else:
            try:
                got = await svc.call("audit.list", state="pending", limit=200)
                pending = got.get("audits") or []
                got = await svc.call("audit.list", state="done", limit=200)
                done, stats = got.get("audits") or [], got.get("stats")
            except LanecoreError as exc:
                unavailable = exc.code
        resp = render(request, "audits.html", session, status, pending=pending, done=done,
                      stats=stats, unavailable=unavailable, problem=problem,
                      recorded=recorded, live=bool(hub.endpoint),
                      findings=AUDIT_FINDINGS)
        if problem is not None:
            resp.headers["X-Error-Code"] = problem["code"]
        return resp

    async def audits(request: Request):
        session, _f, refused = await gate(request, page("/audits"))
        if refused is not None:
            return refused
        return await audits_render(request, session,
                                   recorded=request.query_params.get("recorded"))

    async def audit_record(request: Request):
        """One audit's result from the page → ``audit.record`` with ``staff`` the
        session's user: ``clean``, or ``discrepancy`` with what was found (GTIN and
        quantity rows) and the finding (theft or mistake)."""
        session, form, refused = await gate(request, page("/audits"), post=True)
        if refused is not None:
            return refused
        order_no = str(form.get("order_no") or "").strip()[:64]
        outcome = str(form.get("outcome") or "")
        finding = str(form.get("finding") or "").strip()
        wants_json = "application/json" in request.headers.get("accept", "")

        async def refuse(code: str, status: int, message: str | None = None):
            staff.record(session.name, session.role, "audit.record", target=order_no,
                         detail=outcome or None, result=code)
            _ = gettext_for(lang_of(request, session))
            text = message or (_(ERRORS[code]) if code in ERRORS else _(ERRORS["SERVICE"]))
            if wants_json:
                return JSONResponse({"ok": False, "error": {"code": code, "message": text}},
                                    status_code=status, headers={"X-Error-Code": code})
            return await audits_render(request, session, status=status, problem={
                "code": code, "message": text, "order_no": order_no})

        found = []
        gtins, qtys = form.getlist("found_gtin"), form.getlist("found_qty")
        if len(gtins) != len(qtys) or len(gtins) > MAX_FOUND_ROWS:
            return await refuse("BAD_FIELD", 400)
        for gtin, qty in zip(gtins, qtys):
            gtin, qty = str(gtin).strip(), str(qty).strip()
            if not gtin and not qty:
                continue
            if not qty:              # a prefilled line nobody counted: not a finding
                continue
            if not (gtin.isdigit() and 8 <= len(gtin) <= 14 and qty.isdigit()
                    and 0 <= int(qty) <= 9999):
                return await refuse("BAD_FIELD", 400)
            if int(qty) > 0:
                found.append({"gtin": gtin, "qty": int(qty)})
        if not order_no or outcome not in AUDIT_OUTCOMES:
            return await refuse("BAD_FIELD", 400)
        fields = {"order_no": order_no, "outcome": outcome, "staff": session.name}
        if outcome == "clean":
            if found or finding:
                return await refuse("BAD_FIELD", 400)
            fields["found"] = []
        else:
            if finding not in AUDIT_FINDINGS:
                return await refuse("FINDING_REQUIRED", 400)
            if not found:
                return await refuse("FOUND_REQUIRED", 400)
            fields.update(found=found, finding=finding)
        try:
            reply = await svc.call("audit.record", **fields)
        except LanecoreError as exc:
            status = 502 if exc.code in ("TIMEOUT", "UNREACHABLE", "UNAVAILABLE") else (
                409 if exc.code == "AUDIT_CONFLICT" else 400)
            return await refuse(exc.code, status,
                                None if exc.code in ERRORS else f"{exc.code}: {exc}")
        record = reply.get("audit") or {}
        staff.record(session.name, session.role, "audit.record", target=order_no,
                     detail=" · ".join(x for x in (outcome, finding) if x),
                     result="ok")
        if record.get("order_no"):
            hub.feed("audit", {"recorded": record})
        if wants_json:
            return JSONResponse({"ok": True, "audit": record})
        return RedirectResponse(f"/audits?recorded={order_no}", status_code=303)

    async def devices(request: Request):
        session, _f, refused = await gate(request, page("/devices"))
        if refused is not None:
            return refused
        health = stats = None
        problem = None
        if svc.configured:
            try:
                health = await svc.call("health")
                stats = await svc.call("stats")
            except LanecoreError as exc:
                problem = exc.code
        return render(request, "devices.html", session, floor=hub.floor.snapshot(),
                      health=health, stats=stats, problem=problem)

    def products_routes() -> list:
        """/products and its item, edit and import pages (console/products.py)."""
        from types import SimpleNamespace

        from lanecore.gateway.console import products
        return products.routes(SimpleNamespace(
            gate=gate, page=page, render=render, error=error, lang_of=lang_of,
            staff=staff, svc=svc, store_db=store_db, data_dir=data_dir, currency=currency))

    def promotions_routes() -> list:
        """/promotions: create, schedule and end promotions (console/promotions.py)."""
        from types import SimpleNamespace

        from lanecore.gateway.console import promotions
        return promotions.routes(SimpleNamespace(
            gate=gate, page=page, render=render, lang_of=lang_of, staff=staff, cpn=cpn,
            currency=currency))

    def backoffice_routes() -> list:
        """/coupons, /members, /terminals (console/coupons.py, members.py,
        terminals.py)."""
        from types import SimpleNamespace

        from lanecore.gateway.console import coupons, members, terminals as pos
        ctx = SimpleNamespace(gate=gate, page=page, render=render, lang_of=lang_of,
                              staff=staff, cpn=cpn, currency=currency, terminals=terminals)
        return coupons.routes(ctx) + members.routes(ctx) + pos.routes(ctx)

    async def analytics_page(request: Request):
        session, _f, refused = await gate(request, page("/analytics"))
        if refused is not None:
            return refused
        a = get_analytics()
        try:
            since = _date(request.query_params.get("from"))
            until = _date(request.query_params.get("to"))
        except LanecoreError:
            return error(request, session, "BAD_DATE", 400)
        views = [] if a is None else await each_view(a, since, until, request, session)
        return render(request, "analytics.html", session, views=views,
                      available=a is not None,
                      since=since.isoformat() if since else "",
                      until=until.isoformat() if until else "")

    async def analytics_csv(request: Request):
        session, _f, refused = await gate(request, page("/analytics"))
        if refused is not None:
            return refused
        a = get_analytics()
        name = request.path_params["name"]
        if a is None:
            return error(request, session, "UNAVAILABLE", 404)
        if name not in {n for n, _t in a.views()}:
            return error(request, session, "UNKNOWN_VIEW", 404)
        try:
            since = _date(request.query_params.get("from"))
            until = _date(request.query_params.get("to"))
        except LanecoreError:
            return error(request, session, "BAD_DATE", 400)
        text = await asyncio.to_thread(a.csv, name, since, until)
        staff.record(session.name, session.role, "analytics.csv", target=name)
        return PlainTextResponse(text, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}.csv"'})

    async def each_view(a, since, until, request, session) -> list:
        """Every view of ``a`` (the store's analytics or HQ's), each with its rows and
        chart, or with its error code as ``problem``; in the reader's language."""
        views = []
        for name, title in a.views():
            try:
                v = await asyncio.to_thread(a.view, name, since, until)
            except LanecoreError as exc:
                v = {"title": title, "columns": [], "rows": [], "svg": None,
                     "problem": exc.code}
            views.append(_words(name, v, gettext_for(lang_of(request, session))))
        return views

    async def hq_page(request: Request):
        session, _f, refused = await gate(request, page("/hq"))
        if refused is not None:
            return refused
        try:
            since = _date(request.query_params.get("from"))
            until = _date(request.query_params.get("to"))
        except LanecoreError:
            return error(request, session, "BAD_DATE", 400)
        views = await each_view(hq, since, until, request, session)
        return render(request, "hq.html", session, views=views,
                      since=since.isoformat() if since else "",
                      until=until.isoformat() if until else "")

    async def hq_csv(request: Request):
        session, _f, refused = await gate(request, page("/hq"))
        if refused is not None:
            return refused
        name = request.path_params["name"]
        if name not in {n for n, _t in hq.views()}:
            return error(request, session, "UNKNOWN_VIEW", 404)
        try:
            since = _date(request.query_params.get("from"))
            until = _date(request.query_params.get("to"))
        except LanecoreError:
            return error(request, session, "BAD_DATE", 400)
        try:
            text = await asyncio.to_thread(hq.csv, name, since, until)
        except LanecoreError as exc:
            return error(request, session, "UNAVAILABLE", 503, exc.code)
        staff.record(session.name, session.role, "hq.csv", target=name)
        return PlainTextResponse(text, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="hq-{name}.csv"'})

    async def staff_page(request: Request):
        session, _f, refused = await gate(request, page("/staff"))
        if refused is not None:
            return refused
        return render(request, "staff.html", session, users=staff.users(),
                      actions=staff.actions(limit=200), roles=auth.ROLES, added=None,
                      problem=None)

    async def staff_add(request: Request):
        session, form, refused = await gate(request, page("/staff"), post=True)
        if refused is not None:
            return refused
        name = str(form.get("name") or "")
        role = str(form.get("role") or "")
        try:
            added = staff.add_user(name, role, str(form.get("password") or ""))
        except auth.ConsoleError as exc:
            staff.record(session.name, session.role, "staff.add", target=name[:64],
                         result=exc.code)
            return render(request, "staff.html", session, 400, users=staff.users(),
                          actions=staff.actions(limit=200), roles=auth.ROLES, added=None,
                          problem=exc.code)
        staff.record(session.name, session.role, "staff.add", target=name, detail=role)
        return render(request, "staff.html", session, users=staff.users(),
                      actions=staff.actions(limit=200), roles=auth.ROLES, added=added,
                      problem=None)

    async def floor_json(request: Request):
        session, _f, refused = await gate(request, "attendant")
        if refused is not None:
            return refused
        return JSONResponse(hub.floor.snapshot())

    async def stream(request: Request):
        session, _f, refused = await gate(request, "attendant")
        if refused is not None:
            return refused
        token = request.cookies.get(SESSION_COOKIE)
        q = hub.subscribe()

        async def body():
            try:
                snap = json.dumps(hub.floor.snapshot(), ensure_ascii=False, default=str)
                yield f"retry: 2000\nevent: snapshot\ndata: {snap}\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(q.get(), 15.0)
                    except asyncio.TimeoutError:
                        if staff.session(token) is None:    # logged out, or expired
                            return
                        yield ": ping\n\n"
                        continue
                    data = json.dumps(msg, ensure_ascii=False, default=str)
                    yield f"event: {msg['topic']}\ndata: {data}\n\n"
            finally:
                hub.unsubscribe(q)
        return StreamingResponse(body(), media_type="text/event-stream", headers={
            "Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def not_found(request: Request, exc):
        return error(request, current(request), "NOT_FOUND", 404)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await hub.start()
        if ready is not None:
            ready()
        try:
            yield
        finally:
            await hub.stop()
            await asyncio.to_thread(svc.close)
            await asyncio.to_thread(cpn.close)
            if hq is not None and hasattr(hq, "close"):
                await asyncio.to_thread(hq.close)

    routes = [
        Route("/healthz", healthz),
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/lang", set_lang, methods=["POST"]),
        Route("/lanes", lanes),
        Route("/alarms", alarms),
        Route("/alarms/resolve", alarm_resolve, methods=["POST"]),
        Route("/audits", audits, methods=["GET"]),
        Route("/audits/record", audit_record, methods=["POST"]),
        Route("/devices", devices),
        *products_routes(),
        *backoffice_routes(),
        *promotions_routes(),
        Route("/analytics", analytics_page),
        Route("/analytics/{name:str}.csv", analytics_csv),
        *([Route("/hq", hq_page), Route("/hq/{name:str}.csv", hq_csv)]
          if hq is not None else []),
        Route("/staff", staff_page, methods=["GET"]),
        Route("/staff", staff_add, methods=["POST"]),
        Route("/floor.json", floor_json),
        Route("/events/stream", stream),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found},
                    middleware=[Middleware(SecurityHeaders)])
    app.state.staff = staff
    app.state.hub = hub
    app.state.service = svc
    return app


_SVG_TEXT = re.compile(r"(<text\b[^>]*>)([^<]*)(</text>)")


def _words(name: str, view: dict, _) -> dict:
    """A view as the page shows it in the session's language: its chart's title and
    the codes of ``VIEW_LABELS`` in its rows and chart as words."""
    labels = {k: _(v) for k, v in VIEW_LABELS.get(name, {}).items()}
    words = {html.escape(view["title"], quote=False): html.escape(_(view["title"]),
                                                                  quote=False),
             **{k: html.escape(v, quote=False) for k, v in labels.items()}}
    out = {"name": name, **view}
    if labels:
        out["rows"] = [[labels.get(x, x) if isinstance(x, str) else x for x in r]
                       for r in view.get("rows") or []]
    if out.get("svg"):
        out["svg"] = _SVG_TEXT.sub(lambda m: m.group(1) + words.get(m.group(2), m.group(2))
                                   + m.group(3), out["svg"])
    return out


class SecurityHeaders:
    """Every answer: a strict content security policy (no inline script, nothing from
    elsewhere), no framing, no sniffing; pages not cached."""

    HEADERS = [
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
         b"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; "
         b"base-uri 'none'"),
        (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin")]

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _v in message.get("headers", [])}
                extra = [(k, v) for k, v in self.HEADERS if k not in names]
                if not static and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)
        await self.app(scope, receive, send_with_headers)


def serve(app: Starlette, host: str, port: int, *, on_bound=None) -> None:
    """Serve ``app`` with uvicorn on HOST:PORT (port 0: a free one); ``on_bound(host,
    port)`` once the socket is bound (before the app starts)."""
    import socket

    import uvicorn
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    if on_bound is not None:
        on_bound(*sock.getsockname()[:2])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            proxy_headers=False, server_header=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


__all__ = ["create_app", "serve", "PAGES", "Upstream"]
