"""Connectors: how the payment gateway talks to a payment provider (or its simulator,
``lanecore sim provider``) — one interface for every kind.

``connector(endpoint, kind, timeout_s=…)`` gives a :class:`WalletConnector` (WeChat-,
Alipay- and UnionPay-QR-style: the shopper's payment code) or a
:class:`BankConnector` (cards: token or PAN, magstripe / chip / NFC, PIN block).
Every trade op returns a :class:`ProviderResult` whose ``status`` is one of
``paid``, ``failed``, ``unknown``, ``reversed``, ``refunded``, ``not_found``:

* a timeout, a lost connection, "user paying" and the provider's own system errors
  are ``unknown`` — never an exception the gateway must guess about. The trade may
  have happened: query it (same ``merchant_ref``), never send the code again;
* a decline is ``failed`` with the provider's ``decline_code`` (:data:`DECLINES`
  says which ones are worth trying on another channel);
* only a broken *request* (a field the connector itself refuses, e.g. a non-positive
  amount) raises :class:`ProviderError`, before anything is sent.

A full card number is never logged, stored or put in a result: :func:`mask_pan`
keeps the first 6 and last 4 digits, :class:`Card`'s repr shows only that.

The wire protocol (ZeroMQ DEALER → ROUTER, one MessagePack map each way, ids echoed)
is in ``docs/pay/providers.md``. With ``curve`` (:class:`~lanecore.gateway.net.client.
CurveKeys`: the provider's public key and ours) the link is CurveZMQ — encrypted, and
only the provider holding that key can answer; the payment gateway refuses a plain
link to a provider beyond loopback. A connector is not thread-safe (one ZeroMQ
socket): use one per thread.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack
import zmq

from lanecore.core.errors import LanecoreError

__all__ = ["KINDS", "WALLET_KINDS", "DECLINES", "ProviderResult", "ProviderError", "Card",
           "BillFile", "Connector", "WalletConnector", "BankConnector", "connector",
           "mask_pan", "luhn_ok", "pan_digits"]

log = logging.getLogger("lanecore.providers")

WALLET_KINDS = ("wechat", "alipay", "unionpay")
KINDS = WALLET_KINDS + ("bank",)
STATUSES = ("paid", "failed", "unknown", "reversed", "refunded", "not_found")
ENTRY_MODES = ("magstripe", "chip", "nfc")
#: Largest reply accepted (a bill's CSV text is the largest thing that comes back).
MAX_REPLY_BYTES = 1 << 20
#: Largest bill fetched in parts (``bill.part``) when it does not fit in one reply.
MAX_BILL_BYTES = 64 << 20

#: Every code a provider answers with: code → (outcome, meaning). ``outcome`` is what
#: the connector reports (``failed`` is final; ``unknown`` means query later). Whether
#: a decline may go to another channel is routing's call: ``core.pay.routing``'s decline
#: table (``should_fall_back``), the one place that rule is written.
DECLINES: dict[str, dict[str, tuple[str, str]]] = {
    "wallet": {
        "AUTH_CODE_INVALID": ("failed", "the payment code is not one of this wallet's"),
        "AUTH_CODE_EXPIRED": ("failed", "the payment code has expired (≈1 minute)"),
        "NOTENOUGH": ("failed", "the shopper's balance is too low"),
        "TRADE_ERROR": ("failed", "refused by the wallet's risk control"),
        "EXCEED_LIMIT": ("failed", "over the wallet's per-payment limit"),
        "USERCANCEL": ("failed", "the shopper cancelled at the password prompt"),
        "ORDERCLOSED": ("failed", "this merchant_ref was reversed; use a new attempt"),
        "OUT_TRADE_NO_USED": ("failed", "this merchant_ref was used with other terms"),
        "USERPAYING": ("unknown", "the shopper is typing a password; query"),
        "SYSTEMERROR": ("unknown", "the wallet failed; the trade may exist: query"),
        "BANKERROR": ("unknown", "the shopper's bank failed; query"),
    },
    "bank": {
        "05": ("failed", "do not honour"),
        "14": ("failed", "invalid card number"),
        "51": ("failed", "insufficient funds"),
        "54": ("failed", "expired card"),
        "55": ("failed", "incorrect PIN"),
        "61": ("failed", "exceeds the amount limit"),
        "65": ("failed", "PIN required: retry the same card with a PIN"),
        "ORDERCLOSED": ("failed", "this merchant_ref was reversed; use a new attempt"),
        "OUT_TRADE_NO_USED": ("failed", "this merchant_ref was used with other terms"),
        "91": ("unknown", "issuer unavailable; query"),
        "96": ("unknown", "system malfunction; query"),
    },
}
#: Codes of ops other than charge (refund, query): code → meaning.
OTHER_CODES = {
    "ORDERPAID": "a repeated charge of a paid trade: its first result, nothing charged again",
    "ORDERNOTEXIST": "no trade with this merchant_ref",
    "TRADE_STATUS_ERROR": "the trade is not in a state that allows this (e.g. refund unpaid)",
    "REFUND_EXCEEDS_PAID": "the refunds would exceed what was paid",
    "REFUND_REF_USED": "this refund_ref was used for another trade or amount",
    "TIMEOUT": "no answer within timeout_s (connector): the outcome is unknown",
}


def table(kind: str) -> dict[str, tuple[str, str]]:
    """The decline table of a provider kind."""
    return DECLINES["bank" if kind == "bank" else "wallet"]


class ProviderError(LanecoreError):
    """A request the connector refuses before sending (``BAD_REQUEST``), or an
    ``ok: false`` protocol reply from the provider (its code, e.g. ``BAD_FIELD``)."""

    code = "BAD_REQUEST"


#: A card number as a terminal may send it: 12–19 ASCII digits, plain or in groups
#: split by single spaces or by single hyphens (one kind throughout): a first group of
#: 4–6 digits (the issuer's prefix), middle groups of 3–6, a last group of 1–6 —
#: "4111 1111 1111 1111", "3782-822463-10005", "6212 3456 7890 1234 567". Anything
#: else ("4111.1111.1111.1111", letters, non-ASCII digits, two separators in a row,
#: mixed separators, junk before or after) is no card number.
_PAN_TEXT_RE = re.compile(r"[0-9]{12,19}|[0-9]{4,6}([ -])(?:[0-9]{3,6}\1)*[0-9]{1,6}")
_PAN_TEXT_MAX = 24        # 19 digits and 5 separators


def pan_digits(text) -> str | None:
    """The digits of a card number written as :data:`_PAN_TEXT_RE` allows, or None
    for anything else. The one check of a PAN's form: the connector's :class:`Card`
    and the provider simulator both use it."""
    if not isinstance(text, str) or len(text) > _PAN_TEXT_MAX \
            or not _PAN_TEXT_RE.fullmatch(text):
        return None
    digits = text.replace(" ", "").replace("-", "")
    return digits if 12 <= len(digits) <= 19 else None


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number (ASCII digits only)."""
    if not (isinstance(digits, str) and digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mask_pan(pan: str) -> str:
    """A card number as it may be shown or kept: first 6 and last 4 digits, ``*``
    between (numbers too short to hide anything become all ``*``)."""
    pan = "".join(ch for ch in str(pan) if ch.isdigit())
    if len(pan) < 13:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


@dataclass(frozen=True)
class Card:
    """A card as the terminal read it: a network ``token`` or the ``pan`` (12–19
    digits, as :func:`pan_digits` reads them: spaces or hyphens between groups are
    dropped, anything else is refused), the ``entry`` mode (``magstripe``, ``chip``,
    ``nfc``) and an optional ISO 9564 ``pin_block`` (16 hex digits). ``repr`` never
    shows the PAN or the PIN block."""

    entry: str
    pan: str | None = field(default=None, repr=False)
    token: str | None = None
    pin_block: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.entry not in ENTRY_MODES:
            raise ProviderError(f"card entry must be one of {', '.join(ENTRY_MODES)}")
        if (self.pan is None) == (self.token is None):
            raise ProviderError("a card needs exactly one of pan or token")
        if self.pan is not None:
            digits = pan_digits(self.pan)
            if digits is None:
                raise ProviderError("a PAN is 12–19 digits, plain or grouped by single "
                                    "spaces or single hyphens")
            object.__setattr__(self, "pan", digits)

    @property
    def masked(self) -> str:
        """The masked PAN, or the token."""
        return mask_pan(self.pan) if self.pan is not None else str(self.token)

    def __repr__(self) -> str:
        return f"Card(entry={self.entry!r}, card={self.masked!r}, " \
               f"pin={'yes' if self.pin_block else 'no'})"

    def wire(self) -> dict:
        out = {"entry": self.entry}
        if self.pan is not None:
            out["pan"] = self.pan
        else:
            out["token"] = self.token
        if self.pin_block is not None:
            out["pin_block"] = self.pin_block
        return out


@dataclass(frozen=True)
class ProviderResult:
    """The outcome of a trade op, as the gateway needs it.

    ``status``: ``paid`` | ``failed`` | ``unknown`` | ``reversed`` | ``refunded`` |
    ``not_found``; ``decline_code``: the provider's code (or ``TIMEOUT``), ``None``
    when it had nothing to say; ``paid_minor``: what the provider holds as paid for
    the trade (minor units, 0 unless it was paid); ``refunded_minor``: refunded so far;
    ``duplicate``: the provider had seen this merchant_ref (nothing charged again);
    ``code_url``: the content of the merchant-presented QR a ``precreate`` made (the
    shopper scans it with the wallet), None otherwise."""

    status: str
    provider_ref: str | None = None
    decline_code: str | None = None
    message: str = ""
    paid_minor: int = 0
    refunded_minor: int = 0
    merchant_ref: str | None = None
    duplicate: bool = False
    code_url: str | None = None

    @property
    def final(self) -> bool:
        return self.status != "unknown"


@dataclass(frozen=True)
class BillFile:
    """A day's bill: the CSV ``path`` on the provider's side (for information only:
    nobody on our side opens it), the CSV text — always, fetched in parts when too
    large for one reply — the number of lines, and the injection record (``None``
    without injection)."""

    date: str
    kind: str
    path: str
    rows: int
    csv_text: str | None
    injected: dict | None
    #: the provider's own bill as downloaded (WeChat Pay's text, Alipay's zip), kept
    #: as it came; None for lanecore's CSV (``csv_text``)
    raw: bytes | None = None
    #: the file name suffix the bill is kept under (``DATA_DIR/bills/CHANNEL-DATE.*``)
    suffix: str = "csv"


#: Provider trade states → connector statuses (``paying`` is "user paying").
_STATUS = {"paid": "paid", "paying": "unknown", "awaiting": "unknown", "failed": "failed",
           "closed": "reversed",
           "reversed": "reversed", "refunded": "refunded", "not_found": "not_found",
           "unknown": "unknown"}


class Connector:
    """One provider endpoint. ``timeout_s``: how long to wait for each answer
    (seconds); after a timeout the socket is replaced, so a late answer can never
    be taken for the next request's."""

    kind = ""
    #: the provider's bill days: UTC's (0), or a zone this many seconds ahead of UTC
    #: (WeChat Pay's and Alipay's bills are China Standard Time days: 28800)
    bill_utc_offset_s = 0

    def __init__(self, endpoint: str, kind: str, *, timeout_s: float = 5.0,
                 context: zmq.Context | None = None, curve=None) -> None:
        if kind not in KINDS:
            raise ProviderError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not timeout_s > 0:
            raise ProviderError("timeout_s must be > 0")
        self.endpoint = endpoint
        self.kind = kind
        self.timeout_s = float(timeout_s)
        self._ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._sock: zmq.Socket | None = None
        self._async: zmq.Socket | None = None
        #: CurveKeys for a CurveZMQ link (None: plain).
        self.curve = curve

    # -- transport -----------------------------------------------------------------
    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
            if self.curve is not None:
                self.curve.apply(s)     # before connect: the handshake is CURVE
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        self._reset()
        if self._async is not None:
            self._async.close(0)
            self._async = None

    # -- many requests in flight (the payment gateway's loop) -------------------------
    # A second socket, so a blocking call() never reads (and drops) their answers:
    # requests go out with post(), answers come back by id through answers(), and the
    # caller keeps the deadlines (an id it no longer waits for is a late answer: it
    # is dropped, never taken for another request's).
    def async_socket(self) -> zmq.Socket:
        """The socket of requests in flight (made on first use), for the caller's poller."""
        if self._async is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
            s.setsockopt(zmq.SNDHWM, 100_000)
            s.setsockopt(zmq.RCVHWM, 100_000)
            if self.curve is not None:
                self.curve.apply(s)
            s.connect(self.endpoint)
            self._async = s
        return self._async

    def prepare_charge(self, merchant_ref: str, amount_minor: int, currency: str, *,
                       terminal: str | None = None, **means) -> tuple[str, bytes]:
        """``(id, frame)`` of a charge request, checked as :meth:`charge` checks it
        (ProviderError before anything is written or sent), for :meth:`post`."""
        _check_money(amount_minor, currency)
        _check_ref(merchant_ref)
        fields = {"amount_minor": amount_minor, "currency": currency, **self._means(**means)}
        if terminal is not None:
            fields["terminal"] = terminal
        rid = f"{self._prefix}:{next(self._ids)}"
        return rid, msgpack.packb({"id": rid, "op": "charge", "merchant_ref": merchant_ref,
                                   **fields}, use_bin_type=True)

    def post(self, frame: bytes) -> bool:
        """Send a prepared request without waiting; False when it could not even be
        queued (no provider connected): the caller treats it as unanswered."""
        try:
            self.async_socket().send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            log.warning("%s: %s is not reachable", self.kind, self.endpoint)
            return False

    def answers(self) -> list[dict]:
        """The answers that have arrived on the in-flight socket (maps with an
        ``id``), without waiting; a garbled frame is nobody's answer."""
        sock = self._async
        out: list[dict] = []
        if sock is None:
            return out
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                reply = msgpack.unpackb(frame, raw=False, strict_map_key=False)
            except Exception:
                continue
            if isinstance(reply, dict) and "id" in reply:
                out.append(reply)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, op: str, **fields) -> dict | None:
        """Send one request; the reply map, or ``None`` when no answer came within
        ``timeout_s`` (the caller decides what an unanswered op means)."""
        rid = f"{self._prefix}:{next(self._ids)}"
        payload = msgpack.packb({"id": rid, "op": op, **fields}, use_bin_type=True)
        sock = self._socket()
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            # Not even queued (no peer connected): no answer. Still reported as
            # unknown by the caller — it costs one query, and guessing "not sent"
            # wrong would cost a double charge.
            self._reset()
            log.warning("%s %s: %s is not reachable", self.kind, op, self.endpoint)
            return None
        remaining_ms = int(self.timeout_s * 1000)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout_s
        while remaining_ms > 0:
            if not poller.poll(remaining_ms):
                break
            try:
                reply = msgpack.unpackb(sock.recv(), raw=False, strict_map_key=False)
            except Exception:  # a garbled frame is nobody's reply
                reply = None
            if isinstance(reply, dict) and reply.get("id") == rid:
                return reply
            remaining_ms = int((deadline - time.monotonic()) * 1000)
        self._reset()
        log.warning("%s %s: no answer from %s in %.2f s", self.kind, op, self.endpoint,
                    self.timeout_s)
        return None

    def _checked(self, op: str, **fields) -> dict | None:
        reply = self.call(op, **fields)
        if reply is not None and reply.get("ok") is not True:
            err = reply.get("error") if isinstance(reply.get("error"), Mapping) else {}
            raise ProviderError(str(err.get("message", "refused")),
                                code=str(err.get("code", "BAD_REPLY")))
        return reply

    def _result(self, op: str, merchant_ref: str, **fields) -> ProviderResult:
        return self.result(op, merchant_ref, self.call(op, merchant_ref=merchant_ref,
                                                       **fields))

    def result(self, op: str, merchant_ref: str, reply: dict | None) -> ProviderResult:
        """The :class:`ProviderResult` of a trade op's answer (None: none came in
        time, ``unknown``/``TIMEOUT``); ProviderError for an ``ok: false`` answer."""
        if reply is not None and reply.get("ok") is not True:
            err = reply.get("error") if isinstance(reply.get("error"), Mapping) else {}
            raise ProviderError(str(err.get("message", "refused")),
                                code=str(err.get("code", "BAD_REPLY")))
        if reply is None:
            return ProviderResult("unknown", decline_code="TIMEOUT", merchant_ref=merchant_ref,
                                  message=f"no answer to {op} within {self.timeout_s:g} s")
        code = reply.get("code")
        status = _STATUS.get(reply.get("status"), "unknown")
        entry = table(self.kind).get(code) if code else None
        if status == "failed" and entry and entry[0] == "unknown":
            status = "unknown"
        res = ProviderResult(
            status=status, provider_ref=reply.get("provider_ref"), decline_code=code,
            message=str(reply.get("message", "")), paid_minor=int(reply.get("paid_minor") or 0),
            refunded_minor=int(reply.get("refunded_minor") or 0), merchant_ref=merchant_ref,
            duplicate=bool(reply.get("duplicate")))
        log.info("%s %s %s → %s %s", self.kind, op, merchant_ref, res.status, code or "")
        return res

    # -- ops -------------------------------------------------------------------------
    def charge(self, merchant_ref: str, amount_minor: int, currency: str, *,
               terminal: str | None = None, **means) -> ProviderResult:
        """Take ``amount_minor`` (minor units of ``currency``) under ``merchant_ref``.
        A repeat with the same ``merchant_ref`` never charges twice: the provider
        answers with the first trade's state."""
        _check_money(amount_minor, currency)
        _check_ref(merchant_ref)
        fields = {"amount_minor": amount_minor, "currency": currency, **self._means(**means)}
        if terminal is not None:
            fields["terminal"] = terminal
        return self._result("charge", merchant_ref, **fields)

    def _means(self, **means) -> dict:
        raise ProviderError(f"a {self.kind} charge needs its own means of payment")

    def query(self, merchant_ref: str) -> ProviderResult:
        """The trade's current state (``not_found`` if the provider never saw it)."""
        _check_ref(merchant_ref)
        return self._result("query", merchant_ref)

    def reverse(self, merchant_ref: str) -> ProviderResult:
        """Cancel the trade: a paid one is given back, a paying one closed, an unknown
        one closed so it can never be paid later. ``reversed`` when done."""
        _check_ref(merchant_ref)
        return self._result("reverse", merchant_ref)

    def refund(self, merchant_ref: str, refund_ref: str, amount_minor: int) -> ProviderResult:
        """Give back ``amount_minor`` of a paid trade (partial refunds add up, never
        beyond what was paid). ``refund_ref`` makes a retried refund safe."""
        _check_ref(merchant_ref)
        _check_ref(refund_ref)
        _check_amount(amount_minor)
        return self._result("refund", merchant_ref, refund_ref=refund_ref,
                            amount_minor=amount_minor)

    def bill(self, date: str, inject: Mapping | None = None) -> BillFile:
        """The provider's bill for ``date`` (YYYY-MM-DD, UTC), its text over this link:
        in the reply, or — too large for one — in ``bill.part`` pieces of the ``size``
        the reply gives. ``inject`` corrupts it on purpose (``core.pay.recon.inject``).
        Raises ProviderError ``TIMEOUT`` when the provider does not answer,
        ``BAD_BILL`` when the text does not come (a reply naming only a file on the
        provider's side is no bill: that path is never opened here)."""
        fields = {"date": date}
        if inject is not None:
            fields["inject"] = dict(inject)
        reply = self._checked("bill", **fields)
        if reply is None:
            raise ProviderError(f"no bill from {self.endpoint} in {self.timeout_s:g} s",
                                code="TIMEOUT")
        text = reply.get("csv")
        if text is None:
            text = self._bill_parts(date, reply.get("size"))
        if not isinstance(text, str):
            raise ProviderError(f"the {self.kind} bill of {date} came without its text",
                                code="BAD_BILL")
        rows = reply.get("rows")
        return BillFile(date, self.kind, str(reply.get("path") or ""),
                        rows if isinstance(rows, int) else 0, text, reply.get("injected"))

    def bill_rows(self, bill: BillFile, channel: str) -> list:
        """The reconciliation rows (``core.pay.recon.BillRow``) of a bill this
        connector fetched, as kept on disk: lanecore's CSV here; a wallet's own
        format in its connector."""
        from lanecore.core.pay import recon
        text = bill.raw.decode("utf-8") if bill.raw is not None else (bill.csv_text or "")
        return recon.parse_bill(csv.DictReader(io.StringIO(text)), channel)

    def _bill_parts(self, date: str, size) -> str:
        """A bill too large for one reply, fetched in ``bill.part`` pieces."""
        if isinstance(size, bool) or not isinstance(size, int) or \
                not 0 <= size <= MAX_BILL_BYTES:
            raise ProviderError(f"the {self.kind} bill of {date} came without its text "
                                f"or its size", code="BAD_BILL")
        parts, got = [], 0
        while got < size:
            reply = self._checked("bill.part", date=date, offset=got)
            if reply is None:
                raise ProviderError(f"no bill part from {self.endpoint} in "
                                    f"{self.timeout_s:g} s", code="TIMEOUT")
            part = reply.get("part")
            if not isinstance(part, bytes) or not part or got + len(part) > size:
                raise ProviderError(f"a bad part of the {self.kind} bill of {date} at "
                                    f"{got}", code="BAD_BILL")
            parts.append(part)
            got += len(part)
        try:
            return b"".join(parts).decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderError(f"the {self.kind} bill of {date} is not UTF-8",
                                code="BAD_BILL") from None

    def stats(self) -> dict | None:
        """The provider's counters (``docs/pay/providers.md``), or None on a timeout."""
        reply = self._checked("stats")
        return None if reply is None else {k: v for k, v in reply.items()
                                           if k not in ("id", "ok")}

    def configure(self, **knobs) -> dict | None:
        """Change the simulator's behaviour knobs; returns them all (None on timeout)."""
        reply = self._checked("configure", **knobs)
        return None if reply is None else reply.get("behaviour")

    def ping(self) -> bool:
        """Whether the provider answers within ``timeout_s``."""
        return self.call("ping") is not None


class WalletConnector(Connector):
    """WeChat-, Alipay- and UnionPay-QR-style wallets: ``charge(…, auth_code=…)``, the
    payment code scanned from the shopper's phone."""

    def _means(self, *, auth_code: str | None = None, coupons=None, **other) -> dict:
        if other or not isinstance(auth_code, str) or not auth_code:
            raise ProviderError(f"a {self.kind} charge takes auth_code (the shopper's "
                                "payment code) and nothing else")
        out = {"auth_code": auth_code}
        if coupons:    # seed 001: the coupons redeemed with it, for the provider's records
            out["coupons"] = [dict(c) for c in coupons]
        return out


class BankConnector(Connector):
    """Bank cards: ``charge(…, card=Card(…))``."""

    def _means(self, *, card: Card | None = None, **other) -> dict:
        if other or not isinstance(card, Card):
            raise ProviderError("a bank charge takes card=Card(…) and nothing else")
        return {"card": card.wire()}


def connector(endpoint: str, kind: str, *, timeout_s: float = 5.0,
              context: zmq.Context | None = None, curve=None) -> Connector:
    """The connector class for ``kind``, connected to ``endpoint`` (``curve``: the
    CurveKeys of a CurveZMQ link)."""
    cls = BankConnector if kind == "bank" else WalletConnector
    return cls(endpoint, kind, timeout_s=timeout_s, context=context, curve=curve)


def _check_amount(amount_minor) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ProviderError(f"amount_minor must be a positive integer, got {amount_minor!r}")


def _check_money(amount_minor, currency) -> None:
    _check_amount(amount_minor)
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        raise ProviderError(f"currency must be an ISO 4217 code, got {currency!r}")


def _check_ref(ref) -> None:
    if not (isinstance(ref, str) and 1 <= len(ref) <= 64):
        raise ProviderError(f"a reference is 1–64 characters, got {ref!r:.80}")
