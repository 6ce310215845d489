"""The verification service: one ROUTER socket, MessagePack maps, the kernels behind.

``Service.handle(request, client)`` answers one request (no sockets: the tests and
the fuzzer call it directly); ``Service.serve()`` runs the socket loop. Requests that
change the store (baskets, verdicts, lane configurations, confirmed weighings) run
in one SQLite transaction with the record of their reply, so a retried request id is
answered from that record and never done twice — even by a new process after a crash.
Read-only requests are remembered in memory for the same window.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time

import numpy as np

import lanecore
from lanecore.core.scan import catalog as catalog_mod
from lanecore.core.config import load_config, resolve_data_dir
from lanecore.core.errors import LanecoreError
from lanecore.core.store.audit import MAX_FOUND, Audits
from lanecore.core.weigh.learning import ScaleHealth, WeightBook
from lanecore.core.weigh.verify import VerifyPolicy, verify
from lanecore.core.weigh.laneconfig import LaneConfig, configure_lane
from lanecore.ext import barcode, loadcell

from lanecore.gateway.net import protocol as P
from lanecore.gateway.net.identity import ANY, declare, roles
from lanecore.gateway.net.protocol import NAME, Field, ProtocolError
from lanecore.gateway.net import server as _server
from lanecore.gateway.net.server import (DURABLE, PURE, REPLAY_WINDOW_S, STATEFUL, OpServer,
                                         memory_digest)

import msgpack

#: Packs weigh.frame replies as P.pack does (one Packer, not one a call).
_PACKER = msgpack.Packer(use_bin_type=True)

log = logging.getLogger("lanecore.service")

#: When a drain held at least FRAME_COALESCE_JOBS weighing frames (many lanes
#: streaming), the loop waits FRAME_COALESCE_S before the next drain, so frames are
#: run in larger batches (less CPU a frame; at most this much more latency).
FRAME_COALESCE_JOBS = 4
FRAME_COALESCE_S = float(os.environ.get("LANECORE_FRAME_COALESCE_US", "500")) / 1e6
#: Most samples in one weigh.frame (4096 float32 = 16 KiB: 2 s at 2 kHz).
MAX_FRAME_SAMPLES = 4096
#: Most codes in one scan.batch.
MAX_BATCH = 1000
#: Per-item exit mode: steps of one order on one lane, and orders kept in memory at
#: once (the oldest dropped: rebuilt from ``item_steps`` when asked again).
MAX_ITEM_STEPS = 1000
MAX_ITEM_SESSIONS = 4096
#: Kiosk bagging-scale mode: events of one kiosk transaction, and their kinds.
MAX_BAG_EVENTS = 2000
BAG_EVENT_KINDS = ("scan", "delta", "tick", "finish")
#: Items kept decoded in memory for scan replies.
ITEM_CACHE = 20_000
#: SQLite mmap_size of the catalogue connection scans read item rows through.
ITEM_MMAP_BYTES = 1 << 30
#: One item row for a scan reply, in the order of the reply's item map.
_ITEM_ROW_SQL = ("SELECT gtin, name, price_minor, flags, origin, producer, inspection, "
                 "supply_chain, promotion FROM items WHERE gtin = ?")
_FLAG_NAMES: dict[int, list] = {}
#: M: lanes one identity may configure (``weigh.config``) besides those it already
#: configured; ``admin`` and the development principal are not bounded.
MAX_LANES_PER_IDENTITY = 2
# Pieces of a scan reply {id, ok: true, scan, item} in MessagePack, assembled around
# each request's id, scan and line price.
_SCAN_HEAD = b"\x84" + P.pack("id")
_SCAN_MID = P.pack("ok") + P.pack(True) + P.pack("scan")
_ITEM_KEY = P.pack("item")
_LINE_PRICE = P.pack("line_price_minor")
_SCHEMA_SQL = (
    """CREATE TABLE IF NOT EXISTS lane_configs (
        lane TEXT PRIMARY KEY, config TEXT NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS verdicts (
        verdict_id INTEGER PRIMARY KEY, at REAL NOT NULL, gate TEXT NOT NULL,
        order_no TEXT NOT NULL, measured_g REAL NOT NULL, verdict TEXT NOT NULL,
        z REAL NOT NULL, expected_g REAL NOT NULL, band_g REAL NOT NULL,
        explanations TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS verdicts_order ON verdicts (order_no)",
    # per-item exit mode (verify.step, verify.clear): every settled step of an order on
    # a lane with its verdict, so a restarted service rebuilds the order's session
    """CREATE TABLE IF NOT EXISTS item_steps (
        lane TEXT NOT NULL, order_no TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
        delta_g REAL NOT NULL, sigma_g REAL NOT NULL, verdict TEXT NOT NULL,
        PRIMARY KEY (lane, order_no, seq))""",
    # kiosk bagging-scale mode (bag.event, bag.override): every event of a kiosk
    # transaction and every override, so a restarted service rebuilds the session
    """CREATE TABLE IF NOT EXISTS bag_events (
        kiosk TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
        at REAL NOT NULL, event TEXT NOT NULL, reply TEXT NOT NULL,
        PRIMARY KEY (kiosk, session, seq))""",
    """CREATE TABLE IF NOT EXISTS bag_overrides (
        override_id INTEGER PRIMARY KEY, kiosk TEXT NOT NULL, session TEXT NOT NULL,
        after_seq INTEGER NOT NULL, alarm INTEGER NOT NULL, gtin TEXT, staff TEXT NOT NULL,
        principal TEXT NOT NULL, at REAL NOT NULL, learning TEXT)""",
    """CREATE TABLE IF NOT EXISTS device_events (
        event_id INTEGER PRIMARY KEY, at REAL NOT NULL, lane TEXT NOT NULL,
        device TEXT NOT NULL, kind TEXT NOT NULL, code TEXT, message TEXT)""",
    # the lanes each identity configured (weigh.config: at most M each)
    """CREATE TABLE IF NOT EXISTS lane_slots (
        principal TEXT NOT NULL, lane TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (principal, lane))""",
    # what staff did about an alarm (alarm.resolve): the staff name the console
    # vouches for beside the principal that proved itself
    """CREATE TABLE IF NOT EXISTS alarm_actions (
        action_id INTEGER PRIMARY KEY, at REAL NOT NULL, lane TEXT NOT NULL,
        order_no TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
        weight_g REAL, staff TEXT NOT NULL, principal TEXT NOT NULL,
        learning TEXT, finding TEXT)""",
    "CREATE INDEX IF NOT EXISTS alarm_actions_order ON alarm_actions (order_no)",
    # alarm.list: the newest alarms without reading every verdict
    "CREATE INDEX IF NOT EXISTS verdicts_alarms ON verdicts (at) WHERE verdict != 'ok'",
    "CREATE INDEX IF NOT EXISTS device_alarms ON device_events (at) WHERE kind = 'alarm'",
)
#: Columns added to a table after its first layout: added to an older store at start.
_ADDED_COLUMNS = (("alarm_actions", "finding", "TEXT"),)

#: What a lane controller reports about its devices (``device.event``).
DEVICE_KINDS = ("scale", "bridge", "scanner", "eas_gate", "eas_deactivator", "printer",
                "qr_display")
DEVICE_EVENT_KINDS = ("alarm", "fault", "recovered")
#: What staff may do about an alarm (``alarm.resolve``), and what they made of it.
ALARM_ACTIONS = ("ack", "override", "rescan")
ALARM_FINDINGS = ("theft", "mistake", "false_alarm")
#: What an attendant made of an audit's discrepancy (``audit.record``).
AUDIT_FINDINGS = ("theft", "mistake")
#: Most entries one ``audit.list`` or ``alarm.list`` returns.
MAX_LIST = 500
#: A shopper id as the trust score keys it (``core/store/audit.py``).
_SHOPPER_RE = re.compile(r"[A-Za-z0-9._:@+-]{1,64}")


def _num(v):
    """A JSON/MessagePack-safe number: numpy scalars become Python numbers, NaN null."""
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v



#: Who may call each op (``docs/security.md``; ``admin`` may call every op). Finer
#: rules inside ops: ``order.status`` ``paid`` only from the ``payments`` role (or
#: with a receipt signed by a trusted payment gateway as ``proof``), ``exited`` only
#: from ``lane``; ``weigh.config`` at most MAX_LANES_PER_IDENTITY lanes per identity;
#: ``weights.confirm`` bounded per step and per day (``core/weigh/learning.py``).
_SHOPPING = roles("handheld", "kiosk", "till", "pos")
_FRAME_ROLES = roles("lane")
OP_ROLES = {
    "hello": ANY,
    "health": ANY,
    "scan": roles("handheld", "lane", "kiosk", "till", "pos", "attendant"),
    "scan.batch": roles("handheld", "lane", "kiosk", "till", "pos", "attendant"),
    "basket.open": _SHOPPING,
    "basket.add": _SHOPPING,
    "basket.remove": _SHOPPING,
    "basket.get": _SHOPPING | roles("attendant"),
    "basket.submit": _SHOPPING,
    "order.get": _SHOPPING | roles("lane", "attendant", "payments"),
    "order.status": _SHOPPING | roles("lane", "attendant", "payments"),
    "weigh.config": roles("lane"),
    "weigh.frame": _FRAME_ROLES,
    "verify.order": roles("lane"),
    "verify.step": roles("lane"),
    "verify.clear": roles("lane"),
    "bag.event": roles("kiosk"),
    "bag.override": roles("attendant", "manager"),
    "weights.confirm": roles("attendant", "manager"),
    "alarm.resolve": roles("attendant", "manager"),
    "alarm.list": roles("attendant", "manager"),
    "audit.decide": roles("handheld"),
    "audit.get": roles("handheld", "attendant", "manager"),
    "audit.list": roles("attendant", "manager"),
    "audit.record": roles("attendant", "manager"),
    "device.event": roles("lane", "kiosk", "till"),
    "stats": roles("attendant", "manager", "hq"),
}


class Service(OpServer):
    """Everything one service process holds: the store, the lanes, the counters."""

    def __init__(self, data_dir, *, region: str | None = None, max_lanes: int = 4096,
                 policy: VerifyPolicy | None = None, publish=None,
                 store_risk: str = "medium"):
        self.data_dir = resolve_data_dir(data_dir)
        config = load_config(self.data_dir)
        config.apply()
        self.region = region or config.region
        #: Payment gateways' receipt keys whose signed receipts prove an order paid.
        from lanecore.core.signing import Verifier
        self.receipt_verifiers = {k: Verifier(k) for k in config.receipt_keys}
        self.policy = policy or VerifyPolicy()
        self.catalog = catalog_mod.Catalog.open(self.data_dir)
        self.con = catalog_mod.connect(catalog_mod.database_path(self.data_dir))
        for stmt in _SCHEMA_SQL:
            self.con.execute(stmt)
        for table, column, kind in _ADDED_COLUMNS:
            if column not in {r[1] for r in self.con.execute(f"PRAGMA table_info({table})")}:
                self.con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        # the handheld audits and the shoppers' trust (core/store/audit.py), decided
        # with the system's randomness: nobody can predict or replay a draw
        self.audits = Audits(self.con)
        self.audits.policy.rate(store_risk)          # BAD_RISK at start, not per order
        self.store_risk = store_risk
        self.audit_rng = random.SystemRandom()
        #: The catalogue version ``self.table`` was loaded at (``meta.catalog_version``);
        #: ``on_idle`` reloads the table when an import bumps it (``_check_catalog``).
        self.catalog_version, self.table = catalog_mod.load_versioned_table(self.catalog)
        self._reload: threading.Thread | None = None
        #: per-item mode: (table, ItemCatalogue) and (lane, order_no) → (table, session)
        self._peritem: tuple | None = None
        self._sessions: dict[tuple[str, str], tuple] = {}
        self._reload_result: tuple | None = None
        self._reload_after = 0.0
        self.weights = WeightBook(self.con)
        self.weights.apply_to_table(self.table)
        self.health_book = ScaleHealth(self.con)
        self.baskets = None
        self.signer = None
        self._basket_init()
        # the analytics rollups of this database: built here, by its owner, and kept
        # by triggers in the same transactions as the orders and verdicts (core/rollups.py)
        from lanecore.core.rollups import ensure_rollups
        ensure_rollups(self.con)
        self.bank = loadcell.LaneBank(max_lanes)
        self.lanes: dict[str, int] = {}
        self.lane_configs: dict[str, LaneConfig] = {}
        self._items: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        #: row -> (the item map's MessagePack header and pairs without its line price,
        #: the pricing fields line_price_minor reads), for the scan fast path; an LRU
        #: of ITEM_CACHE rows filled straight from one SQLite row (``_pack_item``).
        self._packed_items: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        # item rows are read at random on a cache miss: map the file (no read() call
        # a page) and keep a bigger page cache than SQLite's 2 MB default
        with contextlib.suppress(sqlite3.Error, LanecoreError):
            self.catalog._con().execute(f"PRAGMA mmap_size = {ITEM_MMAP_BYTES}")
        loadcell.warm_up()
        super().__init__(self.con, publish=publish)

    # ------------------------------------------------------------------------------
    def _basket_init(self) -> None:
        try:
            from lanecore.core.store.basket import BasketStore
            from lanecore.core.store.orderqr import Signer
        except ImportError:   # baskets not built into this lanecore
            return
        self.signer = Signer.load_or_create(self.data_dir)
        # a callable: baskets look scans up in the table scans use now (after a reload too)
        self.baskets = BasketStore(self.con, lambda: self.table, region=self.region,
                                   item=self.catalog.item)

    # the live catalogue -----------------------------------------------------------
    def on_idle(self) -> None:
        super().on_idle()
        self._check_catalog()

    def _check_catalog(self) -> None:
        """Between requests (the loop's idle call, at least every 0.2 s): when an
        import bumped ``meta.catalog_version``, load the new table on a thread with
        its own connection (a 1M-SKU table takes ~2 s; requests go on meanwhile),
        then swap it in here, on the loop's thread, and publish ``catalog``. The hot
        path never checks anything."""
        job = self._reload
        if job is not None:
            if job.is_alive():
                return
            self._reload, result, self._reload_result = None, self._reload_result, None
            if isinstance(result, tuple):
                self._swap_catalog(*result)
            else:
                log.error("catalogue reload failed, retrying in 5 s: %s", result)
                self._reload_after = time.monotonic() + 5.0
            return
        if time.monotonic() < self._reload_after:
            return
        try:
            version = catalog_mod.catalog_version(self.con)
        except LanecoreError as exc:
            log.error("cannot read the catalogue version: %s", exc)
            self._reload_after = time.monotonic() + 5.0
            return
        if version == self.catalog_version:
            return
        path = catalog_mod.database_path(self.data_dir)

        def load():
            try:
                con = catalog_mod.connect(path)
                try:
                    self._reload_result = catalog_mod.load_versioned_table(con)
                finally:
                    con.close()
            except Exception as exc:   # reported (and retried) by the loop's thread
                self._reload_result = exc
        self._reload = threading.Thread(target=load, name="catalog-reload", daemon=True)
        self._reload.start()

    def _swap_catalog(self, version: int, table) -> None:
        """Make ``table`` (catalogue ``version``) the one scans and baskets use: the
        learned weights applied, the decoded and pre-packed items of the old table
        dropped (their row numbers mean other items now), then one assignment. The
        loop is one thread, so no request sees the table without its caches."""
        self.weights.apply_to_table(table)
        self._items = collections.OrderedDict()
        self._packed_items = collections.OrderedDict()
        self.table = table
        self.catalog_version = version
        log.info("catalogue version %d loaded: %d items", version, len(table))
        self.publish("catalog", {"version": version, "items": len(table)})

    def close(self) -> None:
        for closer in (self.catalog.close, self.con.close):
            try:
                closer()
            except Exception:  # closing is best effort at shutdown
                log.exception("close failed")

    # ------------------------------------------------------------------------------
    # Ops
    # ------------------------------------------------------------------------------
    def metric_families(self, db):
        """Lanes and their faults, verdicts (alarms among them) and orders (scrape)."""
        from lanecore.gateway.net import metrics as M
        yield M.gauge("lanecore_lanes", "Lanes configured on the scale bank",
                      len(self.lanes))
        yield M.grouped(db, "lanecore_lane_faults", "Device faults reported, per lane",
                        "lane", "SELECT lane, COUNT(*) FROM device_events "
                        "WHERE kind = 'fault' GROUP BY lane")
        yield M.grouped(db, "lanecore_device_events", "Device events reported, per kind "
                        "(alarm, fault, recovered)", "kind",
                        "SELECT kind, COUNT(*) FROM device_events GROUP BY kind")
        yield M.grouped(db, "lanecore_verdicts", "Exit verdicts recorded, per verdict",
                        "verdict", "SELECT verdict, COUNT(*) FROM verdicts GROUP BY verdict")
        yield M.grouped(db, "lanecore_orders", "Orders, per status", "status",
                        "SELECT status, COUNT(*) FROM orders GROUP BY status")

    def _ops(self):
        return declare([
            ("hello", self.op_hello, {}, PURE),
            ("scan", self.op_scan, {"lane": NAME, "code": Field("str", max=4096),
                                    "region": Field("str", required=False, min=2, max=2)},
             PURE),
            ("scan.batch", self.op_scan_batch,
             {"lane": NAME, "codes": Field("list", min=1, max=MAX_BATCH),
              "region": Field("str", required=False, min=2, max=2)}, PURE),
            ("basket.open", self.op_basket_open,
             {"device": NAME, "member": Field("str", required=False, max=64)}, DURABLE),
            ("basket.add", self.op_basket_add,
             {"basket": NAME, "scans": Field("list", min=1, max=MAX_BATCH)}, DURABLE),
            ("basket.remove", self.op_basket_remove,
             {"basket": NAME, "items": Field("list", min=1, max=MAX_BATCH)}, DURABLE),
            ("basket.get", self.op_basket_get, {"basket": NAME}, PURE),
            ("basket.submit", self.op_basket_submit, {"basket": NAME}, DURABLE),
            ("order.get", self.op_order_get, {"order_no": Field("str", min=1, max=64)}, PURE),
            ("order.status", self.op_order_status,
             {"order_no": Field("str", min=1, max=64),
              "status": Field("str", choices=("paid", "exited", "cancelled")),
              "proof": Field("map", required=False)}, DURABLE),
            ("weigh.config", self.op_weigh_config,
             {"lane": NAME, "config": Field("map", required=False)}, DURABLE),
            ("weigh.frame", self.op_weigh_frame,
             {"lane": NAME, "seq": Field("int", min=0, max=2 ** 62),
              "samples": Field("bin", required=False, min=4, max=4 * MAX_FRAME_SAMPLES),
              "counts": Field("bin", required=False, min=4, max=4 * MAX_FRAME_SAMPLES)},
             STATEFUL),
            ("verify.order", self.op_verify_order,
             {"gate": Field("str", required=False, min=1, max=64),
              "lane": Field("str", required=False, min=1, max=64),
              "order_no": Field("str", required=False, min=1, max=64),
              "order_qr": Field("str", required=False, min=1, max=2048),
              "measured_g": Field("float", required=False, min=-1e6, max=1e7)}, DURABLE),
            ("verify.step", self.op_verify_step,
             {"lane": NAME, "order_no": Field("str", min=1, max=64),
              "seq": Field("int", min=0, max=MAX_ITEM_STEPS - 1),
              "delta_g": Field("float", min=-1e6, max=1e6),
              "sigma_g": Field("float", min=0.0, max=1e5)}, DURABLE),
            ("verify.clear", self.op_verify_clear,
             {"lane": NAME, "order_no": Field("str", min=1, max=64)}, DURABLE),
            ("bag.event", self.op_bag_event,
             {"kiosk": NAME, "session": Field("str", min=1, max=64),
              "seq": Field("int", min=0, max=MAX_BAG_EVENTS - 1),
              "kind": Field("str", choices=BAG_EVENT_KINDS),
              "t_s": Field("float", min=0.0, max=1e10),
              "gtin": Field("str", required=False, min=8, max=14),
              "delta_g": Field("float", required=False, min=-1e6, max=1e6),
              "sigma_g": Field("float", required=False, min=0.0, max=1e5)}, DURABLE),
            ("bag.override", self.op_bag_override,
             {"kiosk": NAME, "session": Field("str", min=1, max=64),
              "alarm": Field("int", min=0, max=MAX_BAG_EVENTS),
              "gtin": Field("str", required=False, min=8, max=14), "staff": NAME},
             DURABLE),
            ("weights.confirm", self.op_weights_confirm,
             {"gtin": Field("str", min=8, max=14), "weight_g": Field("float", min=0.0, max=1e6),
              "units": Field("int", required=False, min=1, max=999)}, DURABLE),
            ("alarm.resolve", self.op_alarm_resolve,
             {"lane": NAME, "order_no": Field("str", min=1, max=64),
              "action": Field("str", choices=ALARM_ACTIONS),
              "reason": Field("str", required=False, max=256),
              "weight_g": Field("float", required=False, min=0.0, max=1e6),
              "finding": Field("str", required=False, choices=ALARM_FINDINGS),
              "staff": NAME}, DURABLE),
            ("alarm.list", self.op_alarm_list,
             {"since": Field("float", required=False, min=0.0, max=1e11),
              "limit": Field("int", required=False, min=1, max=MAX_LIST)}, PURE),
            ("audit.decide", self.op_audit_decide,
             {"order_no": Field("str", min=1, max=64), "shopper": NAME}, DURABLE),
            ("audit.get", self.op_audit_get, {"order_no": Field("str", min=1, max=64)},
             PURE),
            ("audit.list", self.op_audit_list,
             {"state": Field("str", required=False, choices=("pending", "done", "all")),
              "limit": Field("int", required=False, min=1, max=MAX_LIST)}, PURE),
            ("audit.record", self.op_audit_record,
             {"order_no": Field("str", min=1, max=64),
              "outcome": Field("str", choices=("clean", "discrepancy")),
              "found": Field("list", required=False, max=MAX_FOUND),
              "finding": Field("str", required=False, choices=AUDIT_FINDINGS),
              "staff": NAME}, DURABLE),
            ("device.event", self.op_device_event,
             {"lane": NAME, "device": Field("str", choices=DEVICE_KINDS),
              "kind": Field("str", choices=DEVICE_EVENT_KINDS),
              "code": Field("str", required=False, min=1, max=32),
              "message": Field("str", required=False, max=256)}, DURABLE),
            ("stats", self.op_stats, {}, PURE),
            ("health", self.op_health, {}, PURE),
        ], OP_ROLES)

    # hello, stats, health ----------------------------------------------------------
    def op_hello(self, f) -> dict:
        return {
            "protocol": P.PROTOCOL_VERSION,
            "server": f"lanecore {lanecore.__version__}",
            "capabilities": sorted(self.ops),
            "kernels": {"barcode": barcode.IMPLEMENTATION, "loadcell": loadcell.IMPLEMENTATION},
            "store": {"region": self.region, "items": len(self.table)},
            "order_key": self.signer.public_key_b64() if self.signer else None,
            "limits": {"max_message_bytes": P.MAX_MESSAGE_BYTES, "max_batch": MAX_BATCH,
                       "max_frame_samples": MAX_FRAME_SAMPLES,
                       "replay_window_s": REPLAY_WINDOW_S},
        }

    def op_stats(self, f) -> dict:
        return {"uptime_s": round(time.monotonic() - self.started, 3),
                "requests": dict(self.counts), "errors": dict(self.errors),
                "replays": self.replays, "lanes": len(self.lanes),
                "items": len(self.table)}

    def op_health(self, f) -> dict:
        try:
            self.con.execute("SELECT 1").fetchone()
            db = "ok"
        except sqlite3.Error as exc:
            db = f"error: {exc}"
        scales = [s.to_dict() for s in self.health_book.scales()]
        bad = [s for s in scales if s["state"] == "failure"]
        return {"status": "ok" if db == "ok" and not bad else "degraded", "db": db,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "lanes": len(self.lanes), "scales": scales,
                "worker": getattr(self, "worker_slot", None), "pid": os.getpid()}

    # scans -------------------------------------------------------------------------
    def _item(self, row: int, gtin: str) -> tuple[dict, dict]:
        """(the catalogue row, the reply's item map without its line price) for a
        catalogue row, decoded once and kept."""
        hit = self._items.get(row)
        if hit is None:
            base = self.catalog.item(gtin)
            t = self.table
            shown = {
                "gtin": base["gtin"], "name": base["name"], "price_minor": base["price_minor"],
                # weights as the verdicts see them: learned where learned, else catalogue
                "unit_weight_g": _num(t.weight_mean_g[row]),
                "weight_sd_g": _num(t.weight_sd_g[row]),
                "flags": base["flags"],
                **{k: base[k] for k in ("origin", "producer", "inspection", "supply_chain",
                                        "promotion")},
            }
            hit = (base, shown)
            self._items[row] = hit
            if len(self._items) > ITEM_CACHE:
                old_row, _ = self._items.popitem(last=False)
                self._packed_items.pop(old_row, None)
        return hit

    def _scan_one(self, code, region) -> dict:
        if not isinstance(code, str):
            raise LanecoreError(f"expected a str, got {type(code).__name__}",
                                code="NOT_TEXT")
        r = barcode.parse_scan(code, region or self.region)
        if not r.ok:
            raise LanecoreError(r.error_message, code=r.error_code)
        key = r.lookup_key
        row = -1 if key is None else self.table.lookup(key)
        if row < 0:
            raise LanecoreError(f"{r.lookup_gtin or code!r} is not in the catalogue",
                                code="UNKNOWN_ITEM")
        base, shown = self._item(row, r.lookup_gtin)
        item = dict(shown)
        item["line_price_minor"] = catalog_mod.line_price_minor(base, r)
        return {"scan": r.to_dict(), "item": item}

    def fast_path(self, op: str, req: dict, rid) -> bytes | None:
        return self._scan_fast(req, rid) if op == "scan" else None

    def _scan_fast(self, req: dict, rid) -> bytes | None:
        """A plain ``scan`` request answered straight to bytes (the item's MessagePack
        kept per catalogue row); None when the general path must answer it."""
        code = req.get("code")
        lane = req.get("lane")
        if not (type(code) is str and len(code) <= 4096 and type(lane) is str
                and 0 < len(lane) <= 64 and req.get("region") is None):
            return None
        r = barcode.parse_scan(code, self.region)
        if not r.ok:
            err = r.error_code
            if type(err) is not str or not err:
                return None
            return self._scan_error(rid, err, r.error_message)
        key = r.lookup_key
        row = -1 if key is None else self.table.lookup(key)
        if row < 0:
            return self._scan_error(rid, "UNKNOWN_ITEM",
                                    f"{r.lookup_gtin or code!r} is not in the catalogue")
        hit = self._packed_items.get(row)
        if hit is None:
            hit = self._pack_item(row, r.lookup_gtin)
            if hit is None:
                return None
        pack = _PACKER.pack
        return b"".join((_SCAN_HEAD, pack(rid), _SCAN_MID, pack(r.to_dict()), _ITEM_KEY,
                         hit[0], _LINE_PRICE,
                         pack(catalog_mod.line_price_minor(hit[1], r))))

    def _scan_error(self, rid, code: str, message) -> bytes:
        """The error reply the general path gives a scan that ``_scan_one`` refuses
        (a PURE op: counted, not remembered), without raising and catching."""
        self._op_error("scan", code)
        return _PACKER.pack({"id": rid, "ok": False,
                             "error": {"code": code, "message": message}})

    def _pack_item(self, row: int, gtin) -> tuple | None:
        """(the item map's header and pairs without ``line_price_minor``, its pricing
        fields) for table ``row``, from one SQLite row, kept in ``_packed_items``; the
        same bytes as ``P.pack`` of ``_item``'s shown map. None (the general path
        answers) when the database does not have the row the table has."""
        if type(gtin) is not str or len(gtin) != 14:
            return None
        try:
            got = self.catalog._con().execute(_ITEM_ROW_SQL, (gtin,)).fetchone()
        except (sqlite3.Error, LanecoreError):
            return None
        if got is None:
            return None
        t = self.table
        bits = got[3]
        names = _FLAG_NAMES.get(bits)
        if names is None:
            names = _FLAG_NAMES[bits] = catalog_mod.flag_names(bits)
        pack = _PACKER.pack
        body = pack({
            "gtin": got[0], "name": got[1], "price_minor": got[2],
            "unit_weight_g": _num(t.weight_mean_g[row]), "weight_sd_g": _num(t.weight_sd_g[row]),
            "flags": names, "origin": got[4], "producer": got[5],
            "inspection": got[6], "supply_chain": got[7], "promotion": got[8]})
        # 11 pairs: a fixmap header (0x8b); the reply's map has 12 with the line price
        hit = (b"\x8c" + body[1:], {"price_minor": got[2], "flag_bits": bits})
        cache = self._packed_items
        cache[row] = hit
        if len(cache) > ITEM_CACHE:
            cache.popitem(last=False)
        return hit

    def op_scan(self, f) -> dict:
        return self._scan_one(f["code"], f.get("region"))

    def op_scan_batch(self, f) -> dict:
        results = []
        for code in f["codes"]:
            try:
                results.append({"ok": True, **self._scan_one(code, f.get("region"))})
            except (ProtocolError, LanecoreError) as exc:
                results.append({"ok": False, "error": {"code": exc.code,
                                                       "message": exc.message}})
        return {"results": results}

    # baskets -----------------------------------------------------------------------
    def _basket_store(self):
        if self.baskets is None:
            raise LanecoreError("this service was built without baskets", code="UNAVAILABLE")
        return self.baskets

    def op_basket_open(self, f, after) -> dict:
        return {"basket": self._basket_store().open(f["device"], member=f.get("member"))}

    def op_basket_add(self, f, after) -> dict:
        return {"basket": self._basket_store().add(f["basket"], f["scans"])}

    def op_basket_remove(self, f, after) -> dict:
        return {"basket": self._basket_store().remove(f["basket"], f["items"])}

    def op_basket_get(self, f) -> dict:
        return {"basket": self._basket_store().get(f["basket"])}

    def op_basket_submit(self, f, after) -> dict:
        return self._basket_store().submit(f["basket"], self.signer)

    def op_order_get(self, f) -> dict:
        order = self._basket_store().order(f["order_no"])
        return {"order": order}

    def op_order_status(self, f, after) -> dict:
        """An order moves on: paid (the payment gateway took it), exited (the gate
        let it out), cancelled. Published on the ``order`` topic. Only the payment
        gateway (role ``payments``) marks an order paid — or anyone allowed the op who
        shows, as ``proof``, the order's receipt signed by a payment gateway whose
        receipt key the store trusts (``[payments] receipt_keys``) — and only a lane
        marks it exited."""
        proof = f.get("proof")
        if proof is not None and f["status"] != "paid":
            raise ProtocolError("BAD_FIELD", "'proof' (a signed receipt) goes with "
                                             "status 'paid' only")
        need = {"paid": "payments", "exited": "lane"}.get(f["status"])
        if need is not None and not self.principal.has(need) and proof is None:
            more = " (or show the order's signed receipt as 'proof')" \
                if f["status"] == "paid" else ""
            raise LanecoreError(f"{self.principal.id} may not mark an order {f['status']}: "
                                f"that is for the {need} role{more}", code="FORBIDDEN",
                                details={"op": "order.status", "roles": [need]})
        store = self._basket_store()
        shown = None
        if proof is not None:      # checked whoever shows it
            shown = self._check_proof(proof, store.order(f["order_no"]))
        order = store.set_order_status(f["order_no"], f["status"])
        event = {"order_no": order["order_no"], "status": order["status"]}
        after.append(lambda: self.publish("order", event))
        return {"order": order} if shown is None else {"order": order, "proof": shown}

    def _check_proof(self, proof: dict, order: dict) -> dict:
        """The receipt of ``proof`` if a trusted receipt key signed it and it is this
        order's, for its total and currency, with nothing refunded: PROOF_INVALID
        (not a receipt a trusted key signed) or PROOF_MISMATCH (another order, amount
        or currency; refunded) otherwise."""
        from lanecore.core.pay.receipt import ReceiptError, verify_receipt
        if not self.receipt_verifiers:
            raise LanecoreError("this service trusts no payment gateway's receipts "
                                "([payments] receipt_keys in lanecore.toml)",
                                code="PROOF_INVALID", details={"reason": "NO_RECEIPT_KEYS"})
        key = proof.get("key")
        if key is None:
            candidates = list(self.receipt_verifiers.values())
        else:
            trusted = isinstance(key, str) and key in self.receipt_verifiers
            candidates = [self.receipt_verifiers[key]] if trusted else []
        receipt, reason = None, "UNTRUSTED_KEY"
        for verifier in candidates:
            try:
                receipt = verify_receipt(proof, verifier)
                key = verifier.public_key_b64()
                break
            except ReceiptError as exc:
                reason = exc.code
        if receipt is None:
            raise LanecoreError("the proof is not a receipt signed by a payment gateway "
                                f"this service trusts ({reason})", code="PROOF_INVALID",
                                details={"reason": reason})
        wrong = [name for name, got, want in (
            ("order_no", receipt.order_no, order["order_no"]),
            ("total_minor", receipt.total_minor, order["total_minor"]),
            ("currency", receipt.currency, order["currency"]),
            ("refunded_minor", receipt.refunded_minor, 0)) if got != want]
        if wrong:
            raise LanecoreError(f"the receipt does not pay order {order['order_no']} "
                                f"({order['total_minor']} {order['currency']}, "
                                f"nothing refunded): its {', '.join(wrong)} do not match",
                                code="PROOF_MISMATCH",
                                details={"fields": wrong})
        return {"key": key, "order_no": receipt.order_no,
                "total_minor": receipt.total_minor, "currency": receipt.currency,
                "terminal": receipt.terminal}

    # weighing ----------------------------------------------------------------------
    def _lane_index(self, lane: str) -> int:
        idx = self.lanes.get(lane)
        if idx is None:
            if len(self.lanes) >= self.bank.capacity:
                raise LanecoreError(f"this service weighs at most {self.bank.capacity} lanes",
                                    code="TOO_MANY_LANES")
            idx = len(self.lanes)
            self.lanes[lane] = idx
        return idx

    def _take_lane_slot(self, lane: str) -> None:
        """Let the caller configure ``lane``: a lane it configured before, or one of
        at most MAX_LANES_PER_IDENTITY (LANE_QUOTA past them); ``admin`` and the
        development principal are not bounded."""
        p = self.principal
        if p.dev or "admin" in p.roles:
            return
        if self.con.execute("SELECT 1 FROM lane_slots WHERE principal = ? AND lane = ?",
                            (p.id, lane)).fetchone() is not None:
            return
        held = [r[0] for r in self.con.execute(
            "SELECT lane FROM lane_slots WHERE principal = ? ORDER BY at", (p.id,))]
        if len(held) >= MAX_LANES_PER_IDENTITY:
            raise LanecoreError(f"{p.id} configures at most {MAX_LANES_PER_IDENTITY} lanes "
                                f"and has configured {', '.join(held)}; an admin "
                                f"configures others", code="LANE_QUOTA",
                                details={"lanes": held, "max": MAX_LANES_PER_IDENTITY})
        self.con.execute("INSERT INTO lane_slots (principal, lane, at) VALUES (?, ?, ?)",
                         (p.id, lane, time.time()))

    def op_weigh_config(self, f, after) -> dict:
        config = LaneConfig.from_dict(dict(f.get("config") or {}))
        params, sos = config.compile()   # validates before anything is stored
        self._take_lane_slot(f["lane"])
        self.con.execute("INSERT INTO lane_configs (lane, config, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT(lane) DO UPDATE SET config = excluded.config, "
                         "updated_at = excluded.updated_at",
                         (f["lane"], json.dumps(config.to_dict()), time.time()))

        def apply():
            idx = self._lane_index(f["lane"])
            self.bank.configure(idx, params, sos)
            self.lane_configs[f["lane"]] = config
        after.append(apply)
        return {"lane": f["lane"], "config": config.resolved_dict(),
                "window_samples": config.window_samples()}

    def _lane_for_frames(self, lane: str) -> int:
        idx = self.lanes.get(lane)
        if idx is not None and self.bank.configured[idx]:
            return idx
        # a lane configured before this process started (a restart): reload it
        row = self.con.execute("SELECT config FROM lane_configs WHERE lane = ?",
                               (lane,)).fetchone()
        if row is None:
            raise LanecoreError(f"lane {lane!r} is not configured; send weigh.config first",
                                code="LANE_NOT_CONFIGURED")
        config = LaneConfig.from_dict(json.loads(row[0]))
        idx = self._lane_index(lane)
        configure_lane(self.bank, idx, config)
        self.lane_configs[lane] = config
        return idx

    def _frame_samples(self, f) -> np.ndarray:
        if ("samples" in f) == ("counts" in f):
            raise ProtocolError("BAD_FIELD", "give exactly one of 'samples' (float32 grams) "
                                             "or 'counts' (int32 raw counts)")
        data = f.get("samples") or f.get("counts")
        if len(data) % 4:
            raise ProtocolError("BAD_FIELD", "samples/counts must be whole 4-byte values")
        return np.frombuffer(data, dtype="<f4" if "samples" in f else "<i4")

    def op_weigh_frame(self, f) -> dict:
        """One frame on its own (the socket loop batches frames: ``_frames``)."""
        x = self._frame_samples(f)
        idx = self._lane_for_frames(f["lane"])
        self.bank.feed(idx, x, f["seq"])
        return self._frame_result(f["lane"], idx)

    def _frame_result(self, lane: str, idx: int) -> dict:
        events = [{k: _num(v) for k, v in ev.items()} for ev in self.bank.events(idx)] \
            if self.bank.ev_n[idx] else []
        for ev in events:
            if ev["event"] in ("settled", "fault", "overload", "under_zero"):
                self.publish("settled" if ev["event"] == "settled" else "fault",
                             {"lane": lane, **ev})
        return {"lane": lane, "events": events, "stable": self.bank.stable(idx),
                "settled_g": _num(self.bank.last_settled_g(idx))}

    def _frame_job(self, req: dict, client: str, principal=None):
        """A checked weigh.frame as (rid, key, lane, idx, seq, samples, digest), or its
        reply bytes when it is answered at once (a replay or an error)."""
        rid = P.request_id(req)
        if principal is None:                         # the development principal
            who = req.get("client")
            if rid is None or (who is not None and not (
                    isinstance(who, str) and 0 < len(who) <= P.MAX_ID_LEN)):
                return self._answer(req, client)      # the general path says what is wrong
            key = (who or client, str(rid))
        else:
            if rid is None or not principal.may(_FRAME_ROLES):
                return self._answer(req, client, principal)
            key = (principal.id, str(rid))
        lane = req.get("lane")
        seq = req.get("seq")
        data = req.get("samples")
        common = (type(lane) is str and type(seq) is int and type(data) is bytes
                  and len(req) == (6 if "client" in req else 5))
        if common:      # exactly op, id, lane, seq, samples (+ client): memory_digest's
            digest = hash(("weigh.frame", (("lane", lane), ("op", "weigh.frame"),
                                           ("samples", data), ("seq", seq))))
        else:
            digest = memory_digest("weigh.frame", req)
        hit = self._replies.get(key)
        if hit is not None and time.monotonic() - hit[0] < REPLAY_WINDOW_S:
            self.counts["weigh.frame"] += 1
            if hit[2] != digest:
                self.errors["IDEMPOTENCY_MISMATCH"] += 1
                return P.pack(P.error(rid, "IDEMPOTENCY_MISMATCH",
                                      "this request id was already used for another frame"))
            self.replays += 1
            return hit[1]
        # The common case checked inline (a frame is the hottest request); anything
        # unusual takes the general path, which names what is wrong.
        if (common and 0 < len(lane) <= 64 and 0 <= seq <= 2 ** 62
                and 4 <= len(data) <= 4 * MAX_FRAME_SAMPLES and not len(data) % 4):
            idx = self.lanes.get(lane)
            if idx is not None and self.bank.configured[idx]:
                self.counts["weigh.frame"] += 1
                return (rid, key, lane, idx, seq, np.frombuffer(data, dtype="<f4"), digest)
        try:
            f = P.check(req, self.ops["weigh.frame"][1])
            x = self._frame_samples(f)
            idx = self._lane_for_frames(f["lane"])
        except (ProtocolError, LanecoreError):
            return self._answer(req, client, principal)
        self.counts["weigh.frame"] += 1
        return (rid, key, f["lane"], idx, f["seq"], x, digest)

    def _frames(self, jobs: list) -> list[bytes]:
        """Run frame jobs in as few kernel calls as lanes allow (a lane at most once
        per call, in arrival order); their reply bytes, in the jobs' order."""
        if len(jobs) >= FRAME_COALESCE_JOBS:   # many lanes streaming: batch a bit more
            self.coalesce_s = FRAME_COALESCE_S
        out: list[bytes | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        while todo:
            now, later, seen = [], [], set()
            for j in todo:
                (later if jobs[j][3] in seen else now).append(j)
                seen.add(jobs[j][3])
            xs = [jobs[j][5] for j in now]
            sizes = [len(x) for x in xs]
            width = max(sizes)
            if min(sizes) == width:               # the common case: one frame length
                samples = np.array(xs, dtype=np.float64)
            else:
                samples = np.zeros((len(now), width))
                for row, x in enumerate(xs):
                    samples[row, :len(x)] = x
            lanes = np.array([jobs[j][3] for j in now], dtype=np.int64)
            nsamp = np.array(sizes, dtype=np.int64)
            seqs = np.array([jobs[j][4] for j in now], dtype=np.int64)
            bank = self.bank
            bank.step_lanes(lanes, samples, nsamp, seqs)
            # what each reply says, read for all the lanes at once; a frame with
            # events takes _frame_result (events, publishing), the others are packed
            # here as P.ok(rid, **_frame_result(...)) would pack them, byte for byte
            ev_n = bank.ev_n[lanes].tolist()
            stable = bank.ist[lanes, loadcell.IS_STABLE].tolist()
            have = bank.ist[lanes, loadcell.IS_HAVE_SETTLED].tolist()
            last = bank.fst[lanes, loadcell.FS_LAST_SETTLED].tolist()
            at = time.monotonic()
            replies = self._replies
            pack = _PACKER.pack
            isfinite = math.isfinite
            for row, j in enumerate(now):
                rid, key, lane, idx = jobs[j][:4]
                if ev_n[row]:
                    reply = P.pack(P.ok(rid, **self._frame_result(lane, idx)))
                else:
                    g = last[row]
                    reply = pack({"id": rid, "ok": True, "lane": lane, "events": [],
                                  "stable": bool(stable[row]),
                                  "settled_g": g if have[row] and isfinite(g) else None})
                replies[key] = (at, reply, jobs[j][6])     # as _remember
                out[j] = reply
            while len(replies) > _server.REPLAY_MEMORY:
                replies.popitem(last=False)
            todo = later
        return out

    def on_batch(self, batch: list[list[bytes]], security=None) -> list[list[bytes]]:
        """Reply frames for a batch of request frames (ROUTER side, arrival order).

        Weighing frames are gathered and run through the kernel together; any other
        request first lets the frames before it finish, so it sees their effect."""
        replies: list[list[bytes]] = []
        heads: list[list[list[bytes]]] = []   # per job: everyone waiting for it
        jobs: list = []
        pending: dict = {}                    # request key -> job index

        def flush():
            for waiting, reply in zip(heads, self._frames(jobs)):
                for head in waiting:
                    replies.append(head + [reply])
            heads.clear()
            jobs.clear()
            pending.clear()

        for frames in batch:
            frames, principal, known = self.caller_of(frames, security)
            if len(frames) == 2:
                head, payload = frames[:1], frames[1]
            elif len(frames) == 3 and frames[1] == b"":
                head, payload = frames[:2], frames[2]
            else:
                out = self.on_frames(frames)      # says what is wrong with the framing
                if out is not None:
                    replies.append(out)
                continue
            client = frames[0].hex()
            if not known:
                replies.append(head + [self.unknown_caller(payload)])
                continue
            try:
                req = P.unpack(payload)
            except ProtocolError as exc:
                self.errors[exc.code] += 1
                replies.append(head + [P.pack(P.error(None, exc.code, exc.message))])
                continue
            if req.get("op") == "weigh.frame":
                job = self._frame_job(req, client, principal)
                if isinstance(job, bytes):
                    replies.append(head + [job])
                elif job[1] in pending:           # a retry of a frame still waiting
                    heads[pending[job[1]]].append(head)
                    self.replays += 1
                else:
                    pending[job[1]] = len(jobs)
                    heads.append([head])
                    jobs.append(job)
                continue
            if jobs:
                flush()
            replies.append(head + [self._answer(req, client, principal)])
        if jobs:
            flush()
        return replies

    # verification ------------------------------------------------------------------
    def op_verify_order(self, f, after) -> dict:
        gate = f.get("gate") or f.get("lane")
        if gate is None:
            raise ProtocolError("MISSING_FIELD", "give 'gate' or 'lane'")
        store = self._basket_store()
        order_no = f.get("order_no")
        if order_no is None:
            qr = f.get("order_qr")
            if qr is None:
                raise ProtocolError("MISSING_FIELD", "give 'order_no' or 'order_qr'")
            from lanecore.core.store.orderqr import Verifier, verify_qr
            payload = verify_qr(qr, Verifier(self.signer.public_key_b64()))
            order_no = payload["order"]
        measured = f.get("measured_g")
        if measured is None:
            idx = self.lanes.get(gate)
            measured = None if idx is None else self.bank.last_settled_g(idx)
            if measured is None:
                raise LanecoreError(f"no measured_g given and {gate!r} has no settled weight",
                                    code="NO_SETTLED_WEIGHT")
        status = store.order(order_no)["status"]
        order = store.order_lines_for_verify(order_no)
        verdict = verify(order, measured, self.table, self.policy, region=self.region)
        out = {k: _num(v) for k, v in verdict.to_dict().items()}
        self.con.execute(
            "INSERT INTO verdicts (at, gate, order_no, measured_g, verdict, z, expected_g, "
            "band_g, explanations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), gate, order_no, float(measured), out["verdict"], out["z"],
             out["expected_g"], out["band_g"], json.dumps(out["explanations"])))
        if out["verdict"] == "ok":
            self.health_book.observe(gate, float(out["z"]))
        event = {"gate": gate, "order_no": order_no, **out}
        after.append(lambda: self.publish("verdict", event))
        if out["verdict"] != "ok":
            after.append(lambda: self.publish("alarm", event))
        # The verdict is about weight; whether the order is paid is the gate's to
        # combine with it (an unpaid order belongs at a kiosk first).
        return {"order_no": order_no, "order_status": status, **out}

    # per-item exit mode ----------------------------------------------------------------
    def _item_catalogue(self):
        """The per-item mode's catalogue (``core/weigh/peritem.py``) of the current
        table — its weights as the verdicts see them, learned where learned — built
        on first use and again after a catalogue reload."""
        from lanecore.core.weigh.peritem import ItemCatalogue, RobustWeights
        t = self.table
        cached = self._peritem
        if cached is not None and cached[0] is t:
            return cached[1]
        cat = ItemCatalogue([f"{int(g):014d}" for g in t.gtin.tolist()],
                            RobustWeights.from_label(t.weight_mean_g, t.weight_sd_g))
        self._peritem = (t, cat)
        return cat

    def _item_session(self, lane: str, order_no: str):
        """The order's per-item session on ``lane``: kept while the order is on the
        conveyor, rebuilt from ``item_steps`` after a restart (or a reload)."""
        from lanecore.core.weigh.peritem import PerItemError, PerItemSession
        key = (lane, order_no)
        hit = self._sessions.get(key)
        if hit is not None and hit[0] is self.table:
            return hit[1]
        lines = [(ln["gtin"], ln["qty"]) for ln in
                 self._basket_store().order_lines_for_verify(order_no)["lines"]]
        try:
            session = PerItemSession(lines, self._item_catalogue())
            for d, s in self.con.execute(
                    "SELECT delta_g, sigma_g FROM item_steps WHERE lane = ? AND order_no = ? "
                    "ORDER BY seq", key):
                session.step(d, s)
        except PerItemError as exc:
            raise LanecoreError(str(exc), code=exc.code) from None
        while len(self._sessions) >= MAX_ITEM_SESSIONS:     # the oldest: rebuilt if asked
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[key] = (self.table, session)
        return session

    def op_verify_step(self, f, after) -> dict:
        """One settled step of an order on a lane in per-item mode: its verdict at
        once (``ok``, ``merged``, ``lifted``, ``noise``; ``unscanned`` with catalogue
        candidates, ``unexplained_removal`` — those two are alarms, published on
        ``alarm`` as they happen). ``seq`` numbers the lane's steps of the order from
        0: the same ``seq`` again answers the stored verdict; steps come in order
        (``BAD_SEQ`` for a gap)."""
        from lanecore.core.weigh.peritem import PerItemError
        lane, order_no, seq = f["lane"], f["order_no"], f["seq"]
        old = self.con.execute("SELECT verdict FROM item_steps WHERE lane = ? AND "
                               "order_no = ? AND seq = ?", (lane, order_no, seq)).fetchone()
        if old is not None:
            return {"order_no": order_no, "lane": lane, "item": json.loads(old[0])}
        (n,) = self.con.execute("SELECT COUNT(*) FROM item_steps WHERE lane = ? AND "
                                "order_no = ?", (lane, order_no)).fetchone()
        if seq != n:
            raise LanecoreError(f"step {seq} of {order_no} on {lane}: the next is {n}",
                                code="BAD_SEQ")
        session = self._item_session(lane, order_no)
        try:
            v = session.step(f["delta_g"], f["sigma_g"])
        except PerItemError as exc:
            self._sessions.pop((lane, order_no), None)    # rebuilt without this step
            raise LanecoreError(str(exc), code=exc.code) from None
        item = v.to_dict()
        self.con.execute("INSERT INTO item_steps (lane, order_no, seq, at, delta_g, sigma_g, "
                         "verdict) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (lane, order_no, seq, time.time(), float(f["delta_g"]),
                          float(f["sigma_g"]), json.dumps(item)))
        event = {"gate": lane, "order_no": order_no, "mode": "per_item", "item": item}
        after.append(lambda: self.publish("verdict", event))
        if v.alarm:
            after.append(lambda: self.publish("alarm", event))
        return {"order_no": order_no, "lane": lane, "item": item}

    def op_verify_clear(self, f, after) -> dict:
        """The conveyor is clear of the order: its per-item verdict over every step
        (``verify.step``), recorded as a verdict like ``verify.order``'s — ``short``
        when a paid unit is missing, ``over`` when a step is no paid unit, else
        ``ok`` — with ``mode`` ``per_item``, the explanations and every step's final
        verdict; published on ``verdict`` (and ``alarm``). The steps' sum is also
        weighed as a whole basket (``verify``): an order the matching calls ok whose
        whole is outside its band takes the whole-basket verdict, explained by the
        steps that alarmed as they came and the whole basket's explanations."""
        lane, order_no = f["lane"], f["order_no"]
        session = self._item_session(lane, order_no)
        ov = session.clear()
        kinds = [e["kind"] for e in ov.explanations]
        verdict = "ok" if ov.verdict == "ok" else (
            "short" if kinds and kinds[0] == "missing" else "over")
        explanations = ov.to_dict()["explanations"]
        # the steps' sum weighed as a whole basket too: an order per-item matching
        # explains away (two paid items taken for one step with a large error) is
        # still refused when the whole is outside its band — per-item mode names
        # items, it never lets through what the whole-basket check would catch
        measured = float(sum(session._w))
        whole = verify(self._basket_store().order_lines_for_verify(order_no), measured,
                       self.table, self.policy, region=self.region).to_dict()
        if verdict == "ok" and whole["verdict"] != "ok":
            verdict = whole["verdict"]
            explanations = [
                {"kind": v.kind, "step": v.step, "delta_g": round(v.delta_g, 1),
                 "candidates": v.to_dict()["candidates"]}
                for v in session.verdicts if v.alarm] + [
                {"kind": "whole_basket", "explanations": whole["explanations"]}]
        out = {"verdict": verdict, "mode": "per_item", "measured_g": round(measured, 1),
               "expected_g": whole["expected_g"], "z": whole["z"], "band_g": whole["band_g"],
               "explanations": explanations, "items": ov.to_dict()["items"]}
        self.con.execute(
            "INSERT INTO verdicts (at, gate, order_no, measured_g, verdict, z, expected_g, "
            "band_g, explanations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), lane, order_no, measured, verdict, out["z"], out["expected_g"],
             out["band_g"], json.dumps(out["explanations"])))
        self._sessions.pop((lane, order_no), None)
        status = self._basket_store().order(order_no)["status"]
        event = {"gate": lane, "order_no": order_no, **out}
        after.append(lambda: self.publish("verdict", event))
        if verdict != "ok":
            after.append(lambda: self.publish("alarm", event))
        return {"order_no": order_no, "order_status": status, **out}

    # kiosk bagging-scale mode --------------------------------------------------------
    def _bag_session(self, kiosk: str, session_id: str):
        """The kiosk transaction's bagging session (``core/weigh/bagging.py``): kept
        in memory, rebuilt from ``bag_events`` and ``bag_overrides`` after a restart."""
        from lanecore.core.weigh.bagging import BaggingSession
        from lanecore.core.weigh.peritem import PerItemError
        key = ("bag", kiosk, session_id)
        hit = self._sessions.get(key)
        if hit is not None and hit[0] is self.table:
            return hit[1]
        s = BaggingSession(self._item_catalogue())
        events = self.con.execute(
            "SELECT seq, event FROM bag_events WHERE kiosk = ? AND session = ? ORDER BY seq",
            (kiosk, session_id)).fetchall()
        overrides = self.con.execute(
            "SELECT after_seq, alarm, gtin, staff FROM bag_overrides WHERE kiosk = ? AND "
            "session = ? ORDER BY override_id", (kiosk, session_id)).fetchall()
        try:
            for seq, ev in events:
                while overrides and overrides[0][0] < seq:
                    _, alarm, gtin, staff = overrides.pop(0)
                    s.override(alarm, by=staff, gtin=gtin)
                self._bag_apply(s, json.loads(ev))
            for _, alarm, gtin, staff in overrides:
                s.override(alarm, by=staff, gtin=gtin)
        except PerItemError as exc:
            raise LanecoreError(str(exc), code=exc.code) from None
        while len(self._sessions) >= MAX_ITEM_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[key] = (self.table, s)
        return s

    @staticmethod
    def _bag_apply(s, ev: dict) -> dict:
        """One kiosk event on a bagging session: what it answered."""
        kind, t = ev["kind"], ev["t_s"]
        if kind == "scan":
            v = s.scan(ev["gtin"], t)
            return {"scan": {"unit": v.unit, "gtin": v.gtin, "kind": v.kind,
                             "band_g": [round(b, 1) for b in v.band_g], "due_s": v.due_s,
                             "reason": v.reason}}
        if kind == "delta":
            return {"delta": s.delta(ev["delta_g"], ev["sigma_g"], t).to_dict()}
        if kind == "tick":
            s.tick(t)
            return {}
        s.finish(t)
        return {}

    def op_bag_event(self, f, after) -> dict:
        """One event of a kiosk transaction in bagging-scale mode (``kind``: ``scan``
        with ``gtin``, ``delta`` with ``delta_g``/``sigma_g``, ``tick``, ``finish`` at
        payment; ``t_s`` the kiosk's monotonic seconds). ``seq`` numbers the
        transaction's events from 0: the same ``seq`` again answers the stored reply,
        a gap is ``BAD_SEQ``. Reply: what the event answered (``scan`` or ``delta``),
        the alarms it raised (``alarms``: each ``{no, kind, t_s, step, unit,
        explanation, overridden}``) and every alarm still open (``open``); new alarms
        are published on ``alarm`` (``{kiosk, session, mode: "bagging", alarm}``)."""
        from lanecore.core.weigh.peritem import PerItemError
        kiosk, sid, seq = f["kiosk"], f["session"], f["seq"]
        old = self.con.execute("SELECT reply FROM bag_events WHERE kiosk = ? AND session = ? "
                               "AND seq = ?", (kiosk, sid, seq)).fetchone()
        if old is not None:
            return json.loads(old[0])
        (n,) = self.con.execute("SELECT COUNT(*) FROM bag_events WHERE kiosk = ? AND "
                                "session = ?", (kiosk, sid)).fetchone()
        if seq != n:
            raise LanecoreError(f"event {seq} of {sid} at {kiosk}: the next is {n}",
                                code="BAD_SEQ")
        need = {"scan": ("gtin",), "delta": ("delta_g", "sigma_g")}.get(f["kind"], ())
        missing = [k for k in need if k not in f]
        if missing:
            raise ProtocolError("MISSING_FIELD", f"a {f['kind']} event needs "
                                                 f"{', '.join(missing)}")
        ev = {k: f[k] for k in ("kind", "t_s", "gtin", "delta_g", "sigma_g") if k in f}
        if "gtin" in ev:
            ev["gtin"] = ev["gtin"].zfill(14)
        s = self._bag_session(kiosk, sid)
        before = len(s.alarms)
        try:
            out = self._bag_apply(s, ev)
        except PerItemError as exc:
            self._sessions.pop(("bag", kiosk, sid), None)     # rebuilt without it
            raise LanecoreError(str(exc), code=exc.code) from None
        new = [a.to_dict() for a in s.alarms[before:]]
        reply = {"kiosk": kiosk, "session": sid, **out, "alarms": new,
                 "open": [a.to_dict() for a in s.open_alarms]}
        self.con.execute("INSERT INTO bag_events (kiosk, session, seq, at, event, reply) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (kiosk, sid, seq, time.time(), json.dumps(ev), json.dumps(reply)))
        for a in new:
            event = {"kiosk": kiosk, "session": sid, "mode": "bagging", "alarm": a}
            after.append(lambda event=event: self.publish("alarm", event))
        return reply

    def op_bag_override(self, f, after) -> dict:
        """An attendant accepts a kiosk's bagging alarm (``alarm``: its ``no``); for an
        unexpected item, ``gtin`` says which scanned item it was, and the delta is
        learned as a confirmed weighing of it (``learning``, as ``weights.confirm``'s,
        bounded the same way). ``staff``: who, beside the proving principal."""
        from lanecore.core.weigh.peritem import PerItemError
        kiosk, sid = f["kiosk"], f["session"]
        s = self._bag_session(kiosk, sid)
        gtin = f["gtin"].zfill(14) if "gtin" in f else None
        try:
            o = s.override(f["alarm"], by=f["staff"], gtin=gtin)
        except PerItemError as exc:
            self._sessions.pop(("bag", kiosk, sid), None)
            raise LanecoreError(str(exc), code="BAD_ALARM" if exc.code == "BAD_STEP"
                                else exc.code) from None
        learning = None
        if o.learned is not None:
            g, weight, units, _ = o.learned
            res = self.weights.learn(g, weight, units=units, confirmed=True,
                                     confirmed_by=self.principal.id)
            learning = {"code": res.code, "gtin": res.gtin, "message": res.message}
            if res.learned:
                after.append(self._relearn)
        (last,) = self.con.execute("SELECT COALESCE(MAX(seq), -1) FROM bag_events WHERE "
                                   "kiosk = ? AND session = ?", (kiosk, sid)).fetchone()
        self.con.execute(
            "INSERT INTO bag_overrides (kiosk, session, after_seq, alarm, gtin, staff, "
            "principal, at, learning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kiosk, sid, last, o.alarm, gtin, f["staff"], self.principal.id, time.time(),
             json.dumps(learning)))
        return {"kiosk": kiosk, "session": sid, "alarm": o.alarm, "gtin": o.gtin,
                "learning": learning, "open": [a.to_dict() for a in s.open_alarms]}

    def op_device_event(self, f, after) -> dict:
        """A lane's device spoke up (an EAS gate alarmed) or failed or came back: kept
        in ``device_events`` and published on the ``device`` topic for attendants."""
        at = time.time()
        cur = self.con.execute(
            "INSERT INTO device_events (at, lane, device, kind, code, message) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (at, f["lane"], f["device"], f["kind"], f.get("code"), f.get("message")))
        event = {"event_id": cur.lastrowid, "at": at, "lane": f["lane"],
                 "device": f["device"], "kind": f["kind"], "code": f.get("code"),
                 "message": f.get("message")}
        after.append(lambda: self.publish("device", event))
        return {"event": event}

    def op_weights_confirm(self, f, after) -> dict:
        """An attendant's confirmed weighing, bounded (k sd per confirmation, N per
        item and UTC day: CONFIRM_TOO_FAR, CONFIRM_DAILY_LIMIT) and recorded with who
        confirmed it (``learning.confirmation``)."""
        res = self.weights.learn(f["gtin"], f["weight_g"], units=f.get("units", 1),
                                 confirmed=True, confirmed_by=self.principal.id)
        if res.code in ("CONFIRM_TOO_FAR", "CONFIRM_DAILY_LIMIT"):
            c = res.confirmation or {}
            raise LanecoreError(res.message, code=res.code, details={
                "gtin": res.gtin, "mean_g": _num(res.mean_g),
                "max_step_g": _num(c.get("max_step_g")), "n_today": c.get("n_today"),
                "max_per_day": c.get("max_per_day")})

        after.append(self._relearn)
        return {"learning": {k: _num(v) for k, v in res.to_dict().items()}}

    def _relearn(self) -> None:
        """A confirmed weighing learned: the table's weights, and what is made from
        them (the items' shown weights, the per-item catalogue), brought up to date."""
        self.weights.apply_to_table(self.table)
        self._items.clear()        # the items' shown weights come from the table
        self._packed_items.clear()
        self._peritem = None

    def op_alarm_resolve(self, f, after) -> dict:
        """Staff acknowledged an alarm, overrode it (a reason required) or asked for a
        rescan: recorded in ``alarm_actions`` with ``staff`` (the name the calling
        console vouches for) beside the principal that proved itself, and published
        on ``alarm`` as ``{resolved: …}``. An override with ``weight_g`` of a
        one-item order (one line, one GTIN) is also a confirmed weighing of that item,
        bounded as ``weights.confirm`` is; anything else is only recorded."""
        action, reason = f["action"], (f.get("reason") or "").strip()
        if action == "override" and not reason:
            raise LanecoreError("an override needs a reason", code="REASON_REQUIRED")
        if f.get("weight_g") is not None and action != "override":
            raise ProtocolError("BAD_FIELD", "weight_g goes only with an override")
        order = self._basket_store().order_lines_for_verify(f["order_no"])  # UNKNOWN_ORDER
        learning = None
        lines = order["lines"]
        if action == "override" and f.get("weight_g") is not None and len(lines) == 1 \
                and "unit_weight_g" not in lines[0]:
            try:
                res = self.weights.learn(lines[0]["gtin"], f["weight_g"],
                                         units=int(lines[0]["qty"]), confirmed=True,
                                         confirmed_by=self.principal.id)
            except LanecoreError as exc:      # BAD_WEIGHT …: recorded, not learned
                res = None
                learning = {"code": exc.code, "message": exc.message}
            if res is not None:
                learning = {k: _num(v) for k, v in res.to_dict().items()}
            if res is not None and res.code == "LEARNED":
                after.append(self._relearn)
        at = time.time()
        cur = self.con.execute(
            "INSERT INTO alarm_actions (at, lane, order_no, action, reason, weight_g, staff, "
            "principal, learning, finding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, f["lane"], f["order_no"], action, reason, f.get("weight_g"), f["staff"],
             self.principal.id, None if learning is None else json.dumps(learning),
             f.get("finding")))
        record = {"action_id": cur.lastrowid, "at": at, "lane": f["lane"],
                  "order_no": f["order_no"], "action": action, "reason": reason,
                  "weight_g": f.get("weight_g"), "staff": f["staff"],
                  "principal": self.principal.id, "learning": learning,
                  "finding": f.get("finding")}
        after.append(lambda: self.publish("alarm", {"resolved": record}))
        return {"resolved": record}

    def op_alarm_list(self, f) -> dict:
        """The newest exit alarms (verdicts other than ``ok``, since ``since``), each
        with what staff did about it (``alarm_actions`` of its order from its verdict
        on, until the order's next verdict), and the newest EAS and other device
        alarms: what an attendant's screen shows after a restart."""
        since, limit = f.get("since"), f.get("limit", 100)
        rows = self.con.execute(
            "SELECT verdict_id, at, gate, order_no, verdict, measured_g, expected_g, band_g, "
            "z, explanations FROM verdicts WHERE verdict != 'ok' AND at >= ? "
            "ORDER BY at DESC, verdict_id DESC LIMIT ?", (since or 0.0, limit)).fetchall()
        alarms = [{"verdict_id": r[0], "at": r[1], "lane": r[2], "order_no": r[3],
                   "verdict": r[4], "measured_g": _num(r[5]), "expected_g": _num(r[6]),
                   "band_g": _num(r[7]), "z": _num(r[8]), "explanations": json.loads(r[9]),
                   "actions": []} for r in rows]
        orders = sorted({a["order_no"] for a in alarms})
        if orders:
            marks = ", ".join("?" * len(orders))
            # every verdict of these orders (ok ones too): an action belongs to the
            # latest verdict of its order at or before it
            verdicts = collections.defaultdict(list)
            for vid, at, order_no in self.con.execute(
                    f"SELECT verdict_id, at, order_no FROM verdicts WHERE order_no IN "
                    f"({marks}) ORDER BY at, verdict_id", orders):
                verdicts[order_no].append((at, vid))
            by_id = {a["verdict_id"]: a for a in alarms}
            for row in self.con.execute(
                    "SELECT action_id, at, lane, order_no, action, reason, weight_g, staff, "
                    f"principal, learning, finding FROM alarm_actions WHERE order_no IN "
                    f"({marks}) ORDER BY at, action_id", orders):
                seen = verdicts[row[3]]
                owner = seen[0][1]
                for at, vid in seen:
                    if at <= row[1]:
                        owner = vid
                if owner in by_id:
                    by_id[owner]["actions"].append(_action(row))
        device = self.con.execute(
            "SELECT event_id, at, lane, device, kind, code, message FROM device_events "
            "WHERE kind = 'alarm' AND at >= ? ORDER BY at DESC, event_id DESC LIMIT ?",
            (since or 0.0, limit)).fetchall()
        cols = ("event_id", "at", "lane", "device", "kind", "code", "message")
        return {"alarms": alarms, "device_alarms": [dict(zip(cols, r)) for r in device]}

    # handheld audits -----------------------------------------------------------------
    def _voids(self, basket_id: str) -> int:
        """Whole lines the shopper scanned and then took out of the basket: line
        numbers are never reused (core/store/basket.py), so the numbers given out
        less the lines left. Units taken off a line that keeps some are not seen."""
        row = self.con.execute(
            "SELECT next_line_no - 1 - (SELECT COUNT(*) FROM basket_lines WHERE basket_id "
            "= b.basket_id) FROM baskets b WHERE basket_id = ?", (basket_id,)).fetchone()
        return max(0, int(row[0])) if row is not None else 0

    def op_audit_decide(self, f, after) -> dict:
        """Whether an attendant checks a paid handheld order, decided once (asked
        again: the stored decision, never a fresh draw); the shopper's trust first
        loses the voids the service saw in the order's basket; a chosen order is
        queued and published on ``audit`` as ``{requested: …}``."""
        shopper = f["shopper"]
        if not _SHOPPER_RE.fullmatch(shopper):
            raise ProtocolError("BAD_FIELD", "field 'shopper' must be 1-64 of A-Z a-z 0-9 "
                                             ". _ : @ + -")
        order = self._basket_store().order(f["order_no"])          # UNKNOWN_ORDER
        have = self.audits.entry(order["order_no"])
        if have is not None:
            return {"audit": have}
        if order["status"] not in ("paid", "exited"):
            raise LanecoreError(f"order {order['order_no']} is {order['status']}, not paid: "
                                "an audit is decided once it is paid", code="NOT_PAID",
                                details={"order_no": order["order_no"],
                                         "status": order["status"]})
        entry, new = self.audits.request(
            order["order_no"], order, shopper=shopper, store_risk=self.store_risk,
            rng=self.audit_rng, voids=self._voids(order["basket_id"]), by=self.principal.id)
        if new and entry["state"] == "pending":
            after.append(lambda: self.publish("audit", {"requested": entry}))
        return {"audit": entry}

    def _audit_of(self, order_no: str) -> dict:
        entry = self.audits.entry(order_no.strip().upper())
        if entry is None:
            raise LanecoreError(f"no audit was decided for order {order_no[:64]!r}",
                                code="UNKNOWN_AUDIT", details={"order_no": order_no[:64]})
        return entry

    def op_audit_get(self, f) -> dict:
        return {"audit": self._audit_of(f["order_no"])}

    def op_audit_list(self, f) -> dict:
        return {"audits": self.audits.queue(f.get("state", "pending"),
                                            limit=f.get("limit", 100)),
                "stats": self.audits.stats()}

    def op_audit_record(self, f, after) -> dict:
        """An attendant's check of a queued order: ``clean`` (nothing found) or a
        ``discrepancy`` (``found``: ``[{gtin, qty}]``, ``finding``: theft or
        mistake); the shopper's trust moves, the entry is done and published on
        ``audit`` as ``{recorded: …}``. The same terms again: the same record."""
        outcome, finding = f["outcome"], f.get("finding")
        found = []
        for i, x in enumerate(f.get("found") or ()):
            if not (isinstance(x, dict) and set(x) == {"gtin", "qty"}
                    and isinstance(x["gtin"], str) and x["gtin"].isascii()
                    and x["gtin"].isdigit() and 8 <= len(x["gtin"]) <= 14
                    and type(x["qty"]) is int and 1 <= x["qty"] <= 999):
                raise ProtocolError("BAD_FIELD", f"found[{i}] must be {{gtin: 8-14 digits, "
                                                 "qty: 1-999}")
            found.append({"gtin": x["gtin"].zfill(14), "qty": x["qty"]})
        if outcome == "clean" and (found or finding is not None):
            raise ProtocolError("BAD_FIELD", "a clean audit found nothing: no 'found', "
                                             "no 'finding'")
        if outcome == "discrepancy" and finding is None:
            raise ProtocolError("MISSING_FIELD", "a discrepancy needs a 'finding' (theft "
                                                 "or mistake)")
        self._audit_of(f["order_no"])                               # UNKNOWN_AUDIT
        entry, new = self.audits.resolve(
            f["order_no"].strip().upper(), outcome, found, finding=finding,
            staff=f["staff"], principal=self.principal.id)
        if new:
            after.append(lambda: self.publish("audit", {"recorded": entry}))
        return {"audit": entry}


def _action(row) -> dict:
    """An ``alarm_actions`` row as ``alarm.resolve`` returned it."""
    (action_id, at, lane, order_no, action, reason, weight_g, staff, principal, learning,
     finding) = row
    return {"action_id": action_id, "at": at, "lane": lane, "order_no": order_no,
            "action": action, "reason": reason, "weight_g": weight_g, "staff": staff,
            "principal": principal,
            "learning": None if learning is None else json.loads(learning),
            "finding": finding}
