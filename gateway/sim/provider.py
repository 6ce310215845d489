"""A payment provider simulator: ``lanecore sim provider --kind K --bind ADDR
--data-dir D``, a separate process playing a wallet's (WeChat, Alipay, UnionPay QR)
or a card acquirer's side over ZeroMQ ROUTER + MessagePack.

Every trade is kept in ``D/<kind>.sqlite`` (WAL, ``synchronous=FULL``), written
before the answer leaves, so the process can be killed and restarted without
forgetting a trade, and a test can count what it really charged. Bills are written
to ``D/bills/<kind>-<date>.csv`` (with ``.inject.json`` beside them when
discrepancies were injected); their text goes back in the ``bill`` reply, or in
``bill.part`` pieces when too large for one.

``--curve``: the link is CurveZMQ. The simulator's keypair is
``D/keys/server.key_secret`` (made on first start; its public key is printed in the
ready line as ``server_key``, for the gateway's ``payments.toml``), and only clients
whose public certificates are in ``D/keys/clients/`` get in (the gateway's
``keys/provider_client.key``); a plain or unknown client gets nothing at all.

One thread, one ROUTER socket: a request is handled (and its trade committed) as
soon as it arrives; its answer leaves after the configured latency from a queue of
timed answers, so a slow answer never holds up other requests. "User paying" trades
complete lazily: any request first settles the trades whose password delay has
passed (a trade's time is when it completed, not when it was noticed).

The wire protocol, every op, field, code and behaviour knob: ``docs/pay/providers.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import random
import re
import signal
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import zmq

from lanecore.core.config import private_dir, writable_dir
from lanecore.core.pay import recon
from lanecore.core.sqltxn import private_database
from lanecore.gateway.net import protocol
from lanecore.gateway.net.protocol import Field, ProtocolError
from lanecore.gateway.payments.providers import (
    KINDS, OTHER_CODES, WALLET_KINDS, luhn_ok, mask_pan, pan_digits, table)

#: The shopper's payment code per wallet (REFERENCE §3): pattern, description.
AUTH_CODES = {
    "wechat": (re.compile(r"^1[0-5]\d{16}$"), "18 digits starting 10–15"),
    "alipay": (re.compile(r"^(2[5-9]|30)\d{14,22}$"), "16–24 digits starting 25–30"),
    "unionpay": (re.compile(r"^62\d{17}$"), "19 digits starting 62"),
}
_TOKEN = re.compile(r"^tok_[A-Za-z0-9]{8,40}$")
#: Fee per kind, in basis points of the amount (a bill's fee_minor column).
FEE_BPS = {"wechat": 60, "alipay": 60, "unionpay": 38, "bank": 50}
#: Provider reference prefixes, so a reference says which provider made it.
REF_PREFIX = {"wechat": "42", "alipay": "20", "unionpay": "62", "bank": "BK"}
#: Bill CSV text is sent back only up to this size (the rest: read the file).
MAX_BILL_REPLY = 900_000
#: Bytes of a bill in one ``bill.part`` answer.
MAX_BILL_PART = 512 << 10
#: The wire protocols a simulator speaks: lanecore's own, or a wallet's HTTPS API
#: (its kind: the one wallet that speaks it).
SIM_PROTOCOLS = ("lanecore", "wechatpay-v2", "alipay")
HTTPS_SIMS = {"wechatpay-v2": ("wechat", "wechat"), "alipay": ("alipay", "alipay")}
#: Special outcomes a ``next`` script may hold besides the kind's decline codes.
OUTCOMES = ("paid", "userpaying", "usercancel", "systemerror", "timeout", "drop")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trades (
        merchant_ref TEXT PRIMARY KEY, provider_ref TEXT NOT NULL UNIQUE,
        amount_minor INTEGER NOT NULL, currency TEXT NOT NULL,
        status TEXT NOT NULL, code TEXT, payer TEXT, entry TEXT, terminal TEXT,
        created_at REAL NOT NULL, complete_at REAL, then_status TEXT, then_code TEXT,
        paid_at REAL, reversed_at REAL, refunded_minor INTEGER NOT NULL DEFAULT 0,
        fee_minor INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 1)""",
    "CREATE INDEX IF NOT EXISTS trades_paying ON trades (complete_at) WHERE status = 'paying'",
    """CREATE TABLE IF NOT EXISTS refunds (
        refund_ref TEXT PRIMARY KEY, merchant_ref TEXT NOT NULL,
        provider_ref TEXT NOT NULL, amount_minor INTEGER NOT NULL, at REAL NOT NULL)""",
    # Seed 001: the coupons a wallet charge redeemed, for the manufacturers' clearing.
    """CREATE TABLE IF NOT EXISTS redemptions (
        merchant_ref TEXT NOT NULL, coupon_id TEXT NOT NULL, gtin TEXT NOT NULL,
        amount_minor INTEGER NOT NULL, PRIMARY KEY (merchant_ref, coupon_id))""",
)


@dataclass
class Behaviour:
    """The simulator's knobs (``configure`` changes them at run time). Probabilities
    are per charge request in [0, 1]; times in seconds; money in minor units."""

    latency_s: float = 0.0            # every trade op's answer waits this long
    userpaying_p: float = 0.0         # a wallet charge needs the shopper's password
    userpaying_delay_s: float = 3.0   # … and completes this long after the charge
    usercancel_p: float = 0.0         # of those, the shopper cancels instead of paying
    decline_p: float = 0.0            # declined with one of decline_codes
    decline_codes: list = field(default_factory=list)
    systemerror_p: float = 0.0        # processed (paid) but answered SYSTEMERROR / 96
    timeout_p: float = 0.0            # processed, but no answer at all
    drop_p: float = 0.0               # lost before processing: no trade, no answer
    max_amount_minor: int = 0         # per-payment limit (0: none) → EXCEED_LIMIT / 61
    pin: str = "1234"                 # the PIN every simulated card has
    cvm_limit_minor: int = 30_000     # NFC above this needs a PIN (65), chip/magstripe always accept
    next: list = field(default_factory=list)  # scripted outcomes of the next charges
    seed: int | None = None

    def check(self, kind: str) -> None:
        for f in ("userpaying_p", "usercancel_p", "decline_p", "systemerror_p", "timeout_p",
                  "drop_p"):
            v = getattr(self, f)
            if not 0.0 <= v <= 1.0:
                raise ProtocolError("BAD_FIELD", f"{f} must be in [0, 1], got {v}")
        for f in ("latency_s", "userpaying_delay_s"):
            if not 0.0 <= getattr(self, f) <= 600.0:
                raise ProtocolError("BAD_FIELD", f"{f} must be in [0, 600] seconds")
        codes = table(kind)
        allowed = set(OUTCOMES) | set(codes)
        for c in self.decline_codes:
            if not isinstance(c, str) or c not in codes or codes[c][0] != "failed":
                raise ProtocolError("BAD_FIELD", f"decline code {c!r} is not a {kind} decline")
        for c in self.next:
            if not isinstance(c, str) or c not in allowed:
                raise ProtocolError("BAD_FIELD", f"next outcome {c!r} must be one of "
                                                 f"{', '.join(sorted(allowed))}")


_KNOBS = {
    "latency_s": Field("float", False, 0, 600), "userpaying_p": Field("float", False, 0, 1),
    "userpaying_delay_s": Field("float", False, 0, 600),
    "usercancel_p": Field("float", False, 0, 1), "decline_p": Field("float", False, 0, 1),
    "decline_codes": Field("list", False, 0, 32), "systemerror_p": Field("float", False, 0, 1),
    "timeout_p": Field("float", False, 0, 1), "drop_p": Field("float", False, 0, 1),
    "max_amount_minor": Field("int", False, 0, 2 ** 53), "pin": Field("str", False, 4, 12),
    "cvm_limit_minor": Field("int", False, 0, 2 ** 53), "next": Field("list", False, 0, 1000),
    "seed": Field("int", False, 0, 2 ** 63),
}
_REF = Field("str", min=1, max=64)
_MONEY = Field("int", min=1, max=2 ** 53)
_SCHEMAS = {
    "charge": {"merchant_ref": _REF, "amount_minor": _MONEY,
               "currency": Field("str", min=3, max=3), "auth_code": Field("str", False, 1, 64),
               "card": Field("map", False, 1, 4), "terminal": Field("str", False, 1, 64),
               "coupons": Field("list", False, 0, 20)},
    "query": {"merchant_ref": _REF},
    "reverse": {"merchant_ref": _REF},
    # a merchant-presented QR (a wallet's native order / precreate): the trade waits
    # for the shopper's scan; `scan` is the shopper's wallet paying (or cancelling) it
    "precreate": {"merchant_ref": _REF, "amount_minor": _MONEY,
                  "currency": Field("str", min=3, max=3), "terminal": Field("str", False, 1, 64)},
    "scan": {"merchant_ref": _REF, "outcome": Field("str", choices=("paid", "cancel"))},
    "refund": {"merchant_ref": _REF, "refund_ref": _REF, "amount_minor": _MONEY},
    "bill": {"date": Field("str", min=10, max=10), "inject": Field("map", False, 0, 8)},
    "bill.part": {"date": Field("str", min=10, max=10),
                  "offset": Field("int", min=0, max=2 ** 40)},
    "stats": {}, "ping": {}, "configure": _KNOBS,
}
#: Ops whose answers are subject to latency and timeouts (the trade ops).
_TRADE_OPS = ("charge", "query", "reverse", "refund", "precreate")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day_bounds(date: str) -> tuple[float, float]:
    d = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    start = d.timestamp()
    return start, start + 86400.0


def pin_from_block(block: str, pan: str | None) -> str | None:
    """The PIN inside an ISO 9564 PIN block (format 0 needs the PAN, format 1 does
    not), or None for a block that cannot be one."""
    if not (isinstance(block, str) and len(block) == 16
            and all(c in "0123456789abcdefABCDEF" for c in block)):
        return None
    value = int(block, 16)
    fmt = block[0]
    if fmt == "0":
        if pan is None:
            return None
        # Format 0: the PIN field XOR the 12 rightmost PAN digits before the check digit.
        value ^= int("0000" + pan[-13:-1], 16)
    elif fmt != "1":
        return None
    text = f"{value:016x}"
    n = int(text[1], 16)
    if not 4 <= n <= 12:
        return None
    pin = text[2:2 + n]
    return pin if pin.isdigit() else None


def pin_block(pin: str, pan: str | None = None) -> str:
    """Build an ISO 9564 PIN block: format 0 with a PAN, format 1 without (what a PIN
    pad would send; tests and the gateway's card simulator use it)."""
    if pan is None:
        return ("1" + f"{len(pin):x}" + pin).ljust(16, "a")
    field_ = int(("0" + f"{len(pin):x}" + pin).ljust(16, "f"), 16)
    return f"{field_ ^ int('0000' + pan[-13:-1], 16):016x}"


class Provider:
    """The provider's trades and rules, without the socket (``serve`` adds that).

    ``handle(op, fields)`` returns ``(reply_fields, action)`` where ``action`` is
    ``"reply"``, ``"timeout"`` (processed, never answered) or ``"drop"`` (not even
    processed)."""

    def __init__(self, kind: str, data_dir: str | os.PathLike, behaviour: Behaviour, *,
                 synchronous: str = "FULL", clock=time.time, shared: bool = False) -> None:
        """``shared``: the database connection may be used from other threads than
        this one — one at a time, under the caller's lock (an HTTPS front's)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        behaviour.check(kind)
        self.kind = kind
        self.data_dir = writable_dir(data_dir)     # DATA_DIR_READ_ONLY, not a traceback
        self.behaviour = behaviour
        #: Bills up to this many bytes go in the ``bill`` reply; larger, in parts.
        self.max_bill_reply = MAX_BILL_REPLY
        self.rng = random.Random(behaviour.seed)
        self.clock = clock
        self.counts = {op: 0 for op in _SCHEMAS}
        self.unanswered = 0
        private_database(self.data_dir / f"{kind}.sqlite")
        self.con = sqlite3.connect(self.data_dir / f"{kind}.sqlite", isolation_level=None,
                                   check_same_thread=not shared)
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute(f"PRAGMA synchronous = {synchronous}")
        for stmt in _SCHEMA:
            self.con.execute(stmt)

    def close(self) -> None:
        self.con.close()

    # -- requests --------------------------------------------------------------------
    def handle(self, op: str, req: dict) -> tuple[dict, str]:
        if op not in _SCHEMAS:
            raise ProtocolError("UNKNOWN_OP", f"no op {op!r}; ops: {', '.join(_SCHEMAS)}")
        f = protocol.check(req, _SCHEMAS[op])
        self.counts[op] += 1
        now = self.clock()
        self._settle(now)
        if op == "ping":
            return {"kind": self.kind}, "reply"
        if op == "stats":
            return self.stats(), "reply"
        if op == "configure":
            return {"behaviour": self.configure(f)}, "reply"
        if op == "bill":
            return self.bill(f["date"], f.get("inject")), "reply"
        if op == "bill.part":
            return self.bill_part(f["date"], f["offset"]), "reply"
        b = self.behaviour
        if op == "charge":
            outcome = b.next.pop(0) if b.next else None
            if outcome == "drop" or (outcome is None and self._chance(b.drop_p)):
                return {}, "drop"
            reply = self.charge(f, outcome, now)
            silent = outcome == "timeout" or (outcome is None and self._chance(b.timeout_p))
        elif op == "scan":
            return self.scan(f, now), "reply"   # the shopper's side: always answered
        else:
            reply = getattr(self, op)(f, now)
            silent = self._chance(b.timeout_p)
        return reply, "timeout" if silent else "reply"

    def _chance(self, p: float) -> bool:
        return p > 0 and self.rng.random() < p

    def configure(self, f: dict) -> dict:
        new = Behaviour(**{**asdict(self.behaviour), **f})
        new.check(self.kind)
        self.behaviour = new
        if "seed" in f:
            self.rng = random.Random(f["seed"])
        return asdict(new)

    # -- trades ------------------------------------------------------------------------
    def _trade(self, ref: str) -> dict | None:
        cur = self.con.execute("SELECT * FROM trades WHERE merchant_ref = ?", (ref,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def _answer(self, t: dict | None, ref: str, **extra) -> dict:
        if t is None:
            return {"merchant_ref": ref, "status": "not_found", "code": "ORDERNOTEXIST",
                    "message": "no trade with this merchant_ref", **extra}
        paid = t["amount_minor"] if t["paid_at"] is not None else 0
        out = {"merchant_ref": ref, "status": t["status"], "provider_ref": t["provider_ref"],
               "code": t["code"], "amount_minor": t["amount_minor"], "paid_minor": paid,
               "refunded_minor": t["refunded_minor"], "message": self._message(t["code"])}
        out.update(extra)
        return out

    def _message(self, code: str | None) -> str:
        if code is None:
            return ""
        entry = table(self.kind).get(code)
        return entry[1] if entry else OTHER_CODES.get(code, "")

    def _provider_ref(self, merchant_ref: str) -> str:
        # Unique per data dir: the reference plus the moment, hashed; 24 characters.
        h = hashlib.sha256(f"{merchant_ref}|{self.clock()!r}|{self.rng.random()}".encode())
        return REF_PREFIX[self.kind] + h.hexdigest()[:22].upper()

    def _settle(self, now: float) -> None:
        """Complete "user paying" trades whose delay has passed (at their own time)."""
        self.con.execute(
            "UPDATE trades SET status = then_status, code = then_code, "
            "paid_at = CASE WHEN then_status = 'paid' THEN complete_at END "
            "WHERE status = 'paying' AND complete_at <= ?", (now,))

    def charge(self, f: dict, outcome: str | None, now: float) -> dict:
        ref = f["merchant_ref"]
        amount, currency = f["amount_minor"], f["currency"]
        payer, entry, declined = self._validate_means(f)
        coupons = self._coupons(f.get("coupons") or [])
        self.con.execute("BEGIN IMMEDIATE")
        try:
            t = self._trade(ref)
            if t is not None:
                self.con.execute("UPDATE trades SET requests = requests + 1 "
                                 "WHERE merchant_ref = ?", (ref,))
                self.con.execute("COMMIT")
                if t["status"] in ("closed", "reversed"):
                    return self._answer(t, ref, status="failed", code="ORDERCLOSED",
                                        message=self._message("ORDERCLOSED"), duplicate=True)
                if (t["amount_minor"], t["currency"]) != (amount, currency):
                    return {"merchant_ref": ref, "status": "failed", "code": "OUT_TRADE_NO_USED",
                            "message": self._message("OUT_TRADE_NO_USED"), "paid_minor": 0,
                            "duplicate": True}
                extra = {"duplicate": True}
                if t["status"] == "paid" and self.kind != "bank":
                    extra["code"] = "ORDERPAID"
                    extra["message"] = OTHER_CODES["ORDERPAID"]
                return self._answer(t, ref, **extra)
            status, code, complete_at, then = self._decide(amount, entry, f, declined, outcome,
                                                           now)
            answer_code = None
            if status == "paid" and code is not None:
                # Processed and paid, but the answer only says "system error": the
                # caller must query to learn it was paid.
                answer_code, code = code, None
            fee = (amount * FEE_BPS[self.kind] + 5000) // 10000
            self.con.execute(
                "INSERT INTO trades (merchant_ref, provider_ref, amount_minor, currency, "
                "status, code, payer, entry, terminal, created_at, complete_at, then_status, "
                "then_code, paid_at, fee_minor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (ref, self._provider_ref(ref), amount, currency, status, code, payer, entry,
                 f.get("terminal"), now, complete_at, then[0], then[1],
                 now if status == "paid" else None, fee))
            for c in coupons:
                self.con.execute("INSERT INTO redemptions (merchant_ref, coupon_id, gtin, "
                                 "amount_minor) VALUES (?, ?, ?, ?)",
                                 (ref, c["coupon_id"], c["gtin"], c["amount_minor"]))
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise
        reply = self._answer(self._trade(ref), ref)
        if answer_code is not None:
            reply.update(status="unknown", code=answer_code, paid_minor=0,
                         message=self._message(answer_code))
        return reply

    def _coupons(self, coupons: list) -> list[dict]:
        """The coupons a charge says it redeemed (seed 001): recorded with the trade."""
        if coupons and self.kind not in WALLET_KINDS:
            raise ProtocolError("BAD_FIELD", "coupons come with a wallet charge")
        out = []
        for c in coupons:
            try:
                c = protocol.check(c, {"coupon_id": Field("str", min=1, max=40),
                                       "gtin": Field("str", min=14, max=14),
                                       "amount_minor": _MONEY})
            except (ProtocolError, TypeError, AttributeError):
                raise ProtocolError("BAD_FIELD", "coupons are maps {coupon_id, gtin, "
                                                 "amount_minor}") from None
            out.append(c)
        if len({c["coupon_id"] for c in out}) != len(out):
            raise ProtocolError("BAD_FIELD", "a coupon is redeemed once per charge")
        return out

    def _validate_means(self, f: dict) -> tuple[str, str | None, str | None]:
        """(masked payer, entry mode, decline code or None) from auth_code / card."""
        if self.kind in WALLET_KINDS:
            code = f.get("auth_code")
            if code is None or "card" in f:
                raise ProtocolError("MISSING_FIELD", f"a {self.kind} charge takes auth_code")
            pattern, _ = AUTH_CODES[self.kind]
            masked = code[:4] + "*" * max(0, len(code) - 8) + code[-4:] if len(code) > 8 \
                else "*" * len(code)
            return masked, None, None if pattern.match(code) else "AUTH_CODE_INVALID"
        card = f.get("card")
        if card is None or "auth_code" in f:
            raise ProtocolError("MISSING_FIELD", "a bank charge takes card")
        card = protocol.check(card, {"pan": Field("str", False, 12, 24),
                                     "token": Field("str", False, 1, 64),
                                     "entry": Field("str", choices=("magstripe", "chip", "nfc")),
                                     "pin_block": Field("str", False, 16, 16)})
        pan, token = card.get("pan"), card.get("token")
        if (pan is None) == (token is None):
            raise ProtocolError("BAD_FIELD", "a card has exactly one of pan or token")
        if pan is not None:
            pan = pan_digits(pan)      # the connector's rule: digits, spaces or hyphens
            if pan is None:
                raise ProtocolError("BAD_FIELD", "a pan is 12-19 digits, plain or grouped "
                                                 "by single spaces or single hyphens")
            masked, ok = mask_pan(pan), luhn_ok(pan)
        else:
            masked, ok = token, bool(_TOKEN.match(token))
        f["_pan"] = pan   # for the PIN check only; never stored
        f["_pin_block"] = card.get("pin_block")
        return masked, card["entry"], None if ok else "14"

    def _decide(self, amount, entry, f, declined, outcome, now):
        """(status, code, complete_at, (then_status, then_code)) of a new trade."""
        b = self.behaviour
        bank = self.kind == "bank"
        none = (None, None)
        if declined:
            return "failed", declined, None, none
        if b.max_amount_minor and amount > b.max_amount_minor:
            return "failed", "61" if bank else "EXCEED_LIMIT", None, none
        if bank:
            block = f.get("_pin_block")
            if block is not None:
                if pin_from_block(block, f.get("_pan")) != b.pin:
                    return "failed", "55", None, none
            elif entry == "nfc" and amount > b.cvm_limit_minor:
                return "failed", "65", None, none
        if outcome is None:
            if self._chance(b.decline_p):
                codes = b.decline_codes or (["51", "05", "54"] if bank
                                            else ["NOTENOUGH", "AUTH_CODE_EXPIRED", "TRADE_ERROR"])
                outcome = self.rng.choice(codes)
            elif self._chance(b.systemerror_p):
                outcome = "systemerror"
            elif not bank and self._chance(b.userpaying_p):
                outcome = "usercancel" if self._chance(b.usercancel_p) else "userpaying"
            else:
                outcome = "paid"
        if outcome in ("paid", "timeout"):
            return "paid", None, None, none
        if outcome == "systemerror":
            return "paid", "96" if bank else "SYSTEMERROR", None, none
        if outcome in ("userpaying", "usercancel"):
            then = ("paid", None) if outcome == "userpaying" else ("failed", "USERCANCEL")
            return "paying", "USERPAYING", now + b.userpaying_delay_s, then
        return "failed", outcome, None, none

    def query(self, f: dict, now: float) -> dict:
        return self._answer(self._trade(f["merchant_ref"]), f["merchant_ref"])

    def precreate(self, f: dict, now: float) -> dict:
        """A merchant-presented QR's order: a trade ``paying`` (code ``USERPAYING``,
        entry ``qr``) with no completion time — it waits for :meth:`scan`. Asked
        again with the same terms: the same trade (``duplicate``); other terms:
        ``OUT_TRADE_NO_USED``; a closed one: ``ORDERCLOSED``."""
        if self.kind not in WALLET_KINDS:
            raise ProtocolError("BAD_FIELD", "only a wallet presents a QR to pay")
        ref, amount, currency = f["merchant_ref"], f["amount_minor"], f["currency"]
        self.con.execute("BEGIN IMMEDIATE")
        try:
            t = self._trade(ref)
            if t is None:
                fee = (amount * FEE_BPS[self.kind] + 5000) // 10000
                self.con.execute(
                    "INSERT INTO trades (merchant_ref, provider_ref, amount_minor, currency, "
                    "status, code, entry, terminal, created_at, then_status, fee_minor) "
                    "VALUES (?, ?, ?, ?, 'paying', 'USERPAYING', 'qr', ?, ?, 'paid', ?)",
                    (ref, self._provider_ref(ref), amount, currency, f.get("terminal"), now,
                     fee))
            else:
                self.con.execute("UPDATE trades SET requests = requests + 1 "
                                 "WHERE merchant_ref = ?", (ref,))
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise
        if t is None:
            return self._answer(self._trade(ref), ref)
        if t["status"] in ("closed", "reversed"):
            return self._answer(t, ref, status="failed", code="ORDERCLOSED",
                                message=self._message("ORDERCLOSED"), duplicate=True)
        if (t["amount_minor"], t["currency"]) != (amount, currency):
            return {"merchant_ref": ref, "status": "failed", "code": "OUT_TRADE_NO_USED",
                    "message": self._message("OUT_TRADE_NO_USED"), "paid_minor": 0,
                    "duplicate": True}
        return self._answer(t, ref, duplicate=True)

    def scan(self, f: dict, now: float) -> dict:
        """The shopper's wallet pays (``outcome`` ``paid``) or cancels a precreated
        trade still waiting for it; any other trade is answered as it stands
        (``changed`` false): a closed order can never be paid."""
        ref = f["merchant_ref"]
        self.con.execute("BEGIN IMMEDIATE")
        try:
            cur = self.con.execute(
                "UPDATE trades SET status = ?, code = ?, paid_at = ?, complete_at = ? "
                "WHERE merchant_ref = ? AND status = 'paying' AND entry = 'qr'",
                ("paid", None, now, now, ref) if f["outcome"] == "paid"
                else ("failed", "USERCANCEL", None, now, ref))
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise
        return self._answer(self._trade(ref), ref, changed=cur.rowcount == 1)

    def reverse(self, f: dict, now: float) -> dict:
        ref = f["merchant_ref"]
        self.con.execute("BEGIN IMMEDIATE")
        try:
            t = self._trade(ref)
            if t is None:
                # Close the reference so a charge still in flight can never pay later.
                self.con.execute(
                    "INSERT INTO trades (merchant_ref, provider_ref, amount_minor, currency, "
                    "status, code, created_at, reversed_at, requests) "
                    "VALUES (?, ?, 0, '', 'closed', NULL, ?, ?, 0)",
                    (ref, self._provider_ref(ref), now, now))
            elif t["status"] == "refunded":
                self.con.execute("COMMIT")
                return self._answer(t, ref, status="failed", code="TRADE_STATUS_ERROR",
                                    message="a refunded trade cannot be reversed; refund it")
            elif t["status"] == "paid":
                self.con.execute("UPDATE trades SET status = 'reversed', reversed_at = ? "
                                 "WHERE merchant_ref = ?", (now, ref))
            elif t["status"] in ("paying", "failed"):
                self.con.execute("UPDATE trades SET status = 'closed', reversed_at = ?, "
                                 "complete_at = NULL WHERE merchant_ref = ?", (now, ref))
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise
        return self._answer(self._trade(ref), ref)

    def refund(self, f: dict, now: float) -> dict:
        ref, rref, amount = f["merchant_ref"], f["refund_ref"], f["amount_minor"]
        self.con.execute("BEGIN IMMEDIATE")
        try:
            t = self._trade(ref)
            old = self.con.execute("SELECT merchant_ref, amount_minor FROM refunds "
                                   "WHERE refund_ref = ?", (rref,)).fetchone()
            code = None
            if old is not None:
                if old != (ref, amount):
                    code = "REFUND_REF_USED"
            elif t is None:
                code = "ORDERNOTEXIST"
            elif t["status"] not in ("paid", "refunded"):
                code = "TRADE_STATUS_ERROR"
            elif t["refunded_minor"] + amount > t["amount_minor"]:
                code = "REFUND_EXCEEDS_PAID"
            else:
                self.con.execute("INSERT INTO refunds VALUES (?, ?, ?, ?, ?)",
                                 (rref, ref, self._provider_ref(rref), amount, now))
                self.con.execute("UPDATE trades SET status = 'refunded', refunded_minor = "
                                 "refunded_minor + ? WHERE merchant_ref = ?", (amount, ref))
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise
        t = self._trade(ref)
        if code is None:
            return self._answer(t, ref, refund_ref=rref, duplicate=old is not None)
        if t is None:
            return {"merchant_ref": ref, "status": "not_found", "code": code,
                    "message": OTHER_CODES[code], "refund_ref": rref}
        return self._answer(t, ref, status="failed", code=code, refund_ref=rref,
                            message=OTHER_CODES[code])

    # -- bills and counters ----------------------------------------------------------
    def bill_rows(self, date: str, utc_offset_s: int = 0) -> list[recon.BillRow]:
        """The true bill of ``date``: see ``core.pay.recon`` for the lines. A UTC day,
        or the day of the zone ``utc_offset_s`` ahead of UTC (the wallets' bills are
        China Standard Time days: 28800)."""
        start, end = _day_bounds(date)
        start, end = start - utc_offset_s, end - utc_offset_s
        rows = []
        for (ref, pref, amount, cur, status, paid_at, fee) in self.con.execute(
                "SELECT merchant_ref, provider_ref, amount_minor, currency, status, paid_at, "
                "fee_minor FROM trades WHERE paid_at >= ? AND paid_at < ?", (start, end)):
            st = {"paid": "SUCCESS", "refunded": "REFUND", "reversed": "REVERSED"}[status]
            rows.append(recon.BillRow(_iso(paid_at), ref, pref, "charge", amount, cur, st, fee,
                                      "", self.kind))
        for (ref, pref, amount, cur, at, fee) in self.con.execute(
                "SELECT merchant_ref, provider_ref, amount_minor, currency, reversed_at, "
                "fee_minor FROM trades WHERE status = 'reversed' AND reversed_at >= ? "
                "AND reversed_at < ?", (start, end)):
            # A cancel returns the money and the fee.
            rows.append(recon.BillRow(_iso(at), ref, pref, "reverse", amount, cur, "SUCCESS",
                                      -fee, "", self.kind))
        for (rref, ref, pref, amount, at, cur) in self.con.execute(
                "SELECT r.refund_ref, r.merchant_ref, r.provider_ref, r.amount_minor, r.at, "
                "t.currency FROM refunds r JOIN trades t USING (merchant_ref) "
                "WHERE r.at >= ? AND r.at < ?", (start, end)):
            rows.append(recon.BillRow(_iso(at), ref, pref, "refund", amount, cur, "SUCCESS",
                                      0, rref, self.kind))
        rows.sort(key=lambda r: (r.trade_time, r.provider_ref, r.type))
        return rows

    def bill(self, date: str, inject: dict | None) -> dict:
        try:
            recon.check_date(date)
            _day_bounds(date)
        except (recon.ReconError, ValueError):
            raise ProtocolError("BAD_FIELD", f"date must be a real YYYY-MM-DD, got {date!r}")
        rows = self.bill_rows(date)
        record = None
        if inject is not None:
            try:
                rows, record = recon.inject(rows, inject)
            except recon.ReconError as exc:
                raise ProtocolError("BAD_INJECT", exc.message) from None
        out_dir = self.data_dir / "bills"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"{self.kind}-{date}.csv"
        text = recon.bill_csv(rows)
        _write_atomic(path, text)
        sidecar = path.with_suffix(".inject.json")
        if record is not None:
            record = {"date": date, "kind": self.kind, **record}
            _write_atomic(sidecar, json.dumps(record, indent=2) + "\n")
        elif sidecar.exists():
            sidecar.unlink()   # a stale record would describe another version of the bill
        data = text.encode("utf-8")
        out = {"date": date, "path": str(path), "rows": len(rows), "injected": record,
               "size": len(data)}
        if len(data) <= self.max_bill_reply:
            out["csv"] = text
        return out

    def bill_part(self, date: str, offset: int) -> dict:
        """Bytes ``offset`` … of the bill last written for ``date`` (``bill`` first)."""
        try:
            recon.check_date(date)
        except recon.ReconError:
            raise ProtocolError("BAD_FIELD", f"date must be YYYY-MM-DD, got {date!r}")
        path = self.data_dir / "bills" / f"{self.kind}-{date}.csv"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ProtocolError("NO_BILL", f"no bill of {date} yet: ask for it (bill) "
                                           "first") from None
        if offset >= len(data):
            raise ProtocolError("BAD_FIELD", f"offset {offset} is past the bill's "
                                             f"{len(data)} bytes")
        return {"date": date, "offset": offset, "size": len(data),
                "part": data[offset:offset + MAX_BILL_PART]}

    def stats(self) -> dict:
        by_status = dict(self.con.execute("SELECT status, COUNT(*) FROM trades GROUP BY status"))
        paid_n, paid_minor = self.con.execute(
            "SELECT COUNT(*), COALESCE(SUM(amount_minor), 0) FROM trades "
            "WHERE paid_at IS NOT NULL").fetchone()
        held = self.con.execute(
            "SELECT COALESCE(SUM(amount_minor - refunded_minor), 0) FROM trades "
            "WHERE status IN ('paid', 'refunded')").fetchone()[0]
        dup = self.con.execute("SELECT COALESCE(SUM(requests - 1), 0) FROM trades "
                               "WHERE requests > 1").fetchone()[0]
        refunds = self.con.execute("SELECT COUNT(*), COALESCE(SUM(amount_minor), 0) "
                                   "FROM refunds").fetchone()
        return {"kind": self.kind, "trades": by_status, "charged": paid_n,
                "charged_minor": paid_minor, "held_minor": held, "duplicate_charges": dup,
                "refunds": refunds[0], "refunded_minor": refunds[1],
                "requests": dict(self.counts), "unanswered": self.unanswered}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------
# The process
# ----------------------------------------------------------------------------------

class ProviderCurve:
    """The simulator's CurveZMQ side (``--curve``): its keypair
    ``D/keys/server.key_secret`` (made on first start) and a ZAP authenticator that
    lets in only the client certificates in ``D/keys/clients/`` (read again when
    that directory changes)."""

    def __init__(self, data_dir, ctx: zmq.Context) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        from lanecore.gateway.net.security import generate, load_keypair
        kdir = private_dir(Path(data_dir) / "keys")
        secret = kdir / "server.key_secret"
        if not secret.exists():
            generate(kdir, "server", {"name": "provider"})
        self.public, self.secret = load_keypair(secret)
        self.clients = private_dir(kdir / "clients")
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self._seen = None
        self.reload()

    def reload(self) -> None:
        """Read ``keys/clients/`` again if it changed."""
        try:
            seen = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(self.clients))
        except OSError:
            seen = []
        if seen != self._seen:
            self.auth.configure_curve(domain="*", location=str(self.clients))
            self._seen = seen

    def server_socket(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()


def serve(provider: Provider, bind: str, *, stop=None, ready=None,
          security: ProviderCurve | None = None) -> None:
    """Answer requests on a ROUTER bound at ``bind`` until ``stop()`` is true (checked
    at least every 100 ms). ``ready(endpoint)`` is called once bound. ``security``:
    CurveZMQ (``--curve``)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    if security is not None:
        security.server_socket(sock)
    from lanecore.gateway.net.server import bind_socket
    bind_socket(sock, bind)         # BAD_ADDRESS, CANNOT_BIND naming it
    if ready:
        ready(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    pending: list = []   # (due, seq, frames): answers waiting out their latency
    seq = 0
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    try:
        while not (stop and stop()):
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                sock.send_multipart(heapq.heappop(pending)[2])
            wait_ms = 100 if not pending else max(0, min(100, int((pending[0][0] - now) * 1000)))
            if not poller.poll(wait_ms):
                if security is not None:
                    security.reload()
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                answer, delay = _one(provider, frames)
                if answer is None:
                    continue
                if delay > 0:
                    seq += 1
                    heapq.heappush(pending, (time.monotonic() + delay, seq, answer))
                else:
                    sock.send_multipart(answer)
    finally:
        sock.close(0)


def _one(provider: Provider, frames: list) -> tuple[list | None, float]:
    """The frames to answer one request with (None: no answer) and their delay (s)."""
    if len(frames) < 2:
        return None, 0.0
    envelope, payload = frames[:-1], frames[-1]
    rid = None
    delay = 0.0
    try:
        req = protocol.unpack(payload)
        rid = protocol.request_id(req)
        op = req.get("op")
        if not isinstance(op, str):
            raise ProtocolError("MISSING_FIELD", "field 'op' (str) is required")
        reply, action = provider.handle(op, req)
        if action != "reply":
            provider.unanswered += 1
            return None, 0.0
        if op in _TRADE_OPS:
            delay = provider.behaviour.latency_s
        msg = protocol.ok(rid, **reply)
    except ProtocolError as exc:
        msg = protocol.error(rid, exc.code, exc.message)
    except Exception as exc:  # one bad request must not end the provider
        msg = protocol.error(rid, "INTERNAL", f"{type(exc).__name__}: {exc}")
    return [*envelope, protocol.pack(msg)], delay


_KNOB_HELP = {
    "latency_s": "seconds every trade op's answer waits (default 0)",
    "userpaying_p": "probability a wallet charge answers USERPAYING (default 0)",
    "userpaying_delay_s": "seconds until a USERPAYING trade completes (default 3)",
    "usercancel_p": "probability the shopper then cancels instead (default 0)",
    "decline_p": "probability of a random decline (default 0)",
    "systemerror_p": "probability a charge is paid but answered SYSTEMERROR / 96",
    "timeout_p": "probability a trade op is processed but never answered",
    "drop_p": "probability a charge is lost unprocessed and never answered",
    "max_amount_minor": "per-payment limit in minor units, 0 = none (EXCEED_LIMIT / 61)",
    "pin": "the PIN of every simulated card (default 1234)",
    "cvm_limit_minor": "NFC payments above this need a PIN, else 65 (default 30000)",
    "seed": "random seed of the probabilistic behaviour",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lanecore sim provider",
        description="A payment provider simulator (ZeroMQ ROUTER + MessagePack; "
                    "docs/pay/providers.md). Prints one JSON line with its endpoint when ready.")
    p.add_argument("--protocol", default="lanecore", choices=SIM_PROTOCOLS,
                   help="lanecore: this ZeroMQ protocol (default); wechatpay-v2 (--kind "
                        "wechat) or alipay (--kind alipay): the wallet's own HTTPS API "
                        "(docs/pay/wechatpay.md, docs/pay/alipay.md), --bind HOST:PORT")
    p.add_argument("--kind", required=True, choices=KINDS + ("acquirer",),
                   help="a wallet, the bank (this protocol), or acquirer: an ISO 8583 "
                        "host over TCP (`--kind acquirer --help` for its knobs)")
    p.add_argument("--bind", default="tcp://127.0.0.1:*",
                   help="ZeroMQ address (default: a free TCP port on localhost)")
    p.add_argument("--data-dir", required=True, metavar="D",
                   help="where its trade database and bills live")
    p.add_argument("--fast", action="store_true",
                   help="no delays and no random failures (benchmarks); knobs given "
                        "explicitly still apply")
    p.add_argument("--curve", action="store_true",
                   help="CurveZMQ: the keypair in D/keys/server.key_secret (made if missing; "
                        "its public key is printed as server_key), clients only from "
                        "D/keys/clients/")
    p.add_argument("--max-bill-reply", type=int, default=MAX_BILL_REPLY, metavar="BYTES",
                   help=f"bills up to this size go in the bill reply, larger ones in "
                        f"bill.part pieces (default {MAX_BILL_REPLY})")
    p.add_argument("--synchronous", choices=["full", "normal"], default="full",
                   help="SQLite synchronous mode of the trade database (default full: "
                        "a trade survives a power cut once answered)")
    for f in fields(Behaviour):
        if f.name in ("next", "decline_codes"):
            continue
        kind = {"float": float, "int": int, "str": str}.get(
            str(f.type).replace(" | None", ""), float)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       metavar=f.name.split("_")[-1].upper(), help=_KNOB_HELP[f.name])
    p.add_argument("--decline-codes", default=None, metavar="C,C",
                   help="codes a random decline picks from (comma-separated)")
    p.add_argument("--next", default=None, metavar="O,O",
                   help="scripted outcomes of the next charges (comma-separated)")
    return p


def behaviour_from_args(opts) -> Behaviour:
    """Behaviour from parsed options: ``--fast`` zeroes every delay and probability
    first; then every option given explicitly applies."""
    b = Behaviour()
    if opts.fast:
        b.userpaying_delay_s = 0.0
    given = {}
    for f in fields(Behaviour):
        v = getattr(opts, f.name, None)
        if v is None:
            continue
        if f.name in ("next", "decline_codes"):
            v = [c for c in v.split(",") if c]
        given[f.name] = v
    return Behaviour(**{**asdict(b), **given})


def main(argv: list[str] | None = None) -> int:
    """``lanecore sim provider …``: run until SIGINT/SIGTERM. ``--kind acquirer``:
    the ISO 8583 acquirer host (``gateway/sim/acquirer.py``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--kind=acquirer" or (a == "--kind" and args[i + 1:i + 2] == ["acquirer"])
           for i, a in enumerate(args)):
        from lanecore.gateway.sim import acquirer
        return acquirer.main(args)
    parser = build_parser()
    opts = parser.parse_args(args)
    b = behaviour_from_args(opts)
    if opts.protocol != "lanecore":
        kind, module = HTTPS_SIMS[opts.protocol]
        if opts.kind != kind:
            parser.error(f"--protocol {opts.protocol} is --kind {kind}'s API")
        if opts.curve:
            parser.error("--curve is for the ZeroMQ protocol; the wallets' APIs are HTTPS")
        if opts.bind == parser.get_default("bind"):
            opts.bind = "127.0.0.1:0"
        import importlib
        return importlib.import_module(f"lanecore.gateway.sim.{module}").run(opts, b)
    try:
        provider = Provider(opts.kind, opts.data_dir, b, synchronous=opts.synchronous.upper())
    except ProtocolError as exc:
        print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    provider.max_bill_reply = max(0, opts.max_bill_reply)
    security = None
    if opts.curve:
        from lanecore.core.errors import LanecoreError
        try:
            security = ProviderCurve(provider.data_dir, zmq.Context.instance())
        except LanecoreError as exc:
            provider.close()
            print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
            return 2
    stopping = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stopping.append(True))

    def ready(endpoint: str) -> None:
        line = {"ready": True, "process": f"provider-{opts.kind}", "bind": opts.bind,
                "provider": opts.kind, "endpoint": endpoint, "pid": os.getpid(),
                "data_dir": str(provider.data_dir)}
        if security is not None:
            line["server_key"] = security.public.decode("ascii")
        print(json.dumps(line), flush=True)

    try:
        serve(provider, opts.bind, stop=lambda: bool(stopping), ready=ready,
              security=security)
    finally:
        if security is not None:
            security.stop()
        provider.close()
    return 0
