"""The payment gateway: ``lanecore gateway payments [--bind ADDR] [--data-dir D]``.

A ZeroMQ ROUTER with the verification service's envelope (``gateway/net/server.py``,
``docs/protocol.md`` "Payments"). Every charge is a row of the ledger
(``core/pay/ledger.py``) moved one durable step at a time, and a provider is only called
after the charge is marked ``sent``; so a gateway killed at any point restarts, drives
every open charge to a final state by asking the provider (never by charging again),
and nothing is taken twice or lost.

Configuration: ``DATA_DIR/payments.toml`` (``docs/pay/payments.md``): the channels with
their routing fields (``core/pay/routing.py``) plus ``endpoint`` and ``timeout_s`` of
their provider; the ``[policy]`` for unknown results; the ``[qr]`` merchant for
``pay.qr``; ``[notify]`` for ``pay.present`` (a wallet's own merchant-presented QR
and the listener for its notifications, ``gateway/payments/notify.py``).

**Group commit.** Served from its socket, the gateway handles the charges in flight
together: each loop turn admits the new ``pay.charge`` requests (checks, limits and
routing, one after another, so each sees the ones before it) and writes their intents
(``created`` → ``sent``), writes the provider answers that arrived since the last turn
(and a fall-back attempt's intent after a decline), all in one transaction — one
flush to disk for the whole turn — and only after that commit sends the new provider
requests (without waiting: their answers come back on the connectors' sockets, polled
by the same loop) and the replies. A request for an order with a charge in flight
waits for it and is then answered as a new request would be. ``handle()`` (tools and
tests) still runs one request at a time.

Fault injection for tests: ``LANECORE_PAY_CRASH="after_ledger:0.05,after_provider:0.05,
before_reply:0.05"`` makes the process kill itself (SIGKILL) at
those points with those probabilities (seeded by ``LANECORE_PAY_CRASH_SEED``);
:data:`CRASH_POINTS` lists them all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import signal
import sqlite3
import time
import tomllib
from pathlib import Path

from lanecore.core.pay import emvqr
from lanecore.core.pay import ledger as L
from lanecore.core.pay.cash import Drawer
from lanecore.core.config import resolve_data_dir
from lanecore.core.errors import LanecoreError
from lanecore.core.pay.ledger import Ledger, UnknownPolicy, next_step
from lanecore.core.pay.recon import PROVIDER_KIND as recon_PROVIDER_KIND
from lanecore.core.pay.routing import (ConfigError, Decline, NoEligibleChannel,
                                       PaymentRequest, Router, Usage, parse_channels)
from lanecore.core.pay.storedvalue import StoredValue, StoredValueError

from lanecore.gateway.db.pg import CHAIN_LOCK
from lanecore.gateway.net import protocol as P
from lanecore.gateway.net.identity import ANY, declare, roles
from lanecore.gateway.net.protocol import NAME, Field
from lanecore.gateway.payments.providers import Card, Connector, ProviderError, connector
from lanecore.gateway.net.server import (PURE, RECORDED, REPLAY_WINDOW_S, OpServer,
                                         request_digest)
from lanecore.gateway.payments.terminals import MAX_SKEW_S, AuthError, Terminal, Terminals

log = logging.getLogger("lanecore.payments")

CONFIG_FILE = "payments.toml"
LEDGER_FILE = "payments.db"
#: Card-kind channels call the bank provider (``core/pay/recon.py``: bills by kind too).
PROVIDER_KIND = recon_PROVIDER_KIND
_PROVIDER_FIELDS = ("endpoint", "timeout_s", "pin_entries", "cvm_limit_minor",
                    "server_key", "client_key", "db", "protocol", "merchant_id",
                    "terminal_id", "ca_file", "notify_url",
                    # WeChat Pay v2 (gateway/payments/wechatpay.py)
                    "appid", "mch_id", "key_file", "sign_type", "client_cert_file",
                    "client_key_file",
                    # Alipay (gateway/payments/alipay.py)
                    "app_id", "seller_id", "app_private_key_file", "alipay_public_key_file")
#: A channel's link protocols: lanecore's own (ZeroMQ, the default), ISO 8583 to an
#: acquirer's host (card channels; gateway/payments/iso8583.py, with its state file),
#: or a wallet's own HTTPS API (docs/pay/providers.md).
PROTOCOLS = ("lanecore", "iso8583", "wechatpay-v2", "alipay")
#: protocol → (the channel kind that may speak it, the connector's module)
PROTOCOL_KIND = {"iso8583": ("card", "iso8583"), "wechatpay-v2": ("wechat", "wechatpay"),
                 "alipay": ("alipay", "alipay")}
ISO8583_STATE = "iso8583.sqlite"
#: The gateway's own id in payments.db, made once when a stored-value channel keeps
#: its accounts in the chain database: the ``origin`` of its debits there, so another
#: store's charge with the same merchant reference is refused, never taken for this one.
_ORIGIN_SCHEMA = """CREATE TABLE IF NOT EXISTS sv_chain_origin (
    k INTEGER PRIMARY KEY CHECK (k = 1), origin TEXT NOT NULL)"""
#: Stored-value refusals that are the payer's (routing: no fall-back), as today.
_SV_DECLINES = ("BALANCE_NOT_ENOUGH", "ACCOUNT_FROZEN", "WRONG_PASSWORD")
#: The gateway's own CurveZMQ keypair for provider links (``client_key`` of a channel
#: names another), made on first use; its public half goes to the providers.
PROVIDER_CLIENT_KEY = "keys/provider_client.key_secret"
#: Where the providers' bills are fetched to, and the only place ``recon.run`` reads.
BILLS_DIR = "bills"
#: SMS receipts (``pay.receipt`` with ``sms_to``): most per order, and most per
#: terminal in any hour (``[receipt] sms_per_order``, ``sms_per_terminal_hour``).
SMS_PER_ORDER = 3
SMS_PER_TERMINAL_HOUR = 120
#: Roles that may text a receipt to a number they are given (a staffed till); any
#: other caller only to the member's number on file.
SMS_ANY_NUMBER_ROLES = ("till", "pos")
#: The gateway's own records beside the ledger: SMS receipts queued (for their rate
#: limits) and stored-value top-ups per terminal (for its day limit).
_TRUST_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sms_receipts (
        msg_ref TEXT PRIMARY KEY, merchant_ref TEXT NOT NULL, scope TEXT NOT NULL,
        order_no TEXT NOT NULL, sender TEXT NOT NULL, phone TEXT NOT NULL,
        at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sms_receipts_order ON sms_receipts (scope, order_no)",
    "CREATE INDEX IF NOT EXISTS sms_receipts_sender ON sms_receipts (sender, at)",
    """CREATE TABLE IF NOT EXISTS sv_topup_terminals (
        ref TEXT PRIMARY KEY, terminal TEXT NOT NULL, amount_minor INTEGER NOT NULL,
        at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sv_topup_terminals_at ON sv_topup_terminals (terminal, at)",
)
ENTRY_MODES = ("magstripe", "chip", "nfc")
#: Channel kinds the gateway settles itself, in its own database (stored value: or in
#: the chain's PostgreSQL database, when its channel names ``db``).
LOCAL_KINDS = ("cash", "stored_value")
#: after_ledger: intents committed, nothing sent; after_provider: answers in, not yet
#: written (stored value in the chain database: the debit or refund's credit made
#: there, the ledger not yet ``paid``); before_reply: outcomes committed, no reply sent. The grouped path adds
#: in_group (inside the group's transaction, before its commit), during_sends (some
#: of a group's provider requests sent, not all) and during_replies (some replies sent).
CRASH_POINTS = ("after_ledger", "after_provider", "before_reply", "in_group",
                "during_sends", "during_replies")
#: Charges that count against today's limits: paid, and those still open (an unknown
#: result may yet be a deduction).
_COUNTED = frozenset((L.PAID, L.SENT, L.UNKNOWN, L.QUERIED))


class PaymentConfigError(LanecoreError):
    code = "BAD_CONFIG"


def load_payments_config(data_dir: Path) -> dict:
    """``payments.toml`` as a dict (``{}`` when absent)."""
    path = Path(data_dir) / CONFIG_FILE
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PaymentConfigError(f"{path}: {exc}") from exc


def _crash_plan() -> tuple[dict[str, float], random.Random]:
    spec = os.environ.get("LANECORE_PAY_CRASH", "")
    plan = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, p = part.partition(":")
        if point not in CRASH_POINTS:
            raise PaymentConfigError(f"LANECORE_PAY_CRASH: no point {point!r}")
        plan[point] = float(p or 1.0)
    return plan, random.Random(os.environ.get("LANECORE_PAY_CRASH_SEED"))



#: Who may call each op (``docs/security.md``; ``admin`` may call every op). A
#: terminal registered without ``--role`` is ``pos``; ``--admin`` is ``admin``.
_PAYING = roles("handheld", "kiosk", "till", "pos", "coupons")
OP_ROLES = {
    "hello": ANY,
    "pay.quote": _PAYING,
    "pay.charge": _PAYING,
    "pay.status": _PAYING | roles("attendant"),
    "pay.reverse": _PAYING | roles("attendant"),
    "pay.refund": roles("till", "pos", "coupons", "manager"),
    "recon.run": roles("manager", "hq"),
    "pay.qr": roles("handheld", "kiosk", "till", "pos"),
    "pay.present": roles("handheld", "kiosk", "till", "pos"),
    "pay.list": _PAYING | roles("attendant", "manager", "hq"),
    "pay.receipt": _PAYING,
    "sv.open": roles("till", "pos", "manager"),
    "sv.topup": roles("manager"),
    "sv.balance": roles("handheld", "kiosk", "till", "pos", "attendant", "manager"),
    "stats": roles("manager", "hq"),
}


class _Job:
    """A ``pay.charge`` read from the socket and answered later (the grouped path)."""

    __slots__ = ("key", "op", "rid", "digest", "req", "fields", "principal", "caller",
                 "head", "readmit", "order_no", "scope", "request", "means", "lines",
                 "usage", "tried", "attempt", "channel", "ref", "conn", "waiters", "next")

    def __init__(self, key, op, rid, digest, req, fields, principal, caller) -> None:
        self.key, self.op, self.rid, self.digest = key, op, rid, digest
        self.req, self.fields, self.principal, self.caller = req, fields, principal, caller
        self.head: list = []
        self.readmit = False
        self.order_no = fields["order_no"]
        self.waiters: list[_Job] = []
        self.tried: list[str] = []
        self.ref = self.conn = self.channel = self.next = None


class PaymentGateway(OpServer):
    """The ledger, the channels and their providers, the drawers."""

    def __init__(self, data_dir, *, publish=None, clock=time.time) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = load_payments_config(self.data_dir)
        unknown = set(config) - {"channels", "policy", "qr", "pos", "receipt", "notify"}
        if unknown:
            raise PaymentConfigError(f"{CONFIG_FILE}: unknown section(s) {sorted(unknown)}")
        self.clock = clock
        self.ledger = Ledger.open(self.data_dir / LEDGER_FILE, clock=clock,
                                  on_move=self._follow)
        # the analytics rollups of the ledger (charges and refunds per day and channel),
        # kept by triggers in the ledger's own transactions (core/rollups.py)
        from lanecore.core.rollups import ensure_rollups
        ensure_rollups(self.ledger.con)
        self._usage_day: float | None = None
        self._usage_cache = Usage()
        raw = config.get("channels", {})
        routing_tables = {name: {k: v for k, v in t.items() if k not in _PROVIDER_FIELDS}
                          for name, t in raw.items()} if isinstance(raw, dict) else raw
        try:
            self.router = Router(parse_channels(routing_tables))
        except ConfigError as exc:
            raise PaymentConfigError(f"{CONFIG_FILE}: {exc.message}") from exc
        self.connectors: dict[str, Connector] = {}
        self.pin_policy: dict[str, tuple[frozenset, int | None]] = {}
        self._svs: dict[str, StoredValue] = {}
        #: currency → the chain database's URL, for stored-value channels with ``db``
        self.sv_db: dict[str, str] = self._sv_databases(raw)
        for ch in self.router.channels:
            self.pin_policy[ch.name] = self._pin_policy(ch, raw[ch.name])
            if ch.kind in LOCAL_KINDS:
                continue            # the drawer, the member accounts: no provider
            kind = PROVIDER_KIND.get(ch.kind)
            if kind is None:
                raise PaymentConfigError(f"{CONFIG_FILE}: channels.{ch.name}: this gateway "
                                         f"has no connector for kind {ch.kind!r}")
            table = raw[ch.name]
            if "endpoint" not in table:
                raise PaymentConfigError(f"{CONFIG_FILE}: channels.{ch.name} needs the "
                                         "provider's endpoint")
            protocol = table.get("protocol", "lanecore")
            if protocol not in PROTOCOLS or (protocol in PROTOCOL_KIND
                                             and PROTOCOL_KIND[protocol][0] != ch.kind):
                raise PaymentConfigError(
                    f"{CONFIG_FILE}: channels.{ch.name}.protocol is one of "
                    f"{', '.join(PROTOCOLS)} (" + ", ".join(
                        f"{p}: {k} channels only" for p, (k, _) in PROTOCOL_KIND.items())
                    + f"), got {protocol!r}")
            if protocol == "iso8583":
                self.connectors[ch.name] = self._iso8583(ch.name, table)
                continue
            if protocol != "lanecore":
                self.connectors[ch.name] = self._wallet_api(ch.name, protocol, table)
                continue
            self.connectors[ch.name] = connector(table["endpoint"], kind,
                                                 timeout_s=float(table.get("timeout_s", 5.0)),
                                                 curve=self._provider_curve(ch.name, table))
        try:
            self.policy = UnknownPolicy(**config.get("policy", {}))
        except TypeError as exc:
            raise PaymentConfigError(f"{CONFIG_FILE} [policy]: {exc}") from exc
        self.qr = dict(config.get("qr", {}))
        self._init_present(config.get("notify"))     # dynamic QR: [notify]
        pos = dict(config.get("pos", {}))
        unknown = set(pos) - {"auth", "max_skew_s"}
        if unknown or pos.get("auth", "off") not in ("off", "hmac"):
            raise PaymentConfigError(f"{CONFIG_FILE} [pos]: auth is \"off\" or \"hmac\", "
                                     f"max_skew_s seconds; got {pos}")
        self.auth = pos.get("auth", "off") == "hmac"
        skew = pos.get("max_skew_s", MAX_SKEW_S)
        # A signed frame is good for ±max_skew_s; retries are answered from the reply
        # record for REPLAY_WINDOW_S: the window must end first.
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) \
                or not 0 < skew < REPLAY_WINDOW_S:
            raise PaymentConfigError(f"{CONFIG_FILE} [pos]: max_skew_s is seconds, > 0 and "
                                     f"below the reply retention of {REPLAY_WINDOW_S:g} s; "
                                     f"got {skew!r}")
        self.max_skew_s = float(skew)
        self.terminals = Terminals(self.ledger.con, clock=clock)
        for stmt in _TRUST_SCHEMA:
            self.ledger.con.execute(stmt)
        self.receipt_cfg = self._receipt_config(config.get("receipt", {}))
        self.sv_origin: str | None = None
        if self.sv_db:
            con = self.ledger.con
            con.execute(_ORIGIN_SCHEMA)
            con.execute("INSERT OR IGNORE INTO sv_chain_origin (k, origin) VALUES (1, ?)",
                        (f"pay-{os.urandom(8).hex()}",))
            (self.sv_origin,) = con.execute(
                "SELECT origin FROM sv_chain_origin WHERE k = 1").fetchone()
        self._signer = None
        from lanecore.gateway.payments.outbox import Outbox, OutboxError, sink_from_url
        try:
            self.outbox = Outbox(self.ledger.con, sink_from_url(self.receipt_cfg["sms_sink"]))
        except OutboxError as exc:
            raise PaymentConfigError(f"{CONFIG_FILE} [receipt] sms_sink: {exc.message}") \
                from exc
        #: The authenticated terminal of the request being answered (None: auth off).
        self.caller: Terminal | None = None
        self._last_query: dict[str, float] = {}
        self._last_refund_try: dict[str, float] = {}
        self._crash, self._crash_rng = _crash_plan()
        # the grouped path (on_batch, on_io): charges read and not yet admitted, those
        # waiting behind an order in flight, provider answers not yet written, the
        # requests at the providers (their id → (job, deadline)), the orders and
        # merchant references in flight (on_idle leaves those alone)
        self._grouping = False
        self._new: list[_Job] = []
        self._ready: list[_Job] = []
        self._arrived: list[tuple[_Job, dict | None]] = []
        self._flight: dict[str, tuple[_Job, float]] = {}
        self._orders: dict[str, _Job] = {}
        self._refs: set[str] = set()
        self._io: tuple | None = None
        #: the grouped path's commits, and the intents and outcomes they carried
        self.group_stats = {"commits": 0, "intents": 0, "outcomes": 0}
        super().__init__(self.ledger.con, publish=publish)
        self.recover()

    def _sv_databases(self, raw) -> dict[str, str]:
        """``db`` of the stored-value channels: the chain's PostgreSQL database that
        keeps their accounts (``docs/pay/payments.md``), per currency. Only a
        ``stored_value`` channel may have one; every stored-value channel of one
        currency names the same database, or none does (their accounts are one)."""
        from lanecore.gateway.db.pg import is_postgres_url, redact
        out: dict[str, str | None] = {}
        for ch in self.router.channels:
            where = f"{CONFIG_FILE}: channels.{ch.name}"
            url = raw[ch.name].get("db")
            if url is not None:
                if ch.kind != "stored_value":
                    raise PaymentConfigError(f"{where}: db is for stored_value channels "
                                             "(where their member accounts live)")
                if not is_postgres_url(url):
                    shown = redact(url) if isinstance(url, str) else type(url).__name__
                    raise PaymentConfigError(f"{where}.db: a postgresql:// URL, not "
                                             f"{shown!r:.80}")
            if ch.kind != "stored_value":
                continue
            if ch.currency in out and out[ch.currency] != url:
                raise PaymentConfigError(
                    f"{where}: every stored_value channel in {ch.currency} keeps its "
                    "accounts in the same place (the same db, or none)")
            out[ch.currency] = url
        return {cur: url for cur, url in out.items() if url is not None}

    def _iso8583(self, name: str, table: dict) -> Connector:
        """A card channel's ISO 8583 link (``protocol = "iso8583"``): plain TCP, so
        only to a loopback host (a live acquirer needs TLS; docs/pay/providers.md)."""
        from lanecore.gateway.net.security import is_loopback
        from lanecore.gateway.payments.iso8583 import Iso8583Connector, parse_endpoint
        where = f"{CONFIG_FILE}: channels.{name}"
        for key in ("server_key", "client_key"):
            if key in table:
                raise PaymentConfigError(f"{where}: {key} is for lanecore's ZeroMQ link, "
                                         "not ISO 8583")
        try:
            host, port = parse_endpoint(table["endpoint"])
            if not is_loopback(f"tcp://{host}:{port}"):
                raise PaymentConfigError(
                    f"{where}: {table['endpoint']} is not loopback: ISO 8583 here is plain "
                    "TCP (card data in clear)", code="PLAIN_NOT_ALLOWED")
            return Iso8583Connector(
                str(table["endpoint"]), "bank", timeout_s=float(table.get("timeout_s", 5.0)),
                merchant_id=table.get("merchant_id"), terminal_id=table.get("terminal_id"),
                state_path=self.data_dir / ISO8583_STATE)
        except ProviderError as exc:
            raise PaymentConfigError(f"{where}: {exc.message}") from exc

    def _wallet_api(self, name: str, protocol: str, table: dict) -> Connector:
        """A wallet channel over the wallet's own HTTPS API (``protocol`` wechatpay-v2
        or alipay): the connector module's ``from_config`` reads its keys (credential
        files relative to the data directory, 0600)."""
        import importlib
        for key in ("server_key", "client_key"):
            if key in table:
                raise PaymentConfigError(f"{CONFIG_FILE}: channels.{name}: {key} is for "
                                         f"lanecore's ZeroMQ link, not {protocol}")
        module = importlib.import_module(
            f"lanecore.gateway.payments.{PROTOCOL_KIND[protocol][1]}")
        try:
            return module.from_config(name, table, self.data_dir)
        except ProviderError as exc:
            raise PaymentConfigError(f"{CONFIG_FILE}: channels.{name}: {exc.message}",
                                     code=exc.code) from exc

    def _provider_curve(self, name: str, table: dict):
        """The CurveZMQ keys of a channel's provider link: ``server_key`` (the
        provider's public key, 40 Z85 characters) and the gateway's keypair
        (``client_key``: a ``.key_secret`` file, relative to the data directory;
        default :data:`PROVIDER_CLIENT_KEY`, made on first use). None without
        ``server_key``: plain, which only a loopback or ipc endpoint may be
        (PLAIN_NOT_ALLOWED otherwise: card data and answers would cross the network
        in clear and unauthenticated)."""
        from lanecore.gateway.net.client import CurveKeys
        from lanecore.gateway.net.security import (SecurityError, generate, is_loopback,
                                                   load_keypair)
        where = f"{CONFIG_FILE}: channels.{name}"
        server = table.get("server_key")
        if server is None:
            if "client_key" in table:
                raise PaymentConfigError(f"{where}: client_key needs server_key (the "
                                         "provider's public key)")
            if not is_loopback(str(table["endpoint"])):
                raise PaymentConfigError(
                    f"{where}: {table['endpoint']} is not loopback: a provider link beyond "
                    "this machine needs CurveZMQ (server_key = the provider's public key)",
                    code="PLAIN_NOT_ALLOWED")
            return None
        try:
            import zmq.utils.z85
            ok = isinstance(server, str) and len(server) == 40 and \
                len(zmq.utils.z85.decode(server.encode("ascii"))) == 32
        except (ValueError, UnicodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise PaymentConfigError(f"{where}.server_key: the provider's public key, 40 Z85 "
                                     "characters (its keys/server.key)")
        path = Path(table.get("client_key", PROVIDER_CLIENT_KEY))
        if not path.is_absolute():
            path = self.data_dir / path
        try:
            if "client_key" not in table and not path.exists():
                generate(path.parent, path.name.removesuffix(".key_secret"),
                         {"name": "payments"})
            public, secret = load_keypair(path)
        except SecurityError as exc:
            raise PaymentConfigError(f"{where}.client_key: {exc.message}",
                                     code=exc.code) from exc
        return CurveKeys(server.encode("ascii"), public, secret)

    # ------------------------------------------------------------------------------
    def metric_families(self, db):
        """Ledger states, open charges and the SMS outbox backlog (scrape)."""
        from lanecore.gateway.net import metrics as M
        yield M.grouped(db, "lanecore_charges", "Charges in the ledger, per state",
                        "state", "SELECT state, COUNT(*) FROM charges GROUP BY state")
        yield M.grouped(db, "lanecore_open_charges", "Charges not final yet (created, "
                        "sent, unknown, queried), per channel", "channel",
                        "SELECT channel, COUNT(*) FROM charges WHERE state IN "
                        "('created', 'sent', 'unknown', 'queried') GROUP BY channel")
        yield M.grouped(db, "lanecore_outbox", "SMS outbox messages, per state "
                        "(pending and sending: the backlog)", "state",
                        "SELECT state, COUNT(*) FROM sms_outbox GROUP BY state")

    def _ops(self):
        # An amount or currency of the wrong type or out of range is its own code, as
        # the routing check's (docs/protocol.md, "Payment error codes").
        money = Field("int", min=1, max=10 ** 12, code="BAD_AMOUNT")
        ccy = Field("str", min=3, max=3, code="BAD_CURRENCY")
        return declare([
            ("hello", self.op_hello, {}, PURE),
            ("pay.quote", self.op_quote,
             {"amount_minor": money, "currency": ccy, "method": Field("str", max=16),
              "terminal": NAME, "payer": Field("str", required=False, max=64),
              "auth_code": Field("str", required=False, max=32)}, PURE),
            ("pay.charge", self.op_charge,
             {"order_no": Field("str", min=1, max=56), "amount_minor": money,
              "currency": ccy, "method": Field("str", max=16), "terminal": NAME,
              "payer": Field("str", required=False, max=64),
              "auth_code": Field("str", required=False, max=32),
              "card": Field("map", required=False), "cash": Field("map", required=False),
              "sv_pin": Field("str", required=False, max=32),
              "coupons": Field("list", required=False, max=20),
              "lines": Field("list", required=False, max=200)},
             RECORDED),
            ("pay.status", self.op_status, {"order_no": Field("str", min=1, max=56)}, PURE),
            ("pay.reverse", self.op_reverse, {"order_no": Field("str", min=1, max=56)},
             RECORDED),
            ("pay.refund", self.op_refund,
             {"order_no": Field("str", min=1, max=56),
              "refund_ref": Field("str", min=1, max=64), "amount_minor": money}, RECORDED),
            ("recon.run", self.op_recon, {"date": Field("str", min=10, max=10)}, PURE),
            ("pay.qr", self.op_qr,
             {"order_no": Field("str", min=1, max=25), "amount_minor": money,
              "currency": ccy, "terminal": NAME}, PURE),
            ("pay.present", self.op_present,
             {"order_no": Field("str", min=1, max=56), "amount_minor": money,
              "currency": ccy, "terminal": NAME,
              "wallet": Field("str", required=False, choices=("wechat", "alipay",
                                                              "unionpay")),
              "channel": Field("str", required=False, min=1, max=64),
              "cancel": Field("bool", required=False),
              "lines": Field("list", required=False, max=200)}, PURE),
            ("pay.list", self.op_list,
             {"date": Field("str", required=False, min=10, max=10),
              "terminal": Field("str", required=False, max=32)}, PURE),
            ("pay.receipt", self.op_receipt,
             {"order_no": Field("str", min=1, max=56),
              "lines": Field("list", required=False, max=200),
              "sms_to": Field("str", required=False, max=24)}, PURE),
            ("sv.open", self.op_sv_open,
             {"member": Field("str", min=1, max=64), "currency": ccy,
              "pin": Field("str", required=False, max=32)}, PURE),
            ("sv.topup", self.op_sv_topup,
             {"member": Field("str", min=1, max=64), "currency": ccy, "amount_minor": money,
              "ref": Field("str", min=1, max=64)}, PURE),
            ("sv.balance", self.op_sv_balance,
             {"member": Field("str", min=1, max=64), "currency": ccy}, PURE),
            ("stats", self.op_stats, {}, PURE),
        ], OP_ROLES)

    def op_hello(self, f) -> dict:
        import lanecore
        out = {"protocol": P.PROTOCOL_VERSION, "server": f"lanecore {lanecore.__version__}",
               "capabilities": sorted(self.ops), "auth": "hmac" if self.auth else "off",
               "receipt_key": self.signer.public_key_b64(),
               "channels": [ch.to_dict() for ch in self.router.channels]}
        if self.caller is not None:
            out["terminal"] = self.caller.to_dict()
        return out

    # ------------------------------------------------------------------------------
    # POS terminals: authentication, what each may see and do
    # ------------------------------------------------------------------------------
    def on_frames(self, frames: list[bytes], security=None) -> list[bytes] | None:
        """With ``[pos] auth = "hmac"``: a request is its frame plus an authentication
        frame (``gateway/payments/terminals.py``); ``hello`` alone may come without one."""
        if not self.auth:
            return super().on_frames(frames, security)
        if len(frames) >= 3 and frames[1] == b"":     # REQ: [identity, "", request, auth?]
            head, rest = frames[:2], frames[2:]
        else:                                         # DEALER: [identity, request, auth?]
            head, rest = frames[:1], frames[1:]
        if not 1 <= len(rest) <= 2:
            self.errors["BAD_FRAMES"] += 1
            return head + [P.pack(P.error(None, "BAD_FRAMES", "a request is its frame and "
                                                              "an authentication frame"))]
        return head + [self.handle_signed(rest[0], rest[1] if len(rest) == 2 else None,
                                          frames[0].hex())]

    def handle_signed(self, payload: bytes, auth: bytes | None, client: str) -> bytes:
        """The reply frame for an authenticated request; never raises."""
        try:
            req = P.unpack(payload)
        except P.ProtocolError as exc:
            self.errors[exc.code] += 1
            return P.pack(P.error(None, exc.code, exc.message))
        if auth is None and req.get("op") == "hello":
            return self._answer(req, client)
        try:
            terminal = self.terminals.authenticate(auth, payload, max_skew_s=self.max_skew_s)
        except AuthError as exc:
            self.errors[exc.code] += 1
            return P.pack(P.error(P.request_id(req), exc.code, exc.message))
        req.pop("client", None)           # the terminal is the client: its own replies only
        op = req.get("op")
        entry = self.ops.get(op) if isinstance(op, str) else None
        if entry is not None and "terminal" in entry[1] and entry[1]["terminal"].required:
            req.setdefault("terminal", terminal.id)   # a payment op: this terminal's
        self.caller = terminal
        try:
            return self._answer(req, f"pos:{terminal.id}", terminal.principal())
        finally:
            self.caller = None

    def _own(self, attempts: list[L.Charge]) -> list[L.Charge]:
        """An order's charges as the caller may see them: none when they are another
        terminal's (an admin terminal sees every terminal's)."""
        caller = self.caller
        if caller is None or caller.admin:
            return attempts
        return [] if any(c.terminal != caller.id for c in attempts) else attempts

    def _scope(self) -> str:
        """Whose order numbers the caller's are (``core/pay/ledger.py``, namespaces):
        its proven identity — ``pos:ID`` for a terminal's HMAC, ``key:NAME`` over
        CurveZMQ — or ``''`` for the development principal (one shared namespace)."""
        return "" if self.principal.dev else self.principal.id

    def _attempts(self, order_no: str) -> list[L.Charge]:
        """An order's charges as the caller sees them: its own namespace's (an admin,
        and the development principal, see every namespace's)."""
        if self.principal.has("admin"):
            return self.ledger.attempts(order_no)
        return self._own(self.ledger.attempts(order_no, scope=self._scope()))

    def _terminal_for(self, f) -> Terminal | None:
        """The registered terminal a payment request is for (its limits apply), or
        None; FORBIDDEN when an authenticated terminal names another."""
        if self.caller is not None:
            if f["terminal"] != self.caller.id:
                raise LanecoreError(f"terminal {self.caller.id} cannot pay for terminal "
                                    f"{f['terminal']}", code="FORBIDDEN")
            return self.caller
        terminal = self.terminals.get(f["terminal"])
        if terminal is not None and terminal.disabled_at is not None:
            raise LanecoreError(f"terminal {terminal.id} is disabled",
                                code="TERMINAL_DISABLED")
        return terminal

    def _used_today(self, terminal_id: str) -> int:
        return sum(amount for (_, who), (amount, _) in self._usage().terminal.items()
                   if who == terminal_id)

    def _check_terminal_limits(self, f) -> None:
        terminal = self._terminal_for(f)
        if terminal is not None:
            terminal.check_limits(f["amount_minor"], f["method"],
                                  self._used_today(terminal.id))

    def op_list(self, f) -> dict:
        """The caller's charges (of one UTC day when ``date`` is given): a terminal
        sees its own; an admin terminal, or any caller when authentication is off,
        those of ``terminal`` or of all."""
        who = f.get("terminal")
        if self.caller is not None and not self.caller.admin:
            if who not in (None, self.caller.id):
                raise LanecoreError("a terminal lists only its own charges", code="FORBIDDEN")
            who = self.caller.id
        since = until = None
        if "date" in f:
            from lanecore.core.pay import recon
            day = dt.datetime.strptime(recon.check_date(f["date"]), "%Y-%m-%d").replace(
                tzinfo=dt.timezone.utc).timestamp()
            since, until = day, day + 86_400
        rows = self.ledger.charges(terminal=who, since=since, until=until)
        return {"charges": [{"order_no": c.order_no, "merchant_ref": c.merchant_ref,
                             "attempt": c.attempt, "terminal": c.terminal,
                             "channel": c.channel, "method": c.method, "state": c.state,
                             "amount_minor": c.amount_minor, "currency": c.currency,
                             "reason": c.reason, "created_at": c.created_at,
                             "paid_at": c.paid_at} for c in rows[-1000:]],
                "truncated": len(rows) > 1000}

    # ------------------------------------------------------------------------------
    # Receipts
    # ------------------------------------------------------------------------------
    def _receipt_config(self, table) -> dict:
        unknown = set(table) - {"store_name", "store_id", "footer", "sms_sink",
                                "sms_per_order", "sms_per_terminal_hour"}
        if unknown:
            raise PaymentConfigError(f"{CONFIG_FILE} [receipt]: unknown {sorted(unknown)}")
        limits = {"sms_per_order": table.get("sms_per_order", SMS_PER_ORDER),
                  "sms_per_terminal_hour": table.get("sms_per_terminal_hour",
                                                     SMS_PER_TERMINAL_HOUR)}
        for name, v in limits.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1_000_000:
                raise PaymentConfigError(f"{CONFIG_FILE} [receipt] {name}: a count >= 0, "
                                         f"got {v!r}")
        return {"store_name": table.get("store_name",
                                        self.qr.get("merchant_name", "lanecore store")),
                "store_id": table.get("store_id", "store"),
                "footer": table.get("footer"),
                "sms_sink": table.get("sms_sink",
                                      f"file:{self.data_dir / 'sms-outbox.jsonl'}"),
                **limits}

    @property
    def signer(self):
        """The gateway's Ed25519 key (``DATA_DIR/keys/order_signing.key``, made on
        first use): it signs receipts."""
        if self._signer is None:
            from lanecore.core.store.orderqr import Signer
            self._signer = Signer.load_or_create(self.data_dir)
        return self._signer

    def op_receipt(self, f) -> dict:
        """The signed receipt of an order's payment: as data, text, ESC/POS bytes and
        SMS text; with ``sms_to``, the SMS queued once per order and number. Every
        line and amount comes from the ledger — the paid charge and the lines kept
        with it at charge time — never from this request (a ``lines`` field is
        ignored). The SMS goes only to the member's number on file, or to a number a
        till or POS gives, within the rate limits (:meth:`_queue_sms`)."""
        from lanecore.core.pay import receipt as R
        from lanecore.drivers.receipt_print import render_escpos
        attempts = self._attempts(f["order_no"])
        if not attempts:
            raise LanecoreError(f"no payment for order {f['order_no']}", code="UNKNOWN_ORDER")
        paid = [c for c in attempts if c.state == L.PAID]
        if not paid:
            raise LanecoreError(f"order {f['order_no']} has no paid charge", code="NOT_PAID")
        c = paid[-1]
        cash = self._cash_record(c) if self._is_cash(c) else None
        lines = self.ledger.lines(c.merchant_ref)      # never the request's
        try:
            payment = R.ReceiptPayment(
                c.channel, c.method, c.amount_minor, c.merchant_ref, c.provider_ref,
                tendered_minor=cash["tendered_minor"] if cash else None,
                change_minor=cash["change_minor"] if cash else None)
            refunds = tuple(R.ReceiptRefund(r.refund_ref, r.merchant_ref, r.amount_minor)
                            for r in self.ledger.refunds(merchant_ref=c.merchant_ref)
                            if r.state == L.PAID)
            rec = R.Receipt(
                store_name=self.receipt_cfg["store_name"],
                store_id=self.receipt_cfg["store_id"], terminal=c.terminal,
                order_no=c.order_no, issued_at=c.paid_at or c.updated_at,
                currency=c.currency, total_minor=c.amount_minor, payments=(payment,),
                lines=tuple(R.ReceiptLine(**ln) for ln in lines),
                refunds=refunds, footer=self.receipt_cfg["footer"])
        except TypeError:
            raise P.ProtocolError("BAD_FIELD", "lines are maps {name, qty, unit_minor, "
                                               "amount_minor}") from None
        signed = R.sign_receipt(rec, self.signer)
        sms = R.render_sms(rec, signed=signed)
        queued = None
        if f.get("sms_to"):
            queued = self._queue_sms(c, f["sms_to"], sms)
        encoding, segments = R.sms_segments(sms)
        return {"receipt": signed, "verify_code": R.verify_code(signed),
                "text": R.render_text(rec, signed=signed),
                "escpos": render_escpos(rec, signed), "sms": sms,
                "sms_encoding": encoding, "sms_segments": segments, "sms_queued": queued}

    def _number_on_file(self, charge: L.Charge) -> str | None:
        """The member's phone number the gateway holds for a charge: the member id of
        a stored-value payment, when that id is a phone number (E.164); else None."""
        from lanecore.gateway.payments.outbox import OutboxError, normalise_phone
        if self._kind(charge) != "stored_value" or not charge.payer:
            return None
        try:
            return normalise_phone(charge.payer)
        except OutboxError:
            return None

    def _queue_sms(self, charge: L.Charge, sms_to: str, text: str) -> str:
        """Queue the receipt SMS of ``charge`` for ``sms_to``; returns its outbox
        reference. SMS_NOT_ALLOWED: the number is not the member's on file and the
        caller is no till or POS (``SMS_ANY_NUMBER_ROLES``). SMS_RATE_LIMITED: the
        order has had ``sms_per_order`` numbers, or the terminal ``sms_per_terminal_hour``
        receipts in the last hour. Asking again for a number already queued is
        answered with that message (never a second one, never refused)."""
        import hashlib

        from lanecore.gateway.payments.outbox import normalise_phone
        phone = normalise_phone(sms_to)
        on_file = self._number_on_file(charge)
        if phone != on_file and not self.principal.has(*SMS_ANY_NUMBER_ROLES):
            raise LanecoreError(
                f"{self.principal.id} may text a receipt only to the member's number on "
                "file; another number is given at a till", code="SMS_NOT_ALLOWED",
                details={"roles": list(SMS_ANY_NUMBER_ROLES),
                         "number_on_file": on_file is not None})
        ref = f"receipt-{charge.merchant_ref}-{phone.lstrip('+')}"
        if len(ref) > 64:
            ref = "receipt-" + hashlib.blake2b(ref.encode(), digest_size=20).hexdigest()
        con = self.con
        known = con.execute("SELECT 1 FROM sms_receipts WHERE msg_ref = ?",
                            (ref,)).fetchone()
        if known or self.outbox.get(ref) is not None:
            self.outbox.enqueue(ref, phone, text)         # the same message again
            return ref
        now = self.clock()
        sender = self.caller.id if self.caller is not None else charge.terminal
        cfg = self.receipt_cfg
        (per_order,) = con.execute("SELECT COUNT(*) FROM sms_receipts WHERE scope = ? AND "
                                   "order_no = ?", (charge.scope, charge.order_no)).fetchone()
        if per_order >= cfg["sms_per_order"]:
            raise LanecoreError(f"order {charge.order_no}'s receipt was texted to "
                                f"{per_order} numbers already", code="SMS_RATE_LIMITED",
                                details={"limit": "sms_per_order",
                                         "most": cfg["sms_per_order"]})
        hour = con.execute("SELECT COUNT(*), MIN(at) FROM sms_receipts WHERE sender = ? AND "
                           "at > ?", (sender, now - 3600)).fetchone()
        if hour[0] >= cfg["sms_per_terminal_hour"]:
            raise LanecoreError(f"terminal {sender} texted {hour[0]} receipts in the last "
                                "hour", code="SMS_RATE_LIMITED",
                                details={"limit": "sms_per_terminal_hour",
                                         "most": cfg["sms_per_terminal_hour"],
                                         "retry_after_s": max(1, int(hour[1] + 3600 - now
                                                                     + 0.999))})
        con.execute("BEGIN IMMEDIATE")
        try:
            self.outbox.enqueue(ref, phone, text)
            con.execute("INSERT INTO sms_receipts (msg_ref, merchant_ref, scope, order_no, "
                        "sender, phone, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (ref, charge.merchant_ref, charge.scope, charge.order_no, sender,
                         phone, now))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return ref

    def op_sv_open(self, f) -> dict:
        """Open a member's stored-value account (again: unchanged)."""
        return {"account": self._sv(f["currency"]).open_account(
            f["member"], pin=f.get("pin")).to_dict()}

    def op_sv_topup(self, f) -> dict:
        """Money onto a member's account, once per ``ref`` (the till's slip). From an
        authenticated terminal, within its limits (TERMINAL_LIMIT): ``max_payment_minor``
        per top-up, ``max_day_minor`` over its charges and top-ups of the UTC day. A
        top-up already made (the same ``ref``) is answered without the limits."""
        sv = self._sv(f["currency"])
        ref = f"topup:{f['ref']}"
        terminal = self.caller
        if terminal is None or sv.find(ref) is not None:
            move = sv.topup(f["member"], f["amount_minor"], ref=ref)
            return {"move": move.to_dict(), "balance_minor": sv.balance(f["member"])}
        (topped,) = self.con.execute(
            "SELECT COALESCE(SUM(amount_minor), 0) FROM sv_topup_terminals WHERE "
            "terminal = ? AND at >= ?", (terminal.id, self._day_start())).fetchone()
        terminal.check_limits(f["amount_minor"], None,
                              self._used_today(terminal.id) + topped)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            move = sv.topup(f["member"], f["amount_minor"], ref=ref)
            con.execute("INSERT OR IGNORE INTO sv_topup_terminals (ref, terminal, "
                        "amount_minor, at) VALUES (?, ?, ?, ?)",
                        (ref, terminal.id, f["amount_minor"], self.clock()))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return {"move": move.to_dict(), "balance_minor": sv.balance(f["member"])}

    #: What of a stored-value account only an admin sees (the rest see the balance).
    _SV_PRIVATE = ("frozen", "has_pin", "pin_failures")

    def op_sv_balance(self, f) -> dict:
        account = self._sv(f["currency"]).account(f["member"]).to_dict()
        if not self.principal.has("admin"):
            for name in self._SV_PRIVATE:
                account.pop(name, None)
        return {"account": account}

    def op_stats(self, f) -> dict:
        states: dict[str, int] = {}
        for (state, n) in self.con.execute("SELECT state, COUNT(*) FROM charges GROUP BY state"):
            states[state] = n
        return {"uptime_s": round(time.monotonic() - self.started, 3),
                "requests": dict(self.counts), "errors": dict(self.errors),
                "replays": self.replays, "charges": states,
                "notify": None if self.notifier is None else dict(self.notifier.counts)}

    # ------------------------------------------------------------------------------
    def _maybe_crash(self, point: str) -> None:
        p = self._crash.get(point)
        if p and self._crash_rng.random() < p:
            log.warning("fault injection: SIGKILL %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _day_start(self) -> float:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp()

    def _usage(self) -> Usage:
        """Today's totals (paid and still open charges) per channel, payer and
        terminal: read from the ledger once a day, then kept up to date by every
        move (:meth:`_follow`), so routing costs the same on the day's last payment
        as on its first."""
        start = self._day_start()
        if self._usage_day != start:
            usage = Usage()
            for c in self.ledger.charges(since=start):
                if c.state in _COUNTED:
                    usage.record(c.channel, c.terminal, c.amount_minor, c.payer)
            self._usage_cache, self._usage_day = usage, start
        return self._usage_cache

    def _follow(self, before: L.Charge | None, after: L.Charge) -> None:
        """A ledger move, into today's totals."""
        if self._usage_day is None or after.created_at < self._usage_day:
            return
        was = before is not None and before.state in _COUNTED
        now = after.state in _COUNTED
        if was == now:
            return
        sign = 1 if now else -1
        for table, who in ((self._usage_cache.terminal, after.terminal),
                           (self._usage_cache.payer, after.payer)):
            if who is not None:
                amount, count = table.get((after.channel, who), (0, 0))
                table[(after.channel, who)] = (amount + sign * after.amount_minor,
                                               count + sign)

    def _request(self, f) -> PaymentRequest:
        return PaymentRequest(f["amount_minor"], f["currency"], f["method"], f["terminal"],
                              f.get("payer"), f.get("auth_code"))

    def op_quote(self, f) -> dict:
        if f["method"] == "auth_code" and "auth_code" not in f:     # as pay.charge
            raise P.ProtocolError("MISSING_FIELD", "an auth_code payment needs auth_code")
        try:
            self._check_terminal_limits(f)
            limit = None
        except LanecoreError as exc:
            if exc.code != "TERMINAL_LIMIT":
                raise
            limit = exc.message
        judged = self.router.explain(self._request(f), self._usage())
        return {"channels": [{"channel": ch.name, "kind": ch.kind,
                              "eligible": why is None and limit is None,
                              "reason": why or limit} for ch, why in judged],
                "terminal_limit": limit}

    @staticmethod
    def _pin_policy(ch, table) -> tuple[frozenset, int | None]:
        """A card channel's cardholder verification: ``pin_entries`` (entry modes
        that always need a PIN block) and ``cvm_limit_minor`` (above it a
        contactless payment needs one too); absent, the provider decides."""
        entries = table.get("pin_entries", [])
        limit = table.get("cvm_limit_minor")
        where = f"{CONFIG_FILE}: channels.{ch.name}"
        if (entries or limit is not None) and ch.kind != "card":
            raise PaymentConfigError(f"{where}: pin_entries and cvm_limit_minor are for "
                                     "card channels")
        if not isinstance(entries, list) or any(e not in ENTRY_MODES for e in entries):
            raise PaymentConfigError(f"{where}.pin_entries: a list of "
                                     f"{', '.join(ENTRY_MODES)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise PaymentConfigError(f"{where}.cvm_limit_minor: minor units, >= 0")
        return frozenset(entries), limit

    def _check_pin(self, channel, req: PaymentRequest, means: dict) -> None:
        """PIN_REQUIRED before anything is written or sent: the terminal asks the
        shopper for the PIN and sends the payment again with ``card.pin_block``."""
        card = means.get("card")
        if card is None or card.pin_block is not None:
            return
        entries, limit = self.pin_policy.get(channel.name, (frozenset(), None))
        if card.entry in entries or (card.entry == "nfc" and limit is not None
                                     and req.amount_minor > limit):
            why = (f"a {card.entry} payment" if card.entry in entries else
                   f"a contactless payment over {limit}")
            raise LanecoreError(f"{why} on {channel.name} needs the cardholder's PIN "
                                "(card.pin_block)", code="PIN_REQUIRED")

    # ------------------------------------------------------------------------------
    def op_charge(self, f) -> dict:
        """Take the payment for ``order_no``, once. An order already paid is answered
        with that payment; one with an open charge is asked about, never charged
        again; otherwise a new attempt goes to the first eligible channel, and to the
        next on a decline that may fall back."""
        order_no = f["order_no"]
        if self.caller is not None:
            self._terminal_for(f)        # FORBIDDEN: paying in another terminal's name
        scope = self._scope()
        # this caller's order number: another terminal's same number is another order
        attempts = self.ledger.attempts(order_no, scope=scope)
        paid = [c for c in attempts if c.state == L.PAID]
        if paid:
            self._same_terms(order_no, paid[-1], f)
            return self._reply(order_no, paid[-1])
        open_ = [c for c in attempts if not c.final]
        if open_:
            self._same_terms(order_no, open_[-1], f)
            charge = self.drive(open_[-1], force=True)
            return self._reply(order_no, charge)
        self._check_terminal_limits(f)
        req = self._request(f)
        means = self._means(f)
        lines = self._charge_lines(f)
        usage = self._usage()
        attempt = self.ledger.last_attempt(order_no)   # over every namespace
        channels = self.router.route_request(req, usage)
        return self._charge_from(order_no, attempt + 1, req, channels[0], means,
                                 scope=scope, lines=lines, usage=usage, tried=[])

    def _charge_from(self, order_no, attempt, req, channel, means, *, scope, lines, usage,
                     tried: list[str]) -> dict:
        """Attempt ``attempt`` on ``channel``, and the next attempts on the channels a
        decline may fall back to; the reply of the last."""
        try:
            while True:
                charge = self._attempt(order_no, attempt, req, channel, means,
                                       scope=scope, lines=lines)
                if charge.state != L.FAILED or not charge.reason:
                    return self._reply(order_no, charge)
                decline = Decline(req, usage, channel.name, charge.reason, tuple(tried))
                tried.append(channel.name)
                try:
                    nxt = self.router.next_after(decline)
                except NoEligibleChannel:
                    nxt = None
                if nxt is None:
                    return self._reply(order_no, charge)
                if self.con.in_transaction:   # the decline, before the next attempt
                    self.con.execute("COMMIT")
                channel = nxt
                attempt += 1
        except BaseException:
            if self.con.in_transaction:       # the outcome is undone: recovery asks again
                self.con.execute("ROLLBACK")
                self._usage_day = None
            raise

    @staticmethod
    def _same_terms(order_no: str, charge: L.Charge, f) -> None:
        """ORDER_MISMATCH unless a request for an order that has a paid (or open)
        charge asks for that very payment: amount, currency, method and terminal. A
        cheap payment must never answer for a dearer one."""
        differs = {name: {"charged": getattr(charge, name), "asked": f[name]}
                   for name in ("amount_minor", "currency", "method", "terminal")
                   if getattr(charge, name) != f[name]}
        if differs:
            state = "paid" if charge.state == L.PAID else "pending"
            raise LanecoreError(
                f"order {order_no} already has a {state} charge that differs from this "
                f"request in {', '.join(differs)}; nothing was charged (a new payment "
                "needs a new order number)", code="ORDER_MISMATCH",
                details={"order_no": order_no, "status": state, "differs": differs})

    @staticmethod
    def _charge_lines(f) -> list[dict] | None:
        """``lines`` of a charge: what was sold, each ``{name, qty, unit_minor,
        amount_minor}`` (``core/pay/receipt.py``'s line), adding up to the amount.
        Kept with the charge; the receipt prints them (BAD_FIELD otherwise)."""
        lines = f.get("lines")
        if not lines:
            return None
        from lanecore.core.pay import receipt as R
        try:
            out = [R.ReceiptLine(**ln).to_dict() for ln in lines]
        except (TypeError, R.ReceiptError) as exc:
            why = exc.message if isinstance(exc, R.ReceiptError) else "unknown fields"
            raise P.ProtocolError("BAD_FIELD", f"lines are maps {{name, qty, unit_minor, "
                                               f"amount_minor}}: {why}") from None
        total = sum(ln["amount_minor"] for ln in out)
        if total != f["amount_minor"]:
            raise P.ProtocolError("BAD_FIELD", f"the lines add up to {total}, the charge "
                                               f"is {f['amount_minor']}")
        return out

    def _means(self, f) -> dict:
        method = f["method"]
        if method == "auth_code":
            if "auth_code" not in f:
                raise P.ProtocolError("MISSING_FIELD", "an auth_code payment needs auth_code")
            coupons = f.get("coupons") or []
            for c in coupons:
                if not (isinstance(c, dict) and set(c) == {"coupon_id", "gtin",
                                                           "amount_minor"}
                        and isinstance(c["coupon_id"], str) and 0 < len(c["coupon_id"]) <= 40
                        and isinstance(c["gtin"], str) and len(c["gtin"]) == 14
                        and c["gtin"].isdigit() and isinstance(c["amount_minor"], int)
                        and not isinstance(c["amount_minor"], bool)
                        and 0 < c["amount_minor"] <= 10 ** 12):
                    raise P.ProtocolError("BAD_FIELD", "coupons are maps {coupon_id (1-40), "
                                                       "gtin (14 digits), amount_minor}")
            out = {"auth_code": f["auth_code"]}
            if coupons:
                out["coupons"] = coupons
            return out
        if method == "card":
            c = f.get("card")
            if c is None:
                raise P.ProtocolError("MISSING_FIELD", "a card payment needs card")
            parts = {k: c.get(k) for k in ("entry", "pan", "token", "pin_block")}
            wrong = [k for k, v in parts.items() if v is not None and not isinstance(v, str)]
            if wrong:
                raise P.ProtocolError("BAD_FIELD", f"card.{wrong[0]} must be a str")
            try:
                return {"card": Card(**parts)}
            except ProviderError as exc:
                raise P.ProtocolError("BAD_FIELD", f"card: {exc.message}") from None
        if method == "cash":
            cash = f.get("cash")
            tendered = None if cash is None else cash.get("tendered")
            if not isinstance(tendered, dict):
                raise P.ProtocolError("MISSING_FIELD", "a cash payment needs cash.tendered "
                                                       "({denomination: count})")
            try:
                return {"tendered": {int(k): v for k, v in tendered.items()}}
            except (TypeError, ValueError):
                raise P.ProtocolError("BAD_FIELD", "cash.tendered keys are denominations "
                                                   "in minor units") from None
        if method == "stored_value":
            if "payer" not in f:
                raise P.ProtocolError("MISSING_FIELD", "a stored_value payment needs payer "
                                                       "(the member id)")
            pin = f.get("sv_pin")
            if pin is not None and not isinstance(pin, str):
                raise P.ProtocolError("BAD_FIELD", "sv_pin must be a str")
            return {"member": f["payer"], "pin": pin}
        return {}

    def _attempt(self, order_no, attempt, req, channel, means, *, scope: str = "",
                 lines: list | None = None) -> L.Charge:
        """One attempt on one channel. Two flushes to disk for a provider charge: the
        charge written and marked ``sent`` in one transaction before the provider is
        called (write-ahead), and its outcome, left open here, committed with the
        record of the reply (``OpServer._recorded``). This is the one-at-a-time path
        (``handle()``, cash, stored value); served from the socket, wallet and card
        charges share those flushes (:meth:`_turn`)."""
        if channel.kind == "cash":
            charge, _ = self.ledger.create(order_no, attempt, req.amount_minor,
                                           req.currency, req.method, channel.name,
                                           req.terminal, payer=req.payer,
                                           scope=scope, lines=lines)
            self._maybe_crash("after_ledger")
            return self._cash(charge, means["tendered"])
        if channel.kind == "stored_value":
            charge, _ = self.ledger.create(order_no, attempt, req.amount_minor,
                                           req.currency, req.method, channel.name,
                                           req.terminal, payer=req.payer,
                                           scope=scope, lines=lines)
            if charge.currency in self.sv_db:
                return self._stored_value_chain(charge, means["member"], means.get("pin"))
            self._maybe_crash("after_ledger")
            return self._stored_value(charge, means["member"], means.get("pin"))
        conn = self.connectors[channel.name]
        self._check_pin(channel, req, means)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            charge, _ = self.ledger.create(order_no, attempt, req.amount_minor,
                                           req.currency, req.method, channel.name,
                                           req.terminal, payer=req.payer,
                                           scope=scope, lines=lines)
            ref = charge.merchant_ref
            self.ledger.move(ref, L.SENT)      # write-ahead: from here it may be charged
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
                self._usage_day = None
            raise
        self._maybe_crash("after_ledger")
        res = conn.charge(ref, req.amount_minor, req.currency, terminal=req.terminal,
                          **{k: v for k, v in means.items()
                             if k in ("auth_code", "card", "coupons")})
        self._maybe_crash("after_provider")
        con.execute("BEGIN IMMEDIATE")         # committed with the reply's record
        return self._apply(self.ledger.get(ref), res)

    def _cash(self, charge: L.Charge, tendered: dict) -> L.Charge:
        """Cash: the drawer and the ledger move in one transaction."""
        ref = charge.merchant_ref
        drawer = Drawer(self.con, drawer_id=charge.terminal, currency=charge.currency)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            self.ledger.move(ref, L.SENT)
            try:
                change = drawer.pay_cash(charge.amount_minor, tendered, ref=ref)
            except LanecoreError as exc:
                self.ledger.move(ref, L.FAILED, reason=exc.code, detail=exc.message)
                con.execute("COMMIT")
                raise
            self.ledger.move(ref, L.PAID, detail=f"change {change.change_minor}")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
                self._usage_day = None      # the totals followed moves now undone
            raise
        return self.ledger.get(ref)

    def _stored_value(self, charge: L.Charge, member: str, pin: str | None) -> L.Charge:
        """Member stored value: the account and the ledger move in one transaction. A
        refusal (no funds, frozen, wrong PIN) is committed as a failed charge — with
        the account's count of wrong PINs — and given to routing like a provider's
        decline; an unknown member or bad value is an error."""
        ref = charge.merchant_ref
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            self.ledger.move(ref, L.SENT)
            try:
                # wrong PINs count per terminal too (THROTTLED: core/pay/throttle.py)
                who = self.caller.id if self.caller is not None else charge.terminal
                self._sv(charge.currency).debit(member, charge.amount_minor, ref=ref, pin=pin,
                                                source=f"terminal:{who}")
            except StoredValueError as exc:
                self.ledger.move(ref, L.FAILED, reason=exc.code, detail=exc.message)
                con.execute("COMMIT")
                if exc.code in ("BALANCE_NOT_ENOUGH", "ACCOUNT_FROZEN", "WRONG_PASSWORD"):
                    return self.ledger.get(ref)
                raise
            self.ledger.move(ref, L.PAID, provider_ref=f"sv:{ref}")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
                self._usage_day = None
            raise
        return self.ledger.get(ref)

    def _stored_value_chain(self, charge: L.Charge, member: str, pin: str | None
                            ) -> L.Charge:
        """Member stored value kept in the chain's PostgreSQL database: the debit
        cannot share the ledger's transaction, so it is done as a provider charge is
        (``docs/pay/payments.md`` "Stored value in the chain database"): the ledger's
        ``sent`` committed first; then the debit, keyed by the merchant reference
        (made once, whoever asks again); then ``paid`` — or ``failed`` with the
        refusal's code, as on the ledger's own database. The chain database out of
        reach before anything was sent: ``failed`` with ``DB_UNAVAILABLE``, a
        channel's outage for routing. Lost during the debit: the debit is settled
        (:meth:`StoredValue.settle`) — now if the database answers, else by recovery."""
        ref = charge.merchant_ref
        try:
            sv = self._chain_sv(charge.currency)
        except StoredValueError as exc:           # nothing sent: an outage of the channel
            return self.ledger.move(ref, L.FAILED, reason=exc.code, detail=exc.message)
        self.ledger.move(ref, L.SENT)             # write-ahead: from here it may be debited
        self._maybe_crash("after_ledger")
        who = self.caller.id if self.caller is not None else charge.terminal
        try:
            sv.debit(member, charge.amount_minor, ref=ref, pin=pin,
                     source=f"terminal:{who}", origin=self.sv_origin)
        except StoredValueError as exc:
            if exc.code in ("DB_ERROR", "DB_BUSY"):
                # it may have been committed: never guess, ask (and close the ref)
                lost = not self._chain_check(charge.currency)
                return self._settle_chain_sv(
                    charge, reason="DB_UNAVAILABLE" if lost else exc.code,
                    detail=exc.message)
            failed = self.ledger.move(ref, L.FAILED, reason=exc.code, detail=exc.message)
            if exc.code in _SV_DECLINES:
                return failed
            raise
        self._maybe_crash("after_provider")
        return self.ledger.move(ref, L.PAID, provider_ref=f"sv:{ref}")

    def _settle_chain_sv(self, charge: L.Charge, *, reason: str = "NOT_SENT",
                         detail: str | None = None) -> L.Charge:
        """A stored-value charge ``sent`` with its account in the chain database, its
        debit's fate not known here (a crash, a broken connection): the chain
        database's answer decides — the debit is there: ``paid``; it is not: the
        reference is voided in the same transaction (so a debit still on its way can
        never land) and the charge ``failed``. Never debited again here: the PIN is
        not kept, and the shopper, who got no answer, may have paid another way.
        The database out of reach: the charge stays ``sent`` for the next pass."""
        ref = charge.merchant_ref
        try:
            move = self._chain_sv(charge.currency).settle(ref, origin=self.sv_origin)
        except StoredValueError as exc:
            if exc.code in ("DB_UNAVAILABLE", "DB_ERROR", "DB_BUSY"):
                self._chain_check(charge.currency)
                log.warning("stored value %s: the chain database did not answer (%s); "
                            "settled on the next pass", ref, exc.code)
                return charge
            raise
        if move is not None:
            return self.ledger.move(ref, L.PAID, provider_ref=f"sv:{ref}")
        return self.ledger.move(ref, L.FAILED, reason=reason, detail=detail)

    def _chain_sv(self, currency: str) -> StoredValue:
        """The member accounts in the chain database, connected (again) if need be;
        ``DB_UNAVAILABLE`` (a :class:`StoredValueError`) when it cannot be reached.
        Never the ledger's own file instead."""
        sv = self._svs.get(currency)
        if sv is not None and self._chain_check(currency):
            return sv
        from lanecore.gateway.db.pg import DbUnavailable, connect
        try:
            con = connect(self.sv_db[currency], lock_key=CHAIN_LOCK, connect_timeout_s=2.0)
        except DbUnavailable as exc:
            raise StoredValueError(exc.message, code="DB_UNAVAILABLE",
                                   details=exc.details) from None
        except sqlite3.Error as exc:
            raise StoredValueError(f"the chain database: {exc}",
                                   code="DB_UNAVAILABLE") from None
        try:
            sv = StoredValue(con, currency, clock=self.clock)
        except StoredValueError as exc:
            con.close()
            raise StoredValueError(f"the chain database: {exc.message}",
                                   code="DB_UNAVAILABLE") from None
        self._svs[currency] = sv
        return sv

    def _chain_check(self, currency: str) -> bool:
        """True when the chain connection of ``currency`` still answers; a broken one
        is closed and forgotten (the next use connects again)."""
        sv = self._svs.get(currency)
        if sv is None:
            return False
        try:
            sv.con.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            self._svs.pop(currency, None)
            try:
                sv.con.close()
            except Exception:    # already broken: nothing more to close
                pass
            return False

    def _sv(self, currency: str) -> StoredValue:
        if currency in self.sv_db:
            return self._chain_sv(currency)
        sv = self._svs.get(currency)
        if sv is None:
            sv = self._svs[currency] = StoredValue(self.con, currency, clock=self.clock)
        return sv

    def _kind(self, charge: L.Charge) -> str | None:
        ch = self.router.by_name.get(charge.channel)
        return None if ch is None else ch.kind

    def _is_cash(self, charge: L.Charge) -> bool:
        ch = self.router.by_name.get(charge.channel)
        return ch is not None and ch.kind == "cash"

    def _cash_record(self, charge: L.Charge) -> dict | None:
        """The drawer's record of a cash charge (its change), or None."""
        Drawer(self.con, drawer_id=charge.terminal, currency=charge.currency)  # its tables
        row = self.con.execute("SELECT result FROM drawer_moves WHERE drawer_id = ? AND "
                               "ref = ?", (charge.terminal, charge.merchant_ref)).fetchone()
        return None if row is None else json.loads(row[0])

    def _apply(self, charge: L.Charge, res) -> L.Charge:
        """A provider's answer into the ledger."""
        ref = charge.merchant_ref
        if res.status == "paid":
            if charge.state == L.SENT:
                return self.ledger.move(ref, L.PAID, provider_ref=res.provider_ref)
            if charge.state == L.UNKNOWN:
                self.ledger.move(ref, L.QUERIED)
            return self.ledger.move(ref, L.PAID, provider_ref=res.provider_ref)
        if res.status == "failed":
            return self.ledger.move(ref, L.FAILED, reason=res.decline_code or "DECLINED",
                                    detail=res.message or None)
        if res.status == "reversed":
            if charge.state == L.SENT:
                self.ledger.move(ref, L.UNKNOWN)
            if charge.state in (L.SENT, L.UNKNOWN):
                self.ledger.move(ref, L.QUERIED)
            return self.ledger.move(ref, L.REVERSED, reason="REVERSED")
        # unknown: "user paying", a timeout, a system error
        if charge.state == L.SENT:
            return self.ledger.move(ref, L.UNKNOWN, reason=res.decline_code or "UNKNOWN")
        return charge

    def _reply(self, order_no: str, charge: L.Charge) -> dict:
        out = self._reply_map(order_no, charge)
        self._maybe_crash("before_reply")
        return out

    def _reply_map(self, order_no: str, charge: L.Charge) -> dict:
        status = {L.PAID: "paid", L.FAILED: "failed", L.REVERSED: "reversed"}.get(
            charge.state, "pending")
        out = {"order_no": order_no, "status": status, "merchant_ref": charge.merchant_ref,
               "attempt": charge.attempt, "channel": charge.channel,
               "amount_minor": charge.amount_minor, "currency": charge.currency,
               "provider_ref": charge.provider_ref,
               "decline_code": charge.reason if status == "failed" else None,
               "change": None, "_final": status != "pending"}
        if status == "paid" and self._is_cash(charge):
            out["change"] = self._cash_record(charge)
        return out

    # ------------------------------------------------------------------------------
    def drive(self, charge: L.Charge, *, force: bool = False) -> L.Charge:
        """One step towards a final state for an open charge (never a new charge)."""
        now = self.clock()
        last = self._last_query.get(charge.merchant_ref)
        step = next_step(charge, now, self.policy, last_query_at=None if force else last)
        ref = charge.merchant_ref
        if charge.method == "qr":
            presented = self._presented(ref)
            if presented is not None:         # a presented QR: its own expiry (below)
                return self._drive_present(charge, presented, force=force)
        if step.action == "fail":
            return self.ledger.move(ref, L.FAILED, reason="NOT_SENT")
        if step.action == "wait" or step.at > now:
            return charge
        if self._is_cash(charge):
            return self._settle_cash(charge)
        if self._kind(charge) == "stored_value" and charge.currency in self.sv_db:
            return self._settle_chain_sv(charge)
        if self._kind(charge) == "stored_value":
            taken = self._sv(charge.currency).find(ref) is not None
            return self.ledger.move(ref, L.PAID if taken else L.FAILED,
                                    provider_ref=f"sv:{ref}" if taken else None,
                                    reason=None if taken else "NOT_SENT")
        conn = self.connectors.get(charge.channel)
        if conn is None:
            return charge
        if step.action == "query":
            self._last_query[ref] = now
            res = conn.query(ref)
            if res.status == "not_found":
                # it never reached the provider: close the trade so it never can
                closed = conn.reverse(ref)
                if closed.status in ("reversed", "not_found"):
                    return self.ledger.move(ref, L.FAILED, reason="NOT_SENT")
                return charge
            if res.status == "unknown":
                if charge.state == L.SENT:
                    charge = self.ledger.move(ref, L.UNKNOWN, reason=res.decline_code)
                return self.ledger.move(ref, L.QUERIED)
            return self._apply(charge, res)
        # reverse: still unknown after the cap
        self.ledger.note_reversal_attempt(ref)
        res = conn.reverse(ref)
        if res.status in ("reversed", "not_found"):
            if charge.state == L.SENT:
                charge = self.ledger.move(ref, L.UNKNOWN)
            if charge.state == L.UNKNOWN:
                self.ledger.move(ref, L.QUERIED)
            return self.ledger.move(ref, L.REVERSED, reason="GAVE_UP")
        return charge

    def _settle_cash(self, charge: L.Charge) -> L.Charge:
        """A cash charge left ``sent`` by a crash: the drawer's record says whether
        it was taken (its move and the ledger's commit together, so this is rare)."""
        taken = self._cash_record(charge) is not None
        return self.ledger.move(charge.merchant_ref, L.PAID if taken else L.FAILED,
                                reason=None if taken else "NOT_SENT")

    def recover(self) -> None:
        """At start-up: one step for every open charge (those that need the provider
        again are picked up by :meth:`on_idle`)."""
        for charge in self.ledger.open_charges():
            try:
                self.drive(charge, force=True)
            except Exception:   # one bad charge must not keep the gateway down
                log.exception("recovery of %s failed", charge.merchant_ref)
        if self.sv_db:
            self._chain_refunds()

    def on_idle(self) -> None:
        try:
            self.outbox.deliver_pending()
        except Exception:
            log.exception("the SMS outbox failed")
        for charge in self.ledger.open_charges():
            if charge.merchant_ref in self._refs:
                continue                     # in flight: its answer is on its way
            try:
                self.drive(charge)
            except Exception:
                log.exception("driving %s failed", charge.merchant_ref)
        now = time.monotonic()
        for refund in self.ledger.refunds(open_only=True):
            # an unknown refund is sent again (same reference) every poll interval
            if now - self._last_refund_try.get(refund.refund_ref, 0.0) < \
                    self.policy.poll_every_s:
                continue
            self._last_refund_try[refund.refund_ref] = now
            conn = self.connectors.get(refund.channel)
            if conn is None:
                ch = self.router.by_name.get(refund.channel)
                if ch is not None and ch.kind == "stored_value" and \
                        refund.currency in self.sv_db:
                    try:
                        self._refund_chain_sv(refund, self.ledger.get(refund.merchant_ref))
                    except Exception:
                        log.exception("refund %s failed", refund.refund_ref)
                continue
            try:
                self._send_refund(refund, conn)
            except Exception:
                log.exception("refund %s failed", refund.refund_ref)

    # ------------------------------------------------------------------------------
    # Group commit: the charges in flight, handled together (module notes)
    # ------------------------------------------------------------------------------
    def _recorded(self, key, op, rid, fn, schema, req):
        """Served from the socket (:meth:`on_batch`), a ``pay.charge`` that has no
        recorded reply is checked and queued for the next turn (:meth:`_turn`);
        everything else runs now, as in :class:`OpServer`."""
        if not self._grouping or op != "pay.charge":
            return super()._recorded(key, op, rid, fn, schema, req)
        digest = request_digest(op, req)
        recorded = self._recorded_reply(key, op, rid, digest)
        if recorded is not None:
            return recorded
        job = _Job(key, op, rid, digest, req, P.check(req, schema), self.principal,
                   self.caller)
        self._new.append(job)
        return job

    def on_batch(self, batch, security=None):
        """As :meth:`OpServer.on_batch`, but the charges it queues are answered by
        :meth:`on_io` once their outcome is committed."""
        out = []
        self._grouping = True
        try:
            for frames in batch:
                reply = self.on_frames(frames, security)
                if reply is None:
                    continue
                if isinstance(reply[-1], _Job):
                    reply[-1].head = reply[:-1]
                else:
                    out.append(reply)
        finally:
            self._grouping = False
        return out

    def io_sockets(self):
        if self._io is None:
            self._io = tuple(c.async_socket() for c in self.connectors.values())
        return self._io + self._notify_fds()

    def io_ready(self) -> bool:
        return bool(self._new or self._ready or self._arrived)

    def on_io(self, send) -> None:
        """Take the providers' answers (and the requests past their deadline); when
        there is anything to do, one turn."""
        if self.notifier is not None:
            self._take_notifications()       # the wallets' notifications (dynamic QR)
        if self._io is not None:
            self._collect()
        if self._new or self._ready or self._arrived:
            self._turn(send)

    def _collect(self) -> None:
        flight, arrived = self._flight, self._arrived
        for conn in self.connectors.values():
            for reply in conn.answers():
                rid = reply["id"]
                hit = flight.pop(rid, None) if isinstance(rid, str) else None
                if hit is not None:          # else: a late answer, or none of ours
                    arrived.append((hit[0], reply))
        if flight:
            now = time.monotonic()
            for rid, (job, deadline) in list(flight.items()):
                if now >= deadline:
                    del flight[rid]
                    arrived.append((job, None))     # unknown (TIMEOUT): queried later

    def _turn(self, send) -> None:
        """One group: every answer that arrived and every new charge, written in one
        transaction; then the provider requests, then the replies, then the charges
        that run one at a time (an open charge to ask about, cash, stored value)."""
        arrived, self._arrived = self._arrived, []
        jobs, self._ready, self._new = self._ready + self._new, [], []
        replies: list = []
        posts: list = []
        later: list[_Job] = []
        if arrived:
            self._maybe_crash("after_provider")
        con = self.con
        try:
            con.execute("BEGIN IMMEDIATE")
            for job, reply in arrived:
                self._settle(job, reply, replies, posts, later)
            for job in jobs:
                self._admit(job, replies, posts, later)
            self._maybe_crash("in_group")
            con.execute("COMMIT")
            stats = self.group_stats
            stats["commits"] += 1
            stats["intents"] += len(posts)
            stats["outcomes"] += len(arrived)
        except Exception as exc:
            # nothing of this turn happened: no request goes out, every request of
            # the turn is answered with the failure (charges answered by a provider
            # stay `sent`: on_idle asks about them)
            if con.in_transaction:
                con.execute("ROLLBACK")
            self._usage_day = None
            log.exception("a group of %d charges failed", len(arrived) + len(jobs))
            replies = []
            for job in [j for j, _ in arrived] + jobs:
                self._forget(job)
                replies.append(job.head + [self.failure_reply(
                    exc, job.op, job.rid, job.key, RECORDED, job.req)])
            posts, later = [], []
        finally:
            self.caller = None
        if posts:
            self._maybe_crash("after_ledger")
            now = time.monotonic()
            for i, (conn, rid, frame, job) in enumerate(posts):
                if i == 1:
                    self._maybe_crash("during_sends")
                if conn.post(frame):
                    self._flight[rid] = (job, now + conn.timeout_s)
                else:
                    self._arrived.append((job, None))   # not even queued: unknown
        if replies:
            self._maybe_crash("before_reply")
            send(replies[:1])
            if len(replies) > 1:
                self._maybe_crash("during_replies")
                send(replies[1:])
        for job in later:
            send([self._one_at_a_time(job)])

    def _admit(self, job: _Job, replies: list, posts: list, later: list) -> None:
        """A new charge, inside the group's transaction: answered now (paid already,
        refused), queued behind its order's charge in flight, left to run alone, or
        its first attempt's intent written and its provider request prepared."""
        self.principal, self.caller = job.principal, job.caller
        f = job.fields
        con = self.con
        try:
            if job.readmit:               # it waited: its id may have a reply by now
                recorded = self._recorded_reply(job.key, job.op, job.rid, job.digest)
                if recorded is not None:
                    replies.append(job.head + [recorded])
                    return
            order_no = job.order_no
            busy = self._orders.get(order_no)
            if busy is not None:          # never two charges of one order at once
                busy.waiters.append(job)
                return
            if self.caller is not None:
                self._terminal_for(f)     # FORBIDDEN: paying in another terminal's name
            scope = self._scope()
            every = self.ledger.order(order_no)           # every namespace's attempts
            attempts = [c for c in every if c.scope == scope]
            paid = [c for c in attempts if c.state == L.PAID]
            if paid:
                self._same_terms(order_no, paid[-1], f)
                self._answer_job(job, paid[-1], replies)
                return
            if any(not c.final for c in attempts):
                self._orders[order_no] = job      # asked about, alone, after the commit
                later.append(job)
                return
            self._check_terminal_limits(f)
            req = self._request(f)
            means = self._means(f)
            lines = self._charge_lines(f)
            usage = self._usage()
            attempt = max((c.attempt for c in every), default=0) + 1
            channel = self.router.route_request(req, usage)[0]
            if channel.kind in LOCAL_KINDS:
                self._orders[order_no] = job      # cash, stored value: alone, after
                later.append(job)
                return
            job.scope, job.request, job.means, job.lines, job.usage = (
                scope, req, means, lines, usage)
        except Exception as exc:          # refused before anything was written
            replies.append(job.head + [self.failure_reply(exc, job.op, job.rid, job.key,
                                                          RECORDED, job.req)])
            return
        con.execute("SAVEPOINT charge")
        try:
            self._post_attempt(job, attempt, channel, posts)
            con.execute("RELEASE charge")
        except Exception as exc:
            con.execute("ROLLBACK TO charge")
            con.execute("RELEASE charge")
            self._usage_day = None        # the totals may have followed a move undone
            self._forget(job)
            replies.append(job.head + [self.failure_reply(exc, job.op, job.rid, job.key,
                                                          RECORDED, job.req)])

    def _post_attempt(self, job: _Job, attempt: int, channel, posts: list) -> None:
        """Attempt ``attempt`` of the job's order on a provider channel: its request
        prepared (checked), then the charge written and marked ``sent`` in the
        group's transaction; it goes out once that commits (write-ahead)."""
        conn = self.connectors[channel.name]
        req, means = job.request, job.means
        self._check_pin(channel, req, means)
        ref = L.merchant_ref(job.order_no, attempt)
        rid, frame = conn.prepare_charge(
            ref, req.amount_minor, req.currency, terminal=req.terminal,
            **{k: v for k, v in means.items() if k in ("auth_code", "card", "coupons")})
        self.ledger.create(job.order_no, attempt, req.amount_minor, req.currency,
                           req.method, channel.name, req.terminal, payer=req.payer,
                           scope=job.scope, lines=job.lines, sent=True)
        job.attempt, job.channel, job.ref, job.conn = attempt, channel, ref, conn
        self._orders[job.order_no] = job
        self._refs.add(ref)
        posts.append((conn, rid, frame, job))

    def _settle(self, job: _Job, reply: dict | None, replies: list, posts: list,
                later: list) -> None:
        """A provider's answer (None: none in time), inside the group's transaction:
        the outcome written and the reply made, or after a decline that may fall
        back, the next attempt's intent written."""
        self.principal, self.caller = job.principal, job.caller
        con = self.con
        con.execute("SAVEPOINT charge")
        try:
            res = job.conn.result("charge", job.ref, reply)
            self._refs.discard(job.ref)
            charge = self._apply(self.ledger.get(job.ref), res)
            if charge.state == L.FAILED and charge.reason:
                job.usage = self._usage()       # today's totals as they are now
                decline = Decline(job.request, job.usage, job.channel.name, charge.reason,
                                  tuple(job.tried))
                job.tried.append(job.channel.name)
                try:
                    nxt = self.router.next_after(decline)
                except NoEligibleChannel:
                    nxt = None
                if nxt is not None and nxt.kind in LOCAL_KINDS:
                    job.next = (job.attempt + 1, nxt)   # alone, after the commit
                    later.append(job)
                    con.execute("RELEASE charge")
                    return
                if nxt is not None:
                    # the decline stays written even if the next attempt is refused
                    # (PIN_REQUIRED on a card channel, …), as one at a time
                    con.execute("SAVEPOINT next")
                    try:
                        self._post_attempt(job, job.attempt + 1, nxt, posts)
                    except Exception as exc:
                        con.execute("ROLLBACK TO next")
                        con.execute("RELEASE next")
                        con.execute("RELEASE charge")
                        self._usage_day = None
                        self._done(job)
                        replies.append(job.head + [self.failure_reply(
                            exc, job.op, job.rid, job.key, RECORDED, job.req)])
                        return
                    con.execute("RELEASE next")
                    con.execute("RELEASE charge")
                    return
            self._answer_job(job, charge, replies)
            con.execute("RELEASE charge")
            self._done(job)
        except Exception as exc:
            # the answer is not written (a provider's ok: false, a bad step): the
            # charge stays `sent` and on_idle asks the provider about it
            con.execute("ROLLBACK TO charge")
            con.execute("RELEASE charge")
            self._usage_day = None
            self._done(job)
            replies.append(job.head + [self.failure_reply(exc, job.op, job.rid, job.key,
                                                          RECORDED, job.req)])

    def _answer_job(self, job: _Job, charge: L.Charge, replies: list) -> None:
        """The job's reply, recorded in the group's transaction when final."""
        out = self._reply_map(job.order_no, charge)
        final = out.pop("_final")
        frame = P.pack(P.ok(job.rid, **out))
        if final:
            self.con.execute("INSERT OR IGNORE INTO service_requests (client, id, op, "
                             "reply, at, digest) VALUES (?, ?, ?, ?, ?, ?)",
                             (*job.key, job.op, frame, time.time(), job.digest))
        replies.append(job.head + [frame])

    def _one_at_a_time(self, job: _Job) -> list:
        """After the group's commit: a charge that runs alone, in its own
        transactions (an order with an open charge, cash, stored value, or a fall-back
        to one of those), as :meth:`OpServer._recorded` runs it."""
        self.principal, self.caller = job.principal, job.caller
        try:
            if job.next is None:
                fn = self.op_charge
            else:
                attempt, channel = job.next

                def fn(f, job=job, attempt=attempt, channel=channel):
                    return self._charge_from(job.order_no, attempt, job.request, channel,
                                             job.means, scope=job.scope, lines=job.lines,
                                             usage=job.usage, tried=job.tried)
            return job.head + [OpServer._recorded(self, job.key, job.op, job.rid, fn,
                                                  self.ops[job.op][1], job.req)]
        except Exception as exc:
            return job.head + [self.failure_reply(exc, job.op, job.rid, job.key, RECORDED,
                                                  job.req)]
        finally:
            self.caller = None
            self._done(job)

    def _done(self, job: _Job) -> None:
        """The job is answered: its order is free, and the requests that waited for
        it are admitted again in the next turn."""
        if self._orders.get(job.order_no) is job:
            del self._orders[job.order_no]
        if job.ref is not None:
            self._refs.discard(job.ref)
        for w in job.waiters:
            w.readmit = True
        self._ready += job.waiters
        job.waiters = []

    def _forget(self, job: _Job) -> None:
        """Undo what a job did in memory in a turn that is rolled back."""
        self._done(job)
        for other in self._orders.values():
            if job in other.waiters:
                other.waiters.remove(job)
        if job in self._ready:
            self._ready.remove(job)

    # ------------------------------------------------------------------------------
    def op_status(self, f) -> dict:
        attempts = self._attempts(f["order_no"])
        if not attempts:
            raise LanecoreError(f"no payment for order {f['order_no']}", code="UNKNOWN_ORDER")
        paid = [c for c in attempts if c.state == L.PAID]
        last = paid[-1] if paid else attempts[-1]
        out = self._reply(f["order_no"], last)
        out.pop("_final")
        out["attempts"] = [{"merchant_ref": c.merchant_ref, "channel": c.channel,
                            "state": c.state, "reason": c.reason} for c in attempts]
        return out

    def op_reverse(self, f) -> dict:
        """Cancel an order's payment (same day): the paid charge is given back."""
        attempts = self._attempts(f["order_no"])
        if not attempts:
            raise LanecoreError(f"no payment for order {f['order_no']}", code="UNKNOWN_ORDER")
        last = attempts[-1]
        if last.state == L.REVERSED:
            return self._reply(f["order_no"], last)
        paid = [c for c in attempts if c.state == L.PAID]
        if not paid:
            raise LanecoreError(f"order {f['order_no']} has no paid charge to reverse",
                                code="NOT_PAID")
        charge = paid[-1]
        if self._kind(charge) == "stored_value":
            ref = charge.merchant_ref
            sv = self._sv(charge.currency)          # DB_UNAVAILABLE before anything moved
            # on the ledger's database: one transaction with the reversal, committed with
            # the reply's record; in the chain database: the credit first (keyed, so a
            # retry after a crash finds nothing left to give back), then the ledger
            self.con.execute("BEGIN IMMEDIATE")
            back = sv.refundable(ref)
            if back:
                sv.credit(charge.payer, back, ref=f"reverse:{ref}", of_ref=ref)
            return self._reply(f["order_no"], self.ledger.move(ref, L.REVERSED,
                                                               reason="CANCELLED"))
        conn = self.connectors.get(charge.channel)
        if conn is None:
            raise LanecoreError(f"a {charge.channel} payment is not reversed here (cash "
                                "goes back from the drawer)", code="NOT_REVERSIBLE")
        res = conn.reverse(charge.merchant_ref)
        if res.status != "reversed":
            out = self._reply(f["order_no"], charge)
            out.update(status="pending", _final=False)
            return out
        return self._reply(f["order_no"], self.ledger.move(charge.merchant_ref, L.REVERSED,
                                                           reason="CANCELLED"))

    def op_refund(self, f) -> dict:
        """Give back part or all of an order's paid charge, once per ``refund_ref``."""
        attempts = self._attempts(f["order_no"])
        paid = [c for c in attempts if c.state == L.PAID]
        if not attempts:
            raise LanecoreError(f"no payment for order {f['order_no']}", code="UNKNOWN_ORDER")
        if not paid:
            raise LanecoreError(f"order {f['order_no']} has no paid charge", code="NOT_PAID")
        charge = paid[-1]
        conn = self.connectors.get(charge.channel)
        local = self._kind(charge) == "stored_value"
        if conn is None and not local:
            raise LanecoreError(f"a {charge.channel} payment is not refunded here (cash "
                                "goes back from the drawer)", code="NOT_REVERSIBLE")
        if conn is not None and not getattr(conn, "refunds", True):
            raise LanecoreError(f"a {charge.channel} payment (ISO 8583) is not refunded "
                                "over that link: reverse it the same day",
                                code="NOT_SUPPORTED")
        refund, _ = self.ledger.create_refund(charge.merchant_ref, f["refund_ref"],
                                              f["amount_minor"])
        if local:
            refund = self._refund_stored_value(refund, charge)
        else:
            refund = self._send_refund(refund, conn)
        return self._refund_reply(f["order_no"], refund)

    def _refund_stored_value(self, refund: L.Refund, charge: L.Charge) -> L.Refund:
        """Back onto the member's account, with the refund's moves, in one transaction."""
        if refund.state in (L.PAID, L.FAILED):
            return refund
        if charge.currency in self.sv_db:
            return self._refund_chain_sv(refund, charge)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            if refund.state == L.CREATED:
                self.ledger.move_refund(refund.refund_ref, L.SENT)
            self._sv(charge.currency).credit(charge.payer, refund.amount_minor,
                                             ref=f"refund:{refund.refund_ref}",
                                             of_ref=charge.merchant_ref)
            out = self.ledger.move_refund(refund.refund_ref, L.PAID,
                                          provider_ref=f"sv:refund:{refund.refund_ref}")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return out

    def _refund_chain_sv(self, refund: L.Refund, charge: L.Charge) -> L.Refund:
        """A stored-value refund with the account in the chain database, as a
        provider refund: ``sent`` committed first, then the credit keyed
        ``refund:<refund_ref>`` (made once however often it is sent), then ``paid``.
        A refusal (``OVER_REFUND``, ``UNKNOWN_DEBIT`` …) is ``failed`` and raised; the
        database out of reach before ``sent``: ``failed`` with ``DB_UNAVAILABLE``,
        raised (nothing was sent: a new refund reference tries again); lost after it:
        left ``sent``, and the recovery pass sends the same credit again until the
        database answers — the member is owed it and the key makes a second credit
        impossible."""
        rr = refund.refund_ref
        try:
            sv = self._chain_sv(charge.currency)
        except StoredValueError as exc:
            if refund.state == L.CREATED:
                self.ledger.move_refund(rr, L.FAILED, reason=exc.code)
                raise
            log.warning("stored-value refund %s: the chain database did not answer "
                        "(%s); sent again on the next pass", rr, exc.code)
            return refund
        if refund.state == L.CREATED:
            refund = self.ledger.move_refund(rr, L.SENT)
        try:
            sv.credit(charge.payer, refund.amount_minor, ref=f"refund:{rr}",
                      of_ref=charge.merchant_ref)
        except StoredValueError as exc:
            if exc.code in ("DB_ERROR", "DB_BUSY", "DB_UNAVAILABLE"):
                self._chain_check(charge.currency)
                log.warning("stored-value refund %s: the chain database did not answer "
                            "(%s); sent again on the next pass", rr, exc.code)
                return refund
            self.ledger.move_refund(rr, L.FAILED, reason=exc.code)
            raise
        self._maybe_crash("after_provider")
        return self.ledger.move_refund(rr, L.PAID, provider_ref=f"sv:refund:{rr}")

    def _chain_refunds(self) -> None:
        """Open stored-value refunds whose accounts are in the chain database: their
        credit sent again (the same key: once)."""
        for refund in self.ledger.refunds(open_only=True):
            ch = self.router.by_name.get(refund.channel)
            if ch is None or ch.kind != "stored_value" or refund.currency not in self.sv_db:
                continue
            try:
                self._refund_chain_sv(refund, self.ledger.get(refund.merchant_ref))
            except Exception:
                log.exception("refund %s failed", refund.refund_ref)

    def _send_refund(self, refund: L.Refund, conn: Connector) -> L.Refund:
        """Send (or send again: the provider knows a refund by its reference) a refund
        that is not final, and record what came back."""
        if refund.state in (L.PAID, L.FAILED):
            return refund
        if refund.state == L.CREATED:
            refund = self.ledger.move_refund(refund.refund_ref, L.SENT)
        res = conn.refund(refund.merchant_ref, refund.refund_ref, refund.amount_minor)
        if res.status == "refunded":
            return self.ledger.move_refund(refund.refund_ref, L.PAID,
                                           provider_ref=res.provider_ref)
        if res.status in ("failed", "not_found"):
            return self.ledger.move_refund(refund.refund_ref, L.FAILED,
                                           reason=res.decline_code or "DECLINED")
        return self.ledger.move_refund(refund.refund_ref, L.UNKNOWN,
                                       reason=res.decline_code or "UNKNOWN")

    @staticmethod
    def _refund_reply(order_no: str, refund: L.Refund) -> dict:
        status = {L.PAID: "refunded", L.FAILED: "failed"}.get(refund.state, "pending")
        return {"order_no": order_no, "refund_ref": refund.refund_ref,
                "merchant_ref": refund.merchant_ref, "status": status,
                "amount_minor": refund.amount_minor, "currency": refund.currency,
                "provider_ref": refund.provider_ref,
                "decline_code": refund.reason if status == "failed" else None,
                "_final": status != "pending"}

    def op_recon(self, f) -> dict:
        """Reconcile one day: the ledger against every provider channel's bill. The
        day is the provider's bill day (``Connector.bill_utc_offset_s``: UTC's, or
        China Standard Time's for WeChat Pay and Alipay), and the ledger's rows of that
        channel are that same day's; cash and stored value: the UTC day. Each bill
        comes over the provider link (``Connector.bill``) and is written to
        ``DATA_DIR/bills/CHANNEL-DATE.<suffix>`` in the provider's own format; the bill
        read is that file. A path the provider names is never opened."""
        from lanecore.core.config import private_dir, write_private
        from lanecore.core.pay import recon
        date = recon.check_date(f["date"])
        bills, channels, missing = [], [], []
        offsets: dict[str, int] = {}          # channel → its bill day's offset from UTC
        bill_dir = private_dir(self.data_dir / BILLS_DIR)
        for name, conn in self.connectors.items():
            try:
                bill = conn.bill(date)
            except ProviderError as exc:
                missing.append({"channel": name, "code": exc.code, "message": exc.message})
                continue
            # named by the channel (routing's names: A-Z a-z 0-9 _ . -, never a '/'),
            # kept in the provider's own format; what is read is that file. A wallet's
            # own bill is also kept normalised as CHANNEL-DATE.csv (lanecore recon, the
            # chain's link read that)
            own = bill_dir / f"{name}-{date}.{bill.suffix}"
            write_private(own, bill.raw if bill.raw is not None
                          else bill.csv_text.encode("utf-8"))
            try:
                rows = conn.bill_rows(dataclasses.replace(bill, raw=own.read_bytes()), name)
            except ProviderError as exc:
                missing.append({"channel": name, "code": exc.code, "message": exc.message})
                continue
            if bill.suffix != "csv":
                write_private(bill_dir / f"{name}-{date}.csv",
                              recon.bill_csv(rows).encode("utf-8"))
            channels.append(name)
            offsets[name] = conn.bill_utc_offset_s
            bills.extend(rows)
        day = self.ledger.day_rows(date)
        days = {0: day}
        for off in set(offsets.values()) - {0}:
            days[off] = self.ledger.day_rows(date, off)
        local = []          # cash, stored value: their bill is the gateway's own record
        for ch in self.router.channels:
            if ch.kind in LOCAL_KINDS:
                con = self.con
                if ch.kind == "stored_value" and ch.currency in self.sv_db:
                    try:                 # the member accounts' record: the chain's
                        con = self._chain_sv(ch.currency).con
                    except StoredValueError as exc:
                        missing.append({"channel": ch.name, "code": exc.code,
                                        "message": exc.message})
                        continue
                local.append(ch.name)
                bills.extend(local_bill(day, ch.kind, ch.name, con))
        rows = [r for r in day if r["channel"] in local]
        rows += [r for off, d in days.items() for r in d
                 if offsets.get(r["channel"], -1) == off]
        report = recon.reconcile(rows, bills, channels=channels + local)
        out = {"date": date, "channels": channels, "local": local, "no_bill": missing,
               **report.to_dict()}
        # a day with a channel whose bill did not come is not a clean day
        out["clean"] = bool(out["clean"]) and not missing
        return out

    # ------------------------------------------------------------------------------
    # Dynamic QR: the wallet's own merchant-presented QR (gateway/payments/notify.py)
    # ------------------------------------------------------------------------------
    def _init_present(self, table) -> None:
        """``[notify]`` read and the ``presented_qr`` table made (at start-up)."""
        from lanecore.gateway.payments import notify as N
        try:
            self.notify_cfg = N.parse_config(table, self.data_dir)
        except N.NotifyConfigError as exc:
            raise PaymentConfigError(exc.message, code=exc.code) from exc
        for stmt in N.PRESENT_SCHEMA:
            self.ledger.con.execute(stmt)
        #: the notification listener (started with the loop, :meth:`start_notify`)
        self.notifier = None

    def start_notify(self):
        """Start the notification listener of ``[notify] bind`` (once); it is also
        started by the served loop (:meth:`io_sockets`). Returns it."""
        from lanecore.gateway.payments.notify import NotifyListener
        if self.notifier is None:
            if self.notify_cfg is None or self.notify_cfg.bind is None:
                raise PaymentConfigError(f"{CONFIG_FILE} [notify] has no bind: no "
                                         "notification listener here")
            self.notifier = NotifyListener(self.connectors, self.notify_cfg).start()
        return self.notifier

    def stop_notify(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None

    def _notify_fds(self) -> tuple:
        cfg = self.notify_cfg
        if self.notifier is None and cfg is not None and cfg.bind is not None:
            self.start_notify()
        return () if self.notifier is None else (self.notifier.fileno(),)

    def _presented(self, ref: str) -> dict | None:
        row = self.con.execute("SELECT merchant_ref, channel, code_url, notify_url, "
                               "expires_at, created_at, closed_at, source FROM presented_qr "
                               "WHERE merchant_ref = ?", (ref,)).fetchone()
        if row is None:
            return None
        return dict(zip(("merchant_ref", "channel", "code_url", "notify_url", "expires_at",
                         "created_at", "closed_at", "source"), row))

    def op_present(self, f) -> dict:
        """A merchant-presented QR from the wallet (its native order / precreate) for
        ``order_no``: routed like a charge of method ``qr`` to a channel whose
        connector can ``precreate`` (``wallet``: of that kind; ``channel``: that
        one), written to the ledger and marked ``sent`` before the wallet is asked
        (write-ahead). Answers the payment object with ``code_url`` (what the shopper
        scans) and ``expires_at``; asked again, the same QR (never a second wallet
        order); paid, the payment. ``cancel: true``: close the order's pending QR at
        the wallet (``failed``, reason ``CANCELLED``) — or, paid first, the payment."""
        order_no = f["order_no"]
        if self.caller is not None:
            self._terminal_for(f)        # FORBIDDEN: in another terminal's name
        if self.notify_cfg is None:
            raise LanecoreError(f"{CONFIG_FILE} has no [notify] public_url: the wallet "
                                "needs a notify URL for a presented QR",
                                code="NO_NOTIFY_URL")
        scope = self._scope()
        terms = dict(f, method="qr")
        attempts = self.ledger.attempts(order_no, scope=scope)
        if f.get("cancel"):
            return self._present_cancel(order_no, attempts, terms)
        paid = [c for c in attempts if c.state == L.PAID]
        if paid:
            self._same_terms(order_no, paid[-1], terms)
            return self._present_reply(order_no, paid[-1])
        open_ = [c for c in attempts if not c.final]
        if open_:
            self._same_terms(order_no, open_[-1], terms)     # a card charge: MISMATCH
            return self._present_reply(order_no, self._precreate(open_[-1]))
        self._check_terminal_limits(terms)
        req = PaymentRequest(f["amount_minor"], f["currency"], "qr", f["terminal"])
        lines = self._charge_lines(f)
        reasons, chosen = {}, None
        for ch, why in self.router.explain(req, self._usage()):
            conn = self.connectors.get(ch.name)
            if why is None and not callable(getattr(conn, "precreate", None)):
                why = "NO_PRESENTED_QR"         # its connector cannot make one
            elif why is None and (f.get("channel") not in (None, ch.name)
                                  or f.get("wallet") not in (None, ch.kind)):
                why = "NOT_ASKED"
            reasons[ch.name] = why
            if why is None and chosen is None:
                chosen = ch
        if chosen is None:
            raise NoEligibleChannel(reasons)
        attempt = self.ledger.last_attempt(order_no) + 1
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            charge, _ = self.ledger.create(order_no, attempt, f["amount_minor"],
                                           f["currency"], "qr", chosen.name, f["terminal"],
                                           scope=scope, lines=lines, sent=True)
            now = self.clock()
            con.execute("INSERT INTO presented_qr (merchant_ref, channel, notify_url, "
                        "expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
                        (charge.merchant_ref, chosen.name,
                         self.notify_cfg.notify_url(chosen.name),
                         now + self.notify_cfg.expire_s, now))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
                self._usage_day = None
            raise
        self._maybe_crash("after_ledger")
        return self._present_reply(order_no, self._precreate(charge))

    def _precreate(self, charge: L.Charge) -> L.Charge:
        """Ask the wallet for the order's QR when the gateway has none yet (a first
        request, or one whose answer was lost: the same ``merchant_ref``, which the
        wallet answers with the same order). Expired, or final: nothing is asked."""
        ref = charge.merchant_ref
        row = self._presented(ref)
        if row is None or row["code_url"] or charge.final \
                or self.clock() >= row["expires_at"]:
            return charge
        conn = self.connectors.get(charge.channel)
        if conn is None or not callable(getattr(conn, "precreate", None)):
            return charge
        subject = f"{self.receipt_cfg['store_name']} {charge.order_no}"[:64]
        try:
            res = conn.precreate(ref, charge.amount_minor, charge.currency,
                                 subject=subject, notify_url=row["notify_url"])
        except ProviderError as exc:
            if charge.state == L.SENT:           # refused before it was sent
                self._present_final(self.ledger.move(ref, L.FAILED, reason=exc.code,
                                                     detail=exc.message), "precreate")
            raise
        self._maybe_crash("after_provider")
        if res.code_url:
            self.con.execute("UPDATE presented_qr SET code_url = ? WHERE merchant_ref = ?",
                             (res.code_url, ref))
        return self._present_apply(charge, res, "precreate")

    def _present_apply(self, charge: L.Charge, res, source: str) -> L.Charge:
        """A wallet's word on a presented QR — the precreate's answer, a poll, a
        notification — into the ledger, in the gateway's one loop thread. The first
        ``paid`` moves the charge; a second finds it paid and changes nothing. A
        ``paid`` for a charge the ledger already ended otherwise (expired, cancelled)
        is a late result: not recorded, the money given back (:meth:`_present_late`)."""
        ref = charge.merchant_ref
        if charge.final:
            if res.status == "paid" and charge.state != L.PAID:
                self._present_late(charge, res, source)
            return charge
        if res.status == "paid":
            if res.paid_minor and res.paid_minor != charge.amount_minor:
                log.error("presented QR %s: the wallet says %d paid, the order is %d: not "
                          "recorded", ref, res.paid_minor, charge.amount_minor)
                raise LanecoreError(f"{ref}: paid {res.paid_minor}, not "
                                    f"{charge.amount_minor}", code="AMOUNT_MISMATCH")
            return self._present_final(self._apply(charge, res), source)
        if res.status in ("failed", "reversed"):
            # the shopper cancelled in the wallet, or the wallet closed the order:
            # nothing was taken
            reason = res.decline_code or ("ORDERCLOSED" if res.status == "reversed"
                                          else "DECLINED")
            return self._present_final(self.ledger.move(ref, L.FAILED, reason=reason,
                                                        detail=res.message or None), source)
        # waiting for the shopper (USERPAYING), or not known yet
        if charge.state == L.SENT:
            return self.ledger.move(ref, L.UNKNOWN, reason=res.decline_code or "USERPAYING")
        if source == "poll":
            return self.ledger.move(ref, L.QUERIED)
        return charge

    def _present_final(self, charge: L.Charge, source: str) -> L.Charge:
        """A presented QR's final state: which path got there first, and the event."""
        if charge.final:
            self.con.execute("UPDATE presented_qr SET source = COALESCE(source, ?) "
                             "WHERE merchant_ref = ?", (source, charge.merchant_ref))
            status = {L.PAID: "paid", L.FAILED: "failed", L.REVERSED: "reversed"}[
                charge.state]
            self.publish("payment", {"order_no": charge.order_no, "status": status,
                                     "merchant_ref": charge.merchant_ref,
                                     "channel": charge.channel, "method": "qr",
                                     "amount_minor": charge.amount_minor,
                                     "currency": charge.currency,
                                     "reason": charge.reason, "source": source})
        return charge

    def _present_late(self, charge: L.Charge, res, source: str) -> None:
        """A ``paid`` for a presented QR the ledger ended unpaid (expired or
        cancelled, and its close did not stop the payment): the ledger is not
        changed — the till was told the order is not paid — and the trade is
        reversed at the wallet, so the shopper gets the money back."""
        self.present_late += 1
        log.error("presented QR %s: a late paid (%s) after it ended %s (%s): reversing "
                  "it at the wallet", charge.merchant_ref, source, charge.state,
                  charge.reason)
        conn = self.connectors.get(charge.channel)
        if conn is not None:
            back = conn.reverse(charge.merchant_ref)
            if back.status != "reversed":
                log.error("presented QR %s: the reversal is %s; reconciliation shows it",
                          charge.merchant_ref, back.status)

    present_late = 0

    def _drive_present(self, charge: L.Charge, row: dict, *, force: bool) -> L.Charge:
        """One step for an open presented QR (from :meth:`drive`): polled every
        ``[policy] poll_every_s`` until its ``expires_at``; then asked once more and,
        still unpaid, closed at the wallet — ``failed`` with reason ``EXPIRED``
        (a close the wallet answers ``paid``: the payment it is)."""
        ref = charge.merchant_ref
        if charge.state == L.CREATED:
            return self.ledger.move(ref, L.FAILED, reason="NOT_SENT")
        conn = self.connectors.get(charge.channel)
        if conn is None:
            return charge
        now = self.clock()
        expired = now >= row["expires_at"]
        last = self._last_query.get(ref)
        if not (force or expired or last is None or now - last >= self.policy.poll_every_s):
            return charge
        self._last_query[ref] = now
        res = conn.query(ref)
        if res.status in ("paid", "failed", "reversed") or not expired:
            charge = self._present_apply(charge, res, "poll")
            if charge.final or not expired:
                return charge
        close = getattr(conn, "close_order", None) or conn.reverse
        res = close(ref)
        if res.status == "paid":                 # paid before the close: a sale
            return self._present_apply(charge, res, "poll")
        if res.status not in ("reversed", "not_found", "failed"):
            return charge                        # not known: closed on the next pass
        self.con.execute("UPDATE presented_qr SET closed_at = ? WHERE merchant_ref = ?",
                         (now, ref))
        return self._present_final(self.ledger.move(ref, L.FAILED, reason="EXPIRED"),
                                   "expiry")

    def _present_cancel(self, order_no: str, attempts: list, terms: dict) -> dict:
        """``pay.present`` with ``cancel``: the open presented QR asked about once
        more, then closed at the wallet (``failed``, ``CANCELLED``)."""
        if not attempts:
            raise LanecoreError(f"no payment for order {order_no}", code="UNKNOWN_ORDER")
        open_ = [c for c in attempts if not c.final and self._presented(c.merchant_ref)]
        if not open_:
            paid = [c for c in attempts if c.state == L.PAID]
            return self._present_reply(order_no, paid[-1] if paid else attempts[-1])
        charge = open_[-1]
        self._same_terms(order_no, charge, terms)
        conn = self.connectors.get(charge.channel)
        ref = charge.merchant_ref
        charge = self._present_apply(charge, conn.query(ref), "poll")
        if not charge.final:
            close = getattr(conn, "close_order", None) or conn.reverse
            res = close(ref)
            if res.status == "paid":
                charge = self._present_apply(charge, res, "poll")
            elif res.status in ("reversed", "not_found", "failed"):
                self.con.execute("UPDATE presented_qr SET closed_at = ? WHERE "
                                 "merchant_ref = ?", (self.clock(), ref))
                charge = self._present_final(
                    self.ledger.move(ref, L.FAILED, reason="CANCELLED"), "cancel")
        return self._present_reply(order_no, charge)

    def _present_reply(self, order_no: str, charge: L.Charge) -> dict:
        out = self._reply_map(order_no, charge)
        out.pop("_final")
        row = self._presented(charge.merchant_ref)
        out["code_url"] = row["code_url"] if row else None
        out["expires_at"] = row["expires_at"] if row else None
        out["reason"] = charge.reason if out["status"] != "paid" else None
        return out

    def _take_notifications(self) -> None:
        """The verified notifications the listener queued, into the ledger (the
        loop's thread); each told whether it is recorded (its acknowledgement)."""
        for a in self.notifier.take():
            try:
                charge = self.ledger.get(a.result.merchant_ref)
                if charge.channel != a.channel or self._presented(charge.merchant_ref) \
                        is None:
                    log.warning("notification on %s for %s, which is not a presented QR "
                                "of that channel: not recorded", a.channel,
                                a.result.merchant_ref)
                    continue
                self._present_apply(charge, a.result, "notify")
                a.recorded = True
            except Exception as exc:
                log.warning("notification for %s not recorded: %s", a.result.merchant_ref,
                            getattr(exc, "code", type(exc).__name__))
            finally:
                a.done.set()

    def op_qr(self, f) -> dict:
        """A dynamic merchant-presented QR for the amount (EMVCo MPM)."""
        self._terminal_for(f)
        if not self.qr:
            raise LanecoreError(f"no [qr] merchant in {CONFIG_FILE}", code="NO_QR_MERCHANT")
        currency = emvqr.lookup_currency(f["currency"])[1]
        payload = emvqr.build_mpm(currency=currency, amount_minor=f["amount_minor"],
                                  bill=f["order_no"], terminal=f["terminal"], **self.qr)
        return {"payload": payload}


def bill_utc_offset(protocol) -> int:
    """The offset from UTC (seconds) of the bill days of a channel speaking
    ``protocol``: its connector module's ``BILL_UTC_OFFSET_S`` (WeChat Pay and Alipay:
    China Standard Time, 28800); 0 (UTC days) for lanecore's link and ISO 8583."""
    if protocol not in PROTOCOL_KIND or protocol == "iso8583":
        return 0
    import importlib
    module = importlib.import_module(f"lanecore.gateway.payments.{PROTOCOL_KIND[protocol][1]}")
    return int(getattr(module, "BILL_UTC_OFFSET_S", 0))


def local_bill(day_rows: list, kind: str, channel: str, con) -> list:
    """The "bill" of a ``cash`` or ``stored_value`` channel for one day's ledger rows:
    the drawer's (or the member accounts') record of each payment, read through
    ``con`` (the ledger database, which holds those records too; read-only is fine).
    Shared by ``recon.run`` and ``lanecore recon``."""
    from lanecore.core.pay import recon
    from lanecore.core.pay.cash import paid_records
    from lanecore.core.pay.storedvalue import debit_records
    refs = [r["merchant_ref"] for r in day_rows
            if r["channel"] == channel and r.get("type", "charge") == "charge"]
    records = (paid_records if kind == "cash" else debit_records)(con, refs)
    return recon.local_bill(day_rows, records, channel,
                            source="drawer" if kind == "cash" else "sv")


def serve(data_dir, bind: str, *, curve: bool = False, dev_open: bool = False,
          metrics: str | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT (``curve``: CurveZMQ with the keys of the
    data directory, ``gateway/net/security.py``). Callers must prove who they are —
    terminals' HMAC (``[pos] auth = "hmac"``) or enrolled Curve keys — unless
    ``dev_open`` (loopback or ipc only, checked by the command line)."""
    import zmq

    from lanecore.gateway.net.security import ServerSecurity
    gw = PaymentGateway(data_dir)
    if not (gw.auth or curve or dev_open):
        gw.ledger.close()
        raise PaymentConfigError(
            "the payment gateway authenticates its callers: set [pos] auth = \"hmac\" in "
            f"{CONFIG_FILE} and register terminals (lanecore terminal add), or start it with "
            "--curve, or with --dev-open on loopback or ipc for development",
            code="AUTH_REQUIRED")
    if dev_open and not (gw.auth or curve):
        from lanecore.gateway.net.metrics import announce
        announce("lanecore: WARNING: the payment gateway runs with --dev-open: every caller "
                 "on this machine is the development principal, with every role "
                 "(docs/security.md)", level="WARNING")
    guard = ServerSecurity(gw.data_dir, zmq.Context.instance()) if curve else None

    from lanecore.gateway.net import metrics as M
    if not gw.router.channels:
        M.announce(f"lanecore: WARNING: no payment channel is configured "
                   f"({Path(gw.data_dir) / CONFIG_FILE} has no [channels.NAME]): every "
                   f"charge will be refused (docs/pay/payments.md)", level="WARNING")

    def ready():
        mode = "curve" if guard else ("hmac" if gw.auth else "dev-open")
        M.ready(f"lanecore payments serving on {bind} ({mode}), data in {gw.data_dir}",
                process="payments", bind=bind, mode=mode, data_dir=str(gw.data_dir))
    try:
        if metrics:
            M.serve(gw, metrics, process="payments")
        gw.serve(bind, security=guard, ready=ready)
    finally:
        if guard is not None:
            guard.stop()
        gw.ledger.close()
    return 0
