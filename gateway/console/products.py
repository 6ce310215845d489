"""The merchant's products pages (issue 15, Build 4): search, an item's page, its
edit, and the CSV import with live progress.

* ``GET /products``: ``q`` a code (digits: looked up with the service's ``scan``)
  or a name (a read-only ``LIKE`` query of ``items`` in ``--store-db``), 50 rows a
  page (``page``, from 1); ``by=code|name`` forces the kind.
* ``GET /products/item/GTIN``: price, unit weight ± sd, EAS flag, the learned
  weight (``weight_stats``, read only) next to the catalogue's.
* ``POST /products/item/GTIN`` (``csrf``, ``price`` a decimal such as ``12.34``,
  ``unit_weight_g``, ``eas_shown`` + ``eas``): written by
  ``core.scan.catalog.update_item`` on a read-write connection opened for that one
  edit (its transaction bumps ``meta.catalog_version``, so a running service
  reloads).
* ``GET /products/import``, ``POST /products/import`` (multipart, ``file``,
  ``csrf``; at most ``MAX_UPLOAD_BYTES``): the import runs on a thread through
  ``Catalog.import_csv(progress=...)``; ``GET /products/import/JOB`` is its state as
  JSON, which ``static/products.js`` polls every 500 ms.

Every edit and import goes to the console's actions log with the staff name.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console.i18n import N_, gettext_for

#: Rows on one page of results.
PAGE_ROWS = 50
#: The largest CSV upload (bytes).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Finished import jobs kept for their pages.
KEEP_JOBS = 20
#: The learned weight is used by the verdicts from this effective count (WeightBook).
LEARNED_MIN_N = 5.0
_SD_FLOOR_G, _SD_FLOOR_REL = 0.5, 0.01
_EAS_BIT = 4   # lanecore.ext.lookup.FLAG_EAS_TAGGED, checked in routes()

#: What each of this module's error codes says to a person.
MESSAGES = {
    "BAD_PRICE": N_("The price is not valid: a number ≥ 0 with at most the currency's decimals."),
    "BAD_WEIGHT": N_("The unit weight is not valid: a number of grams ≥ 0."),
    "UNKNOWN_ITEM": N_("No such item in the catalogue."),
    "BAD_GTIN": N_("That is not a GTIN."),
    "NO_STORE_DB": N_("This console was started without the store database (--store-db)."),
    "TOO_LARGE": N_("The file is larger than the upload limit."),
    "LENGTH_REQUIRED": N_("The upload did not say its size."),
    "NO_FILE": N_("Choose a CSV file to import."),
    "IMPORT_RUNNING": N_("Another import is running: wait for it to finish."),
    "UNKNOWN_JOB": N_("No such import."),
    "DB_BUSY": N_("The catalogue is busy: try again."),
    "DB_ERROR": N_("The catalogue could not be read or written."),
}
GENERIC = N_("The store's service answered with an error.")


def parse_price(text: str, decimals: int) -> int:
    """``"12.34"`` → 1234 minor units, exactly (``decimals``: the currency's). No sign,
    no exponent, no more decimals than the currency has: else LanecoreError
    BAD_PRICE."""
    t = (text or "").strip()
    if not re.fullmatch(r"[0-9]{1,16}(\.[0-9]{1,16})?", t):
        raise LanecoreError(f"not a price: {t[:40]!r}", code="BAD_PRICE")
    places = len(t.split(".")[1]) if "." in t else 0
    if places > decimals:
        raise LanecoreError(f"{t} has more than {decimals} decimals", code="BAD_PRICE")
    try:
        minor = int(Decimal(t).scaleb(decimals))
    except InvalidOperation:
        raise LanecoreError(f"not a price: {t[:40]!r}", code="BAD_PRICE") from None
    return minor


def format_price(minor: int | None, decimals: int) -> str:
    """1234 → ``"12.34"`` (the form's value)."""
    if minor is None:
        return ""
    return f"{Decimal(int(minor)).scaleb(-decimals):.{decimals}f}"


def parse_weight(text: str) -> float:
    try:
        w = float((text or "").strip()) + 0.0
    except ValueError:
        w = -1.0
    if not 0.0 <= w <= 1e6:
        raise LanecoreError(f"not a weight: {text[:40]!r}", code="BAD_WEIGHT")
    return w


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def _search_names(path: Path, q: str, page: int) -> tuple[list[dict], bool]:
    """Items whose name contains ``q`` (case-insensitive for ASCII), by name: one
    page of PAGE_ROWS, and whether there are more."""
    pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    con = _ro(path)
    try:
        rows = con.execute(
            "SELECT gtin, name, price_minor, unit_weight_g, weight_sd_g, flags FROM items "
            "WHERE name LIKE ? ESCAPE '\\' ORDER BY name, gtin LIMIT ? OFFSET ?",
            (pattern, PAGE_ROWS + 1, (page - 1) * PAGE_ROWS)).fetchall()
    finally:
        con.close()
    cols = ("gtin", "name", "price_minor", "unit_weight_g", "weight_sd_g", "flags")
    out = [dict(zip(cols, r)) for r in rows[:PAGE_ROWS]]
    for r in out:
        r["eas"] = bool(r["flags"] & _EAS_BIT)
    return out, len(rows) > PAGE_ROWS


def _read_item(path: Path, gtin14: str) -> dict | None:
    """The item's catalogue row and its learned weight (``weight_stats``, as
    ``WeightBook.stats`` publishes it), read only."""
    from lanecore.core.scan.catalog import flag_names
    from lanecore.core.weigh.learning import WeightBook, WeightStats
    con = _ro(path)
    try:
        row = con.execute("SELECT gtin, name, price_minor, unit_weight_g, weight_sd_g, "
                          "flags, updated_at FROM items WHERE gtin = ?",
                          (gtin14,)).fetchone()
        if row is None:
            return None
        cols = ("gtin", "name", "price_minor", "unit_weight_g", "weight_sd_g", "flags",
                "updated_at")
        it = dict(zip(cols, row))
        it["flag_names"] = flag_names(it["flags"])
        it["eas"] = bool(it["flags"] & _EAS_BIT)
        it["learned"] = None
        try:
            stats = con.execute("SELECT s.n, s.mean_g, s.m2, s.v1, s.v2, s.n_obs "
                                + WeightBook._CURRENT + " AND s.gtin = ?",
                                (gtin14,)).fetchone()
        except sqlite3.OperationalError:          # nothing learned yet: no table
            stats = None
        if stats is not None:
            s = WeightStats(*stats[:5])
            var = s.variance_g2
            sd = None if var is None else max(math.sqrt(var), _SD_FLOOR_G,
                                              _SD_FLOOR_REL * abs(s.mean_g))
            it["learned"] = {"mean_g": s.mean_g, "sd_g": sd, "n": s.n,
                             "n_obs": stats[5], "used": s.n >= LEARNED_MIN_N}
        return it
    finally:
        con.close()


class Jobs:
    """CSV imports running on threads, and the last few finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}

    def running(self) -> bool:
        with self.lock:
            return any(j["state"] == "running" for j in self.jobs.values())

    def add(self, job: dict) -> None:
        with self.lock:
            done = [k for k, j in self.jobs.items() if j["state"] != "running"]
            for k in done[:max(0, len(done) - KEEP_JOBS + 1)]:
                del self.jobs[k]
            self.jobs[job["job"]] = job

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            j = self.jobs.get(job_id)
            return None if j is None else {**j}

    def update(self, job_id: str, **fields) -> None:
        with self.lock:
            self.jobs[job_id].update(fields)


def routes(ctx) -> list:
    """The products routes. ``ctx``: ``gate(request, role, post=)``, ``page(path)``,
    ``render(request, name, session, status=, **kw)``, ``lang_of(request, session)``,
    ``staff`` (the StaffDB), ``svc`` (the service's Upstream), ``store_db`` (path or
    None), ``data_dir``, ``currency``."""
    from babel.numbers import get_currency_precision

    from lanecore.ext.lookup import FLAG_EAS_TAGGED
    assert FLAG_EAS_TAGGED == _EAS_BIT
    decimals = get_currency_precision(ctx.currency)
    store_db = Path(ctx.store_db) if ctx.store_db else None
    staff = ctx.staff
    jobs = Jobs()
    upload_dir = Path(ctx.data_dir) / "uploads"

    def role() -> str:
        return ctx.page("/products")

    def wants_json(request: Request) -> bool:
        return "application/json" in request.headers.get("accept", "")

    def refuse(request: Request, session, code: str, status: int, detail: str = "",
               template: str = "error.html", **kw) -> Response:
        _ = gettext_for(ctx.lang_of(request, session))
        message = _(MESSAGES[code]) if code in MESSAGES else _(GENERIC)
        if wants_json(request):
            return JSONResponse({"ok": False, "error": {"code": code, "message": message}},
                                status_code=status, headers={"X-Error-Code": code})
        if template == "error.html":
            kw.update(code=code, message=message, detail=detail)
        else:
            kw.update(problem={"code": code, "message": message, "detail": detail})
        resp = ctx.render(request, template, session, status, **kw)
        resp.headers["X-Error-Code"] = code
        return resp

    def have_db() -> bool:
        return store_db is not None and store_db.exists()

    # -- search -------------------------------------------------------------------
    async def search(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        q = (request.query_params.get("q") or "").strip()[:64]
        by = request.query_params.get("by") or ""
        if by not in ("code", "name"):
            by = "code" if q.isdigit() else "name"
        try:
            page_no = max(1, min(10_000, int(request.query_params.get("page") or 1)))
        except ValueError:
            page_no = 1
        rows, more, problem = [], False, None
        if q and by == "code":
            try:
                found = await ctx.svc.call("scan", lane="console", code=q)
                it = found.get("item") or {}
                if it:
                    rows = [{"gtin": it.get("gtin"), "name": it.get("name"),
                             "price_minor": it.get("price_minor"),
                             "unit_weight_g": it.get("unit_weight_g"),
                             "weight_sd_g": it.get("weight_sd_g"),
                             "eas": "eas_tagged" in (it.get("flags") or [])}]
            except LanecoreError as exc:
                problem = exc.code
        elif q:
            if not have_db():
                problem = "NO_STORE_DB"
            else:
                try:
                    rows, more = await asyncio.to_thread(_search_names, store_db, q,
                                                         page_no)
                except sqlite3.Error:
                    problem = "DB_ERROR"
        return ctx.render(request, "products.html", session, q=q, by=by, rows=rows,
                          page_no=page_no, more=more, problem=problem,
                          can_open=have_db())

    # -- one item -------------------------------------------------------------------
    def gtin_of(request: Request) -> str | None:
        g = request.path_params["gtin"]
        return g.zfill(14) if g.isdigit() and len(g) in (8, 12, 13, 14) else None

    async def load(request: Request, session, gtin: str | None):
        """(item, None) or (None, refusal)."""
        if gtin is None:
            return None, refuse(request, session, "BAD_GTIN", 404)
        if not have_db():
            return None, refuse(request, session, "NO_STORE_DB", 404)
        try:
            it = await asyncio.to_thread(_read_item, store_db, gtin)
        except sqlite3.Error:
            return None, refuse(request, session, "DB_ERROR", 500)
        if it is None:
            return None, refuse(request, session, "UNKNOWN_ITEM", 404)
        return it, None

    def item_page(request, session, it, status=200, **kw):
        return ctx.render(request, "product.html", session, status, item=it,
                          price_text=format_price(it["price_minor"], decimals),
                          decimals=decimals, saved=kw.pop("saved", None),
                          problem=kw.pop("problem", None), **kw)

    async def item_get(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        it, refused = await load(request, session, gtin_of(request))
        if refused is not None:
            return refused
        return item_page(request, session, it,
                         saved=request.query_params.get("saved") == "1")

    async def item_post(request: Request):
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        gtin = gtin_of(request)
        it, refused = await load(request, session, gtin)
        if refused is not None:
            staff.record(session.name, session.role, "product.edit",
                         target=request.path_params["gtin"][:20],
                         result=refused.headers.get("X-Error-Code", "ERROR"))
            return refused
        fields: dict = {}
        try:
            price = str(form.get("price") or "").strip()
            if price:
                fields["price_minor"] = parse_price(price, decimals)
            weight = str(form.get("unit_weight_g") or "").strip()
            if weight:
                fields["unit_weight_g"] = parse_weight(weight)
            if form.get("eas_shown") is not None:
                fields["eas"] = str(form.get("eas") or "") in ("1", "on", "true")
            out = await asyncio.to_thread(_update, gtin, fields)
        except LanecoreError as exc:
            staff.record(session.name, session.role, "product.edit", target=gtin,
                         detail=_describe_request(form), result=exc.code)
            return refuse(request, session, exc.code, 400 if exc.code.startswith("BAD_")
                          or exc.code == "UNKNOWN_ITEM" else 503,
                          template="product.html", item=it,
                          price_text=format_price(it["price_minor"], decimals),
                          decimals=decimals, saved=None)
        changed = out["changed"]
        staff.record(session.name, session.role, "product.edit", target=gtin,
                     detail=_describe(changed) or "no change",
                     result=f"ok v{out['catalog_version']}")
        if wants_json(request):
            return JSONResponse({"ok": True, "gtin": gtin, "changed": changed,
                                 "catalog_version": out["catalog_version"]})
        return RedirectResponse(f"/products/item/{gtin}?saved=1", status_code=303)

    def _update(gtin: str, fields: dict) -> dict:
        # The one read-write use of the store database: a connection for this edit.
        from lanecore.core.scan import catalog
        return catalog.update_item(store_db, gtin, **fields)

    # -- import -----------------------------------------------------------------------
    async def import_page(request: Request):
        session, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        job = jobs.get(request.query_params.get("job") or "")
        return ctx.render(request, "import.html", session, job=job, problem=None,
                          limit_mib=MAX_UPLOAD_BYTES // (1024 * 1024),
                          configured=store_db is not None)

    async def import_post(request: Request):
        session, _f, refused = await ctx.gate(request, role())      # before reading it
        if refused is not None:
            return refused
        limit_mib = MAX_UPLOAD_BYTES // (1024 * 1024)

        def no(code, status, detail=""):
            staff.record(session.name, session.role, "product.import", result=code,
                         detail=detail or None)
            return refuse(request, session, code, status, detail, template="import.html",
                          job=None, limit_mib=limit_mib, configured=store_db is not None)

        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return no("LENGTH_REQUIRED", 411)
        # the body is the file and a little multipart framing
        if int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
            return no("TOO_LARGE", 413, f"{int(length):,} > {MAX_UPLOAD_BYTES:,} bytes")
        session, form, refused = await ctx.gate(request, role(), post=True)
        if refused is not None:
            return refused
        upload = form.get("file")
        if upload is None or isinstance(upload, str) or not upload.filename:
            return no("NO_FILE", 400)
        if not have_db():
            return no("NO_STORE_DB", 404)
        if jobs.running():
            return no("IMPORT_RUNNING", 409)
        name = os.path.basename(upload.filename)[:120]
        try:
            path, size = await asyncio.to_thread(_save, upload.file)
        except _TooLarge:
            return no("TOO_LARGE", 413, f"> {MAX_UPLOAD_BYTES:,} bytes")
        finally:
            await upload.close()
        job_id = secrets.token_urlsafe(12)
        job = {"job": job_id, "state": "running", "file": name, "bytes_total": size,
               "bytes_done": 0, "rows_done": 0, "staff": session.name,
               "started_at": time.time(), "report": None, "error": None}
        jobs.add(job)
        staff.record(session.name, session.role, "product.import", target=name,
                     detail=f"job {job_id}, {size:,} bytes", result="started")
        threading.Thread(target=_run, args=(job_id, path, session.name, session.role),
                         name=f"import-{job_id}", daemon=True).start()
        if wants_json(request):
            return JSONResponse({"ok": True, "job": job_id}, status_code=202)
        return RedirectResponse(f"/products/import?job={job_id}", status_code=303)

    def _save(src) -> tuple[Path, int]:
        upload_dir.mkdir(mode=0o700, exist_ok=True)
        fd, where = tempfile.mkstemp(suffix=".csv", dir=upload_dir)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise _TooLarge
                    out.write(chunk)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(where)
            raise
        return Path(where), size

    def _run(job_id: str, path: Path, who: str, who_role: str) -> None:
        from lanecore.core.scan.catalog import Catalog, connect

        def progress(rows_done, bytes_done, bytes_total):
            jobs.update(job_id, rows_done=rows_done, bytes_done=bytes_done,
                        bytes_total=bytes_total)
        try:
            # The import's own read-write connection, closed when it ends.
            with Catalog(connect(store_db), store_db) as cat:
                report = cat.import_csv(path, progress=progress).to_dict()
                version = cat.version()
            jobs.update(job_id, state="done", report=report, finished_at=time.time(),
                        catalog_version=version)
            staff.record(who, who_role, "product.import", target=jobs.get(job_id)["file"],
                         detail=f"job {job_id}: {report['rows_imported']} imported, "
                                f"{report['rows_bad']} bad",
                         result=f"ok v{version}")
        except Exception as exc:                       # reported in the page
            code = getattr(exc, "code", None) or "DB_ERROR"
            jobs.update(job_id, state="failed", error={"code": code, "message": str(exc)},
                        finished_at=time.time())
            staff.record(who, who_role, "product.import", target=jobs.get(job_id)["file"],
                         detail=f"job {job_id}", result=code)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def import_status(request: Request):
        _s, _f, refused = await ctx.gate(request, role())
        if refused is not None:
            return refused
        job = jobs.get(request.path_params["job"])
        if job is None:
            return JSONResponse({"ok": False, "error": {"code": "UNKNOWN_JOB"}},
                                status_code=404, headers={"X-Error-Code": "UNKNOWN_JOB"})
        return JSONResponse({"ok": True, **job})

    return [
        Route("/products", search, methods=["GET"]),
        Route("/products/item/{gtin:str}", item_get, methods=["GET"]),
        Route("/products/item/{gtin:str}", item_post, methods=["POST"]),
        Route("/products/import", import_page, methods=["GET"]),
        Route("/products/import", import_post, methods=["POST"]),
        Route("/products/import/{job:str}", import_status, methods=["GET"]),
    ]


class _TooLarge(Exception):
    pass


def _describe(changed: dict) -> str:
    return "; ".join(f"{k} {a}→{b}" for k, (a, b) in changed.items())


def _describe_request(form) -> str:
    parts = [f"{k}={str(form.get(k))[:32]!r}" for k in ("price", "unit_weight_g", "eas")
             if form.get(k) is not None]
    return ", ".join(parts) or None


__all__ = ["routes", "parse_price", "format_price", "MAX_UPLOAD_BYTES", "PAGE_ROWS"]
