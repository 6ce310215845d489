"""Payment receipts: the model, its signature, and the text and SMS renderings.

A :class:`Receipt` is what a shopper takes home after paying: the store and till,
the order, the lines (when known), the total, every payment (channel, method, the
masked card or token, cash tendered and change, the merchant and provider
references) and any refunds. Money is integer minor units of ``currency`` (ISO 4217
alphabetic, ``exponent`` digits after the point); ``issued_at`` is Unix seconds,
kept to the millisecond.

**Signature.** :func:`sign_receipt` signs with the store's Ed25519 key (the same
:class:`lanecore.core.signing.Signer` as the order QR) the bytes ::

    b"lanecore-receipt-v1\\n" + canonical_json(receipt.to_dict())

The domain tag :data:`RECEIPT_DOMAIN` comes first so that no signature made for
one purpose verifies for another: an order QR signs ``LCO1.<payload>``, which can
never begin with the tag, so an order-QR signature is never a receipt signature and
the other way round. ``to_dict()`` holds integers, strings, lists, maps and
``null`` only (the time is ``issued_at_ms``, an integer), so the canonical JSON is
reproducible in any language (``docs/pay/receipts.md`` gives the recipe).
:func:`verify_receipt` refuses any change (``RECEIPT_SIGNATURE``).

**Card numbers.** A receipt never holds a card number in clear: ``card`` is a
masked PAN (at most the first 8 and last 4 digits visible, ``622848******1234``) or
a token; twelve or more digits in a row (spaces and hyphens ignored) are refused
with ``RECEIPT_CLEAR_PAN``, so a PAN cannot slip through as a "token" either.

**Renderings** (pure, no I/O): :func:`layout` lays the receipt out as typed rows of
at most ``width`` columns; :func:`render_text` joins them for a screen, e-mail or
log; :func:`render_sms` is the few lines of an SMS, and :func:`sms_segments` says
whether an SMS text goes as GSM-7 or UCS-2 and in how many parts. The ESC/POS
rendering is :func:`lanecore.drivers.receipt_print.render_escpos` (drivers, because
``core`` never imports a driver).

**Errors** are :class:`ReceiptError` with a stable ``code``: ``BAD_RECEIPT`` (a
field of the wrong type or form, negative money, lines or payments that do not add
up to the total, refunds beyond a payment, a dict of another shape),
``RECEIPT_CLEAR_PAN`` (an unmasked card number), ``RECEIPT_SIGNATURE`` (altered,
forged, signed with another key, or not a signature), ``BAD_REQUEST`` (a rendering
width out of range).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from lanecore.core.pay.emvqr import EmvQrError, lookup_currency
from lanecore.core.errors import LanecoreError
from lanecore.core.signing import b64url_decode, b64url_encode, canonical_json

__all__ = [
    "RECEIPT_DOMAIN", "RECEIPT_VERSION", "QR_PREFIX", "MAX_MINOR", "ReceiptError",
    "ReceiptLine", "ReceiptPayment", "ReceiptRefund", "Receipt", "currency_exponent",
    "currency_symbol", "format_money", "signed_bytes", "sign_receipt", "verify_receipt",
    "verify_code", "receipt_qr_text", "layout", "render_text", "render_sms",
    "sms_segments", "GSM7_BASIC", "GSM7_EXTENSION",
]

#: Prefixed to the canonical JSON before signing: a signature for anything else
#: (an order QR, a terminal's request) can never verify as a receipt's.
RECEIPT_DOMAIN = b"lanecore-receipt-v1\n"
#: ``"v"`` of :meth:`Receipt.to_dict`.
RECEIPT_VERSION = 1
#: The receipt's QR text begins ``LCR1/`` (see :func:`receipt_qr_text`).
QR_PREFIX = "LCR1"
#: Largest amount (minor units) anywhere on a receipt: below every JSON reader's and
#: SQLite's int64.
MAX_MINOR = 10 ** 18 - 1
#: Bounds on the sizes of things, so a bad request cannot make a huge receipt.
MAX_LINES = 1000
MAX_PAYMENTS = 16
MAX_REFUNDS = 64
MAX_FOOTER = 500
MAX_QTY = 1_000_000
_MAX_ISSUED_AT = 2 ** 40            # year 36812: a sanity bound, as in orderqr
_SIGNATURE_LEN = 64
_MIN_WIDTH, _MAX_WIDTH = 24, 120

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")    # store_id, terminal
_ORDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_REF_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")                # merchant_ref, refund_ref
_REF_FORM = "1..64 of A-Z a-z 0-9 _ -"
_PROVIDER_REF_RE = re.compile(r"[\x21-\x7e]{1,64}")          # printable ASCII, no space
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")            # as routing's channel names
_METHOD_RE = re.compile(r"[a-z][a-z0-9_]{0,15}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_MASKED_PAN_RE = re.compile(r"[0-9]{0,8}[*Xx]+[0-9]{0,4}")
_DIGIT_RUN_RE = re.compile(r"[0-9]{12,}")

#: Symbols printed before an amount; other currencies print their code and a space.
#: Every one of these is in PC858 and in the GSM 03.38 sets.
_SYMBOLS = {"GBP": "£", "EUR": "€", "CNY": "¥", "JPY": "¥", "USD": "$"}


class ReceiptError(LanecoreError):
    """A receipt that cannot be made, read, trusted or rendered."""

    code = "BAD_RECEIPT"


def _bad(message: str, code: str = "BAD_RECEIPT") -> ReceiptError:
    return ReceiptError(message, code=code)


# --------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return type(v) is int


def _money(v, what: str, *, positive: bool = False) -> int:
    low = 1 if positive else 0
    if not _is_int(v) or not low <= v <= MAX_MINOR:
        raise _bad(f"{what} must be an integer of minor units, {low}..{MAX_MINOR}, "
                   f"got {v!r}")
    return v


def _match(v, rx: re.Pattern, what: str, form: str) -> str:
    if not isinstance(v, str) or not rx.fullmatch(v):
        raise _bad(f"{what} must be {form}, got {v!r}")
    return v


def _printable(v, what: str, most: int, *, newlines: bool = False) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= most:
        raise _bad(f"{what} must be text of 1..{most} characters, got {v!r}")
    body = v.replace("\n", "") if newlines else v
    if not body.isprintable():
        raise _bad(f"{what} holds control or invisible characters: {v!r}")
    return v


def _check_card(card) -> str:
    """A masked PAN or a token; RECEIPT_CLEAR_PAN for anything that may be a PAN."""
    if not isinstance(card, str) or not 1 <= len(card) <= 64:
        raise _bad(f"card must be a masked PAN or a token of 1..64 characters, got "
                   f"{type(card).__name__}")
    squeezed = card.replace(" ", "").replace("-", "")
    # Never echo the value: it may be the very number we refuse to keep.
    if _DIGIT_RUN_RE.search(squeezed):
        raise _bad("card holds 12 or more digits in a row: a card number in clear is "
                   "never put on a receipt (mask it: first 6 and last 4 digits)",
                   "RECEIPT_CLEAR_PAN")
    if set(squeezed) <= set("0123456789*Xx") and any(c.isdigit() for c in squeezed):
        if not _MASKED_PAN_RE.fullmatch(squeezed):
            raise _bad("a masked card number shows at most its first 8 and last 4 "
                       "digits, every digit between them masked", "RECEIPT_CLEAR_PAN")
    if not card.isprintable():
        raise _bad("card holds control or invisible characters")
    return card


def currency_exponent(currency: str) -> int | None:
    """The ISO 4217 minor-unit digits of ``currency`` as
    :func:`lanecore.core.pay.emvqr.lookup_currency` knows them, None when it does not."""
    try:
        return lookup_currency(currency)[2]
    except EmvQrError:
        return None


def currency_symbol(currency: str) -> str:
    """What is printed before an amount: ``£``, ``€``, ``¥``, ``$``, else the code
    and a space (``KWD 1.250``)."""
    return _SYMBOLS.get(currency, f"{currency} ")


def format_money(minor: int, currency: str, exponent: int = 2) -> str:
    """Integer minor units as text, as :func:`lanecore.drivers.printer.format_money`
    writes them: ``format_money(-120500, "GBP")`` is ``-£1,205.00``; exponent 0
    (JPY) has no point, exponent 3 (KWD) three digits after it."""
    if not _is_int(minor):
        raise _bad(f"money is an integer of minor units, got {minor!r}")
    sign = "-" if minor < 0 else ""
    units, frac = divmod(abs(minor), 10 ** exponent)
    body = f"{units:,}" + (f".{frac:0{exponent}d}" if exponent else "")
    return f"{sign}{currency_symbol(currency)}{body}"


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReceiptLine:
    """One line of the basket: ``qty`` of ``name`` at ``unit_minor`` each, costing
    ``amount_minor`` (after any price rule of the line, so not necessarily
    ``qty × unit_minor``: a multi-buy, a weighed item priced per kilogram)."""

    name: str
    qty: int
    unit_minor: int
    amount_minor: int

    def __post_init__(self):
        _printable(self.name, "line name", 64)
        if not _is_int(self.qty) or not 1 <= self.qty <= MAX_QTY:
            raise _bad(f"line qty must be an integer 1..{MAX_QTY}, got {self.qty!r}")
        _money(self.unit_minor, "line unit_minor")
        _money(self.amount_minor, "line amount_minor")

    def to_dict(self) -> dict:
        return {"name": self.name, "qty": self.qty, "unit_minor": self.unit_minor,
                "amount_minor": self.amount_minor}


@dataclass(frozen=True)
class ReceiptPayment:
    """One payment towards the total.

    ``channel``: the payment channel's name (``alipay``, ``card``, ``cash``);
    ``method``: how it was taken (``auth_code``, ``card``, ``cash``, ``qr``, …);
    ``merchant_ref``: the ledger's reference of the charge; ``provider_ref``: the
    provider's, once known; ``card``: a masked PAN or a token, never a PAN;
    ``tendered_minor`` and ``change_minor``: cash only, both or neither, with
    ``tendered − change = amount``.
    """

    channel: str
    method: str
    amount_minor: int
    merchant_ref: str
    provider_ref: str | None = None
    card: str | None = None
    tendered_minor: int | None = None
    change_minor: int | None = None

    def __post_init__(self):
        _match(self.channel, _CHANNEL_RE, "payment channel", "1..64 of A-Z a-z 0-9 _ . -")
        _match(self.method, _METHOD_RE, "payment method",
               "1..16 of a-z 0-9 _ starting with a letter")
        _money(self.amount_minor, "payment amount_minor", positive=True)
        _match(self.merchant_ref, _REF_RE, "payment merchant_ref", _REF_FORM)
        if self.provider_ref is not None:
            _match(self.provider_ref, _PROVIDER_REF_RE, "payment provider_ref",
                   "1..64 printable ASCII characters without spaces")
        if self.card is not None:
            _check_card(self.card)
        cash = (self.tendered_minor, self.change_minor)
        if cash != (None, None):
            if None in cash:
                raise _bad("tendered_minor and change_minor come together")
            if self.method != "cash":
                raise _bad(f"tendered and change are for cash, not method {self.method!r}")
            _money(self.tendered_minor, "payment tendered_minor")
            _money(self.change_minor, "payment change_minor")
            if self.tendered_minor - self.change_minor != self.amount_minor:
                raise _bad(f"tendered {self.tendered_minor} − change {self.change_minor} "
                           f"is not the payment's amount {self.amount_minor}")

    def to_dict(self) -> dict:
        return {"channel": self.channel, "method": self.method,
                "amount_minor": self.amount_minor, "merchant_ref": self.merchant_ref,
                "provider_ref": self.provider_ref, "card": self.card,
                "tendered_minor": self.tendered_minor, "change_minor": self.change_minor}


@dataclass(frozen=True)
class ReceiptRefund:
    """Money given back on the payment ``merchant_ref`` under ``refund_ref``."""

    refund_ref: str
    merchant_ref: str
    amount_minor: int

    def __post_init__(self):
        _match(self.refund_ref, _REF_RE, "refund_ref", _REF_FORM)
        _match(self.merchant_ref, _REF_RE, "refund merchant_ref", _REF_FORM)
        _money(self.amount_minor, "refund amount_minor", positive=True)

    def to_dict(self) -> dict:
        return {"refund_ref": self.refund_ref, "merchant_ref": self.merchant_ref,
                "amount_minor": self.amount_minor}


_LINE_KEYS = frozenset({"name", "qty", "unit_minor", "amount_minor"})
_PAYMENT_KEYS = frozenset({"channel", "method", "amount_minor", "merchant_ref",
                           "provider_ref", "card", "tendered_minor", "change_minor"})
_REFUND_KEYS = frozenset({"refund_ref", "merchant_ref", "amount_minor"})
_RECEIPT_KEYS = frozenset({"v", "store_name", "store_id", "terminal", "order_no",
                           "issued_at_ms", "currency", "exponent", "lines", "total_minor",
                           "payments", "refunds", "footer"})


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """A payment receipt (keyword arguments only). Validated on construction;
    :class:`ReceiptError` ``BAD_RECEIPT`` / ``RECEIPT_CLEAR_PAN`` otherwise.

    ``store_name``: shown at the top (1..64 printable characters); ``store_id``,
    ``terminal``: 1..32 of ``A-Z a-z 0-9 . _ -``; ``order_no``: 1..32 of
    ``A-Z a-z 0-9 _ -``; ``issued_at``: Unix seconds, rounded to the millisecond;
    ``currency``: ISO 4217 alphabetic; ``exponent``: its minor-unit digits (0..4),
    by default from the ISO table (:func:`currency_exponent`, 2 for a currency it
    does not know) and refused when it contradicts that table; ``lines``: empty when
    only the payment is known, else their amounts add up to ``total_minor``;
    ``payments``: add up to ``total_minor`` (none only for a total of 0);
    ``refunds``: each on one of the payments, never more than it; ``footer``:
    optional text (newlines allowed).
    """

    store_name: str
    store_id: str
    terminal: str
    order_no: str
    issued_at: float
    currency: str
    total_minor: int
    payments: tuple[ReceiptPayment, ...]
    lines: tuple[ReceiptLine, ...] = ()
    exponent: int | None = None
    refunds: tuple[ReceiptRefund, ...] = ()
    footer: str | None = None

    def __post_init__(self):
        _printable(self.store_name, "store_name", 64)
        _match(self.store_id, _ID_RE, "store_id", "1..32 of A-Z a-z 0-9 . _ -")
        _match(self.terminal, _ID_RE, "terminal", "1..32 of A-Z a-z 0-9 . _ -")
        _match(self.order_no, _ORDER_RE, "order_no", "1..32 of A-Z a-z 0-9 _ -")
        t = self.issued_at
        if (not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t)
                or not 0 <= t < _MAX_ISSUED_AT):
            raise _bad(f"issued_at must be Unix seconds 0..2^40, got {t!r}")
        # Kept to the millisecond so that to_dict() holds an integer and round-trips.
        object.__setattr__(self, "issued_at", round(t * 1000) / 1000)
        _match(self.currency, _CURRENCY_RE, "currency", "ISO 4217 alphabetic (GBP)")
        known = currency_exponent(self.currency)
        exponent = self.exponent
        if exponent is None:
            exponent = 2 if known is None else known
        if not _is_int(exponent) or not 0 <= exponent <= 4:
            raise _bad(f"exponent must be an integer 0..4, got {exponent!r}")
        if known is not None and exponent != known:
            raise _bad(f"{self.currency} has {known} minor-unit digits, not {exponent}")
        object.__setattr__(self, "exponent", exponent)
        _money(self.total_minor, "total_minor")

        lines = self._tuple("lines", self.lines, ReceiptLine, MAX_LINES)
        payments = self._tuple("payments", self.payments, ReceiptPayment, MAX_PAYMENTS)
        refunds = self._tuple("refunds", self.refunds, ReceiptRefund, MAX_REFUNDS)
        if lines and sum(x.amount_minor for x in lines) != self.total_minor:
            raise _bad(f"the lines add up to {sum(x.amount_minor for x in lines)}, the "
                       f"total is {self.total_minor}")
        paid = sum(p.amount_minor for p in payments)
        if paid != self.total_minor:
            raise _bad(f"the payments add up to {paid}, the total is {self.total_minor}")
        refs = [p.merchant_ref for p in payments]
        if len(set(refs)) != len(refs):
            raise _bad("two payments have the same merchant_ref")
        if len({r.refund_ref for r in refunds}) != len(refunds):
            raise _bad("two refunds have the same refund_ref")
        for p in payments:
            back = sum(r.amount_minor for r in refunds if r.merchant_ref == p.merchant_ref)
            if back > p.amount_minor:
                raise _bad(f"refunds of {p.merchant_ref} add up to {back}, more than its "
                           f"{p.amount_minor}")
        stray = {r.merchant_ref for r in refunds} - set(refs)
        if stray:
            raise _bad(f"refunds of payments not on this receipt: {sorted(stray)}")
        if self.footer is not None:
            _printable(self.footer, "footer", MAX_FOOTER, newlines=True)

    def _tuple(self, name: str, value, kind: type, most: int) -> tuple:
        if not isinstance(value, (tuple, list)):
            raise _bad(f"{name} must be a tuple of {kind.__name__}, got "
                       f"{type(value).__name__}")
        if len(value) > most:
            raise _bad(f"at most {most} {name}, got {len(value)}")
        if not all(isinstance(x, kind) for x in value):
            raise _bad(f"{name} must hold {kind.__name__} only")
        value = tuple(value)
        object.__setattr__(self, name, value)
        return value

    # ------------------------------------------------------------------------------
    @property
    def refunded_minor(self) -> int:
        """Money given back so far."""
        return sum(r.amount_minor for r in self.refunds)

    def money(self, minor: int) -> str:
        """``minor`` units of this receipt's currency as text (:func:`format_money`)."""
        return format_money(minor, self.currency, self.exponent)

    def issued_at_iso(self) -> str:
        """``issued_at`` in UTC, to the second: ``2024-06-10T12:34:56Z``."""
        at = datetime.fromtimestamp(math.floor(self.issued_at), timezone.utc)
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_dict(self) -> dict:
        """JSON- and MessagePack-safe: strings, integers, lists, maps and ``null``,
        every key always present. The time is ``issued_at_ms`` (integer
        milliseconds) so that no float needs a canonical text."""
        return {"v": RECEIPT_VERSION, "store_name": self.store_name,
                "store_id": self.store_id, "terminal": self.terminal,
                "order_no": self.order_no, "issued_at_ms": round(self.issued_at * 1000),
                "currency": self.currency, "exponent": self.exponent,
                "lines": [x.to_dict() for x in self.lines],
                "total_minor": self.total_minor,
                "payments": [p.to_dict() for p in self.payments],
                "refunds": [r.to_dict() for r in self.refunds],
                "footer": self.footer}

    @classmethod
    def from_dict(cls, data) -> Receipt:
        """The receipt of :meth:`to_dict`'s output; BAD_RECEIPT for a map of any
        other shape (missing or extra keys included: a signed receipt carries no
        field that is not checked)."""
        d = _exact(data, _RECEIPT_KEYS, "receipt")
        if not _is_int(d["v"]) or d["v"] != RECEIPT_VERSION:
            raise _bad(f"receipt version {d['v']!r}; this lanecore reads {RECEIPT_VERSION}")
        ms = d["issued_at_ms"]
        if not _is_int(ms) or not 0 <= ms < _MAX_ISSUED_AT * 1000:
            raise _bad(f"issued_at_ms must be integer milliseconds, got {ms!r}")
        return cls(
            store_name=d["store_name"], store_id=d["store_id"], terminal=d["terminal"],
            order_no=d["order_no"], issued_at=ms / 1000, currency=d["currency"],
            exponent=d["exponent"], total_minor=d["total_minor"], footer=d["footer"],
            lines=tuple(ReceiptLine(**_exact(x, _LINE_KEYS, "line"))
                        for x in _list(d["lines"], "lines")),
            payments=tuple(ReceiptPayment(**_exact(x, _PAYMENT_KEYS, "payment"))
                           for x in _list(d["payments"], "payments")),
            refunds=tuple(ReceiptRefund(**_exact(x, _REFUND_KEYS, "refund"))
                          for x in _list(d["refunds"], "refunds")))

    def canonical_bytes(self) -> bytes:
        """``canonical_json(self.to_dict())``: keys sorted, no spaces, ASCII with
        ``\\uXXXX`` escapes; the same receipt always gives the same bytes."""
        return canonical_json(self.to_dict())


def _exact(data, keys: frozenset, what: str) -> dict:
    if not isinstance(data, Mapping):
        raise _bad(f"a {what} is a map, got {type(data).__name__}")
    got = set(data)
    if got != keys:
        missing, extra = sorted(keys - got), sorted(map(str, got - keys))
        raise _bad(f"a {what} has exactly the keys {sorted(keys)}"
                   + (f"; missing {missing}" if missing else "")
                   + (f"; unknown {extra}" if extra else ""))
    return dict(data)


def _list(value, what: str, most: int = MAX_LINES) -> list:
    if not isinstance(value, (list, tuple)):
        raise _bad(f"{what} must be a list, got {type(value).__name__}")
    if len(value) > most:
        raise _bad(f"at most {most} {what}")
    return list(value)


# --------------------------------------------------------------------------------------
# Signature
# --------------------------------------------------------------------------------------

def signed_bytes(receipt: Receipt) -> bytes:
    """Exactly the bytes a receipt's signature covers:
    ``RECEIPT_DOMAIN + receipt.canonical_bytes()``."""
    return RECEIPT_DOMAIN + receipt.canonical_bytes()


def sign_receipt(receipt: Receipt, signer) -> dict:
    """The signed receipt, ready for JSON or MessagePack::

        {"receipt": receipt.to_dict(), "key": <public key, base64url, 43 chars>,
         "sig": <Ed25519 signature of signed_bytes(receipt), base64url, 86 chars>}

    ``signer``: a :class:`lanecore.core.signing.Signer` (the store's key). Ed25519 is
    deterministic: the same receipt and key always give the same signature."""
    if not isinstance(receipt, Receipt):
        raise _bad(f"sign_receipt needs a Receipt, got {type(receipt).__name__}")
    return {"receipt": receipt.to_dict(), "key": signer.public_key_b64(),
            "sig": b64url_encode(signer.sign(signed_bytes(receipt)))}


def verify_receipt(signed, verifier) -> Receipt:
    """The receipt of ``signed`` (what :func:`sign_receipt` returned) if its
    signature is the store's; ``verifier``: a :class:`lanecore.core.signing.Verifier`
    with the store's public key (the ``key`` in ``signed`` is never trusted).

    ``RECEIPT_SIGNATURE`` for any change to the receipt or the signature, a signature
    by another key, or a ``sig`` that is not a signature; ``BAD_RECEIPT`` for
    something that is not a signed receipt at all (not a map, keys missing) or a
    signed receipt this lanecore cannot read."""
    if not isinstance(signed, Mapping) or not {"receipt", "sig"} <= set(signed):
        raise _bad("a signed receipt is a map with 'receipt' and 'sig'")
    if set(signed) - {"receipt", "sig", "key"}:
        raise _bad(f"unknown keys in a signed receipt: "
                   f"{sorted(map(str, set(signed) - {'receipt', 'sig', 'key'}))}")
    if "key" in signed and signed["key"] != verifier.public_key_b64():
        raise _bad("the receipt was signed with another key", "RECEIPT_SIGNATURE")
    try:
        signature = b64url_decode(signed["sig"])
        body = canonical_json(signed["receipt"])
    except (ValueError, TypeError, RecursionError):
        raise _bad("the receipt's signature or body cannot be what was signed",
                   "RECEIPT_SIGNATURE") from None
    if len(signature) != _SIGNATURE_LEN or not verifier.verify(signature,
                                                               RECEIPT_DOMAIN + body):
        raise _bad("the receipt's signature does not match: altered, forged, or signed "
                   "with another key", "RECEIPT_SIGNATURE")
    receipt = Receipt.from_dict(signed["receipt"])
    if receipt.canonical_bytes() != body:  # pragma: no cover - a signer bug
        raise _bad("the signed receipt is not in its canonical form")
    return receipt


def _signature_of(receipt: Receipt, signed) -> str | None:
    """``signed["sig"]`` after checking ``signed`` is this receipt's (not verified:
    rendering has no key); None when ``signed`` is None."""
    if signed is None:
        return None
    if (not isinstance(signed, Mapping) or not isinstance(signed.get("sig"), str)
            or signed.get("receipt") != receipt.to_dict()):
        raise _bad("the signed receipt given is not this receipt's")
    return signed["sig"]


def verify_code(signed) -> str:
    """The short code printed on a receipt: the first 12 characters of the
    signature (72 bits). A till or a web page looks the receipt up by order and
    compares; the full signature is in the QR and the stored copy."""
    sig = signed["sig"] if isinstance(signed, Mapping) else signed
    if not isinstance(sig, str) or len(sig) < 12:
        raise _bad("not a signed receipt or a signature")
    return sig[:12]


def receipt_qr_text(signed) -> str:
    """The text of the receipt's QR: ``LCR1/<store_id>/<order_no>/<sig>``, printable
    ASCII (none of the fields can hold a ``/``). A handle to look the receipt up
    and check it, not the receipt itself."""
    r = signed["receipt"]
    return f"{QR_PREFIX}/{r['store_id']}/{r['order_no']}/{signed['sig']}"


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------

def _width_of(ch: str, east_asian: bool) -> int:
    if unicodedata.combining(ch):
        return 0 if east_asian else 1
    if east_asian and unicodedata.east_asian_width(ch) in ("W", "F"):
        return 2
    return 1


def _cols(text: str, east_asian: bool = True) -> int:
    """Columns ``text`` takes: 2 for a wide (CJK) character, 0 for a combining mark
    when ``east_asian``, else one per character (a printer's code page)."""
    return sum(_width_of(c, east_asian) for c in text)


def _fit(text: str, cols: int, east_asian: bool = True) -> str:
    out, used = [], 0
    for c in text:
        w = _width_of(c, east_asian)
        if used + w > cols:
            break
        out.append(c)
        used += w
    return "".join(out)


def _wrap(text: str, width: int, east_asian: bool) -> list[str]:
    """Greedy word wrap by columns; a word longer than a line is cut."""
    out: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if _cols(cand, east_asian) <= width:
                line = cand
                continue
            if line:
                out.append(line)
            while _cols(word, east_asian) > width:
                head = _fit(word, width, east_asian)
                out.append(head)
                word = word[len(head):]
            line = word
        out.append(line)
    return out


def layout(receipt: Receipt, width: int = 42, *, signed=None,
           east_asian: bool = True) -> list[tuple[str, str]]:
    """The receipt as rows ``(kind, text)``, every text at most ``width`` columns.

    ``kind``: ``title`` (the store's name, centred), ``text``, ``rule`` (dashes),
    ``total`` (the TOTAL row, printed bold), ``verify`` (the verification code:
    only when ``signed``, the :func:`sign_receipt` output of this receipt, is
    given). ``east_asian``: count wide characters as two columns (a screen); a
    printer's single-byte code page prints one column per character, so the ESC/POS
    rendering passes False. 42 columns fit 80 mm paper, 32 fit 58 mm.
    """
    if not _is_int(width) or not _MIN_WIDTH <= width <= _MAX_WIDTH:
        raise _bad(f"width must be {_MIN_WIDTH}..{_MAX_WIDTH} columns, got {width!r}",
                   "BAD_REQUEST")
    sig = _signature_of(receipt, signed)
    ea = east_asian
    money = receipt.money

    def pair(left: str, right: str) -> str:
        right = _fit(right, width, ea)
        left = _fit(left, max(0, width - _cols(right, ea) - 1), ea)
        return left + " " * (width - _cols(left, ea) - _cols(right, ea)) + right

    def labelled(label: str, value: str) -> list[tuple[str, str]]:
        # A reference is never cut short: the shopper may need all of it for a
        # refund, so it wraps under itself.
        indent = f"  {label} "
        room = width - len(indent)
        out = []
        while True:
            head = _fit(value, room, ea) or value[:1]
            out.append(("text", (indent if not out else " " * len(indent)) + head))
            value = value[len(head):]
            if not value:
                return out

    rule = ("rule", "-" * width)
    name = _fit(receipt.store_name, width, ea)
    rows = [("title", " " * ((width - _cols(name, ea)) // 2) + name),
            ("text", pair(f"Store {receipt.store_id}", f"Till {receipt.terminal}")),
            ("text", pair("Order", receipt.order_no)),
            ("text", pair("Date", receipt.issued_at_iso())),
            rule]
    for x in receipt.lines:
        rows.append(("text", pair(x.name, money(x.amount_minor))))
        if x.qty != 1:
            rows.append(("text", f"  {x.qty} x {money(x.unit_minor)}"))
    if receipt.lines:
        rows.append(rule)
    rows.append(("total", pair("TOTAL", money(receipt.total_minor))))
    for p in receipt.payments:
        label = p.channel if p.channel == p.method else f"{p.channel} ({p.method})"
        rows.append(("text", pair(f"Paid {label}", money(p.amount_minor))))
        if p.card is not None:
            rows.extend(labelled("Card", p.card))
        if p.tendered_minor is not None:
            rows.append(("text", pair("  Tendered", money(p.tendered_minor))))
            rows.append(("text", pair("  Change", money(p.change_minor))))
        rows.extend(labelled("Ref", p.merchant_ref))
        if p.provider_ref is not None:
            rows.extend(labelled("Provider", p.provider_ref))
    for r in receipt.refunds:
        rows.append(("text", pair(f"Refund {r.refund_ref}", money(-r.amount_minor))))
        rows.extend(labelled("of", r.merchant_ref))
    if receipt.refunds:
        rows.append(("total", pair("NET PAID",
                                   money(receipt.total_minor - receipt.refunded_minor))))
    rows.append(rule)
    if sig is not None:
        rows.append(("verify", pair("Verify", verify_code(sig))))
    if receipt.footer:
        rows.extend(("text", line) for line in _wrap(receipt.footer, width, ea))
    # Belt and braces: nothing above may pass the width, whatever it holds.
    return [(kind, _fit(text, width, ea)) for kind, text in rows]


def render_text(receipt: Receipt, width: int = 42, *, signed=None) -> str:
    """The receipt as plain text, lines of at most ``width`` display columns, each
    ended by ``\\n`` (see :func:`layout`)."""
    rows = layout(receipt, width, signed=signed)
    return "".join(text.rstrip() + "\n" for _, text in rows)


def render_sms(receipt: Receipt, *, signed=None) -> str:
    """The receipt as an SMS: store, order and time, total, each payment (channel
    and the card's last 4 digits), refunds, and the verification code when signed.
    About 100 characters: one GSM-7 segment for a Latin-script store name."""
    sig = _signature_of(receipt, signed)
    when = receipt.issued_at_iso()
    out = [receipt.store_name,
           f"Order {receipt.order_no} {when[:10]} {when[11:16]} UTC",
           f"Total {receipt.money(receipt.total_minor)}"]
    for p in receipt.payments:
        card = ""
        if p.card is not None and _MASKED_PAN_RE.fullmatch(p.card.replace(" ", "")
                                                          .replace("-", "")) \
                and p.card[-4:].isdigit():
            card = f" *{p.card[-4:]}"
        out.append(f"Paid {p.channel}{card} {receipt.money(p.amount_minor)}")
    if receipt.refunds:
        out.append(f"Refunded {receipt.money(receipt.refunded_minor)}")
    if sig is not None:
        out.append(f"Verify {verify_code(sig)}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# SMS segments
# --------------------------------------------------------------------------------------

#: GSM 03.38 default alphabet (one septet each); 0x1B, the escape, left out.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
#: The extension table: each is ESC and one septet, so it counts two.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def _pack(costs: list[int], single: int, part: int) -> int:
    """Segments for units of ``costs``: one if they fit ``single``, else parts of
    ``part`` with no unit split between two parts."""
    if sum(costs) <= single:
        return 1
    n, used = 1, 0
    for c in costs:
        if used + c > part:
            n, used = n + 1, 0
        used += c
    return n


def sms_segments(text: str) -> tuple[str, int]:
    """``(encoding, segments)`` of an SMS ``text``.

    ``"GSM-7"`` when every character is in the GSM 03.38 default alphabet or its
    extension (an extension character — ``€ [ ] { } ^ ~ | \\`` and form feed — takes
    two septets): 160 septets in one message, 153 per part of a longer one
    (concatenation header). Else ``"UCS-2"``: UTF-16 code units, 70 in one message,
    67 per part; a character outside the BMP takes two. An escape pair or a
    surrogate pair is never split between parts, as phones send them. An empty text
    is one (empty) message."""
    if not isinstance(text, str):
        raise _bad(f"an SMS text is a str, got {type(text).__name__}", "BAD_REQUEST")
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        return "GSM-7", _pack([2 if c in GSM7_EXTENSION else 1 for c in text], 160, 153)
    return "UCS-2", _pack([2 if ord(c) > 0xFFFF else 1 for c in text], 70, 67)
