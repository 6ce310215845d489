"""The customer QR display (seed 002): the register sends the payment data down a
serial cable, the display draws an EMVCo payment QR, waits for the wallet's result
and reports it back; an optional card reader hangs off the display.

Layers, from the wire up (``docs/drivers/qr-display.md`` documents every byte):

* framing — ``STX SEQ TYPE LEN_HI LEN_LO HCHK BODY CRC_HI CRC_LO ETX``, HCHK making
  the header bytes sum to 0 mod 256, BODY a MessagePack map, CRC-16/CCITT-FALSE over
  SEQ..BODY: :func:`encode_frame`, :class:`FrameDecoder`;
* messages — typed, validated frozen dataclasses (:class:`PaymentData`,
  :class:`QrPay`, :class:`Cancel`, :class:`StatusRequest`, :class:`ShowQr` (a
  wallet's code URL to draw), :class:`ShowResult` (how the payment ended) one way;
  :class:`QrShown`, :class:`PayResult`, :class:`CardRead`, :class:`DisplayStatus`
  the other), each with a stable error code for every bad field;
* the link protocol — every data frame is acknowledged (``ACK``) or refused (``NAK``
  with a code); the sender resends the same frame, same sequence number, after
  ``ack_timeout_s`` up to ``max_tries`` times; a receiver answers a repeated frame
  (same sequence number and CRC) with its first answer and does not act on it again:
  :class:`RegisterProtocol` (host side) and :class:`DisplayProtocol` (device side),
  pure classes (bytes and monotonic times in, events and bytes out);
* the port loop — :class:`QrDisplayDriver` on a :class:`~lanecore.drivers.link.Link`,
  with the register's synchronous calls ``send_payment``, ``qr_pay``,
  ``wait_result``, ``cancel``, ``status``, ``show_qr`` and ``show_result``.

Money is integer minor units, times are monotonic seconds.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import msgpack

from lanecore.core.pay.emvqr import CURRENCIES, EmvQrError, MerchantQr, crc16_ccitt_false
from lanecore.core.errors import LanecoreError
from lanecore.drivers.link import (BAD_FRAME, GARBAGE, NO_ANSWER, UNKNOWN_STATUS,
                                   DeviceFault, LineSettings, Link, LinkDown)

__all__ = [
    "STX", "ETX", "MAX_BODY", "header_check", "T_ACK", "T_NAK", "T_PAYMENT_DATA", "T_QR_PAY",
    "T_CANCEL", "T_STATUS_REQ", "T_SHOW_QR", "T_SHOW_RESULT", "T_QR_SHOWN", "T_PAY_RESULT",
    "T_CARD_READ", "T_STATUS", "REASONS", "STATES", "RESULTS", "ERROR_CODES",
    "DEFAULT_LINE",
    "ProtocolError", "QrDisplayError", "crc16", "encode_frame", "pack_body",
    "Frame", "Corrupt", "FrameDecoder",
    "Item", "PaymentData", "QrPay", "Cancel", "StatusRequest", "ShowQr", "ShowResult",
    "QrShown", "PayResult", "CardRead", "DisplayStatus",
    "Acked", "Rejected", "GaveUp", "Command",
    "RegisterProtocol", "DisplayProtocol", "QrDisplayDriver",
]

STX, ETX = 0x02, 0x03
#: The longest BODY (bytes): 100 item lines with 40-character CJK names fit.
MAX_BODY = 24576
#: Bytes around a body: STX, SEQ, TYPE, LEN (2), HCHK, CRC (2), ETX.
OVERHEAD = 9
HEADER = 6

# Message types. 0x0_ link control, 0x1_ register -> display, 0x2_ display -> register.
T_ACK = 0x06
T_NAK = 0x15
T_PAYMENT_DATA = 0x10
T_QR_PAY = 0x11
T_CANCEL = 0x12
T_STATUS_REQ = 0x13
T_SHOW_QR = 0x14
T_SHOW_RESULT = 0x16          # (0x15 is NAK)
T_QR_SHOWN = 0x20
T_PAY_RESULT = 0x21
T_CARD_READ = 0x22
T_STATUS = 0x23

#: Why a payment failed (PAY_RESULT ``reason``); anything else reads as ``UNKNOWN``.
REASONS = ("DECLINED", "TIMEOUT", "CANCELLED", "INSUFFICIENT_FUNDS", "NETWORK",
           "AMOUNT_MISMATCH", "LIMIT_EXCEEDED", "CARD_ERROR")
#: What the display is doing (STATUS ``state``); anything else reads as ``UNKNOWN``.
STATES = ("IDLE", "DATA_LOADED", "SHOWING_QR", "PAYING", "RESULT")
CHANNELS = ("QR", "CARD")
#: What SHOW_RESULT tells the shopper (``result``).
RESULTS = ("paid", "failed", "cancelled", "expired")
CARD_KINDS = ("CARD", "NFC")

#: NAK codes and the driver's own error codes (QrDisplayError.code).
ERROR_CODES = {
    # framing, either direction
    "BAD_CRC": "a frame whose CRC does not match (resend it)",
    "BAD_FRAME": "a frame that cannot be read: length or ETX wrong (resend it)",
    "UNKNOWN_TYPE": "a message type this side does not take",
    "BAD_BODY": "a body that is not one MessagePack map within the limits",
    "MISSING_FIELD": "a required field is absent",
    "BAD_FIELD": "a field of the wrong type, length or format",
    "BAD_AMOUNT": "an amount that is not an integer of minor units > 0 (or too large)",
    "BAD_CURRENCY": "a currency the display has no table entry for",
    "ITEMS_MISMATCH": "the item lines do not add up to the amount",
    "CLEAR_PAN": "a card number that is not masked (refused, never passed on)",
    # the display's state
    "NO_PAYMENT_DATA": "QR_PAY or CANCEL before any PAYMENT_DATA",
    "ORDER_MISMATCH": "QR_PAY or CANCEL for another order than the one loaded",
    "BUSY": "PAYMENT_DATA while a payment is under way (CANCEL it first)",
    "ORDER_DONE": "the order already has its final result",
    "AMOUNT_MISMATCH": "SHOW_QR or SHOW_RESULT whose amount or currency is not the "
                       "loaded order's",
    # the register's driver
    "NO_ANSWER": "the display did not acknowledge in time (after all resends)",
    "TIMEOUT": "no payment result within the caller's timeout",
    "QR_MISMATCH": "the QR the display drew does not carry the order or amount sent",
    "NOT_STARTED": "the driver is not running",
}
_RESEND_CODES = ("BAD_CRC", "BAD_FRAME")

DEFAULT_LINE = LineSettings(115200, 8, "N", 1)

_ORDER_RE = re.compile(r"[A-Za-z0-9._/-]{1,25}")
_REGISTER_RE = re.compile(r"[A-Za-z0-9-]{1,8}")
_ID_RE = re.compile(r"[\x21-\x7e]{1,25}")
_TXN_RE = re.compile(r"[\x21-\x7e]{1,64}")
#: SHOW_QR ``content``: the wallet's code URL, printable ASCII (no spaces).
_CONTENT_RE = re.compile(r"[\x21-\x7e]{8,512}")
#: SHOW_RESULT ``text``: up to 40 characters, no control characters.
_TEXT_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,40}")
_PAN_RE = re.compile(r"[0-9]{0,6}\*{4,}[0-9]{4}|tok_[A-Za-z0-9]{4,60}")
_MAX_AMOUNT = 10 ** 10 - 1
_MAX_ITEMS = 100
_MAX_QTY = 1_000_000
_MAX_ATTEMPT = 2 ** 31 - 1


class ProtocolError(LanecoreError):
    """A message that breaks the protocol; ``code`` is what the NAK carries."""

    code = "BAD_FIELD"


class QrDisplayError(LanecoreError):
    """A register-side call that did not succeed; ``code`` from :data:`ERROR_CODES`."""

    code = "NO_ANSWER"


# --------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------

def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the same as the EMV QR's."""
    return crc16_ccitt_false(data)


def pack_body(body: dict | None) -> bytes:
    """A message body as MessagePack (``b""`` for none)."""
    if not body:
        return b""
    return msgpack.packb(body, use_bin_type=True)


def header_check(seq: int, mtype: int, length: int) -> int:
    """HCHK: the byte that makes SEQ + TYPE + LEN_HI + LEN_LO + HCHK = 0 (mod 256)."""
    return -(seq + mtype + (length >> 8) + (length & 0xFF)) & 0xFF


def encode_frame(seq: int, mtype: int, body: bytes = b"") -> bytes:
    """One frame: STX, SEQ, TYPE, LEN (big-endian), HCHK, BODY, CRC (big-endian),
    ETX. The CRC covers SEQ through the end of BODY."""
    if not (0 <= seq <= 255 and 0 <= mtype <= 255):
        raise ValueError("SEQ and TYPE are single bytes")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"body of {len(body)} bytes; the most is {MAX_BODY}",
                            code="BAD_BODY")
    core = (bytes((seq, mtype)) + len(body).to_bytes(2, "big")
            + bytes((header_check(seq, mtype, len(body)),)) + body)
    return bytes((STX,)) + core + crc16(core).to_bytes(2, "big") + bytes((ETX,))


@dataclass(frozen=True)
class Frame:
    """A frame that passed its checks; ``crc`` tells a resend from a new frame."""

    seq: int
    mtype: int
    body: bytes
    crc: int


@dataclass(frozen=True)
class Corrupt:
    """A frame-shaped run of bytes that failed its CRC or never completed."""

    code: str          # BAD_CRC or BAD_FRAME
    message: str


class FrameDecoder:
    """Bytes in, :class:`Frame` / :class:`Corrupt` / garbage counts out.

    Keeps a partial frame across calls. Resynchronises by dropping one byte and
    looking for the next STX whenever the bytes after an STX are not a frame (header
    check, length limit, ETX or CRC wrong), so a real frame behind line noise is
    still found. The header check means a noise STX is taken for the start of a
    long frame only once in 256 times; even then a partial frame that gets no byte
    for ``frame_gap_s`` is given up, so it cannot swallow the next frames for long.
    """

    def __init__(self, frame_gap_s: float = 0.5) -> None:
        self.frame_gap_s = frame_gap_s
        self._buf = bytearray()
        self._last_rx = 0.0

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes, now: float = 0.0) -> tuple[list, int]:
        """``(frames and corrupts, count of garbage bytes skipped)``."""
        out: list = []
        garbage = 0
        if self._buf and data and now - self._last_rx > self.frame_gap_s:
            garbage += self._give_up_partial(out)
        if data:
            self._buf += data
            self._last_rx = now
        garbage += self._scan(out)
        return out, garbage

    def expire(self, now: float) -> tuple[list, int]:
        """Give up a partial frame older than ``frame_gap_s``."""
        out: list = []
        if self._buf and now - self._last_rx > self.frame_gap_s:
            n = self._give_up_partial(out)
            return out, n + self._scan(out)
        return out, 0

    def _give_up_partial(self, out: list) -> int:
        out.append(Corrupt("BAD_FRAME", f"an incomplete frame ({len(self._buf)} bytes) "
                                        "timed out"))
        del self._buf[:1]
        return 0

    def _scan(self, out: list) -> int:
        buf = self._buf
        garbage = 0
        while buf:
            i = buf.find(STX)
            if i < 0:
                garbage += len(buf)
                buf.clear()
                break
            if i:
                garbage += i
                del buf[:i]
            if len(buf) < HEADER:
                break
            n = int.from_bytes(buf[3:5], "big")
            if sum(buf[1:HEADER]) & 0xFF or n > MAX_BODY:
                garbage += 1
                del buf[:1]
                continue
            total = OVERHEAD + n
            if len(buf) < total:
                break
            if buf[total - 1] != ETX:
                garbage += 1
                del buf[:1]
                continue
            core = bytes(buf[1:HEADER + n])
            crc = int.from_bytes(buf[HEADER + n:HEADER + 2 + n], "big")
            if crc16(core) != crc:
                out.append(Corrupt("BAD_CRC", f"frame seq {core[0]} type 0x{core[1]:02X}: "
                                              f"CRC {crc:04X}, computed {crc16(core):04X}"))
                # header check and ETX both held, so this was a frame hit on the line,
                # not noise: drop all of it rather than rescan its body as garbage
                del buf[:total]
                continue
            out.append(Frame(core[0], core[1], core[HEADER - 1:], crc))
            del buf[:total]
        return garbage


# --------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------

def _unpack(body: bytes) -> dict:
    if not body:
        return {}
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                              max_str_len=MAX_BODY, max_bin_len=MAX_BODY,
                              max_array_len=_MAX_ITEMS + 1, max_map_len=64,
                              max_ext_len=0)
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"body is not MessagePack: {exc}", code="BAD_BODY") from None
    if not isinstance(obj, dict):
        raise ProtocolError("body is not a map", code="BAD_BODY")
    return obj


def _get(body: dict, key: str, *, optional: bool = False, default=None):
    if key not in body or body[key] is None:
        if optional:
            return default
        raise ProtocolError(f"{key!r} is missing", code="MISSING_FIELD")
    return body[key]


def _text(body: dict, key: str, regex: re.Pattern | None = None, *, most: int = 64,
          optional: bool = False) -> str | None:
    v = _get(body, key, optional=optional)
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > most or (regex and not regex.fullmatch(v)):
        raise ProtocolError(f"{key!r} = {v!r} is not in the documented format")
    return v


def _int(body: dict, key: str, lo: int, hi: int, code: str = "BAD_FIELD") -> int:
    v = _get(body, key)
    if type(v) is not int or not lo <= v <= hi:
        raise ProtocolError(f"{key!r} = {v!r} is not an integer {lo}..{hi}", code=code)
    return v


def _bool(body: dict, key: str) -> bool:
    v = _get(body, key)
    if type(v) is not bool:
        raise ProtocolError(f"{key!r} = {v!r} is not true/false")
    return v


def _currency(body: dict) -> str:
    v = _get(body, "currency")
    if v not in CURRENCIES:
        raise ProtocolError(f"currency {v!r} is not one of {', '.join(CURRENCIES)}",
                            code="BAD_CURRENCY")
    return v


def _amount(body: dict, key: str = "amount") -> int:
    return _int(body, key, 1, _MAX_AMOUNT, code="BAD_AMOUNT")


# --------------------------------------------------------------------------------------
# Messages: register -> display
# --------------------------------------------------------------------------------------

class _Message:
    TYPE = 0

    def to_body(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        """Plain JSON-ready types (tuples as lists), with the message's name."""
        d = {k: list(v) if isinstance(v, tuple) else v
             for k, v in dataclasses.asdict(self).items()}
        d["message"] = type(self).__name__
        return d


@dataclass(frozen=True)
class Item:
    """One line of the shopping list: ``qty`` pieces (or grams when ``unit`` is
    ``"g"``), ``amount_minor`` the line's amount (negative for a discount line)."""

    name: str
    qty: int
    amount_minor: int
    unit: str = "pc"

    def to_body(self) -> dict:
        d = {"name": self.name, "qty": self.qty, "amount": self.amount_minor}
        if self.unit != "pc":
            d["unit"] = self.unit
        return d

    @classmethod
    def from_body(cls, body) -> "Item":
        if not isinstance(body, dict):
            raise ProtocolError("an item is a map")
        name = _get(body, "name")
        if not isinstance(name, str) or not 1 <= len(name) <= 40:
            raise ProtocolError(f"item name {name!r} is not 1-40 characters")
        unit = _get(body, "unit", optional=True, default="pc")
        if unit not in ("pc", "g"):
            raise ProtocolError(f"item unit {unit!r} is not 'pc' or 'g'")
        return cls(name, _int(body, "qty", 1, _MAX_QTY),
                   _int(body, "amount", -_MAX_AMOUNT, _MAX_AMOUNT, code="BAD_AMOUNT"), unit)


@dataclass(frozen=True)
class PaymentData(_Message):
    """What the register asks to be paid: ``amount_minor`` of ``currency`` (ISO 4217
    alphabetic) for order ``order_no`` at register ``register``, with the list the
    shopper checks on the display (lines must add up to the amount)."""

    order_no: str
    register: str
    amount_minor: int
    currency: str = "CNY"
    items: tuple[Item, ...] = ()

    TYPE = T_PAYMENT_DATA

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        self.from_body(self.to_body())       # the same checks the display makes

    def to_body(self) -> dict:
        return {"order": self.order_no, "register": self.register,
                "amount": self.amount_minor, "currency": self.currency,
                "items": [i.to_body() for i in self.items]}

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "PaymentData":
        order = _text(body, "order", _ORDER_RE)
        register = _text(body, "register", _REGISTER_RE)
        amount = _amount(body)
        currency = _currency(body)
        raw_items = _get(body, "items", optional=True, default=[])
        if not isinstance(raw_items, list) or len(raw_items) > _MAX_ITEMS:
            raise ProtocolError(f"items is a list of at most {_MAX_ITEMS} lines")
        items = tuple(Item.from_body(i) for i in raw_items)
        if items and sum(i.amount_minor for i in items) != amount:
            raise ProtocolError(f"the lines add up to {sum(i.amount_minor for i in items)}, "
                                f"the amount is {amount}", code="ITEMS_MISMATCH")
        self = cls.__new__(cls)
        for k, v in (("order_no", order), ("register", register), ("amount_minor", amount),
                     ("currency", currency), ("items", items)):
            object.__setattr__(self, k, v)
        return self


@dataclass(frozen=True)
class QrPay(_Message):
    """Show the payment QR for the loaded order."""

    order_no: str
    TYPE = T_QR_PAY

    def to_body(self) -> dict:
        return {"order": self.order_no}

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "QrPay":
        return cls(_text(body, "order", _ORDER_RE))


@dataclass(frozen=True)
class Cancel(_Message):
    """Stop the payment of the loaded order (the display answers with a result)."""

    order_no: str
    TYPE = T_CANCEL

    def to_body(self) -> dict:
        return {"order": self.order_no}

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "Cancel":
        return cls(_text(body, "order", _ORDER_RE))


@dataclass(frozen=True)
class StatusRequest(_Message):
    """``STATUS?``: ask for a STATUS message."""

    TYPE = T_STATUS_REQ

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "StatusRequest":
        return cls()


@dataclass(frozen=True)
class ShowQr(_Message):
    """Draw the QR whose content the register supplies — a wallet's own
    merchant-presented QR (its ``code_url`` from the native order / precreate),
    not the display's EMVCo payload — for the loaded order, with its amount. The
    display answers QR_SHOWN with ``payload`` = ``content``; the result then comes
    from the register (SHOW_RESULT), not from the display."""

    order_no: str
    content: str
    amount_minor: int
    currency: str = "CNY"
    TYPE = T_SHOW_QR

    def __post_init__(self) -> None:
        self.from_body(self.to_body())       # the same checks the display makes

    def to_body(self) -> dict:
        return {"order": self.order_no, "content": self.content,
                "amount": self.amount_minor, "currency": self.currency}

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "ShowQr":
        order = _text(body, "order", _ORDER_RE)
        content = _get(body, "content")
        if not isinstance(content, str) or not _CONTENT_RE.fullmatch(content):
            raise ProtocolError("content is 8-512 printable ASCII characters (the "
                                "wallet's code URL)")
        amount, currency = _amount(body), _currency(body)
        self = cls.__new__(cls)
        for k, v in (("order_no", order), ("content", content), ("amount_minor", amount),
                     ("currency", currency)):
            object.__setattr__(self, k, v)
        return self


@dataclass(frozen=True)
class ShowResult(_Message):
    """Tell the shopper how the loaded order's payment ended: ``result`` one of
    :data:`RESULTS` (``paid``, ``failed``, ``cancelled``, ``expired``), the
    ``amount_minor`` of ``currency`` (the order's), and an optional short ``text``
    (1-40 characters, no control characters; e.g. the wallet's reason). The
    display stops showing the QR at once: a QR that was paid, cancelled or expired
    is never left up for a second scan."""

    order_no: str
    result: str
    amount_minor: int
    currency: str = "CNY"
    text: str = ""
    TYPE = T_SHOW_RESULT

    def __post_init__(self) -> None:
        self.from_body(self.to_body())

    def to_body(self) -> dict:
        d = {"order": self.order_no, "result": self.result, "amount": self.amount_minor,
             "currency": self.currency}
        if self.text:
            d["text"] = self.text
        return d

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "ShowResult":
        order = _text(body, "order", _ORDER_RE)
        result = _get(body, "result")
        if result not in RESULTS:
            raise ProtocolError(f"result {result!r} is not one of {', '.join(RESULTS)}")
        amount, currency = _amount(body), _currency(body)
        text = _get(body, "text", optional=True, default="")
        if text != "" and (not isinstance(text, str) or not _TEXT_RE.fullmatch(text)):
            raise ProtocolError("text is 1-40 characters, no control characters")
        self = cls.__new__(cls)
        for k, v in (("order_no", order), ("result", result), ("amount_minor", amount),
                     ("currency", currency), ("text", text)):
            object.__setattr__(self, k, v)
        return self


# --------------------------------------------------------------------------------------
# Messages: display -> register
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QrShown(_Message):
    """The display is showing ``payload`` (EMV MPM text) for ``order_no``, payment
    attempt number ``attempt`` (the display counts attempts; a QR shown again for
    the same attempt keeps its number). ``at``: monotonic seconds at receipt."""

    order_no: str
    payload: str
    amount_minor: int
    currency: str
    attempt: int = 0
    at: float = 0.0
    TYPE = T_QR_SHOWN

    def to_body(self) -> dict:
        return {"order": self.order_no, "payload": self.payload,
                "amount": self.amount_minor, "currency": self.currency,
                "attempt": self.attempt}

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "QrShown":
        payload = _get(body, "payload")
        if not isinstance(payload, str) or not 8 <= len(payload) <= 512:
            raise ProtocolError("payload is 8-512 characters of EMV QR text")
        return cls(_text(body, "order", _ORDER_RE), payload, _amount(body),
                   _currency(body), _int(body, "attempt", 0, _MAX_ATTEMPT), now)


@dataclass(frozen=True)
class PayResult(_Message):
    """The final result of one payment attempt, with what the register records.

    ``ok``: paid. ``reason``: "" when paid, else one of :data:`REASONS` (or
    ``UNKNOWN`` for a code this driver does not know). ``txn_ref``: the payment
    provider's transaction reference ("" when none). ``paid_minor``: the amount
    actually paid in minor units of ``currency`` (0 when nothing was paid).
    ``channel``: ``QR`` or ``CARD``. ``attempt``: the display's attempt number
    (as in :class:`QrShown`). ``at``: monotonic seconds at receipt;
    ``unix_time``: wall-clock seconds at receipt (for the ledger).
    """

    order_no: str
    ok: bool
    reason: str
    txn_ref: str
    paid_minor: int
    currency: str
    channel: str = "QR"
    attempt: int = 0
    at: float = 0.0
    unix_time: float = 0.0
    TYPE = T_PAY_RESULT

    def to_body(self) -> dict:
        d = {"order": self.order_no, "ok": self.ok, "paid": self.paid_minor,
             "currency": self.currency, "channel": self.channel,
             "attempt": self.attempt}
        if self.reason:
            d["reason"] = self.reason
        if self.txn_ref:
            d["txn"] = self.txn_ref
        return d

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "PayResult":
        ok = _bool(body, "ok")
        txn = _text(body, "txn", _TXN_RE, optional=not ok) or ""
        reason = "" if ok else _text(body, "reason", re.compile(r"[A-Z0-9_]{1,32}"))
        channel = _get(body, "channel", optional=True, default="QR")
        if channel not in CHANNELS:
            raise ProtocolError(f"channel {channel!r} is not one of {CHANNELS}")
        return cls(_text(body, "order", _ORDER_RE), ok, reason, txn,
                   _int(body, "paid", 0, _MAX_AMOUNT, code="BAD_AMOUNT"),
                   _currency(body), channel, _int(body, "attempt", 0, _MAX_ATTEMPT), now)

    @property
    def known_reason(self) -> bool:
        return self.ok or self.reason in REASONS


@dataclass(frozen=True)
class CardRead(_Message):
    """A card (``CARD``) or phone/contactless card (``NFC``) at the display's reader.
    ``pan_masked``: at most the first 6 and the last 4 digits in clear
    (``621700******1234``), or a token ``tok_...``; never a full card number."""

    kind: str
    pan_masked: str
    order_no: str | None = None
    at: float = 0.0
    TYPE = T_CARD_READ

    def to_body(self) -> dict:
        d = {"kind": self.kind, "pan": self.pan_masked}
        if self.order_no:
            d["order"] = self.order_no
        return d

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "CardRead":
        kind = _get(body, "kind")
        if kind not in CARD_KINDS:
            raise ProtocolError(f"kind {kind!r} is not one of {CARD_KINDS}")
        pan = _get(body, "pan")
        if not isinstance(pan, str) or not _PAN_RE.fullmatch(pan):
            # whatever it is, it is not passed on: it might be a clear card number
            raise ProtocolError("pan is not a masked card number or a token",
                                code="CLEAR_PAN")
        return cls(kind, pan, _text(body, "order", _ORDER_RE, optional=True), now)


@dataclass(frozen=True)
class DisplayStatus(_Message):
    """What the display is doing (``state``, one of :data:`STATES` or ``UNKNOWN``),
    the loaded order, whether its card reader is present, its identity, and the
    last final result it has (so a register that missed it can recover it)."""

    state: str
    order_no: str | None
    card_reader: bool
    device_id: str
    serial: str
    store: str
    last_result: PayResult | None = None
    at: float = 0.0
    TYPE = T_STATUS

    def to_body(self) -> dict:
        return {"state": self.state, "order": self.order_no,
                "card_reader": self.card_reader, "device_id": self.device_id,
                "serial": self.serial, "store": self.store,
                "last": self.last_result.to_body() if self.last_result else None}

    @classmethod
    def from_body(cls, body: dict, now: float = 0.0) -> "DisplayStatus":
        state = _text(body, "state", re.compile(r"[A-Z_]{1,32}"))
        last = _get(body, "last", optional=True)
        if last is not None and not isinstance(last, dict):
            raise ProtocolError("last is a PAY_RESULT map or nil")
        store = _get(body, "store")
        if not isinstance(store, str) or len(store) > 64:
            raise ProtocolError("store is a string of at most 64 characters")
        return cls(state, _text(body, "order", _ORDER_RE, optional=True),
                   _bool(body, "card_reader"), _text(body, "device_id", _ID_RE),
                   _text(body, "serial", _ID_RE), store,
                   PayResult.from_body(last, now) if last is not None else None, now)


# --------------------------------------------------------------------------------------
# Link protocol
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Acked:
    """Our frame ``seq`` was acknowledged."""
    seq: int


@dataclass(frozen=True)
class Rejected:
    """Our frame ``seq`` was refused with ``code`` (:data:`ERROR_CODES`)."""
    seq: int
    code: str
    message: str


@dataclass(frozen=True)
class GaveUp:
    """Our frame ``seq`` was sent ``tries`` times without an answer."""
    seq: int
    tries: int


@dataclass(frozen=True)
class Command:
    """A new (not repeated) message from the register, waiting for the display's
    :meth:`DisplayProtocol.accept` or :meth:`DisplayProtocol.reject`."""
    seq: int
    message: _Message


@dataclass
class _Outgoing:
    seq: int
    frame: bytes
    tries: int = 0
    sent_at: float = 0.0


class _Endpoint:
    """Framing, acknowledgements, resends and duplicate detection for one side.
    Subclasses name the messages they take (``RECEIVES``) and say what happens to
    a new one (``_received``)."""

    RECEIVES: dict[int, type] = {}

    def __init__(self, *, ack_timeout_s: float = 0.25, max_tries: int = 4,
                 frame_gap_s: float = 0.5, byte_time_s: float = 0.0) -> None:
        self.ack_timeout_s = ack_timeout_s
        # a long frame on a slow line takes a while to leave: its answer cannot
        # come before it has (10 bits per byte: start, 8 data, stop)
        self.byte_time_s = byte_time_s
        self.max_tries = max_tries
        self.decoder = FrameDecoder(frame_gap_s)
        self._seq = 0
        self._queue: deque[_Outgoing] = deque()
        self._inflight: _Outgoing | None = None
        self._out = bytearray()
        self._last_rx: tuple[int, int] | None = None     # (seq, crc) of the last data frame
        self._last_reply = b""

    # ---- sending ---------------------------------------------------------------
    def next_seq(self) -> int:
        """1..255 and round again (0 is kept for NAKs of unreadable frames)."""
        self._seq = self._seq % 255 + 1
        return self._seq

    def send(self, msg: _Message, now: float) -> int:
        """Queue a data message; returns its sequence number. Frames go out one at
        a time: the next when the previous is acknowledged, refused or given up."""
        seq = self.next_seq()
        self._queue.append(_Outgoing(seq, encode_frame(seq, msg.TYPE, pack_body(msg.to_body()))))
        self._pump(now)
        return seq

    def abandon(self, seq: int) -> None:
        """Stop (re)sending frame ``seq`` (its caller stopped waiting)."""
        self._queue = deque(o for o in self._queue if o.seq != seq)
        if self._inflight is not None and self._inflight.seq == seq:
            self._inflight = None

    def _pump(self, now: float) -> None:
        if self._inflight is None and self._queue:
            self._inflight = self._queue.popleft()
            self._transmit(now)

    def _transmit(self, now: float) -> None:
        o = self._inflight
        o.tries += 1
        o.sent_at = now
        self._out += o.frame

    @property
    def busy(self) -> bool:
        return self._inflight is not None or bool(self._queue)

    def take_output(self) -> bytes:
        """Everything to write to the line now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def poll(self, now: float) -> list:
        """Resend or give up the frame in flight whose acknowledgement is late, and
        drop a stale partial frame. Returns :class:`GaveUp` and faults."""
        events: list = []
        self._process(*self.decoder.expire(now), events, now)
        o = self._inflight
        if o is not None and (now - o.sent_at
                              >= self.ack_timeout_s + len(o.frame) * self.byte_time_s):
            if o.tries >= self.max_tries:
                self._inflight = None
                events.append(GaveUp(o.seq, o.tries))
                events.append(DeviceFault(NO_ANSWER, f"frame {o.seq} unanswered after "
                                                     f"{o.tries} tries", now))
                self._pump(now)
            else:
                self._transmit(now)
        return events

    def reset_input(self) -> None:
        """Forget a partial frame (after a reconnect its bytes are from before)."""
        self.decoder.reset()

    # ---- receiving -------------------------------------------------------------
    def _reply(self, seq: int, code: str | None = None, message: str = "") -> bytes:
        if code is None:
            return encode_frame(seq, T_ACK)
        return encode_frame(seq, T_NAK, pack_body({"code": code, "msg": message[:200]}))

    def _corrupt(self, corrupts, garbage: int, events: list, now: float) -> None:
        if garbage:
            events.append(DeviceFault(GARBAGE, f"{garbage} bytes that are not frames skipped",
                                      now))
        for c in corrupts:
            events.append(DeviceFault(BAD_FRAME, f"{c.code}: {c.message}", now))
            if c.code == "BAD_CRC":
                # its SEQ cannot be trusted: NAK 0 asks for a resend of whatever is in flight
                self._out += self._reply(0, "BAD_CRC", c.message)

    def feed(self, data: bytes, now: float = 0.0) -> list:
        """Bytes from the line -> events (messages, Acked/Rejected/GaveUp, faults).
        Replies (ACK/NAK) and resends are left in :meth:`take_output`."""
        events: list = []
        self._process(*self.decoder.feed(data, now), events, now)
        return events

    def _process(self, items: list, garbage: int, events: list, now: float) -> None:
        self._corrupt([c for c in items if isinstance(c, Corrupt)], garbage, events, now)
        for fr in items:
            if isinstance(fr, Frame):
                self._frame(fr, events, now)

    def _frame(self, fr: Frame, events: list, now: float) -> None:
        if fr.mtype == T_ACK:
            o = self._inflight
            if o is not None and o.seq == fr.seq:
                self._inflight = None
                events.append(Acked(fr.seq))
                self._pump(now)
            return                                   # a late ACK of a resend: nothing to do
        if fr.mtype == T_NAK:
            try:
                body = _unpack(fr.body)
                code, msg = str(body.get("code", "")), str(body.get("msg", ""))
            except ProtocolError:
                code, msg = "BAD_BODY", "unreadable NAK"
            o = self._inflight
            if o is None:
                return
            if code in _RESEND_CODES and fr.seq in (0, o.seq):
                if o.tries < self.max_tries:
                    self._transmit(now)
                return
            if fr.seq == o.seq:
                self._inflight = None
                events.append(Rejected(fr.seq, code, msg))
                self._pump(now)
            return
        key = (fr.seq, fr.crc)
        if key == self._last_rx:
            # the peer resent it because our answer was lost: answer again, act not
            self._out += self._last_reply
            return
        self._last_rx = key
        self._last_reply = b""
        cls = self.RECEIVES.get(fr.mtype)
        if cls is None:
            self._answer(fr.seq, "UNKNOWN_TYPE", f"type 0x{fr.mtype:02X} is not taken here")
            events.append(DeviceFault(BAD_FRAME, f"UNKNOWN_TYPE: 0x{fr.mtype:02X}", now))
            return
        try:
            msg = cls.from_body(_unpack(fr.body), now)
        except ProtocolError as exc:
            self._answer(fr.seq, exc.code, exc.message)
            events.append(DeviceFault(BAD_FRAME, f"{exc.code}: {exc.message}", now))
            return
        self._received(fr.seq, msg, events, now)

    def _answer(self, seq: int, code: str | None = None, message: str = "") -> None:
        self._last_reply = self._reply(seq, code, message)
        self._out += self._last_reply



class RegisterProtocol(_Endpoint):
    """The register's side: sends :class:`PaymentData`, :class:`QrPay`,
    :class:`Cancel`, :class:`StatusRequest`, :class:`ShowQr`, :class:`ShowResult`;
    acknowledges and returns the
    display's messages. A PAY_RESULT with an unknown reason or a STATUS with an
    unknown state is acknowledged (it was delivered intact), returned with
    ``UNKNOWN`` and reported as an ``UNKNOWN_STATUS`` fault."""

    RECEIVES = {T_QR_SHOWN: QrShown, T_PAY_RESULT: PayResult, T_CARD_READ: CardRead,
                T_STATUS: DisplayStatus}

    def _received(self, seq: int, msg: _Message, events: list, now: float) -> None:
        self._answer(seq)
        if isinstance(msg, PayResult):
            msg = self._known(msg, events, now)
        elif isinstance(msg, DisplayStatus):
            last = msg.last_result and self._known(msg.last_result, events, now)
            if msg.state not in STATES:
                events.append(DeviceFault(UNKNOWN_STATUS, f"display state {msg.state!r}", now))
                msg = dataclasses.replace(msg, state="UNKNOWN")
            msg = dataclasses.replace(msg, last_result=last or None)
        events.append(msg)

    @staticmethod
    def _known(r: PayResult, events: list, now: float) -> PayResult:
        if r.known_reason:
            return r
        events.append(DeviceFault(UNKNOWN_STATUS, f"payment result reason {r.reason!r}", now))
        return dataclasses.replace(r, reason="UNKNOWN")


class DisplayProtocol(_Endpoint):
    """The display's side: returns each new register message as a :class:`Command`
    for the display to :meth:`accept` or :meth:`reject`; a repeated frame gets the
    same answer again and is not returned (so it is never acted on twice)."""

    RECEIVES = {T_PAYMENT_DATA: PaymentData, T_QR_PAY: QrPay, T_CANCEL: Cancel,
                T_STATUS_REQ: StatusRequest, T_SHOW_QR: ShowQr, T_SHOW_RESULT: ShowResult}

    def _received(self, seq: int, msg: _Message, events: list, now: float) -> None:
        events.append(Command(seq, msg))

    def accept(self, cmd: Command, *, send_ack: bool = True) -> None:
        """ACK ``cmd``. ``send_ack=False`` records the answer without sending it
        (the simulator's lost-ACK fault: the register resends)."""
        self._last_reply = self._reply(cmd.seq)
        if send_ack:
            self._out += self._last_reply

    def reject(self, cmd: Command, code: str, message: str = "") -> None:
        """NAK ``cmd`` with ``code`` (:data:`ERROR_CODES`)."""
        self._answer(cmd.seq, code, message or ERROR_CODES.get(code, code))


# --------------------------------------------------------------------------------------
# The register's port loop
# --------------------------------------------------------------------------------------

class QrDisplayDriver:
    """The register's connection to one QR display.

    ``url``: anything :func:`serial.serial_for_url` opens. ``on_event`` gets every
    :class:`QrShown`, :class:`PayResult`, :class:`CardRead`, :class:`DisplayStatus`
    and :class:`~lanecore.drivers.link.DeviceFault`, on the driver's thread.
    ``ack_timeout_s`` x ``max_tries`` bounds how long a frame is resent before
    ``NO_ANSWER``. After a reconnect the driver asks for STATUS to recover a
    result it missed, and it never returns a result of another order (or one
    delivered before) from :meth:`wait_result`.
    """

    def __init__(self, url: str, *, line: LineSettings | None = None,
                 on_event: Callable[[object], None] | None = None,
                 ack_timeout_s: float = 0.25, max_tries: int = 4,
                 read_timeout_s: float = 0.02, backoff_min_s: float = 0.05,
                 backoff_max_s: float = 1.0) -> None:
        self.on_event = on_event
        self.faults: list[DeviceFault] = []
        line = line or DEFAULT_LINE
        self.proto = RegisterProtocol(ack_timeout_s=ack_timeout_s, max_tries=max_tries,
                                      byte_time_s=(line.bytesize + 2) / line.baudrate)
        self.link = Link(url, line, read_timeout_s=read_timeout_s,
                         backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s,
                         on_fault=self._fault)
        self._cv = threading.Condition()
        self._replies: dict[int, object] = {}
        self._awaiting: set[int] = set()   # sequence numbers a caller waits on
        self._payment: PaymentData | None = None
        self._shown: QrShown | None = None
        self._results: dict[str, PayResult] = {}
        self._seen_results: set[tuple] = set()
        self._min_attempt = 0             # results of earlier attempts are history
        self._status: DisplayStatus | None = None
        self._status_count = 0
        self._opens_seen = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------
    def start(self) -> "QrDisplayDriver":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="qrdisplay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.link.close()

    def __enter__(self) -> "QrDisplayDriver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the loop --------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.link.read()
            except LinkDown:
                data = b""
                self._stop.wait(0.02)      # the link sleeps out its own backoff
            now = time.monotonic()
            with self._cv:
                if self.link.opens != self._opens_seen:
                    reconnect = self._opens_seen > 0
                    self._opens_seen = self.link.opens
                    self.proto.reset_input()
                    if reconnect and self._payment is not None:
                        # the display may have given up resending a result while the
                        # cable was out; it keeps the last one in STATUS
                        self.proto.send(StatusRequest(), now)
                events = self.proto.feed(data, now) + self.proto.poll(now)
                out = self.proto.take_output()
            if out:
                try:
                    self.link.write(out)
                except LinkDown:
                    pass                   # lost like on a cable; resends cover it
            for ev in events:
                self._handle(ev)

    def _fault(self, fault: DeviceFault) -> None:
        self.faults.append(fault)
        del self.faults[:-100]
        self._deliver(fault)

    def _deliver(self, ev) -> None:
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a broken callback must not stop the lane's display
                pass

    def _handle(self, ev) -> None:
        if isinstance(ev, DeviceFault):
            self._fault(ev)
            return
        with self._cv:
            if isinstance(ev, (Acked, Rejected, GaveUp)):
                if ev.seq in self._awaiting:
                    self._replies[ev.seq] = ev
                    self._cv.notify_all()
                return
            if isinstance(ev, QrShown):
                if self._payment is not None and ev.order_no == self._payment.order_no:
                    self._shown = ev
            elif isinstance(ev, DisplayStatus):
                self._status = ev
                self._status_count += 1
                # a result the display gave up resending while the cable was out
                recovered = ev.last_result and self._result(ev.last_result)
            elif isinstance(ev, PayResult):
                ev = self._result(ev)
                if ev is None:
                    return
            self._cv.notify_all()
        self._deliver(ev)
        if isinstance(ev, DisplayStatus) and recovered:
            self._deliver(recovered)

    def _result(self, r: PayResult) -> PayResult | None:
        """Stamp, check and keep a result; None if it was delivered before."""
        key = (r.order_no, r.attempt, r.ok, r.reason, r.txn_ref, r.paid_minor)
        if key in self._seen_results:
            return None
        self._seen_results.add(key)
        if len(self._seen_results) > 1000:     # bounded on a lane that runs for months
            self._seen_results = {k for k in self._seen_results if k[0] == r.order_no}
        r = dataclasses.replace(r, unix_time=time.time())
        pay = self._payment
        if pay is not None and r.order_no == pay.order_no:
            if r.ok and (r.paid_minor != pay.amount_minor or r.currency != pay.currency):
                # money moved but not the amount asked: not a sale to record as paid
                r = dataclasses.replace(r, ok=False, reason="AMOUNT_MISMATCH")
            if r.attempt >= self._min_attempt:
                self._results[r.order_no] = r
        return r

    # ---- synchronous calls ------------------------------------------------------
    def _request(self, msg: _Message, timeout_s: float) -> None:
        if self._thread is None:
            raise QrDisplayError("start() the driver first", code="NOT_STARTED")
        end = time.monotonic() + timeout_s
        with self._cv:
            seq = self.proto.send(msg, time.monotonic())
            self._replies.pop(seq, None)
            self._awaiting.add(seq)
            try:
                while seq not in self._replies:
                    left = end - time.monotonic()
                    if left <= 0:
                        self.proto.abandon(seq)
                        raise QrDisplayError(
                            f"{type(msg).__name__}: no answer in {timeout_s:g} s (port "
                            f"{'open' if self.link.is_open else 'down'})", code="NO_ANSWER")
                    self._cv.wait(left)
                reply = self._replies.pop(seq)
            finally:
                self._awaiting.discard(seq)
        if isinstance(reply, Rejected):
            raise QrDisplayError(f"{type(msg).__name__} refused: {reply.message}",
                                 code=reply.code)
        if isinstance(reply, GaveUp):
            raise QrDisplayError(f"{type(msg).__name__}: unanswered after {reply.tries} "
                                 f"tries", code="NO_ANSWER")

    def _new_attempt(self, order_no: str) -> None:
        """A new attempt at an order: its earlier failure is history, not its result
        (a success stays: the display refuses to take an order twice)."""
        r = self._results.get(order_no)
        if r is not None and not r.ok:
            del self._results[order_no]
            self._min_attempt = max(self._min_attempt, r.attempt + 1)

    def send_payment(self, data: PaymentData, timeout_s: float = 2.0) -> None:
        """Load ``data`` into the display (raises :class:`QrDisplayError`: the NAK's
        code, or ``NO_ANSWER``)."""
        with self._cv:
            if self._payment is None or self._payment.order_no != data.order_no:
                self._min_attempt = 0
            self._payment = data
            self._shown = None
            self._new_attempt(data.order_no)
        self._request(data, timeout_s)

    def qr_pay(self, timeout_s: float = 3.0) -> QrShown:
        """Show the QR for the loaded order; returns what the display drew, after
        checking that the payload carries the order, amount and currency sent."""
        end = time.monotonic() + timeout_s
        pay = self._begin_show()
        self._request(QrPay(pay.order_no), timeout_s)
        shown = self._await_shown(end, "QR_PAY")
        try:
            qr = MerchantQr.from_payload(shown.payload)
        except EmvQrError as exc:
            raise QrDisplayError(f"the QR shown is not readable: {exc}",
                                 code="QR_MISMATCH") from None
        if (qr.order_no, qr.amount_minor, qr.currency, qr.register) != (
                pay.order_no, pay.amount_minor, pay.currency, pay.register):
            raise QrDisplayError("the QR shown carries another order or amount",
                                 code="QR_MISMATCH")
        return shown

    def _begin_show(self) -> PaymentData:
        """The loaded payment (``NO_PAYMENT_DATA`` without one), a new attempt begun
        for it and the last QR_SHOWN forgotten: before QR_PAY or SHOW_QR."""
        with self._cv:
            pay = self._payment
            if pay is None:
                raise QrDisplayError("send_payment first", code="NO_PAYMENT_DATA")
            self._shown = None
            self._new_attempt(pay.order_no)
        return pay

    def _await_shown(self, end: float, request: str) -> QrShown:
        """The QR_SHOWN the display reports after ``request`` was acknowledged, by
        the monotonic time ``end`` (``NO_ANSWER`` otherwise)."""
        with self._cv:
            while self._shown is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise QrDisplayError(f"the display acknowledged {request} but did "
                                         "not report the QR shown", code="NO_ANSWER")
                self._cv.wait(left)
            shown = self._shown
            self._min_attempt = max(self._min_attempt, shown.attempt)
        return shown

    def show_qr(self, content: str, timeout_s: float = 3.0) -> QrShown:
        """Have the display draw ``content`` — a wallet's code URL from a
        merchant-presented order (SHOW_QR) — for the loaded order; returns the
        QR_SHOWN, after checking that the display drew exactly that content for
        this order and amount (``QR_MISMATCH`` otherwise). The payment's result is
        the register's to learn (from the payment gateway) and to show
        (:meth:`show_result`)."""
        end = time.monotonic() + timeout_s
        pay = self._begin_show()
        try:
            msg = ShowQr(pay.order_no, content, pay.amount_minor, pay.currency)
        except ProtocolError as exc:
            raise QrDisplayError(f"SHOW_QR: {exc.message}", code=exc.code) from None
        self._request(msg, timeout_s)
        shown = self._await_shown(end, "SHOW_QR")
        if (shown.payload, shown.amount_minor, shown.currency) != (
                content, pay.amount_minor, pay.currency):
            raise QrDisplayError("the display drew another QR than the one sent",
                                 code="QR_MISMATCH")
        return shown

    def show_result(self, result: str, *, text: str = "", timeout_s: float = 2.0) -> None:
        """Tell the shopper how the loaded order's payment ended (SHOW_RESULT:
        ``result`` one of :data:`RESULTS`, ``text`` up to 40 characters); the
        display takes the QR down. Raises :class:`QrDisplayError` (the NAK's code,
        ``NO_ANSWER``; ``BAD_FIELD`` for a result or text the protocol refuses)."""
        with self._cv:
            pay = self._payment
            if pay is None:
                raise QrDisplayError("send_payment first", code="NO_PAYMENT_DATA")
        try:
            msg = ShowResult(pay.order_no, result, pay.amount_minor, pay.currency, text)
        except ProtocolError as exc:
            raise QrDisplayError(f"SHOW_RESULT: {exc.message}", code=exc.code) from None
        self._request(msg, timeout_s)

    def wait_result(self, timeout_s: float) -> PayResult:
        """The final result of the loaded order (raises ``TIMEOUT``). Results of
        other orders and of earlier failed attempts are never returned here."""
        end = time.monotonic() + timeout_s
        with self._cv:
            if self._payment is None:
                raise QrDisplayError("send_payment first", code="NO_PAYMENT_DATA")
            order = self._payment.order_no
            while order not in self._results:
                left = end - time.monotonic()
                if left <= 0:
                    raise QrDisplayError(f"no result for {order} in {timeout_s:g} s",
                                         code="TIMEOUT")
                self._cv.wait(left)
            return self._results[order]

    def cancel(self, timeout_s: float = 2.0) -> PayResult:
        """Stop the loaded order's payment; returns its final result, which is
        ``CANCELLED`` unless the shopper paid first (then the paid result)."""
        end = time.monotonic() + timeout_s
        with self._cv:
            if self._payment is None:
                raise QrDisplayError("send_payment first", code="NO_PAYMENT_DATA")
        try:
            self._request(Cancel(self._payment.order_no), timeout_s)
        except QrDisplayError as exc:
            if exc.code != "ORDER_DONE":
                raise
        return self.wait_result(max(0.0, end - time.monotonic()))

    def status(self, timeout_s: float = 2.0) -> DisplayStatus:
        """The display's current state."""
        end = time.monotonic() + timeout_s
        with self._cv:
            before = self._status_count
        self._request(StatusRequest(), timeout_s)
        with self._cv:
            while self._status_count == before:
                left = end - time.monotonic()
                if left <= 0:
                    raise QrDisplayError("no STATUS after STATUS?", code="NO_ANSWER")
                self._cv.wait(left)
            return self._status
