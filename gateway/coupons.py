"""The coupon gateway: ``lanecore gateway coupons [--bind ADDR] [--data-dir D]``.

Seed 001 end to end: the till scans the shopper's multi-information QR once
(``checkout.mqr``); the gateway checks it (``core/promo/mqr.py``), holds the coupons it
carries (``core/promo/coupons.py``), prices the basket with promotions, member prices,
coupons and points (``core/promo/pricing.py``, ``core/promo/members.py``), charges the rest
through the payment gateway with the QR's payment token — telling the provider
which coupons were redeemed — and only then redeems the coupons. All or nothing:
a payment that fails gives every coupon and point back.

Crash safety: before the payment gateway is called the checkout is written
``charging`` with its priced basket, its held coupons and points, in one
transaction; the payment gateway is idempotent by order number. A gateway killed
at any point restarts and drives every ``charging`` checkout to ``paid`` (coupons
redeemed) or ``failed`` (coupons released) by asking again — the payment gateway
answers with the payment it has, it never charges twice.

Configuration ``DATA_DIR/coupons.toml`` (``docs/promo/coupons-gateway.md``).

Prices: the till sends what it scanned and how many (``lines: [{code, qty}]``); the
unit prices come from the store's catalogue (``[store] data_dir``, by default the
gateway's own data directory: ``store.db``, ``core/scan/catalog.py``), families from
``[families]``, member prices from the members' table and promotions from
``[[promotions]]`` and coupons.db's ``promotions`` (``promo.create``, read again after
every change) — never from the request: a line carrying a price or a pricing
field is refused (``PRICE_NOT_ACCEPTED``).

Fault injection for tests: ``LANECORE_COUPONS_CRASH=after_hold`` (or
``after_payment``) makes the process SIGKILL itself right after the checkout's
write-ahead commit (or right after the payment gateway answered).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import time
import tomllib
from pathlib import Path

from lanecore.core.promo import pricing as PR
from lanecore.core.config import check_private, resolve_data_dir, writable_dir
from lanecore.core.config import load_config as load_store_config
from lanecore.core.promo.coupons import CouponBook, CouponError, Definition
from lanecore.core.errors import LanecoreError
from lanecore.core.pay.ledger import payment_mismatch
from lanecore.core.sqlschema import migrate
from lanecore.core.sqltxn import private_database
from lanecore.core.promo.members import Members
from lanecore.core.promo.mqr import MqrError, read_mqr
from lanecore.core.store.orderqr import Verifier

from lanecore.gateway.db.pg import CHAIN_LOCK  # noqa: F401 (the lock its tables take)
from lanecore.gateway.net import protocol as P
from lanecore.gateway.net.identity import ANY, declare, roles
from lanecore.gateway.net.protocol import Field
from lanecore.gateway.net.server import DURABLE, PURE, RECORDED, OpServer

log = logging.getLogger("lanecore.coupons")

CONFIG_FILE = "coupons.toml"
DB_FILE = "coupons.db"
CHARGING, PAID, FAILED, REVERSED = "charging", "paid", "failed", "reversed"
_ORDER = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: Line fields that would set a price or what a promotion applies to: the till's
#: request may not carry them (the catalogue and the configuration say).
PRICE_FIELDS = frozenset({"unit_price_minor", "amount_minor", "member_price_minor",
                          "family", "manufacturer"})
#: What a line of ``price.basket`` / ``checkout.mqr`` is (``gtin``: the old name of
#: ``code``).
LINE_FIELDS = frozenset({"code", "gtin", "qty", "line_id"})
#: Payment-gateway errors after which nothing was charged: the checkout fails.
_RETRY = frozenset({"TIMEOUT", "UNREACHABLE", "UNAVAILABLE", "INTERNAL", "DB_BUSY",
                    "DB_ERROR", "CLOSED"})

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS checkouts (
        order_no TEXT PRIMARY KEY, qr_id TEXT NOT NULL, customer_id TEXT NOT NULL,
        member_id TEXT, till TEXT NOT NULL, token TEXT, currency TEXT NOT NULL,
        priced TEXT NOT NULL, total_minor INTEGER NOT NULL, points INTEGER NOT NULL,
        state TEXT NOT NULL, payment TEXT, created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS mqr_used (
        qr_id TEXT PRIMARY KEY, order_no TEXT NOT NULL, at REAL NOT NULL)""",
    # promotions made at run time (promo.create / promo.end): ``definition`` is a
    # ``[[promotions]]`` table as JSON (without its id and window)
    """CREATE TABLE IF NOT EXISTS promotions (
        id TEXT PRIMARY KEY, definition TEXT NOT NULL, valid_from INTEGER NOT NULL,
        valid_until INTEGER, created_by TEXT NOT NULL, staff TEXT,
        created_at REAL NOT NULL, ended_at REAL, ended_by TEXT)""",
    # coupons.toml's promotions ended at run time (promo.end): the file is not
    # rewritten; an id here stops applying until it is removed from this table
    """CREATE TABLE IF NOT EXISTS promo_overrides (
        promo_id TEXT PRIMARY KEY, ended_at REAL NOT NULL, ended_by TEXT NOT NULL,
        staff TEXT)""",
)
#: This gateway's own tables' versions (``core/sqlschema.py``): version 1 is SCHEMA.
MIGRATIONS = (SCHEMA,)
#: The tables that are this store's own on a database a chain shares (its checkouts,
#: its QRs used, its run-time promotions, its request records): on PostgreSQL they
#: live in the store's own schema (``gateway/db/pg.py``), everything else is shared.
LOCAL_TABLES = ("checkouts", "mqr_used", "promotions", "promo_overrides",
                "service_requests")
#: The most points one ``member.points`` adjustment may add or take.
MAX_ADJUST_POINTS = 10 ** 9
#: What a promotion made with ``promo.create`` may be called (its ``id``).
_PROMO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")



#: Who may call each op (``docs/security.md``; ``admin`` may call every op).
_SELLING = roles("handheld", "kiosk", "till", "pos")
OP_ROLES = {
    "hello": ANY,
    "issuer.add": roles("manager"),
    "coupon.define": roles("manager"),
    "issuer.list": roles("manager", "hq"),
    "coupon.list": roles("manager", "hq"),
    "coupon.issue": roles("manager", "hq"),
    "wallet.coupons": _SELLING | roles("manager"),
    "coupon.parse": _SELLING,
    "price.basket": _SELLING,
    "checkout.mqr": roles("kiosk", "till", "pos"),
    "checkout.status": roles("kiosk", "till", "pos", "attendant", "manager"),
    "checkout.reverse": roles("manager"),
    "clearing.report": roles("manager", "hq"),
    "member.enrol": roles("till", "pos", "manager"),
    "member.find": _SELLING | roles("attendant", "manager"),
    "member.history": roles("attendant", "manager"),
    "member.price": roles("manager"),
    "member.list": roles("attendant", "manager"),
    "member.tier": roles("manager"),
    "member.points": roles("manager"),
    "promo.create": roles("manager"),
    "promo.end": roles("manager"),
    "promo.list": roles("manager"),
    "stats": roles("manager", "hq"),
}


class CouponGatewayError(LanecoreError):
    code = "BAD_CONFIG"


def load_config(data_dir: Path) -> dict:
    path = Path(data_dir) / CONFIG_FILE
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CouponGatewayError(f"{path}: {exc}") from exc


#: ``[payments]`` keys and the types each takes.
_PAYMENTS_KEYS = {"endpoint": str, "terminal": str, "key": str, "timeout_s": (int, float),
                  "retries": int}


def check_config(cfg: dict) -> None:
    """The types of ``coupons.toml``'s top-level keys and ``[payments]``: a wrong type
    or an unknown ``[payments]`` key is BAD_CONFIG naming it (the other tables are
    checked where they are read)."""
    def bad(key: str, want: str, value) -> CouponGatewayError:
        return CouponGatewayError(f"{CONFIG_FILE}: {key} must be {want}, got {value!r}")
    store_id = cfg.get("store_id", "store")
    if not isinstance(store_id, str) or not 1 <= len(store_id) <= 64:
        raise bad("store_id", "a string of 1-64 characters", store_id)
    currency = cfg.get("currency", "CNY")
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii()
            and currency.isalpha() and currency.isupper()):
        raise bad("currency", 'an ISO 4217 code such as "CNY"', currency)
    for key, kind, want in (("payments", dict, "a table"), ("wallet_keys", dict, "a table"),
                            ("members", dict, "a table"),
                            ("promotions", list, "an array of tables ([[promotions]])")):
        if key in cfg and not isinstance(cfg[key], kind):
            raise bad(key, want, cfg[key])
    for i, t in enumerate(cfg.get("promotions", [])):
        if not isinstance(t, dict):
            raise bad(f"promotions[{i}]", "a table", t)
    pay = cfg.get("payments", {})
    unknown = set(pay) - set(_PAYMENTS_KEYS)
    if unknown:
        raise CouponGatewayError(f"{CONFIG_FILE}: unknown key(s) in [payments]: "
                                 f"{sorted(unknown)} (it takes {', '.join(_PAYMENTS_KEYS)})")
    for key, kind in _PAYMENTS_KEYS.items():
        if key in pay and (isinstance(pay[key], bool) or not isinstance(pay[key], kind)):
            raise bad(f"payments.{key}", "a number" if kind != str and kind != int
                      else "an integer" if kind is int else "a string", pay[key])


def parse_families(table) -> dict[str, str]:
    """``[families]`` (family = [GTIN, …]) as GTIN-14 → family; a GTIN in two
    families, or not a GTIN, is BAD_CONFIG."""
    if not isinstance(table, dict):
        raise CouponGatewayError(f"{CONFIG_FILE}: [families] is a table family = [GTIN, …]")
    out: dict[str, str] = {}
    for family, gtins in table.items():
        if not isinstance(gtins, list) or not all(
                isinstance(g, str) and g.isascii() and g.isdigit() and len(g) in (8, 12, 13, 14)
                for g in gtins):
            raise CouponGatewayError(f"{CONFIG_FILE}: families.{family} is a list of GTINs")
        for g in gtins:
            g = g.zfill(14)
            if out.get(g, family) != family:
                raise CouponGatewayError(f"{CONFIG_FILE}: GTIN {g} is in families "
                                         f"{out[g]} and {family}")
            out[g] = family
    return out


def _target(t: dict) -> PR.Target:
    return PR.Target(gtin=t.get("gtin"), family=t.get("family"))


def parse_promotions(tables: list, *, where: str = CONFIG_FILE) -> list:
    """``[[promotions]]`` tables into pricing promotions (``kind``: ``item``,
    ``multibuy``, ``threshold``); ``where`` names the source in errors."""
    out = []
    for i, t in enumerate(tables):
        t = dict(t)
        kind = t.pop("kind", None)
        common = {k: t.pop(k) for k in ("valid_from", "valid_until", "members_only",
                                        "exclusive_group") if k in t}
        pid = t.pop("id", f"promo-{i + 1}")
        target = {k: t.pop(k) for k in ("gtin", "family") if k in t}
        try:
            if kind == "item":
                out.append(PR.ItemDiscount(pid, _target(target), **t, **common))
            elif kind == "multibuy":
                out.append(PR.MultiBuy(pid, _target(target), **t, **common))
            elif kind == "threshold":
                out.append(PR.BasketThreshold(pid, **t, **common))
            else:
                raise CouponGatewayError(f"{where}: promotions[{i}].kind is item, "
                                         "multibuy or threshold")
        except TypeError as exc:
            raise CouponGatewayError(f"{where}: promotions[{i}]: {exc}") from None
    try:
        PR.price([], out, now=0)           # the engine's own checks of every promotion
    except PR.PricingError as exc:
        raise CouponGatewayError(f"{where}: promotions: {exc.message}") from None
    return out


class CouponGateway(OpServer):
    """Coupons, wallets, members, pricing and the one-scan checkout."""

    def __init__(self, data_dir, *, clock=time.time, payments=None,
                 db_url: str | None = None) -> None:
        self.data_dir = writable_dir(resolve_data_dir(data_dir))   # DATA_DIR_READ_ONLY
        cfg = load_config(self.data_dir)
        unknown = set(cfg) - {"store_id", "currency", "payments", "wallet_keys", "members",
                              "promotions", "store", "families", "db"}
        if unknown:
            raise CouponGatewayError(f"{CONFIG_FILE}: unknown {sorted(unknown)}")
        check_config(cfg)
        db = cfg.get("db", {})
        if not isinstance(db, dict) or set(db) - {"url"} or \
                not isinstance(db.get("url", ""), str):
            raise CouponGatewayError(f"{CONFIG_FILE}: [db] takes url (a postgresql:// URL)")
        #: Where the shared state lives: a ``postgresql://`` URL (``--db`` or ``[db]
        #: url``), or None for this data directory's SQLite file (the default).
        self.db_url = db_url or db.get("url") or None
        self._store_setup(cfg.get("store", {}))
        self.families = parse_families(cfg.get("families", {}))
        self.clock = clock
        self.store_id = cfg.get("store_id", "store")
        self.currency = cfg.get("currency", "CNY")
        try:
            self.wallet_keys = {kid: Verifier(key) for kid, key in
                                cfg.get("wallet_keys", {}).items()}
        except LanecoreError as exc:
            raise CouponGatewayError(f"{CONFIG_FILE} [wallet_keys]: {exc.message}") from None
        self.promotions = parse_promotions(cfg.get("promotions", []))
        self._promo_tables = [dict(t) for t in cfg.get("promotions", [])]
        self._promo_cache: tuple | None = None     # ((data_version, gen), promotions)
        self._promo_gen = 0                        # bumped by this process's changes
        pay = dict(cfg.get("payments", {}))
        if "key" in pay:        # a terminal key at rest: the owner's alone, or refused
            check_private(self.data_dir / CONFIG_FILE, error=CouponGatewayError,
                          what="configuration file holding a terminal key")
        self.pay_terminal = pay.get("terminal", "COUPONS")
        self._payments = payments
        self._pay_cfg = pay
        con = self._open_db()
        try:
            migrate(con, "coupon_gateway", MIGRATIONS, tables=LOCAL_TABLES)
        except sqlite3.Error as exc:
            con.close()
            raise LanecoreError(f"cannot open the coupon gateway's tables: {exc}",
                                code="DB_ERROR") from exc
        self.book = CouponBook(con)
        if self.db_url is None:
            # clearing per day and issuer (core/rollups.py): SQLite triggers, read by
            # the store's console; on PostgreSQL HQ's books sum coupon_clearing itself
            from lanecore.core.rollups import ensure_rollups
            ensure_rollups(con)
        m = cfg.get("members", {})
        try:
            self.members = Members(con, **m)
        except TypeError as exc:
            raise CouponGatewayError(f"{CONFIG_FILE} [members]: {exc}") from None
        self.points_value = self.members.point_value_minor
        self._crash = os.environ.get("LANECORE_COUPONS_CRASH", "")
        super().__init__(con)

    def _open_db(self):
        """The connection the gateway's tables, the coupon book and the members live
        on: this data directory's coupons.db, or the chain's PostgreSQL database (its
        own tables in this store's schema; DB_UNAVAILABLE when it cannot be reached —
        never a fall back to the file)."""
        if self.db_url is not None:
            from lanecore.gateway.db.pg import connect, is_postgres_url, redact
            if not is_postgres_url(self.db_url):
                raise CouponGatewayError(f"{CONFIG_FILE}: [db] url is a postgresql:// URL, "
                                         f"not {redact(self.db_url)!r:.80}")
            return connect(self.db_url, lock_key=CHAIN_LOCK, store=self.store_id,
                           local_tables=LOCAL_TABLES)
        private_database(self.data_dir / DB_FILE)     # 0600, and so its -wal and -shm
        con = sqlite3.connect(self.data_dir / DB_FILE, isolation_level=None, timeout=10.0,
                              check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=10000")
        return con

    def _store_setup(self, store) -> None:
        """``[store]``: ``data_dir`` (the store's data directory, whose ``store.db``
        catalogue prices every line; default this gateway's own) and ``region`` (how
        in-store codes read; default the store's ``lanecore.toml``)."""
        from lanecore.core.scan.catalog import database_path
        if not isinstance(store, dict) or set(store) - {"data_dir", "region"}:
            raise CouponGatewayError(f"{CONFIG_FILE}: [store] takes data_dir and region")
        self._catalog = None
        if "data_dir" in store:
            if not isinstance(store["data_dir"], str) or not store["data_dir"]:
                raise CouponGatewayError(f"{CONFIG_FILE}: store.data_dir is a directory")
            self.store_dir = (self.data_dir / Path(store["data_dir"]).expanduser())
            if not database_path(self.store_dir).is_file():
                raise CouponGatewayError(f"{CONFIG_FILE}: store.data_dir "
                                         f"{self.store_dir} holds no store catalogue "
                                         f"(store.db)")
        else:
            self.store_dir = self.data_dir
        try:
            store_cfg = load_store_config(self.store_dir)
        except LanecoreError as exc:
            raise CouponGatewayError(f"{CONFIG_FILE}: the store's configuration: "
                                     f"{exc.message}") from None
        store_cfg.apply()             # the store's in-store code tables
        self.region = store.get("region") or store_cfg.region
        if self.region is not None and not (isinstance(self.region, str)
                                            and len(self.region) == 2):
            raise CouponGatewayError(f"{CONFIG_FILE}: store.region is ISO 3166 alpha-2")

    @property
    def catalog(self):
        """The store catalogue that prices every line (opened on first use;
        NO_CATALOGUE when there is none)."""
        if self._catalog is None:
            from lanecore.core.scan.catalog import Catalog, database_path
            path = database_path(self.store_dir)
            if not path.is_file():
                raise LanecoreError(f"no store catalogue at {path}: set [store] data_dir "
                                    f"in {CONFIG_FILE}", code="NO_CATALOGUE")
            self._catalog = Catalog.open(self.store_dir)
        return self._catalog

    def _maybe_crash(self, point: str) -> None:
        if point == self._crash:
            log.warning("fault injection: SIGKILL %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    @property
    def payments(self):
        """The payment gateway's client (``[payments] endpoint``, ``terminal``,
        ``key`` when it authenticates its terminals)."""
        if self._payments is None:
            from lanecore.gateway.net.client import Client, TerminalKey
            cfg = self._pay_cfg
            if "endpoint" not in cfg:
                raise LanecoreError(f"no [payments] endpoint in {CONFIG_FILE}",
                                    code="NO_PAYMENTS")
            key = TerminalKey.from_text(self.pay_terminal, cfg["key"]) if "key" in cfg \
                else None
            # (a client id of its own per process: two gateways sharing one would be
            # answered each other's recorded replies)
            self._payments = Client(cfg["endpoint"],
                                    timeout_s=float(cfg.get("timeout_s", 10.0)),
                                    retries=int(cfg.get("retries", 1)), terminal_key=key)
        return self._payments

    def close(self) -> None:
        if self._payments is not None and hasattr(self._payments, "close"):
            self._payments.close()
        if self._catalog is not None:
            self._catalog.close()
        self.con.close()

    # ------------------------------------------------------------------------------
    def metric_families(self, db):
        """Checkouts per state (scrape)."""
        from lanecore.gateway.net import metrics as M
        yield M.grouped(db, "lanecore_checkouts", "Coupon-till checkouts, per state",
                        "state", "SELECT state, COUNT(*) FROM checkouts GROUP BY state")

    def _ops(self):
        ident = Field("str", min=1, max=64)
        lines = Field("list", min=1, max=200)
        return declare([
            ("hello", self.op_hello, {}, PURE),
            ("issuer.add", self.op_issuer_add, {"issuer_id": ident, "name": ident}, DURABLE),
            ("coupon.define", self.op_define, {"definition": Field("map")}, DURABLE),
            ("issuer.list", self.op_issuer_list, {}, PURE),
            ("coupon.list", self.op_coupon_list,
             {"issuer_id": Field("str", required=False, min=1, max=64)}, PURE),
            ("coupon.issue", self.op_issue,
             {"coupon_def_id": ident, "customer_id": ident,
              "coupon_id": Field("str", required=False, max=40)}, DURABLE),
            ("wallet.coupons", self.op_wallet, {"customer_id": ident}, PURE),
            ("coupon.parse", self.op_parse, {"code": Field("str", min=1, max=256)}, PURE),
            ("price.basket", self.op_price,
             {"lines": lines, "member": Field("str", required=False, max=32),
              "coupon_ids": Field("list", required=False, max=20),
              "customer_id": Field("str", required=False, max=64)}, PURE),
            ("checkout.mqr", self.op_checkout,
             {"order_no": Field("str", min=1, max=32), "till": ident,
              "mqr": Field("str", min=1, max=2048), "lines": lines,
              "member": Field("str", required=False, max=32),
              "points": Field("int", required=False, min=0, max=10 ** 9)}, RECORDED),
            ("checkout.status", self.op_status, {"order_no": Field("str", min=1, max=32)},
             PURE),
            ("checkout.reverse", self.op_reverse,
             {"order_no": Field("str", min=1, max=32),
              "refund_ref": Field("str", required=False, min=1, max=64)}, RECORDED),
            ("clearing.report", self.op_clearing,
             {"issuer_id": Field("str", required=False, max=64),
              "since": Field("int", required=False, min=0),
              "until": Field("int", required=False, min=0)}, PURE),
            ("member.enrol", self.op_enrol,
             {"card_no": Field("str", required=False, max=19),
              "phone": Field("str", required=False, max=24),
              "name": Field("str", required=False, max=64),
              "tier": Field("str", required=False, max=32)}, DURABLE),
            ("member.find", self.op_member_find, {"identifier": Field("str", min=1, max=32)},
             PURE),
            ("member.history", self.op_member_history,
             {"identifier": Field("str", min=1, max=32)}, PURE),
            ("member.price", self.op_member_price,
             {"gtin": Field("str", min=14, max=14), "tier": ident,
              "price_minor": Field("int", required=False, min=0, max=10 ** 12)}, DURABLE),
            ("member.list", self.op_member_list,
             {"query": Field("str", required=False, max=32),
              "tier": Field("str", required=False, min=1, max=32),
              "limit": Field("int", required=False, min=1, max=200),
              "offset": Field("int", required=False, min=0, max=10 ** 9)}, PURE),
            ("member.tier", self.op_member_tier,
             {"identifier": Field("str", min=1, max=32),
              "tier": Field("str", min=1, max=32)}, DURABLE),
            ("member.points", self.op_member_points,
             {"identifier": Field("str", min=1, max=32),
              "points": Field("int", min=-MAX_ADJUST_POINTS, max=MAX_ADJUST_POINTS,
                              code="BAD_POINTS"),
              "reason": Field("str", min=1, max=200),
              "ref": Field("str", min=1, max=100),
              "staff": Field("str", min=1, max=64)}, DURABLE),
            ("promo.create", self.op_promo_create,
             {"definition": Field("map"),
              "valid_from": Field("int", required=False, min=0, max=2 ** 40),
              "valid_until": Field("int", required=False, min=0, max=2 ** 40),
              "staff": Field("str", required=False, min=1, max=64)}, DURABLE),
            ("promo.end", self.op_promo_end,
             {"promo_id": Field("str", min=1, max=64),
              "staff": Field("str", required=False, min=1, max=64)}, DURABLE),
            ("promo.list", self.op_promo_list,
             {"include_ended": Field("bool", required=False)}, PURE),
            ("stats", self.op_stats, {}, PURE),
        ], OP_ROLES)

    def op_hello(self, f) -> dict:
        import lanecore
        return {"protocol": P.PROTOCOL_VERSION, "server": f"lanecore {lanecore.__version__}",
                "capabilities": sorted(self.ops), "store_id": self.store_id,
                "currency": self.currency, "wallet_keys": sorted(self.wallet_keys)}

    def op_stats(self, f) -> dict:
        states = dict(self.con.execute("SELECT state, COUNT(*) FROM checkouts GROUP BY "
                                       "state").fetchall())
        return {"uptime_s": round(time.monotonic() - self.started, 3),
                "requests": dict(self.counts), "errors": dict(self.errors),
                "checkouts": states}

    # ------------------------------------------------------------------------------
    # Coupons and wallets
    # ------------------------------------------------------------------------------
    def op_issuer_add(self, f, after) -> dict:
        issuer = self.book.add_issuer(f["issuer_id"], f["name"])
        return {"issuer": {"issuer_id": issuer.issuer_id, "name": issuer.name}}

    def op_define(self, f, after) -> dict:
        d = f["definition"]
        try:
            definition = Definition(**d)
        except TypeError as exc:
            raise CouponError(f"definition: {exc}", code="BAD_COUPON_DEF") from None
        return {"definition": self.book.define(definition).to_dict()}

    def op_issuer_list(self, f) -> dict:
        return {"issuers": [{"issuer_id": i.issuer_id, "name": i.name}
                            for i in self.book.issuers()]}

    def op_coupon_list(self, f) -> dict:
        return {"definitions": [d.to_dict() for d in self.book.definitions(
            f.get("issuer_id"))]}

    def op_issue(self, f, after) -> dict:
        c = self.book.issue(f["coupon_def_id"], f["customer_id"],
                            coupon_id=f.get("coupon_id"), now=int(self.clock()))
        return {"coupon": c.to_dict()}

    def op_wallet(self, f) -> dict:
        """A customer's usable coupons, with what the wallet needs to show and put in
        its QR (``coupon_id``, ``gtin``, ``amount_minor``)."""
        out = []
        now = self.clock()
        for c in self.book.wallet(f["customer_id"]):
            if c.state != "issued":
                continue
            d = self.book.definition(c.coupon_def_id)
            if not d.valid_from <= now < d.valid_until:
                continue
            out.append({**c.to_dict(), "gtin": d.target_gtin, "family": d.target_family,
                        "amount_minor": d.amount_off_minor, "percent_bp": d.percent_bp,
                        "issuer_id": d.issuer_id, "valid_until": d.valid_until})
        return {"customer_id": f["customer_id"], "coupons": out}

    def op_parse(self, f) -> dict:
        """A printed coupon scanned at the till: the GS1 (8110) / (8112) element
        strings of the scan, parsed (``docs/promo/coupons.md``)."""
        from lanecore.core.promo.coupons import coupons_in_ais
        from lanecore.ext.barcode import parse_scan
        scan = parse_scan(f["code"])
        found = coupons_in_ais(scan.ais or {})
        if not found:
            raise CouponError("the scan holds no (8110) or (8112) coupon",
                              code="NOT_A_COUPON")
        return {"coupons": [{"ai": "8110" if type(c).__name__ == "NACoupon" else "8112",
                             "coupon_id": c.coupon_id, **c.to_dict()} for c in found]}

    def op_clearing(self, f) -> dict:
        """What each manufacturer owes the store for its redeemed coupons."""
        report = self.book.clearing(f.get("issuer_id"), f.get("since"), f.get("until"))
        return {"store_id": self.store_id, **report.to_dict()}

    # ------------------------------------------------------------------------------
    # Members
    # ------------------------------------------------------------------------------
    def op_enrol(self, f, after) -> dict:
        m = self.members.enrol(card_no=f.get("card_no"), phone=f.get("phone"),
                               name=f.get("name", ""), tier=f.get("tier", "basic"),
                               now=self.clock())
        return {"member": m.to_dict()}

    def op_member_find(self, f) -> dict:
        return {"member": self.members.find(f["identifier"]).to_dict()}

    def op_member_history(self, f) -> dict:
        m = self.members.find(f["identifier"])
        return {"member": m.to_dict(),
                "purchases": [p.to_dict() for p in self.members.history(m.member_id)],
                "moves": [mv.to_dict() for mv in self.members.recent_moves(m.member_id)]}

    def op_member_list(self, f) -> dict:
        """Members whose card, phone, name or id starts with ``query``, newest first,
        a page of ``limit`` from ``offset``, and how many match in all."""
        found, total = self.members.search(f.get("query"), tier=f.get("tier"),
                                           limit=f.get("limit", 50),
                                           offset=f.get("offset", 0))
        return {"members": [m.to_dict() for m in found], "total": total}

    def op_member_tier(self, f, after) -> dict:
        m = self.members.find(f["identifier"])
        return {"member": self.members.set_tier(m.member_id, f["tier"]).to_dict()}

    def op_member_points(self, f, after) -> dict:
        """A staff adjustment of a member's points (move kind ``adjust``), idempotent
        by ``ref``; ``staff`` is the person the caller vouches for, kept beside the
        caller's proved identity."""
        m = self.members.find(f["identifier"])
        move = self.members.adjust(m.member_id, f["points"], ref=f["ref"],
                                   reason=f["reason"], now=self.clock(), staff=f["staff"],
                                   principal=self.principal.id)
        return {"member": self.members.find(m.member_id).to_dict(), "move": move.to_dict()}

    def op_member_price(self, f, after) -> dict:
        price = self.members.set_member_price(f["gtin"], f["tier"], f.get("price_minor"))
        return {"gtin": f["gtin"], "tier": f["tier"], "price_minor": price}

    # ------------------------------------------------------------------------------
    # Promotions made at run time (promo.create / promo.end / promo.list)
    # ------------------------------------------------------------------------------
    def promotions_now(self) -> list:
        """``coupons.toml``'s promotions and the database's, those not ended (the engine
        leaves out those outside their window at pricing time). Read again whenever
        the database changed (``PRAGMA data_version``: another process's commit) or
        this process changed a promotion, so the very next basket prices with them."""
        key = (self.con.execute("PRAGMA data_version").fetchone()[0], self._promo_gen)
        if self._promo_cache is None or self._promo_cache[0] != key:
            self._promo_cache = (key, self._load_db_promotions())
        return self._promo_cache[1]

    def _file_ended(self) -> dict:
        """``coupons.toml``'s promotions ended at run time: promo_id → (ended_at,
        ended_by, staff)."""
        return {r[0]: r[1:] for r in self.con.execute(
            "SELECT promo_id, ended_at, ended_by, staff FROM promo_overrides")}

    def _load_db_promotions(self) -> list:
        ended = self._file_ended()
        out = [p for p in self.promotions if p.promo_id not in ended]
        rows = self.con.execute(
            "SELECT id, definition, valid_from, valid_until FROM promotions WHERE ended_at "
            "IS NULL AND (valid_until IS NULL OR valid_until > ?) ORDER BY id",
            (int(self.clock()),)).fetchall()
        for pid, definition, valid_from, valid_until in rows:
            try:
                p = parse_promotions([self._promo_table(pid, json.loads(definition),
                                                        valid_from, valid_until)],
                                     where=DB_FILE)[0]
                PR.price([], out + [p], now=0)     # still fits beside the others
            except (LanecoreError, ValueError) as exc:
                log.warning("promotion %s left out: %s", pid, exc)
                continue
            out.append(p)
        return out

    @staticmethod
    def _promo_table(pid: str, definition: dict, valid_from, valid_until) -> dict:
        t = {**definition, "id": pid, "valid_from": valid_from}
        if valid_until is not None:
            t["valid_until"] = valid_until
        return t

    def _promo_row(self, row, now: float) -> dict:
        pid, definition, vf, vu, created_by, staff, created_at, ended_at, ended_by = row
        if ended_at is not None:
            state = "ended"
        elif now < vf:
            state = "scheduled"
        elif vu is not None and now >= vu:
            state = "expired"
        else:
            state = "active"
        return {"promo_id": pid, "definition": json.loads(definition), "valid_from": vf,
                "valid_until": vu, "created_by": created_by, "staff": staff,
                "created_at": created_at, "ended_at": ended_at, "ended_by": ended_by,
                "state": state, "source": "db"}

    _PROMO_COLS = ("id, definition, valid_from, valid_until, created_by, staff, created_at, "
                   "ended_at, ended_by")

    def _bump_promotions(self) -> None:
        self._promo_gen += 1

    def op_promo_create(self, f, after) -> dict:
        """A promotion from now (or ``valid_from``) until ``valid_until`` (or until
        ended): ``definition`` is a ``[[promotions]]`` table (``kind`` …), checked as
        ``coupons.toml``'s are (BAD_PROMOTION, details ``field``)."""
        def bad(message: str, field: str = "definition") -> LanecoreError:
            return LanecoreError(message, code="BAD_PROMOTION", details={"field": field})
        now = int(self.clock())
        d = dict(f["definition"])
        for k in ("valid_from", "valid_until"):
            if k in d:
                raise bad(f"{k} is a field of promo.create, not of the definition", k)
        pid = d.pop("id", None)
        if pid is None:
            pid = f"P-{now}-{os.urandom(3).hex()}"
        if not (isinstance(pid, str) and _PROMO_ID.fullmatch(pid)):
            raise bad("definition.id is 1-64 of A-Z a-z 0-9 . _ - (first a letter or "
                      "digit)", "id")
        g = d.get("gtin")
        if isinstance(g, str) and g.isascii() and g.isdigit() and len(g) in (8, 12, 13):
            d["gtin"] = g.zfill(14)
        valid_from = f.get("valid_from", now)
        valid_until = f.get("valid_until")
        if valid_until is not None and valid_until <= max(now, valid_from):
            raise bad("valid_until is in the past or not after valid_from", "valid_until")
        try:
            text = json.dumps(d, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError):
            raise bad("the definition holds values JSON cannot carry") from None
        try:
            p = parse_promotions([self._promo_table(pid, d, valid_from, valid_until)],
                                 where="definition")[0]
        except CouponGatewayError as exc:
            raise bad(exc.message) from None
        if pid in {q.promo_id for q in self.promotions} or self.con.execute(
                "SELECT 1 FROM promotions WHERE id = ?", (pid,)).fetchone():
            raise LanecoreError(f"a promotion {pid} exists already", code="PROMO_EXISTS",
                                details={"promo_id": pid})
        try:
            PR.price([], self.promotions_now() + [p], now=0)
        except PR.PricingError as exc:
            raise bad(f"beside the promotions in place: {exc.message}",
                      (exc.details or {}).get("field", "definition")) from None
        created_by = self.principal.id
        self.con.execute(
            f"INSERT INTO promotions ({self._PROMO_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "NULL, NULL)", (pid, text, valid_from, valid_until, created_by, f.get("staff"),
                            self.clock()))
        after.append(self._bump_promotions)
        row = self.con.execute(f"SELECT {self._PROMO_COLS} FROM promotions WHERE id = ?",
                               (pid,)).fetchone()
        return {"promotion": self._promo_row(row, self.clock())}

    def op_promo_end(self, f, after) -> dict:
        """End a promotion now, a database one or one of ``coupons.toml`` (recorded in
        ``promo_overrides``; the file is not touched); again: the same answer.
        (``promo_id``, not ``id``: that is the envelope's request id.)"""
        pid = f["promo_id"]
        row = self.con.execute(f"SELECT {self._PROMO_COLS} FROM promotions WHERE id = ?",
                               (pid,)).fetchone()
        if row is None:
            index = {p.promo_id: i for i, p in enumerate(self.promotions)}
            if pid not in index:
                raise LanecoreError(f"no promotion {pid}", code="UNKNOWN_PROMOTION",
                                    details={"promo_id": pid})
            if pid not in self._file_ended():
                self.con.execute(
                    "INSERT INTO promo_overrides (promo_id, ended_at, ended_by, staff) "
                    "VALUES (?, ?, ?, ?)", (pid, self.clock(), self.principal.id,
                                            f.get("staff")))
                after.append(self._bump_promotions)
            return {"promotion": self._file_promo(index[pid], self.clock(),
                                                  self._file_ended())}
        if row[7] is None:
            by = self.principal.id + (f" ({f['staff']})" if f.get("staff") else "")
            self.con.execute("UPDATE promotions SET ended_at = ?, ended_by = ? WHERE id = ?",
                             (self.clock(), by, pid))
            after.append(self._bump_promotions)
            row = self.con.execute(f"SELECT {self._PROMO_COLS} FROM promotions WHERE id = ?",
                                   (pid,)).fetchone()
        return {"promotion": self._promo_row(row, self.clock())}

    def op_promo_list(self, f) -> dict:
        """The database's promotions (newest first; ended ones with
        ``include_ended``) and ``coupons.toml``'s (``configured``)."""
        now = self.clock()
        sql = f"SELECT {self._PROMO_COLS} FROM promotions"
        if not f.get("include_ended"):
            sql += " WHERE ended_at IS NULL"
        rows = self.con.execute(sql + " ORDER BY created_at DESC, id LIMIT 1000").fetchall()
        ended = self._file_ended()
        configured = [self._file_promo(i, now, ended) for i in range(len(self.promotions))]
        if not f.get("include_ended"):
            configured = [p for p in configured if p["ended_at"] is None]
        return {"now": now, "promotions": [self._promo_row(r, now) for r in rows],
                "configured": configured}

    def _file_promo(self, i: int, now: float, ended: dict) -> dict:
        """``coupons.toml``'s ``i``-th promotion as ``promo.list`` shows it."""
        t, p = self._promo_tables[i], self.promotions[i]
        d = {k: v for k, v in t.items() if k not in ("id", "valid_from", "valid_until")}
        vf, vu = p.valid_from, p.valid_until
        ended_at, ended_by, staff = ended.get(p.promo_id, (None, None, None))
        state = ("ended" if ended_at is not None else
                 "scheduled" if vf is not None and now < vf else
                 "expired" if vu is not None and now >= vu else "active")
        return {"promo_id": p.promo_id, "definition": d, "valid_from": vf,
                "valid_until": vu, "created_by": None, "staff": None, "created_at": None,
                "ended_at": ended_at,
                "ended_by": None if ended_by is None
                else ended_by + (f" ({staff})" if staff else ""),
                "state": state, "source": "file"}

    # ------------------------------------------------------------------------------
    # Pricing
    # ------------------------------------------------------------------------------
    def _lines(self, raw: list, member) -> list[PR.Line]:
        """The till's lines (what it scanned and how many) as pricing lines, priced
        from the store's catalogue, with the families of ``[families]`` and the
        member's prices. A line carrying a price or pricing field is refused
        (PRICE_NOT_ACCEPTED); a code that does not read or is not listed has its scan
        code or UNKNOWN_ITEM, a variable-measure item without a weight or price label
        NEEDS_WEIGHING (each with ``index``)."""
        from lanecore.ext.lookup import FLAG_VARIABLE_MEASURE
        lines = []
        for i, ln in enumerate(raw):
            if not isinstance(ln, dict):
                raise P.ProtocolError("BAD_FIELD", f"lines[{i}] is a map of "
                                                   f"{', '.join(sorted(LINE_FIELDS))}")
            priced = sorted(PRICE_FIELDS & set(ln))
            if priced:
                raise LanecoreError(
                    f"lines[{i}] carries {', '.join(priced)}: prices come from the store's "
                    "catalogue and pricing configuration; send codes and quantities",
                    code="PRICE_NOT_ACCEPTED", details={"index": i, "fields": priced})
            if not set(ln) <= LINE_FIELDS:
                raise P.ProtocolError("BAD_FIELD", f"lines[{i}] is a map of "
                                                   f"{', '.join(sorted(LINE_FIELDS))}")
            code = ln.get("code", ln.get("gtin"))
            qty = ln.get("qty", 1)
            if not isinstance(code, str) or ("code" in ln and "gtin" in ln
                                             and ln["code"] != ln["gtin"]):
                raise P.ProtocolError("BAD_FIELD", f"lines[{i}].code is what was scanned "
                                                   "(a str)")
            if isinstance(qty, bool) or not isinstance(qty, int):
                raise P.ProtocolError("BAD_FIELD", f"lines[{i}].qty is an int")
            found = self.catalog.lookup_code(code, self.region)
            if found["error"] is not None:
                raise LanecoreError(f"lines[{i}]: {found['error']['message']}",
                                    code=found["error"]["code"], details={"index": i})
            item, scan = found["item"], found["scan"]
            if item["line_price_minor"] is None:
                raise LanecoreError(f"lines[{i}]: {item['gtin']} is sold by weight: scan "
                                    "its weight or price label", code="NEEDS_WEIGHING",
                                    details={"index": i})
            line = {"line_id": ln.get("line_id", str(i + 1)), "gtin": item["gtin"],
                    "qty": qty, "unit_price_minor": item["price_minor"],
                    "family": self.families.get(item["gtin"])}
            if item["flag_bits"] & FLAG_VARIABLE_MEASURE or any(
                    scan.get(k) is not None for k in ("price_minor", "weight_g", "count")):
                line["amount_minor"] = item["line_price_minor"]   # a label: qty 1
            lines.append(line)
        prices = {}
        if member is not None:
            prices = self.members.member_prices({ln.get("gtin") for ln in lines
                                                 if isinstance(ln.get("gtin"), str)},
                                                member.tier)
        try:
            return [PR.Line(**ln, member_price_minor=prices.get(ln.get("gtin")))
                    for ln in lines]
        except TypeError as exc:
            raise P.ProtocolError("BAD_FIELD", f"lines: {exc}") from None

    @staticmethod
    def _use(definition: Definition, coupon_id: str) -> PR.CouponUse:
        return PR.CouponUse(coupon_id, PR.Target(gtin=definition.target_gtin,
                                                 family=definition.target_family),
                            amount_off_minor=definition.amount_off_minor,
                            percent_bp=definition.percent_bp, min_qty=definition.min_qty)

    def _price(self, lines, member, uses, points_wanted: int = 0) -> PR.Priced:
        pm = PR.Member(member.member_id, member.tier) if member is not None else None
        now = int(self.clock())
        promotions = self.promotions_now()
        if not points_wanted or member is None:
            return PR.price(lines, promotions, now=now, member=pm, coupons=uses)
        before = PR.price(lines, promotions, now=now, member=pm, coupons=uses)
        most = min(points_wanted, member.points,
                   self.members.redeem_limit(before.total_minor)) if before.total_minor else 0
        return PR.price(lines, promotions, now=now, member=pm, coupons=uses,
                        points_to_redeem=most, points_value_minor_per_point=self.points_value,
                        points_available=member.points)

    def op_price(self, f) -> dict:
        """Price a basket without holding anything: what the handheld, kiosk or till
        shows (member prices, promotions, and the customer's coupons if given)."""
        member = self.members.find(f["member"]) if f.get("member") else None
        lines = self._lines(f["lines"], member)
        uses = []
        for cid in f.get("coupon_ids") or []:
            c = self.book.coupon(cid)
            if f.get("customer_id") is not None and c.customer_id != f["customer_id"]:
                raise CouponError(f"coupon {cid} is not this customer's",
                                  code="NOT_YOUR_COUPON")
            uses.append(self._use(self.book.definition(c.coupon_def_id), cid))
        return {"priced": self._price(lines, member, uses).to_dict()}

    # ------------------------------------------------------------------------------
    # The one-scan checkout (seed 001)
    # ------------------------------------------------------------------------------
    def _row(self, order_no: str) -> dict | None:
        cur = self.con.execute("SELECT * FROM checkouts WHERE order_no = ?", (order_no,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def _reply(self, row: dict) -> dict:
        priced = json.loads(row["priced"])
        payment = json.loads(row["payment"]) if row["payment"] else None
        status = {CHARGING: "pending"}.get(row["state"], row["state"])
        return {"order_no": row["order_no"], "status": status, "qr_id": row["qr_id"],
                "customer_id": row["customer_id"], "member_id": row["member_id"],
                "till": row["till"], "currency": row["currency"],
                "gross_minor": priced["gross_minor"],
                "discount_minor": priced["discount_minor"],
                "total_minor": row["total_minor"],
                "coupons_applied": priced["coupons_applied"],
                "coupons_rejected": priced["coupons_rejected"],
                "promotions_applied": priced["promotions_applied"],
                "points_redeemed": row["points"], "payment": payment,
                "_final": row["state"] != CHARGING}

    def op_checkout(self, f) -> dict:
        order_no = f["order_no"]
        if not _ORDER.fullmatch(order_no):
            raise P.ProtocolError("BAD_FIELD", "order_no is 1-32 of A-Z a-z 0-9 _ -")
        row = self._row(order_no)
        if row is not None and row["state"] in (PAID, REVERSED):
            return self._reply(row)
        if row is not None and row["state"] == CHARGING:
            return self._reply(self._drive(row))
        now = self.clock()
        mqr = read_mqr(f["mqr"], self.wallet_keys, now=now)
        if mqr.currency != self.currency:
            raise LanecoreError(f"the QR pays in {mqr.currency}; this store takes "
                                f"{self.currency}", code="BAD_CURRENCY")
        used = self.con.execute("SELECT order_no FROM mqr_used WHERE qr_id = ?",
                                (mqr.qr_id,)).fetchone()
        if used is not None and used[0] != order_no:
            raise MqrError(f"this QR was used for order {used[0]}; the shopper's wallet "
                           "shows a fresh one", code="MQR_REPLAYED")
        if row is not None and row["qr_id"] == mqr.qr_id:   # failed with this very QR
            raise MqrError("this QR's payment failed; its token is spent — the shopper's "
                           "wallet shows a fresh one", code="MQR_REPLAYED")
        member = self.members.find(f["member"]) if f.get("member") else None
        lines = self._lines(f["lines"], member)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT OR IGNORE INTO mqr_used (qr_id, order_no, at) VALUES "
                        "(?, ?, ?)", (mqr.qr_id, order_no, now))
            held, refused = self._hold(mqr, order_no, int(now))
            uses = [self._use(r.definition, r.coupon_id) for r in held]
            priced = self._price(lines, member, uses, f.get("points", 0))
            rejected = {**priced.coupons_rejected, **refused}
            out = priced.to_dict()
            out["coupons_rejected"] = rejected
            if priced.points_redeemed:
                self.members.redeem(member.member_id, priced.points_redeemed,
                                    order_no=self._points_key(order_no, mqr.qr_id),
                                    basket_total_minor=priced.total_minor
                                    + priced.points_value_minor, now=now)
            con.execute("DELETE FROM checkouts WHERE order_no = ?", (order_no,))
            con.execute(
                "INSERT INTO checkouts (order_no, qr_id, customer_id, member_id, till, token, "
                "currency, priced, total_minor, points, state, payment, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (order_no, mqr.qr_id, mqr.customer, member.member_id if member else None,
                 f["till"], mqr.token, mqr.currency, json.dumps(out), priced.total_minor,
                 priced.points_redeemed, CHARGING, now, now))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        self._maybe_crash("after_hold")
        return self._reply(self._drive(self._row(order_no)))

    @staticmethod
    def _points_key(order_no: str, qr_id: str) -> str:
        """The members' key of the points one attempt spends: a failed attempt gives
        them back for good, and the next attempt (a fresh QR) spends its own."""
        return f"{order_no}:{qr_id}"

    def _hold(self, mqr, order_no: str, now: int):
        """Reserve the QR's coupons for the order: those the book refuses (used,
        expired, another customer's, unknown) are left out and reported."""
        ids = [c.coupon_id for c in mqr.coupons]
        refused: dict[str, str] = {}
        while ids:
            try:
                return self.book.reserve(ids, order_no=order_no, customer_id=mqr.customer,
                                         now=now), refused
            except CouponError as exc:
                failures = (getattr(exc, "details", None) or {}).get("failures")
                if not failures:
                    raise
                for fl in failures:
                    refused[fl["coupon_id"]] = fl["code"]
                ids = [i for i in ids if i not in refused]
        return [], refused

    def _drive(self, row: dict) -> dict:
        """Ask the payment gateway for this checkout's payment (again: it is
        idempotent by order) and finish it when the answer is final."""
        order_no = row["order_no"]
        priced = json.loads(row["priced"])
        if row["total_minor"] == 0:
            return self._finish(row, {"status": "paid", "amount_minor": 0})
        coupons = [{"coupon_id": cid, "gtin": a["gtin"], "amount_minor": a["amount_minor"]}
                   for cid, a in priced["coupons_applied"].items() if a["amount_minor"] > 0]
        try:
            pay = self.payments.call(
                "pay.charge", order_no=order_no, amount_minor=row["total_minor"],
                currency=row["currency"], method="auth_code", auth_code=row["token"],
                terminal=self.pay_terminal, payer=row["customer_id"],
                **({"coupons": coupons} if coupons else {}))
        except LanecoreError as exc:
            if exc.code in _RETRY:
                log.warning("payment of %s: %s (asked again later)", order_no, exc.code)
                return row
            pay = {"status": "failed", "error": {"code": exc.code, "message": exc.message}}
        self._maybe_crash("after_payment")
        if pay.get("order_no", order_no) != order_no:
            raise LanecoreError(f"the payment gateway answered for order "
                                f"{pay.get('order_no')}, not {order_no}", code="INTERNAL")
        if pay.get("status") == "pending":
            return row
        if pay.get("status") == "paid":
            # paid for this order, amount and currency — else it is not this payment
            why = payment_mismatch(pay, order_no, row["total_minor"], row["currency"])
            if why is not None:
                log.warning("payment of %s: not the payment asked for: %s", order_no, why)
                pay = {"status": "failed", "error": {"code": "PAYMENT_MISMATCH",
                                                     "message": why}}
        return self._finish(row, pay)

    def _finish(self, row: dict, pay: dict) -> dict:
        """The payment's final answer: redeem (paid) or give everything back."""
        order_no, now = row["order_no"], self.clock()
        priced = json.loads(row["priced"])
        payment = {k: pay.get(k) for k in ("status", "order_no", "channel", "merchant_ref",
                                           "provider_ref", "amount_minor", "currency",
                                           "decline_code", "error")
                   if pay.get(k) is not None}
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            if pay.get("status") == "paid":
                amounts = {cid: a["amount_minor"]
                           for cid, a in priced["coupons_applied"].items()}
                if self.book.order(order_no) is not None:
                    self.book.commit(order_no, amounts, store_id=self.store_id, now=int(now))
                if row["member_id"]:
                    earned = self.members.earn(row["member_id"], order_no,
                                               row["total_minor"], now=now)
                    self.members.record_purchase(
                        row["member_id"], order_no, row["total_minor"], row["currency"],
                        [ln for ln in priced["lines"]], earned.points, row["points"],
                        now=now)
                state = PAID
            else:
                if self.book.order(order_no) is not None:
                    self.book.release(order_no)
                if row["points"]:      # this attempt's points (a new QR is a new attempt)
                    self.members.reverse_order(self._points_key(order_no, row["qr_id"]),
                                               now=now)
                state = FAILED
            con.execute("UPDATE checkouts SET state = ?, payment = ?, token = NULL, "
                        "updated_at = ? WHERE order_no = ?",
                        (state, json.dumps(payment), now, order_no))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return self._row(order_no)

    def op_status(self, f) -> dict:
        row = self._row(f["order_no"])
        if row is None:
            raise LanecoreError(f"no checkout for order {f['order_no']}",
                                code="UNKNOWN_ORDER")
        out = self._reply(row)
        out.pop("_final")
        return out

    def op_reverse(self, f) -> dict:
        """Cancel a paid checkout: the payment reversed (the same day) or, with
        ``refund_ref``, refunded in full (a return on a later day); the coupons back in
        the wallet (and off the clearing report), the points given back and taken
        back."""
        row = self._row(f["order_no"])
        if row is None:
            raise LanecoreError(f"no checkout for order {f['order_no']}",
                                code="UNKNOWN_ORDER")
        if row["state"] == REVERSED:
            return self._reply(row)
        if row["state"] != PAID:
            raise LanecoreError(f"checkout {f['order_no']} is {row['state']}, not paid",
                                code="NOT_PAID")
        if row["total_minor"] > 0:
            if f.get("refund_ref"):
                pay = self.payments.call("pay.refund", order_no=f["order_no"],
                                         refund_ref=f["refund_ref"],
                                         amount_minor=row["total_minor"])
                done = pay.get("status") == "refunded"
            else:
                pay = self.payments.call("pay.reverse", order_no=f["order_no"])
                done = pay.get("status") == "reversed"
            if not done:
                out = self._reply(row)
                out.update(status="pending", _final=False)
                return out
        now = self.clock()
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            self.book.reverse(f["order_no"], now=int(now))
            if row["member_id"]:
                self.members.reverse_order(f["order_no"], now=now)
                if row["points"]:
                    self.members.reverse_order(self._points_key(f["order_no"], row["qr_id"]),
                                               now=now)
            con.execute("UPDATE checkouts SET state = ?, updated_at = ? WHERE order_no = ?",
                        (REVERSED, now, f["order_no"]))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return self._reply(self._row(f["order_no"]))

    # ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Drive every checkout a crash left ``charging``."""
        for (order_no,) in self.con.execute("SELECT order_no FROM checkouts WHERE state = ?",
                                            (CHARGING,)).fetchall():
            try:
                self._drive(self._row(order_no))
            except Exception:
                log.exception("checkout %s could not be driven", order_no)

    def on_idle(self) -> None:
        now = time.monotonic()
        if now - getattr(self, "_last_drive", 0.0) >= 1.0:
            self._last_drive = now
            self.recover()


def serve(data_dir, bind: str, *, curve: bool = False, metrics: str | None = None,
          db_url: str | None = None) -> int:
    """Run the coupon gateway until SIGTERM/SIGINT; ``curve``: callers are the keys
    enrolled in its data directory, with their roles (``gateway/net/security.py``)."""
    import zmq

    from lanecore.gateway.net.security import ServerSecurity
    gw = CouponGateway(data_dir, db_url=db_url)
    guard = ServerSecurity(gw.data_dir, zmq.Context.instance()) if curve else None

    from lanecore.gateway.net import metrics as M

    def ready():
        mode = "curve" if guard else "dev-open"
        M.ready(f"lanecore coupons serving on {bind} ({mode}), data in {gw.data_dir}",
                process="coupons", bind=bind, mode=mode, data_dir=str(gw.data_dir))
    try:
        if metrics:
            M.serve(gw, metrics, process="coupons")
        gw.recover()
        gw.serve(bind, security=guard, ready=ready)
    finally:
        if guard is not None:
            guard.stop()
        gw.close()
    return 0
