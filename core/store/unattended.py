"""Settlement for unattended venues (seed 003): the venue's side of a shop with no
staff — accounts, a payment method and transaction password bound to them, a cart
kept while the shopper walks, the settlement, and the paid list that is the exit pass.

Pure Python over the caller's ``sqlite3`` connection (autocommit mode, as
:func:`lanecore.core.scan.catalog.connect` opens it); no sockets: the payment itself is a
callable the caller passes in (``pay``), so the gateway wiring lives elsewhere.
Money is an integer number of minor units, times are Unix seconds (``now``; the
``clock`` given to :class:`Venue` when it is left out).

**Accounts.** ``register`` (personal or company) stores a login (3–64 of ``a-z 0-9 _
. @ + -``, compared lower-cased) and a salted **scrypt** hash of the password (at
least 8 characters), written ``scrypt$n$r$p$salt$hash`` so the cost travels with
the hash: raising ``kdf_n`` later leaves old hashes readable, and a login with the
right password re-hashes at the new cost. ``login`` compares in constant time. An
unknown login costs the same scrypt (against a dummy hash of the current cost) and
answers the same ``WRONG_PASSWORD``; the failure count is kept **per login, whether
or not an account has it** (table ``venue_login_failures``), so a lock cannot tell
a real login from an unknown one either. After ``max_failures`` consecutive
failures the login is locked for ``lockout_s`` (``ACCOUNT_LOCKED`` with ``until``;
the right password is refused too while it lasts). A success, the end of a lock, or
``lockout_s`` without a failure start the count again. ``register`` itself must say
``LOGIN_TAKEN``: rate-limit it in front.

**Per source.** The lock is per login, so alone it lets one device try a password
over many logins, and lock anyone out with five wrong ones. ``login``, ``settle``
and ``set_transaction_password`` take ``source=`` (the device or peer the attempt
came from); its failures — wrong passwords, unknown logins, wrong transaction
passwords, failed extra verifications — are counted in table
``venue_source_failures`` (:mod:`lanecore.core.pay.throttle`): after 5 the source
waits 30 s, 60 s, … up to 900 s, one failure forgotten per 600 s without one, and
while it waits its attempts are ``THROTTLED`` (``retry_after_s``, ``until``) before
the login is looked up or anything hashed, the right password too. One source then
locks at most 3 logins in the first hour and 31 a day (``docs/security.md``).
``source=None`` (staff tools, tests) leaves only the per-login lock.

**Payment method.** ``bind_payment`` keeps a gateway token or a masked card, never a
card number: twelve or more digits in a row (spaces and hyphens ignored) are
``CLEAR_PAN``, the rule of :mod:`lanecore.core.pay.receipt`. The **transaction
password** is 6 digits, scrypt-hashed like the login password, with its own count
and lock (``TX_PASSWORD_WRONG``, ``TX_LOCKED``); changing it needs the current one.

**Extra verification** (large purchases) goes through a :class:`BiometricVerifier`
— anything with ``verify(account_id, sample) -> bool``; :class:`SimulatedBiometricVerifier`
is the test double, byte comparison and nothing more.

**Shopping.** ``open_cart`` → ``add`` by code (8–14 digits, looked up as GTIN-14) or
by name (case-insensitive, exact or a unique prefix) → ``remove`` → ``cart`` (lines
and the running total, priced from the catalogue as it is now: the catalogue is the
price authority, the cart keeps only what was chosen and how many).

**Settlement.** ``settle`` checks the transaction password, re-prices the cart and
compares with the total the shopper confirmed (``TOTAL_CHANGED``), asks for extra
verification above ``extra_verification_over_minor``, then writes the settlement
row ``paying`` under a fresh ``order_no`` **before** calling ``pay`` — once. ``paid``
finishes it and issues the exit pass; ``failed`` reopens the cart; an exception or
an unclear answer leaves the row ``paying`` (``PAYMENT_IN_DOUBT``) and
:meth:`Venue.resume` finishes it from the gateway's status, as often as it is asked
and without paying again. A cart has at most one settlement that is not ``failed``
(a partial unique index), so it is never paid twice.

**Exit pass** ``LCX1.<payload>.<signature>``: the paid, itemised list signed with
the venue's Ed25519 key (:class:`lanecore.core.signing.Signer`), built and read like
the order QR; ``docs/store/unattended.md`` gives it byte by byte. The gate checks it with
the public key and consumes it in table ``exit_passes_used``: a pass opens the gate
once.

**Errors** are :class:`UnattendedError` with a stable ``code`` and a ``details``
map; :data:`ERROR_CODES` lists them all and ``docs/store/unattended.md`` says when each
comes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import hmac
import json
import math
import numbers
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from lanecore.core.sqltxn import Txn
from lanecore.core.errors import LanecoreError
from lanecore.core.pay.throttle import SourceThrottle, source_ok
from lanecore.core.signing import (Signer, Verifier, b64url_decode, b64url_encode,
                                   canonical_json)

__all__ = [
    "ACCOUNT_KINDS", "ERROR_CODES", "MAX_LINES", "MAX_PASS_CHARS", "MAX_QTY",
    "PASS_KEYS", "PASS_LINE_FIELDS", "PASS_TAG", "PASS_VERSION", "PAY_METHODS",
    "Account", "BiometricVerifier", "CartView", "Session", "Settlement",
    "SimulatedBiometricVerifier", "UnattendedError", "Venue", "itemised_text",
    "make_exit_pass", "read_exit_pass",
]

ACCOUNT_KINDS = ("personal", "company")
PAY_METHODS = ("card", "wallet")
#: Largest quantity of one line (one ``add`` and the line's total alike).
MAX_QTY = 999
#: Most lines in one cart (and so in one exit pass).
MAX_LINES = 200
#: The exit pass tag: "LCX" (lanecore exit) and the format version.
PASS_PREFIX = "LCX"
PASS_VERSION = 1
PASS_TAG = f"{PASS_PREFIX}{PASS_VERSION}"
#: Longest exit pass text read (200 lines of 100-character names fit).
MAX_PASS_CHARS = 65536
#: Exactly the keys of a version-1 exit pass payload.
PASS_KEYS = frozenset({"v", "venue", "order", "acct", "pass", "iat", "cur", "total",
                       "lines"})
#: The fields of one line, in the order a pass writes them (each line is a JSON array:
#: half the size of an object, so twice the lines fit a QR code).
PASS_LINE_FIELDS = ("gtin", "name", "qty", "unit_minor", "amount_minor")

ERROR_CODES = (
    "BAD_REQUEST", "BAD_LOGIN", "LOGIN_TAKEN", "WEAK_PASSWORD", "WRONG_PASSWORD",
    "ACCOUNT_LOCKED", "THROTTLED", "BAD_SESSION", "SESSION_EXPIRED", "BAD_TOKEN", "CLEAR_PAN",
    "BAD_PIN", "TX_PASSWORD_NOT_SET", "TX_PASSWORD_WRONG", "TX_LOCKED",
    "NO_PAYMENT_METHOD", "UNKNOWN_CART", "CART_CLOSED", "CART_FULL", "BAD_QTY",
    "UNKNOWN_ITEM", "AMBIGUOUS_NAME", "BAD_CHECK_DIGIT", "BAD_ITEM", "NOT_IN_CART",
    "ITEM_WITHDRAWN", "EMPTY_CART", "BAD_AMOUNT", "TOTAL_CHANGED",
    "EXTRA_VERIFICATION_REQUIRED", "EXTRA_VERIFICATION_FAILED", "VERIFIER_ERROR",
    "SETTLEMENT_PENDING", "PAYMENT_FAILED", "PAYMENT_IN_DOUBT", "UNKNOWN_ORDER",
    "NOT_PAID", "PASS_FORMAT", "PASS_SIGNATURE", "PASS_EXPIRED", "PASS_USED",
    "PASS_WRONG_VENUE", "DB_ERROR", "DB_BUSY",
)

_LOGIN_RE = re.compile(r"[a-z0-9][a-z0-9_.@+-]{2,63}")
_VENUE_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
_ORDER_RE = re.compile(r"[A-Z0-9-]{1,32}")
_ACCOUNT_RE = re.compile(r"AC[0-9A-F]{16}")
_PASS_ID_RE = re.compile(r"[0-9a-f]{32}")
_GTIN_RE = re.compile(r"[0-9]{14}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_PIN_RE = re.compile(r"[0-9]{6}")
_TOKEN_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")   # 1-128 ASCII
_MASKED_PAN_RE = re.compile(r"[0-9]{0,8}[*Xx]+[0-9]{0,4}")
_DIGIT_RUN_RE = re.compile(r"[0-9]{12,}")
_PW_MIN, _PW_MAX = 8, 1024
_NAME_MAX = 100
_MAX_PRICE = 10 ** 12
_MAX_TOTAL = 10 ** 18 - 1
_MAX_IAT = 2 ** 40
_SIGNATURE_LEN = 64
# scrypt: r = 8, p = 1 as RFC 7914 recommends; n is the Venue's kdf_n (2**14 is about
# 60 ms and 16 MiB a check). Every hash carries its own n, r, p.
_SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN, _SCRYPT_MAX_N = 8, 1, 32, 2 ** 20
_CANDIDATES_SHOWN = 10
_GATEWAY_TEXT_MAX = 4096
# Digits of the minor unit for showing amounts; every other currency has 2.
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3,
              "JOD": 3, "OMR": 3, "TND": 3}


class UnattendedError(LanecoreError):
    """A refusal of the unattended venue with a stable ``code`` and ``details``."""

    code = "UNATTENDED_ERROR"


def _fail(code: str, message: str, /, **details) -> UnattendedError:
    return UnattendedError(message, code=code, details=details)


# --------------------------------------------------------------------------------------
# Values handed out
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """A logged-in shopper. ``token`` is the secret the phone presents (43 base64url
    characters; only its SHA-256 is stored); times in Unix seconds."""

    token: str = field(repr=False)
    account_id: str
    login: str
    issued_at: float
    expires_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Account:
    """An account as it may be shown: no hash and no payment token.
    ``payment_display`` is the masked card or the token's last four characters."""

    account_id: str
    login: str
    kind: str
    name: str
    payment_method: str | None
    payment_display: str | None
    has_transaction_password: bool
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CartView:
    """A cart priced from the catalogue now. ``lines``: ``{gtin, name, qty,
    unit_minor, amount_minor}`` in the order first added; ``withdrawn``: lines whose
    item the catalogue no longer has (``{gtin, name, qty}``, not in the total —
    remove them before settling); ``total_minor`` the sum of ``lines``."""

    cart_id: str
    account_id: str
    status: str
    currency: str
    lines: tuple
    withdrawn: tuple
    total_minor: int
    order_no: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lines"] = [dict(x) for x in self.lines]
        out["withdrawn"] = [dict(x) for x in self.withdrawn]
        return out


@dataclass(frozen=True)
class Settlement:
    """One row of ``venue_settlements``. ``status`` is ``paying``, ``paid`` or
    ``failed``; ``exit_pass`` (``LCX1.…``) and ``pass_id`` are set once paid;
    ``gateway`` is the last answer of ``pay`` / the status query; ``failure`` the
    decline reason of a failed one."""

    order_no: str
    venue: str
    cart_id: str
    account_id: str
    status: str
    total_minor: int
    currency: str
    lines: tuple
    payment_method: str
    payment_display: str
    created_at: float
    finished_at: float | None
    issued_at: int | None
    pass_id: str | None
    exit_pass: str | None = field(repr=False)
    gateway: dict | None = field(repr=False)
    failure: str | None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lines"] = [dict(x) for x in self.lines]
        return out


# --------------------------------------------------------------------------------------
# Biometric (and other extra) verification
# --------------------------------------------------------------------------------------

@runtime_checkable
class BiometricVerifier(Protocol):
    """Extra verification of a shopper: fingerprint, face, vein, voice, a car's
    plate — whatever the venue has. ``sample`` is what the sensor produced; the
    answer is whether it belongs to ``account_id``. An implementation owns its
    templates, its liveness checks and its own rate limits; the venue counts a
    ``False`` against the transaction-password lock as well."""

    def verify(self, account_id: str, sample: bytes) -> bool: ...


class SimulatedBiometricVerifier:
    """**A simulator, not biometrics**: ``verify`` is true exactly when ``sample`` is
    the byte string enrolled for the account (compared in constant time through
    SHA-256). For tests and demonstrations; a real venue plugs in its vendor's
    matcher behind :class:`BiometricVerifier`."""

    def __init__(self) -> None:
        self._templates: dict[str, bytes] = {}

    def enrol(self, account_id: str, sample: bytes) -> None:
        """Remember ``sample`` (non-empty bytes) as the account's template."""
        if not isinstance(sample, (bytes, bytearray)) or not sample:
            raise TypeError("a sample is non-empty bytes")
        self._templates[account_id] = hashlib.sha256(bytes(sample)).digest()

    def enrolled(self, account_id: str) -> bool:
        return account_id in self._templates

    def verify(self, account_id: str, sample: bytes) -> bool:
        held = self._templates.get(account_id)
        if held is None or not isinstance(sample, (bytes, bytearray)):
            return False
        return hmac.compare_digest(held, hashlib.sha256(bytes(sample)).digest())


# --------------------------------------------------------------------------------------
# Checks and small helpers
# --------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _login(value) -> str:
    if isinstance(value, str):
        v = value.strip().lower()
        if v.isascii() and _LOGIN_RE.fullmatch(v):
            return v
    raise _fail("BAD_LOGIN", "a login is 3-64 of a-z 0-9 _ . @ + - (letters compare "
                "lower-cased), starting with a letter or digit")


def _text(value, what: str, most: int = _NAME_MAX) -> str:
    if isinstance(value, str):
        v = " ".join(value.split())
        if 1 <= len(v) <= most and v.isprintable():
            return v
    raise _fail("BAD_REQUEST", f"{what} must be 1-{most} printable characters",
                field=what)


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def _gs1_ok(digits: str) -> bool:
    """GS1 mod-10 check digit of an 8-14 digit code."""
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=2 * 128 * r * (n + p + 2), dklen=_SCRYPT_LEN)


def _hash_secret(secret: str, n: int) -> str:
    """``scrypt$n$r$p$salt$hash`` (standard base64) with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = _scrypt(secret, salt, n, _SCRYPT_R, _SCRYPT_P)
    return (f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}$"
            f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")


def _hash_cost(stored: str) -> int:
    try:
        return int(stored.split("$")[1])
    except (IndexError, ValueError):
        return 0


def _secret_matches(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against ``scrypt$n$r$p$salt$hash``."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        if scheme != "scrypt" or not (2 <= n <= _SCRYPT_MAX_N and 1 <= r <= 32
                                      and 1 <= p <= 16):
            return False
        got = _scrypt(secret, base64.b64decode(salt), n, r, p)
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError, binascii.Error):
        return False


def _check_token(method, token) -> tuple[str, str]:
    """(method, display) for a payment token or masked card; CLEAR_PAN for anything
    that may be a card number. Never echoes the value."""
    if method not in PAY_METHODS:
        raise _fail("BAD_REQUEST", f"a payment method is one of {', '.join(PAY_METHODS)}",
                    field="method")
    if not isinstance(token, str):
        raise _fail("BAD_TOKEN", "a payment token is a string")
    squeezed = token.replace(" ", "").replace("-", "")
    if _DIGIT_RUN_RE.search(squeezed):
        raise _fail("CLEAR_PAN", "the token holds 12 or more digits in a row: a card "
                    "number in clear is never stored (bind the gateway's token, or the "
                    "card masked to its first 6 and last 4 digits)")
    masked = set(squeezed) <= set("0123456789*Xx") and any(c.isdigit() for c in squeezed)
    if masked and not _MASKED_PAN_RE.fullmatch(squeezed):
        raise _fail("CLEAR_PAN", "a masked card number shows at most its first 8 and last "
                    "4 digits, every digit between them masked")
    if not _TOKEN_RE.fullmatch(token):
        raise _fail("BAD_TOKEN", "a payment token is 1-128 printable ASCII characters, "
                    "no space at either end")
    display = token if masked else "…" + token[-4:]
    return method, display


def _source(value) -> str | None:
    """Where an attempt came from (None: not told), BAD_REQUEST if malformed."""
    if value is not None and not source_ok(value):
        raise _fail("BAD_REQUEST", "a source is a string of 1-128 characters",
                    field="source")
    return value


def _money(value, what: str) -> int:
    if not _is_int(value) or not 0 <= value <= _MAX_TOTAL:
        raise _fail("BAD_AMOUNT", f"{what} must be an integer of minor units ≥ 0",
                    field=what)
    return int(value)


def _format_minor(amount: int, currency: str) -> str:
    exp = _EXPONENTS.get(currency, 2)
    if exp == 0:
        return f"{currency} {amount}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10 ** exp)
    return f"{currency} {sign}{whole}.{frac:0{exp}d}"


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------------------
# The exit pass
# --------------------------------------------------------------------------------------

def _check_pass_payload(p: dict) -> None:
    """ValueError naming the first thing a version-1 exit pass payload may not hold."""
    def is_int(x):
        return type(x) is int

    if set(p) != PASS_KEYS:
        raise ValueError(f"keys {sorted(p)}; a payload has {sorted(PASS_KEYS)}")
    if not is_int(p["v"]) or p["v"] != PASS_VERSION:
        raise ValueError(f"v = {p['v']!r}")
    if not (isinstance(p["venue"], str) and _VENUE_RE.fullmatch(p["venue"])):
        raise ValueError("venue is not 1-32 of [A-Za-z0-9._-]")
    if not (isinstance(p["order"], str) and _ORDER_RE.fullmatch(p["order"])):
        raise ValueError("order is not 1-32 of [A-Z0-9-]")
    if not (isinstance(p["acct"], str) and _ACCOUNT_RE.fullmatch(p["acct"])):
        raise ValueError("acct is not an account id (AC and 16 hex digits)")
    if not (isinstance(p["pass"], str) and _PASS_ID_RE.fullmatch(p["pass"])):
        raise ValueError("pass is not 32 lowercase hex digits")
    if not (is_int(p["iat"]) and 0 <= p["iat"] <= _MAX_IAT):
        raise ValueError("iat is not a Unix time in whole seconds")
    if not (isinstance(p["cur"], str) and _CURRENCY_RE.fullmatch(p["cur"])):
        raise ValueError("cur is not an ISO 4217 code")
    if not (is_int(p["total"]) and 0 <= p["total"] <= _MAX_TOTAL):
        raise ValueError("total is not an integer of minor units")
    lines = p["lines"]
    if not (isinstance(lines, list) and 1 <= len(lines) <= MAX_LINES):
        raise ValueError(f"lines is not a list of 1-{MAX_LINES} lines")
    total = 0
    for i, line in enumerate(lines):
        if not (isinstance(line, list) and len(line) == len(PASS_LINE_FIELDS)):
            raise ValueError(f"line {i} is not an array {list(PASS_LINE_FIELDS)}")
        gtin, name, qty, unit, amount = line
        if not (isinstance(gtin, str) and _GTIN_RE.fullmatch(gtin)):
            raise ValueError(f"line {i}: gtin is not 14 digits")
        if not (isinstance(name, str) and 1 <= len(name) <= _NAME_MAX
                and name.isprintable() and name == " ".join(name.split())):
            raise ValueError(f"line {i}: name is not 1-{_NAME_MAX} printable characters")
        if not (is_int(qty) and 1 <= qty <= MAX_QTY):
            raise ValueError(f"line {i}: qty is not 1-{MAX_QTY}")
        if not (is_int(unit) and 0 <= unit <= _MAX_PRICE):
            raise ValueError(f"line {i}: unit_minor is not 0-{_MAX_PRICE}")
        if not is_int(amount) or amount != qty * unit:
            raise ValueError(f"line {i}: amount_minor is not qty x unit_minor")
        total += amount
    if total != p["total"]:
        raise ValueError("total is not the sum of the lines")


def make_exit_pass(signer: Signer, *, venue: str, order_no: str, account_id: str,
                   pass_id: str, issued_at: float, currency: str, total_minor: int,
                   lines: Iterable[Mapping]) -> str:
    """The signed exit pass text ``LCX1.<payload>.<signature>`` of a paid order.

    ``lines``: maps ``{gtin, name, qty, unit_minor, amount_minor}``, written as
    arrays in :data:`PASS_LINE_FIELDS` order; ``issued_at`` Unix seconds, floored. The signature is Ed25519 over the ASCII bytes
    ``LCX1.<payload>``. Raises UnattendedError BAD_REQUEST for values the format
    cannot carry."""
    if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)) \
            or not math.isfinite(issued_at):
        raise _fail("BAD_REQUEST", "issued_at is not a Unix time")
    payload = {"v": PASS_VERSION, "venue": venue, "order": order_no, "acct": account_id,
               "pass": pass_id, "iat": int(math.floor(issued_at)), "cur": currency,
               "total": total_minor,
               "lines": [[line[k] for k in PASS_LINE_FIELDS] for line in lines]}
    try:
        _check_pass_payload(payload)
    except (ValueError, KeyError) as exc:
        raise _fail("BAD_REQUEST", f"cannot sign this exit pass: {exc}") from None
    signed = f"{PASS_TAG}.{b64url_encode(canonical_json(payload))}"
    return f"{signed}.{b64url_encode(signer.sign(signed.encode('ascii')))}"


def read_exit_pass(text, verifier: Verifier, *, now: float | None = None,
                   max_age_s: float | None = None) -> dict:
    """Check an exit pass's form, signature and age and return its payload; consumes
    nothing (that is :meth:`Venue.check_exit_pass`).

    Order of checks: the tag and shape (PASS_FORMAT: ``LCX1``, three dot-separated
    parts, strict unpadded base64url, a 64-byte signature; another version is
    PASS_FORMAT with ``details.version``), the signature over ``LCX1.<payload>``
    (PASS_SIGNATURE), the payload (PASS_FORMAT), then with ``max_age_s`` its age at
    ``now`` (PASS_EXPIRED)."""
    if not isinstance(verifier, Verifier):
        raise TypeError(f"verifier must be a Verifier, not {type(verifier).__name__}")
    if not isinstance(text, str) or not text.isascii() or len(text) > MAX_PASS_CHARS:
        raise _fail("PASS_FORMAT", f"an exit pass is ASCII text of at most "
                    f"{MAX_PASS_CHARS} characters")
    text = text.strip()
    tag, dot, rest = text.partition(".")
    version = tag[len(PASS_PREFIX):]
    if not (dot and tag.startswith(PASS_PREFIX) and version.isdigit() and len(version) <= 3):
        raise _fail("PASS_FORMAT", "not a lanecore exit pass (no LCX<version>. tag)")
    if version != str(PASS_VERSION):
        raise _fail("PASS_FORMAT", f"exit pass version {version}; this lanecore reads "
                    f"version {PASS_VERSION}", version=version)
    body, dot, sig_text = rest.partition(".")
    if not dot:
        raise _fail("PASS_FORMAT", "an exit pass has three parts separated by dots")
    try:
        payload_bytes = b64url_decode(body)
        signature = b64url_decode(sig_text)
    except ValueError as exc:
        raise _fail("PASS_FORMAT", f"malformed exit pass: {exc}") from None
    if len(signature) != _SIGNATURE_LEN:
        raise _fail("PASS_FORMAT", f"the signature is {len(signature)} bytes; Ed25519 "
                    f"signatures are {_SIGNATURE_LEN}")
    if not verifier.verify(signature, f"{tag}.{body}".encode("ascii")):
        raise _fail("PASS_SIGNATURE", "the exit pass's signature does not match: altered, "
                    "forged, or signed with another venue's key")
    try:
        payload = json.loads(payload_bytes.decode("ascii"))
        if not isinstance(payload, dict):
            raise ValueError("the payload is not a JSON object")
        _check_pass_payload(payload)
        if canonical_json(payload) != payload_bytes:
            raise ValueError("the payload is not canonical JSON")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _fail("PASS_FORMAT", f"bad exit pass payload: {exc}") from None
    if max_age_s is not None:
        t = time.time() if now is None else now
        age = t - payload["iat"]
        if age > max_age_s:
            raise _fail("PASS_EXPIRED", f"the exit pass was issued {age:.0f} s ago; it is "
                        f"valid for {max_age_s:g} s", order_no=payload["order"],
                        issued_at=payload["iat"], age_s=age)
    return payload


def itemised_text(settlement: Settlement) -> str:
    """The paid, itemised list as text for the shopper's phone (a message or the
    app's screen): venue, order, time, one block per line, the total, and the exit
    pass text last (what the gate reads). NOT_PAID for a settlement that is not."""
    s = settlement
    if s.status != "paid" or not s.exit_pass:
        raise _fail("NOT_PAID", f"order {s.order_no} is {s.status}: there is no paid list",
                    order_no=s.order_no, status=s.status)
    out = [f"{s.venue} - paid", f"Order   {s.order_no}", f"Account {s.account_id}",
           f"Paid    {_iso(s.issued_at)}", f"Paid by {s.payment_method} {s.payment_display}",
           "-" * 32]
    for line in s.lines:
        out.append(line["name"])
        out.append(f"  {line['qty']} x {_format_minor(line['unit_minor'], s.currency)}"
                   f" = {_format_minor(line['amount_minor'], s.currency)}")
    units = sum(line["qty"] for line in s.lines)
    out += ["-" * 32, f"{units} item(s)  TOTAL {_format_minor(s.total_minor, s.currency)}",
            "", "Exit pass (show at the gate, valid once):", s.exit_pass]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS venue_accounts (
        account_id         TEXT PRIMARY KEY,
        login              TEXT NOT NULL UNIQUE,
        kind               TEXT NOT NULL CHECK (kind IN ('personal', 'company')),
        name               TEXT NOT NULL,
        pw_hash            TEXT NOT NULL,
        tx_hash            TEXT,
        tx_failures        INTEGER NOT NULL DEFAULT 0 CHECK (tx_failures >= 0),
        tx_last_failure_at REAL,
        tx_locked_until    REAL,
        pay_method         TEXT CHECK (pay_method IN ('card', 'wallet')),
        pay_token          TEXT,
        pay_display        TEXT,
        pay_bound_at       REAL,
        created_at         REAL NOT NULL,
        updated_at         REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS venue_login_failures (
        login           TEXT PRIMARY KEY,
        failures        INTEGER NOT NULL CHECK (failures >= 0),
        last_failure_at REAL NOT NULL,
        locked_until    REAL)""",
    "CREATE INDEX IF NOT EXISTS venue_login_failures_last ON venue_login_failures "
    "(last_failure_at)",
    """CREATE TABLE IF NOT EXISTS venue_sessions (
        token_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        issued_at  REAL NOT NULL,
        expires_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS venue_carts (
        cart_id    TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('open', 'settling', 'settled')),
        opened_at  REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS venue_carts_account ON venue_carts (account_id, status)",
    """CREATE TABLE IF NOT EXISTS venue_cart_lines (
        cart_id    TEXT NOT NULL,
        gtin       TEXT NOT NULL,
        name       TEXT NOT NULL,
        unit_minor INTEGER NOT NULL CHECK (unit_minor >= 0),
        qty        INTEGER NOT NULL CHECK (qty BETWEEN 1 AND 999),
        seq        INTEGER NOT NULL,
        PRIMARY KEY (cart_id, gtin))""",
    """CREATE TABLE IF NOT EXISTS venue_settlements (
        order_no     TEXT PRIMARY KEY,
        venue        TEXT NOT NULL,
        cart_id      TEXT NOT NULL,
        account_id   TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('paying', 'paid', 'failed')),
        total_minor  INTEGER NOT NULL CHECK (total_minor >= 0),
        currency     TEXT NOT NULL,
        lines        TEXT NOT NULL,
        pay_method   TEXT NOT NULL,
        pay_token    TEXT NOT NULL,
        pay_display  TEXT NOT NULL,
        created_at   REAL NOT NULL,
        finished_at  REAL,
        issued_at    INTEGER,
        pass_id      TEXT UNIQUE,
        exit_pass    TEXT,
        gateway      TEXT,
        failure      TEXT)""",
    # The guarantee that a cart is paid at most once: one live settlement per cart.
    "CREATE UNIQUE INDEX IF NOT EXISTS venue_settlements_one_live ON venue_settlements "
    "(cart_id) WHERE status != 'failed'",
    "CREATE INDEX IF NOT EXISTS venue_settlements_status ON venue_settlements (status)",
    """CREATE TABLE IF NOT EXISTS exit_passes_used (
        pass_id    TEXT PRIMARY KEY,
        order_no   TEXT NOT NULL,
        account_id TEXT NOT NULL,
        used_at    REAL NOT NULL)""",
)

_ACCOUNT_COLS = ("account_id, login, kind, name, pw_hash, tx_hash, tx_failures, "
                 "tx_last_failure_at, tx_locked_until, pay_method, pay_token, pay_display, "
                 "pay_bound_at, created_at, updated_at")
_SETTLEMENT_COLS = ("order_no, venue, cart_id, account_id, status, total_minor, currency, "
                    "lines, pay_method, pay_token, pay_display, created_at, finished_at, "
                    "issued_at, pass_id, exit_pass, gateway, failure")


def _Txn(con: sqlite3.Connection) -> Txn:
    """This store's transaction (``core/sqltxn.py``)."""
    return Txn(con, "venue_txn", _db_error, "venue")


def _db_error(exc: sqlite3.Error, what: str) -> UnattendedError:
    busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return UnattendedError(f"{what}: {exc}", code="DB_BUSY" if busy else "DB_ERROR")


def _db(what: str):
    """Turn an sqlite3 error escaping a public method into DB_ERROR / DB_BUSY."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except sqlite3.Error as exc:
                raise _db_error(exc, what) from exc
        return inner
    return wrap


def _streak(failures: int, last_failure_at, locked_until, now: float,
            lockout_s: float) -> int:
    """The consecutive failures that still count at ``now``: none once a lock has
    run out or after ``lockout_s`` without a failure."""
    if locked_until is not None and now >= locked_until:
        return 0
    if last_failure_at is None or now - last_failure_at >= lockout_s:
        return 0
    return failures


# --------------------------------------------------------------------------------------
# The venue
# --------------------------------------------------------------------------------------

CatalogLike = Mapping[str, Mapping] | Callable[[str], Mapping | None]


class Venue:
    """One unattended venue on the tables ``venue_*`` and ``exit_passes_used`` of
    ``con`` (created if absent).

    ``signer``: the venue's Ed25519 key (:class:`lanecore.core.signing.Signer`),
    which signs exit passes. ``catalog``: a mapping ``{gtin: {"name": str,
    "price_minor": int}}`` (keys of 8, 12, 13 or 14 digits) or a callable
    ``lookup(gtin14) -> {name, price_minor} | None``; with a callable, names are
    found through ``name_search(text) -> iterable of (gtin, item)`` when given
    (the candidates; the venue picks the exact or the unique prefix match), and
    are UNKNOWN_ITEM without it. ``max_failures`` wrong passwords in a row lock a
    login (and, separately, a transaction password) for ``lockout_s`` seconds.
    Purchases above ``extra_verification_over_minor`` need extra verification.
    ``kdf_n``: scrypt's cost (a power of two; at least 2**14 in service, smaller
    only in tests). Sessions last ``session_ttl_s``. ``venue_id`` goes into every
    exit pass, ``currency`` into every settlement."""

    def __init__(self, con: sqlite3.Connection, *, signer: Signer, catalog: CatalogLike,
                 clock: Callable[[], float] = time.time, max_failures: int = 5,
                 lockout_s: float = 900, extra_verification_over_minor: int = 50_000,
                 kdf_n: int = 2 ** 14, venue_id: str = "venue", currency: str = "CNY",
                 session_ttl_s: float = 4 * 3600,
                 name_search: Callable[[str], Iterable] | None = None,
                 throttle: SourceThrottle | None = None) -> None:
        if not isinstance(signer, Signer):
            raise TypeError("signer must be a lanecore.core.signing.Signer")
        if not (isinstance(catalog, Mapping) or callable(catalog)):
            raise TypeError("catalog must be a mapping of GTIN to item, or a callable")
        if not (_is_int(kdf_n) and 2 <= kdf_n <= _SCRYPT_MAX_N and kdf_n & (kdf_n - 1) == 0):
            raise ValueError(f"kdf_n must be a power of two, 2..{_SCRYPT_MAX_N}")
        if not (_is_int(max_failures) and max_failures >= 1):
            raise ValueError("max_failures must be an integer ≥ 1")
        if not (isinstance(lockout_s, (int, float)) and lockout_s > 0):
            raise ValueError("lockout_s must be > 0 seconds")
        if not (isinstance(session_ttl_s, (int, float)) and session_ttl_s > 0):
            raise ValueError("session_ttl_s must be > 0 seconds")
        if not (_is_int(extra_verification_over_minor) and extra_verification_over_minor >= 0):
            raise ValueError("extra_verification_over_minor must be an integer ≥ 0")
        if not (isinstance(venue_id, str) and _VENUE_RE.fullmatch(venue_id)):
            raise ValueError("venue_id must be 1-32 of [A-Za-z0-9._-]")
        if not (isinstance(currency, str) and _CURRENCY_RE.fullmatch(currency)):
            raise ValueError("currency must be an ISO 4217 code")
        self.con = con
        self.signer = signer
        self.catalog = catalog
        self.name_search = name_search
        self.clock = clock
        self.max_failures = int(max_failures)
        self.lockout_s = float(lockout_s)
        self.extra_verification_over_minor = int(extra_verification_over_minor)
        self.kdf_n = int(kdf_n)
        self.venue_id = venue_id
        self.currency = currency
        self.session_ttl_s = float(session_ttl_s)
        #: The per-source throttle of logins and transaction passwords
        #: (``core/pay/throttle.py``), on table ``venue_source_failures``.
        self.throttle = throttle or SourceThrottle("venue_source_failures")
        # What an unknown login is checked against: the same scrypt work as a real one.
        self._dummy_hash = _hash_secret(secrets.token_urlsafe(16), self.kdf_n)
        try:
            with _Txn(con):
                for stmt in _SCHEMA + self.throttle.schema():
                    con.execute(stmt)
        except sqlite3.Error as exc:
            raise _db_error(exc, "cannot open the venue tables") from exc

    # ------------------------------------------------------------------------------
    def _now(self, now) -> float:
        t = self.clock() if now is None else now
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise _fail("BAD_REQUEST", f"now must be Unix seconds, not {t!r:.40}",
                        field="now")
        return float(t)

    def _account_row(self, account_id: str) -> dict:
        row = self.con.execute(f"SELECT {_ACCOUNT_COLS} FROM venue_accounts "
                               "WHERE account_id = ?", (account_id,)).fetchone()
        if row is None:
            raise _fail("BAD_SESSION", "the session's account is gone")
        return dict(zip(_ACCOUNT_COLS.split(", "), row))

    @staticmethod
    def _account(row: dict) -> Account:
        return Account(row["account_id"], row["login"], row["kind"], row["name"],
                       row["pay_method"], row["pay_display"], row["tx_hash"] is not None,
                       row["created_at"])

    # ------------------------------------------------------------------------------
    # Accounts
    # ------------------------------------------------------------------------------
    @_db("cannot register")
    def register(self, login: str, password: str, *, kind: str = "personal", name: str,
                 now: float | None = None) -> Account:
        """A new account (at the door or remotely through the merchant's app).

        ``kind``: ``personal`` or ``company``; ``name`` the person's or company's
        name (1-100 printable characters). Raises BAD_LOGIN, WEAK_PASSWORD (fewer
        than 8 or more than 1024 characters, or control characters), BAD_REQUEST
        (kind, name), LOGIN_TAKEN."""
        now = self._now(now)
        login = _login(login)
        if not (isinstance(password, str) and _PW_MIN <= len(password) <= _PW_MAX
                and password.isprintable()):
            raise _fail("WEAK_PASSWORD", f"a password is {_PW_MIN}-{_PW_MAX} printable "
                        "characters")
        if kind not in ACCOUNT_KINDS:
            raise _fail("BAD_REQUEST", f"kind is one of {', '.join(ACCOUNT_KINDS)}",
                        field="kind")
        name = _text(name, "name")
        pw_hash = _hash_secret(password, self.kdf_n)
        account_id = "AC" + secrets.token_hex(8).upper()
        with _Txn(self.con):
            if self.con.execute("SELECT 1 FROM venue_accounts WHERE login = ?",
                                (login,)).fetchone():
                raise _fail("LOGIN_TAKEN", f"the login {login} is taken", login=login)
            self.con.execute(
                "INSERT INTO venue_accounts (account_id, login, kind, name, pw_hash, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (account_id, login, kind, name, pw_hash, now, now))
            return self._account(self._account_row(account_id))

    @_db("cannot log in")
    def login(self, login: str, password: str, *, now: float | None = None,
              source: str | None = None) -> Session:
        """Log in and return a :class:`Session`.

        ``WRONG_PASSWORD`` (details ``attempts_left``, and ``locked_until`` on the
        failure that locks) for a wrong password **or an unknown login** — the same
        scrypt work and the same answer, so logins cannot be probed; ``ACCOUNT_LOCKED``
        (details ``until``) while a lock lasts, whatever the password. BAD_LOGIN for a
        login that cannot exist (no account can have it, nothing is counted).

        ``source`` names the device or peer the attempt came from (a string of 1-128
        characters, else BAD_REQUEST): a failure also counts against it, and while
        it is in backoff every login from it is ``THROTTLED`` (details
        ``retry_after_s``, ``until``) before the login is looked up or the password
        hashed — the right password too; see ``core/pay/throttle.py``. None (a
        caller with no network source: staff tools, tests) leaves only the login's
        own lock."""
        now = self._now(now)
        login = _login(login)
        if not isinstance(password, str):
            raise _fail("BAD_REQUEST", "a password is a string", field="password")
        source = _source(source)
        self._refuse_if_throttled(source, now)
        self._refuse_if_locked(login, now)
        row = self.con.execute("SELECT account_id, pw_hash FROM venue_accounts "
                               "WHERE login = ?", (login,)).fetchone()
        # An over-long password is checked against nothing; for every login alike.
        stored = row[1] if row is not None else self._dummy_hash
        ok = len(password) <= _PW_MAX and _secret_matches(password, stored)
        ok = ok and row is not None
        rehash = (_hash_secret(password, self.kdf_n)
                  if ok and _hash_cost(stored) < self.kdf_n else None)
        refusal = None
        with _Txn(self.con):
            # Again under the write lock: attempts in flight at once from one source
            # get no more answers than one after the other would.
            self._refuse_if_throttled(source, now)
            failures, last, until = self._failures(login)
            if until is not None and now < until:
                raise self._locked("ACCOUNT_LOCKED", until)
            if ok:
                self.con.execute("DELETE FROM venue_login_failures WHERE login = ?", (login,))
                if rehash is not None:
                    self.con.execute("UPDATE venue_accounts SET pw_hash = ?, updated_at = ? "
                                     "WHERE account_id = ?", (rehash, now, row[0]))
                self.con.execute("DELETE FROM venue_sessions WHERE expires_at <= ?", (now,))
                token = secrets.token_urlsafe(32)
                session = Session(token, row[0], login, now, now + self.session_ttl_s)
                self.con.execute("INSERT INTO venue_sessions (token_hash, account_id, "
                                 "issued_at, expires_at) VALUES (?, ?, ?, ?)",
                                 (_token_hash(token), row[0], now, session.expires_at))
                return session
            streak = _streak(failures, last, until, now, self.lockout_s) + 1
            locked_until = now + self.lockout_s if streak >= self.max_failures else None
            # Rows whose streak no longer counts: forgotten, so probing fills nothing.
            self.con.execute("DELETE FROM venue_login_failures WHERE last_failure_at <= ? "
                             "AND (locked_until IS NULL OR locked_until <= ?)",
                             (now - self.lockout_s, now))
            self.con.execute("INSERT OR REPLACE INTO venue_login_failures (login, failures, "
                             "last_failure_at, locked_until) VALUES (?, ?, ?, ?)",
                             (login, streak, now, locked_until))
            if source is not None:
                self.throttle.fail(self.con, source, now)
            refusal = self._wrong("WRONG_PASSWORD", "wrong login or password", streak,
                                  locked_until)
        raise refusal

    def _failures(self, login: str) -> tuple[int, float | None, float | None]:
        row = self.con.execute("SELECT failures, last_failure_at, locked_until FROM "
                               "venue_login_failures WHERE login = ?", (login,)).fetchone()
        return (0, None, None) if row is None else row

    def _refuse_if_throttled(self, source: str | None, now: float) -> None:
        """THROTTLED while ``source`` is in backoff (nothing read, nothing hashed)."""
        if source is None:
            return
        until = self.throttle.blocked_until(self.con, source, now)
        if until is not None:
            wait = SourceThrottle.retry_after_s(until, now)
            raise _fail("THROTTLED", f"too many wrong attempts from this device: try "
                        f"again in {wait} s", retry_after_s=wait, until=until)

    def _refuse_if_locked(self, login: str, now: float) -> None:
        _, _, until = self._failures(login)
        if until is not None and now < until:
            raise self._locked("ACCOUNT_LOCKED", until)

    @staticmethod
    def _locked(code: str, until: float) -> UnattendedError:
        what = "login" if code == "ACCOUNT_LOCKED" else "transaction password"
        return _fail(code, f"too many wrong attempts: this {what} is locked until "
                     f"{_iso(until)}", until=until)

    def _wrong(self, code: str, message: str, streak: int,
               locked_until: float | None) -> UnattendedError:
        details = {"attempts_left": max(0, self.max_failures - streak)}
        if locked_until is not None:
            details["locked_until"] = locked_until
            message += f"; locked until {_iso(locked_until)}"
        return UnattendedError(message, code=code, details=details)

    @_db("cannot log out")
    def logout(self, session: Session | str) -> None:
        """End the session (idempotent)."""
        token = session.token if isinstance(session, Session) else session
        if isinstance(token, str):
            with _Txn(self.con):
                self.con.execute("DELETE FROM venue_sessions WHERE token_hash = ?",
                                 (_token_hash(token),))

    def _session(self, session: Session | str, now: float) -> dict:
        """The account row of a live session: BAD_SESSION, SESSION_EXPIRED."""
        token = session.token if isinstance(session, Session) else session
        if not isinstance(token, str) or not token:
            raise _fail("BAD_SESSION", "no session")
        row = self.con.execute("SELECT account_id, expires_at FROM venue_sessions "
                               "WHERE token_hash = ?", (_token_hash(token),)).fetchone()
        if row is None:
            raise _fail("BAD_SESSION", "unknown or ended session: log in again")
        if now >= row[1]:
            raise _fail("SESSION_EXPIRED", "the session has expired: log in again",
                        expired_at=row[1])
        return self._account_row(row[0])

    @_db("cannot read the account")
    def account(self, session: Session | str, *, now: float | None = None) -> Account:
        """The session's account."""
        return self._account(self._session(session, self._now(now)))

    @_db("cannot bind the payment method")
    def bind_payment(self, session: Session | str, method: str, token: str, *,
                     now: float | None = None) -> Account:
        """Bind (or replace) the account's payment method: ``card`` or ``wallet`` and
        the gateway's token for it, or a masked card (``622848******1234``). A card
        number in clear is refused (CLEAR_PAN) and never stored or echoed; BAD_TOKEN
        for anything that is not 1-128 printable ASCII characters."""
        now = self._now(now)
        row = self._session(session, now)
        method, display = _check_token(method, token)
        with _Txn(self.con):
            self.con.execute("UPDATE venue_accounts SET pay_method = ?, pay_token = ?, "
                             "pay_display = ?, pay_bound_at = ?, updated_at = ? "
                             "WHERE account_id = ?",
                             (method, token, display, now, now, row["account_id"]))
            return self._account(self._account_row(row["account_id"]))

    @_db("cannot set the transaction password")
    def set_transaction_password(self, session: Session | str, pin: str, *,
                                 current: str | None = None, now: float | None = None,
                                 source: str | None = None) -> Account:
        """Set the 6-digit transaction password (BAD_PIN otherwise). Changing one
        already set needs it as ``current``: checked like at settlement
        (TX_PASSWORD_WRONG counted, TX_LOCKED, THROTTLED for a ``source`` in
        backoff), so a borrowed session cannot reset it and a lock cannot be
        sidestepped."""
        now = self._now(now)
        source = _source(source)
        row = self._session(session, now)
        if not (isinstance(pin, str) and _PIN_RE.fullmatch(pin)):
            raise _fail("BAD_PIN", "a transaction password is 6 digits")
        if row["tx_hash"] is not None:
            self._check_tx(row["account_id"], current, now, source)
        tx_hash = _hash_secret(pin, self.kdf_n)
        with _Txn(self.con):
            self.con.execute("UPDATE venue_accounts SET tx_hash = ?, tx_failures = 0, "
                             "tx_last_failure_at = NULL, tx_locked_until = NULL, "
                             "updated_at = ? WHERE account_id = ?",
                             (tx_hash, now, row["account_id"]))
            return self._account(self._account_row(row["account_id"]))

    def _check_tx(self, account_id: str, pin, now: float,
                  source: str | None = None) -> None:
        """The transaction password, with its count and lock (and the source's)."""
        if isinstance(pin, str):                      # a guess: not from a throttled source
            self._refuse_if_throttled(source, now)
        row = self._account_row(account_id)
        if row["tx_hash"] is None:
            raise _fail("TX_PASSWORD_NOT_SET", "set a transaction password first")
        until = row["tx_locked_until"]
        if until is not None and now < until:
            raise self._locked("TX_LOCKED", until)
        if pin is None:
            raise _fail("TX_PASSWORD_WRONG", "the transaction password is needed",
                        pin_missing=True)
        if not isinstance(pin, str):
            raise _fail("BAD_PIN", "a transaction password is a string of 6 digits")
        ok = bool(_PIN_RE.fullmatch(pin)) and _secret_matches(pin, row["tx_hash"])
        self._count_tx(account_id, ok, now, "TX_PASSWORD_WRONG",
                       "wrong transaction password", source)

    def _count_tx(self, account_id: str, ok: bool, now: float, code: str,
                  message: str, source: str | None = None) -> None:
        """Record one check against the transaction-password lock (and, failed,
        against the source); raise if it failed."""
        refusal = None
        with _Txn(self.con):
            self._refuse_if_throttled(source, now)    # again, under the write lock
            row = self._account_row(account_id)
            until = row["tx_locked_until"]
            if until is not None and now < until:
                raise self._locked("TX_LOCKED", until)
            if ok:
                if row["tx_failures"] or until is not None:
                    self.con.execute("UPDATE venue_accounts SET tx_failures = 0, "
                                     "tx_last_failure_at = NULL, tx_locked_until = NULL "
                                     "WHERE account_id = ?", (account_id,))
                return
            streak = _streak(row["tx_failures"], row["tx_last_failure_at"], until, now,
                             self.lockout_s) + 1
            locked_until = now + self.lockout_s if streak >= self.max_failures else None
            self.con.execute("UPDATE venue_accounts SET tx_failures = ?, "
                             "tx_last_failure_at = ?, tx_locked_until = ?, updated_at = ? "
                             "WHERE account_id = ?",
                             (streak, now, locked_until, now, account_id))
            if source is not None:
                self.throttle.fail(self.con, source, now)
            refusal = self._wrong(code, message, streak, locked_until)
        raise refusal

    # ------------------------------------------------------------------------------
    # The catalogue
    # ------------------------------------------------------------------------------
    @staticmethod
    def _item(gtin14: str, value) -> dict:
        if not isinstance(value, Mapping):
            raise _fail("BAD_ITEM", f"the catalogue entry of {gtin14} is not a map",
                        gtin=gtin14)
        name, price = value.get("name"), value.get("price_minor")
        if not (isinstance(name, str) and 1 <= len(" ".join(name.split())) <= _NAME_MAX
                and name.isprintable()):
            raise _fail("BAD_ITEM", f"the catalogue entry of {gtin14} has no usable name",
                        gtin=gtin14)
        if not (_is_int(price) and 0 <= price <= _MAX_PRICE):
            raise _fail("BAD_ITEM", f"the catalogue entry of {gtin14} has no price in "
                        "minor units", gtin=gtin14)
        return {"gtin": gtin14, "name": " ".join(name.split()), "unit_minor": int(price)}

    def _by_code(self, gtin14: str) -> dict | None:
        if isinstance(self.catalog, Mapping):
            # The same GTIN written as 14, 13, 12 or 8 digits.
            keys = [gtin14] + [gtin14[14 - k:] for k in (13, 12, 8)
                               if gtin14[:14 - k] == "0" * (14 - k)]
            for key in keys:
                value = self.catalog.get(key)
                if value is not None:
                    return self._item(gtin14, value)
            return None
        value = self.catalog(gtin14)
        return None if value is None else self._item(gtin14, value)

    def _name_candidates(self, text: str) -> Iterable[tuple[str, Mapping]]:
        if isinstance(self.catalog, Mapping):
            return self.catalog.items()
        if self.name_search is not None:
            return self.name_search(text)
        return ()

    def _resolve(self, code_or_name) -> dict:
        """The catalogue item a shopper means: by code or by name."""
        if not isinstance(code_or_name, str) or not code_or_name.strip():
            raise _fail("BAD_REQUEST", "give an item's code or name", field="code_or_name")
        text = code_or_name.strip()
        if text.isascii() and text.isdigit() and 8 <= len(text) <= 14:
            gtin14 = text.zfill(14)
            found = self._by_code(gtin14)
            if found is not None:
                return found
            if not _gs1_ok(text):
                raise _fail("BAD_CHECK_DIGIT", f"{text} has a wrong check digit: mistyped?",
                            item_code=text)
            raise _fail("UNKNOWN_ITEM", f"no item with code {text}", item_code=text)
        matches = []
        for key, value in self._name_candidates(text):
            name = value.get("name") if isinstance(value, Mapping) else None
            if not isinstance(name, str) or not isinstance(key, str):
                continue
            k = key.strip()
            if not (k.isascii() and k.isdigit() and 8 <= len(k) <= 14):
                continue
            matches.append((k.zfill(14), value))
        return self._pick(text, [(g, v["name"]) for g, v in matches],
                          lambda g: self._item(g, dict(matches)[g]))

    @staticmethod
    def _pick(text: str, named: list[tuple[str, str]], fetch, *, missing="UNKNOWN_ITEM"):
        """Exact name (case-insensitive, spaces squeezed) if exactly one; else the
        unique prefix match; else AMBIGUOUS_NAME / ``missing``."""
        q = _norm(text)
        exact = sorted({g: n for g, n in named if _norm(n) == q}.items(), key=lambda x: x[1])
        prefix = sorted({g: n for g, n in named if _norm(n).startswith(q)}.items(),
                        key=lambda x: (x[1], x[0]))
        pool = exact or prefix
        if len(pool) == 1:
            return fetch(pool[0][0])
        if not pool:
            raise _fail(missing, f"no item called {text!r}" if missing == "UNKNOWN_ITEM"
                        else f"nothing called {text!r} in the cart", name=text)
        shown = [{"gtin": g, "name": n} for g, n in pool[:_CANDIDATES_SHOWN]]
        raise _fail("AMBIGUOUS_NAME", f"{len(pool)} items match {text!r}: say which",
                    name=text, count=len(pool), candidates=shown)

    # ------------------------------------------------------------------------------
    # Carts
    # ------------------------------------------------------------------------------
    def _cart_row(self, cart_id) -> tuple:
        if not isinstance(cart_id, str):
            raise _fail("UNKNOWN_CART", "no such cart")
        row = self.con.execute("SELECT cart_id, account_id, status FROM venue_carts "
                               "WHERE cart_id = ?", (cart_id,)).fetchone()
        if row is None:
            raise _fail("UNKNOWN_CART", "no such cart", cart_id=cart_id)
        return row

    def _live_order(self, cart_id: str) -> str | None:
        row = self.con.execute("SELECT order_no FROM venue_settlements WHERE cart_id = ? "
                               "AND status != 'failed'", (cart_id,)).fetchone()
        return None if row is None else row[0]

    def _open_cart_row(self, cart_id) -> tuple:
        row = self._cart_row(cart_id)
        if row[2] != "open":
            raise _fail("CART_CLOSED", f"the cart is {row[2]}: nothing can change in it",
                        cart_id=cart_id, status=row[2], order_no=self._live_order(cart_id))
        return row

    def _line_rows(self, cart_id: str) -> list[tuple]:
        return self.con.execute("SELECT gtin, name, unit_minor, qty FROM venue_cart_lines "
                                "WHERE cart_id = ? ORDER BY seq", (cart_id,)).fetchall()

    def _priced(self, cart_id: str) -> tuple[list[dict], list[dict]]:
        """(lines priced from the catalogue now, withdrawn lines)."""
        lines, withdrawn = [], []
        for gtin, name, _unit, qty in self._line_rows(cart_id):
            item = self._by_code(gtin)
            if item is None:
                withdrawn.append({"gtin": gtin, "name": name, "qty": qty})
            else:
                lines.append({"gtin": gtin, "name": item["name"], "qty": qty,
                              "unit_minor": item["unit_minor"],
                              "amount_minor": qty * item["unit_minor"]})
        return lines, withdrawn

    def _view(self, cart_id: str) -> CartView:
        cid, account_id, status = self._cart_row(cart_id)
        lines, withdrawn = self._priced(cid)
        return CartView(cid, account_id, status, self.currency, tuple(lines),
                        tuple(withdrawn), sum(x["amount_minor"] for x in lines),
                        self._live_order(cid))

    @_db("cannot open a cart")
    def open_cart(self, session: Session | str, now: float | None = None) -> CartView:
        """The account's open cart, or a new one. ``cart_id`` (``CT`` and 32 hex
        digits, 128 random bits) is what add/remove/settle name it by."""
        now = self._now(now)
        account_id = self._session(session, now)["account_id"]
        with _Txn(self.con):
            row = self.con.execute("SELECT cart_id FROM venue_carts WHERE account_id = ? "
                                   "AND status = 'open' ORDER BY opened_at DESC LIMIT 1",
                                   (account_id,)).fetchone()
            if row is not None:
                return self._view(row[0])
            cart_id = "CT" + secrets.token_hex(16).upper()
            self.con.execute("INSERT INTO venue_carts (cart_id, account_id, status, "
                             "opened_at, updated_at) VALUES (?, ?, 'open', ?, ?)",
                             (cart_id, account_id, now, now))
            return self._view(cart_id)

    @_db("cannot add to the cart")
    def add(self, cart_id: str, code_or_name: str, qty: int = 1, *,
            now: float | None = None) -> CartView:
        """Put ``qty`` (1-999) of an item in the cart, found by code (8-14 digits,
        looked up as GTIN-14) or by name (case-insensitive; exact, or a unique
        prefix). The same item again adds to its line (at most 999). Raises
        UNKNOWN_CART, CART_CLOSED, BAD_QTY, UNKNOWN_ITEM, BAD_CHECK_DIGIT,
        AMBIGUOUS_NAME (details ``candidates``: ``{gtin, name}``, at most 10, and
        ``count``), BAD_ITEM (a malformed catalogue entry), CART_FULL."""
        now = self._now(now)
        if not (_is_int(qty) and 1 <= qty <= MAX_QTY):
            raise _fail("BAD_QTY", f"a quantity is 1-{MAX_QTY}", qty=repr(qty)[:20])
        self._open_cart_row(cart_id)
        item = self._resolve(code_or_name)
        with _Txn(self.con):
            self._open_cart_row(cart_id)
            held = self.con.execute("SELECT qty FROM venue_cart_lines WHERE cart_id = ? "
                                    "AND gtin = ?", (cart_id, item["gtin"])).fetchone()
            if held is not None:
                if held[0] + qty > MAX_QTY:
                    raise _fail("BAD_QTY", f"a line holds at most {MAX_QTY}",
                                qty_in_cart=held[0], gtin=item["gtin"])
                self.con.execute("UPDATE venue_cart_lines SET qty = qty + ?, name = ?, "
                                 "unit_minor = ? WHERE cart_id = ? AND gtin = ?",
                                 (qty, item["name"], item["unit_minor"], cart_id,
                                  item["gtin"]))
            else:
                n, seq = self.con.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM "
                                          "venue_cart_lines WHERE cart_id = ?",
                                          (cart_id,)).fetchone()
                if n >= MAX_LINES:
                    raise _fail("CART_FULL", f"a cart holds at most {MAX_LINES} lines")
                self.con.execute("INSERT INTO venue_cart_lines (cart_id, gtin, name, "
                                 "unit_minor, qty, seq) VALUES (?, ?, ?, ?, ?, ?)",
                                 (cart_id, item["gtin"], item["name"], item["unit_minor"],
                                  qty, seq + 1))
            self.con.execute("UPDATE venue_carts SET updated_at = ? WHERE cart_id = ?",
                             (now, cart_id))
            return self._view(cart_id)

    @_db("cannot remove from the cart")
    def remove(self, cart_id: str, code_or_name: str, qty: int | None = None, *,
               now: float | None = None) -> CartView:
        """Take ``qty`` (default: all) of a line out. The line is named by code or by
        name among the cart's own lines (so a withdrawn item can be removed too).
        Raises UNKNOWN_CART, CART_CLOSED, NOT_IN_CART, AMBIGUOUS_NAME, BAD_QTY (more
        than the line holds: details ``qty_in_cart``)."""
        now = self._now(now)
        if qty is not None and not (_is_int(qty) and 1 <= qty <= MAX_QTY):
            raise _fail("BAD_QTY", f"a quantity is 1-{MAX_QTY}", qty=repr(qty)[:20])
        if not isinstance(code_or_name, str) or not code_or_name.strip():
            raise _fail("BAD_REQUEST", "give an item's code or name", field="code_or_name")
        text = code_or_name.strip()
        with _Txn(self.con):
            self._open_cart_row(cart_id)
            held = {g: (n, q) for g, n, _u, q in self._line_rows(cart_id)}
            if text.isascii() and text.isdigit() and 8 <= len(text) <= 14:
                gtin = text.zfill(14)
                if gtin not in held:
                    raise _fail("NOT_IN_CART", f"{text} is not in the cart", item_code=text)
            else:
                gtin = self._pick(text, [(g, n) for g, (n, _q) in held.items()],
                                  lambda g: g, missing="NOT_IN_CART")
            in_cart = held[gtin][1]
            take = in_cart if qty is None else qty
            if take > in_cart:
                raise _fail("BAD_QTY", f"the cart holds {in_cart} of it", qty_in_cart=in_cart,
                            gtin=gtin)
            if take == in_cart:
                self.con.execute("DELETE FROM venue_cart_lines WHERE cart_id = ? AND "
                                 "gtin = ?", (cart_id, gtin))
            else:
                self.con.execute("UPDATE venue_cart_lines SET qty = qty - ? WHERE "
                                 "cart_id = ? AND gtin = ?", (take, cart_id, gtin))
            self.con.execute("UPDATE venue_carts SET updated_at = ? WHERE cart_id = ?",
                             (now, cart_id))
            return self._view(cart_id)

    @_db("cannot read the cart")
    def cart(self, cart_id: str) -> CartView:
        """The cart, priced from the catalogue now, with its running total."""
        return self._view(cart_id)

    @_db("cannot quote the cart")
    def quote(self, cart_id: str) -> int:
        """The total to confirm, minor units: the cart re-priced from the catalogue.
        ITEM_WITHDRAWN (details ``withdrawn``) if an item is no longer sold."""
        self._cart_row(cart_id)
        lines, withdrawn = self._priced(cart_id)
        if withdrawn:
            raise _fail("ITEM_WITHDRAWN", "some items are no longer sold: remove them",
                        withdrawn=withdrawn)
        return sum(x["amount_minor"] for x in lines)

    # ------------------------------------------------------------------------------
    # Settlement
    # ------------------------------------------------------------------------------
    def _settlement_row(self, order_no) -> dict:
        if not isinstance(order_no, str):
            raise _fail("UNKNOWN_ORDER", "no such order")
        row = self.con.execute(f"SELECT {_SETTLEMENT_COLS} FROM venue_settlements "
                               "WHERE order_no = ?", (order_no,)).fetchone()
        if row is None:
            raise _fail("UNKNOWN_ORDER", f"no settlement {order_no}", order_no=order_no)
        return dict(zip(_SETTLEMENT_COLS.split(", "), row))

    @staticmethod
    def _settlement(row: dict) -> Settlement:
        return Settlement(row["order_no"], row["venue"], row["cart_id"], row["account_id"],
                          row["status"], row["total_minor"], row["currency"],
                          tuple(json.loads(row["lines"])), row["pay_method"],
                          row["pay_display"], row["created_at"], row["finished_at"],
                          row["issued_at"], row["pass_id"], row["exit_pass"],
                          None if row["gateway"] is None else json.loads(row["gateway"]),
                          row["failure"])

    @_db("cannot read the settlement")
    def settlement(self, order_no: str) -> Settlement:
        """The settlement ``order_no`` (UNKNOWN_ORDER)."""
        return self._settlement(self._settlement_row(order_no))

    @_db("cannot read the settlements")
    def paying(self) -> list[Settlement]:
        """Settlements still ``paying`` (in doubt), oldest first: what a sweeper
        passes to :meth:`resume`."""
        cur = self.con.execute(f"SELECT {_SETTLEMENT_COLS} FROM venue_settlements WHERE "
                               "status = 'paying' ORDER BY created_at")
        return [self._settlement(dict(zip(_SETTLEMENT_COLS.split(", "), r)))
                for r in cur.fetchall()]

    def _new_order_no(self, now: float) -> str:
        day = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y%m%d")
        return f"UV{day}{secrets.token_hex(5).upper()}"

    @_db("cannot settle")
    def settle(self, cart_id: str, *, transaction_password: str, confirm_total_minor: int,
               pay: Callable[[str, int, str], Mapping], verification=None,
               now: float | None = None, source: str | None = None) -> Settlement:
        """Pay for the cart and return the paid :class:`Settlement` (with its exit pass).

        In order: the cart (UNKNOWN_CART), the account's payment method
        (NO_PAYMENT_METHOD) and transaction password (TX_PASSWORD_NOT_SET, TX_LOCKED,
        TX_PASSWORD_WRONG: counted); a cart already paid answers with its settlement
        and pays nothing, one being paid is SETTLEMENT_PENDING (details
        ``order_no``: :meth:`resume` it); the cart re-priced (ITEM_WITHDRAWN,
        EMPTY_CART) must equal ``confirm_total_minor`` (TOTAL_CHANGED, details
        ``confirmed_minor``, ``total_minor``, ``lines``); above
        ``extra_verification_over_minor``, ``verification=(verifier, sample)`` must
        pass (EXTRA_VERIFICATION_REQUIRED, EXTRA_VERIFICATION_FAILED — counted
        against the transaction-password lock — VERIFIER_ERROR). ``source``: as
        :meth:`login`'s — a wrong transaction password or a failed verification
        counts against it, and while it is in backoff the transaction password is
        THROTTLED before it is checked.

        Then the settlement row is written ``paying`` under a new ``order_no`` and
        ``pay(order_no, amount_minor, payment_token)`` is called exactly once. Its
        answer is a map with ``status``: ``paid`` finishes the settlement;
        ``failed`` (``decline_code`` or ``reason`` says why) is PAYMENT_FAILED and
        the cart is open again; anything else — ``pending``, an amount or order
        that is not this one, an exception — is PAYMENT_IN_DOUBT (details
        ``order_no``) with the row left ``paying`` for :meth:`resume`. A cart whose
        total is 0 (free items only) is paid without calling ``pay``. BAD_REQUEST
        when ``con`` is inside a transaction: the ``paying`` row must be committed
        before the money moves."""
        now = self._now(now)
        if self.con.in_transaction:
            # Inside a caller's transaction the 'paying' row would not be durable
            # when the money moves: a crash would forget a payment that happened.
            raise _fail("BAD_REQUEST", "settle commits before it pays: call it outside "
                        "a transaction")
        confirmed = _money(confirm_total_minor, "confirm_total_minor")
        source = _source(source)
        if not callable(pay):
            raise _fail("BAD_REQUEST", "pay must be a callable", field="pay")
        if verification is not None:
            if not (isinstance(verification, tuple) and len(verification) == 2
                    and isinstance(verification[0], BiometricVerifier)
                    and isinstance(verification[1], (bytes, bytearray))):
                raise _fail("BAD_REQUEST", "verification is (verifier, sample bytes)",
                            field="verification")
        _cid, account_id, status = self._cart_row(cart_id)
        account = self._account_row(account_id)
        if account["pay_method"] is None:
            raise _fail("NO_PAYMENT_METHOD", "bind a card or wallet first")
        self._check_tx(account_id, transaction_password, now, source)
        if status == "settled":
            return self._settlement(self._settlement_row(self._live_order(cart_id)))
        if status == "settling":
            order_no = self._live_order(cart_id)
            raise _fail("SETTLEMENT_PENDING", f"order {order_no} is being paid: resume it",
                        order_no=order_no)
        lines, total = self._checked_lines(cart_id, confirmed)
        if total > self.extra_verification_over_minor:
            if verification is None:
                raise _fail("EXTRA_VERIFICATION_REQUIRED", f"a purchase above "
                            f"{self.extra_verification_over_minor} needs extra verification",
                            total_minor=total,
                            over_minor=self.extra_verification_over_minor)
            verifier, sample = verification
            try:
                # Only the bool True passes: a score or None fails closed.
                ok = verifier.verify(account_id, bytes(sample)) is True
            except Exception as exc:  # the vendor's matcher: any failure is its own
                raise _fail("VERIFIER_ERROR", f"the verifier failed: {exc}") from exc
            self._count_tx(account_id, ok, now, "EXTRA_VERIFICATION_FAILED",
                           "the extra verification did not match", source)
        order_no = self._new_order_no(now)
        with _Txn(self.con):
            # Again under the write lock: nothing may have changed since the checks.
            _cid, _acct, status = self._cart_row(cart_id)
            if status != "open":
                raise _fail("SETTLEMENT_PENDING", "the cart is being settled elsewhere",
                            order_no=self._live_order(cart_id))
            again, total_again = self._checked_lines(cart_id, confirmed)
            if again != lines:
                raise _fail("TOTAL_CHANGED", "the cart changed while it was settled",
                            confirmed_minor=confirmed, total_minor=total_again, lines=again)
            account = self._account_row(account_id)
            self.con.execute(
                f"INSERT INTO venue_settlements ({_SETTLEMENT_COLS}) VALUES "
                "(?, ?, ?, ?, 'paying', ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, "
                "NULL)",
                (order_no, self.venue_id, cart_id, account_id, total, self.currency,
                 json.dumps(lines, ensure_ascii=False), account["pay_method"],
                 account["pay_token"], account["pay_display"], now))
            self.con.execute("UPDATE venue_carts SET status = 'settling', updated_at = ? "
                             "WHERE cart_id = ?", (now, cart_id))
        # Durable before the money moves: a crash from here on leaves a 'paying' row.
        try:
            # Free items only: there is nothing to charge, and gateways refuse 0.
            result = ({"status": "paid", "order_no": order_no, "amount_minor": 0,
                       "note": "nothing to charge"}
                      if total == 0 else pay(order_no, total, account["pay_token"]))
        except Exception as exc:
            raise _fail("PAYMENT_IN_DOUBT", f"the payment of order {order_no} did not "
                        f"answer ({type(exc).__name__}: {exc}); resume it",
                        order_no=order_no) from exc
        return self._finish(order_no, result, now)

    def _checked_lines(self, cart_id: str, confirmed: int) -> tuple[list[dict], int]:
        lines, withdrawn = self._priced(cart_id)
        if withdrawn:
            raise _fail("ITEM_WITHDRAWN", "some items are no longer sold: remove them",
                        withdrawn=withdrawn)
        if not lines:
            raise _fail("EMPTY_CART", "the cart is empty")
        total = sum(x["amount_minor"] for x in lines)
        if total != confirmed:
            raise _fail("TOTAL_CHANGED", f"the total is {total}, not the {confirmed} "
                        "confirmed: confirm again", confirmed_minor=confirmed,
                        total_minor=total, lines=lines)
        return lines, total

    @_db("cannot resume the settlement")
    def resume(self, order_no: str, pay_status_fn: Callable[[str], Mapping], *,
               now: float | None = None) -> Settlement:
        """Finish a settlement left ``paying``: ``pay_status_fn(order_no)`` asks the
        gateway what became of the payment (a map like ``pay``'s answer) and the
        settlement is finished from it — ``paid`` issues the exit pass, ``failed``
        reopens the cart (PAYMENT_FAILED), anything else stays in doubt
        (PAYMENT_IN_DOUBT). Idempotent: a paid settlement is returned and a failed
        one answers PAYMENT_FAILED again, without asking the gateway."""
        now = self._now(now)
        row = self._settlement_row(order_no)
        if row["status"] == "paid":
            return self._settlement(row)
        if row["status"] == "failed":
            raise self._failed(row)
        try:
            result = pay_status_fn(order_no)
        except Exception as exc:
            raise _fail("PAYMENT_IN_DOUBT", f"the status of order {order_no} could not be "
                        f"read ({type(exc).__name__}: {exc})", order_no=order_no) from exc
        return self._finish(order_no, result, now)

    @staticmethod
    def _failed(row: dict) -> UnattendedError:
        return _fail("PAYMENT_FAILED", f"the payment of order {row['order_no']} failed: "
                     f"{row['failure']}", order_no=row["order_no"], reason=row["failure"],
                     cart_id=row["cart_id"])

    def _finish(self, order_no: str, result, now: float) -> Settlement:
        """Apply a gateway's answer to a ``paying`` settlement."""
        row = self._settlement_row(order_no)
        status = result.get("status") if isinstance(result, Mapping) else None
        doubt = None
        if not isinstance(result, Mapping):
            doubt = "the answer is not a map"
        elif "order_no" in result and result["order_no"] != order_no:
            doubt = f"the answer is for order {result['order_no']!r}"
        elif status == "paid" and not ("order_no" in result and "amount_minor" in result):
            # a paid answer says for which order and how much, or it proves nothing
            doubt = "the gateway's paid answer names no order or no amount"
        elif status == "paid" and "amount_minor" in result \
                and result["amount_minor"] != row["total_minor"]:
            doubt = (f"the gateway reports {result['amount_minor']!r} paid, not "
                     f"{row['total_minor']}")
        elif status == "paid" and "currency" in result \
                and result["currency"] != row["currency"]:
            doubt = (f"the gateway reports a payment in {result['currency']!r}, not "
                     f"{row['currency']}")
        elif status not in ("paid", "failed"):
            doubt = f"the payment is {status!r}"
        gateway = _gateway_json(result)
        with _Txn(self.con):
            row = self._settlement_row(order_no)
            if row["status"] == "paid":
                return self._settlement(row)
            if row["status"] == "failed":
                raise self._failed(row)
            if doubt is not None:
                self.con.execute("UPDATE venue_settlements SET gateway = ? WHERE "
                                 "order_no = ?", (gateway, order_no))
            elif status == "failed":
                reason = str(result.get("decline_code") or result.get("reason")
                             or "declined")[:200]
                self.con.execute("UPDATE venue_settlements SET status = 'failed', "
                                 "finished_at = ?, gateway = ?, failure = ? "
                                 "WHERE order_no = ?", (now, gateway, reason, order_no))
                self.con.execute("UPDATE venue_carts SET status = 'open', updated_at = ? "
                                 "WHERE cart_id = ?", (now, row["cart_id"]))
            else:
                pass_id = secrets.token_hex(16)
                iat = int(math.floor(now))
                text = make_exit_pass(self.signer, venue=row["venue"], order_no=order_no,
                                      account_id=row["account_id"], pass_id=pass_id,
                                      issued_at=iat, currency=row["currency"],
                                      total_minor=row["total_minor"],
                                      lines=json.loads(row["lines"]))
                self.con.execute("UPDATE venue_settlements SET status = 'paid', "
                                 "finished_at = ?, gateway = ?, issued_at = ?, pass_id = ?, "
                                 "exit_pass = ? WHERE order_no = ?",
                                 (now, gateway, iat, pass_id, text, order_no))
                self.con.execute("UPDATE venue_carts SET status = 'settled', updated_at = ? "
                                 "WHERE cart_id = ?", (now, row["cart_id"]))
                return self._settlement(self._settlement_row(order_no))
        if doubt is not None:
            raise _fail("PAYMENT_IN_DOUBT", f"order {order_no} is in doubt: {doubt}; "
                        "resume it", order_no=order_no)
        raise self._failed(self._settlement_row(order_no))

    # ------------------------------------------------------------------------------
    # The exit pass
    # ------------------------------------------------------------------------------
    @_db("cannot reissue the exit pass")
    def reissue_exit_pass(self, order_no: str, *, now: float | None = None) -> Settlement:
        """Sign the paid order's exit pass again with ``issued_at = now`` (a shopper
        who stayed longer than the gate's ``max_age_s``). The ``pass_id`` stays the
        same, so the old and the new text open the gate once between them.
        NOT_PAID, PASS_USED (already through the gate)."""
        now = self._now(now)
        with _Txn(self.con):
            row = self._settlement_row(order_no)
            if row["status"] != "paid":
                raise _fail("NOT_PAID", f"order {order_no} is {row['status']}",
                            order_no=order_no, status=row["status"])
            used = self.con.execute("SELECT used_at FROM exit_passes_used WHERE "
                                    "pass_id = ?", (row["pass_id"],)).fetchone()
            if used is not None:
                raise _fail("PASS_USED", f"the exit pass of order {order_no} was used at "
                            f"{_iso(used[0])}", order_no=order_no, used_at=used[0])
            iat = int(math.floor(now))
            text = make_exit_pass(self.signer, venue=row["venue"], order_no=order_no,
                                  account_id=row["account_id"], pass_id=row["pass_id"],
                                  issued_at=iat, currency=row["currency"],
                                  total_minor=row["total_minor"],
                                  lines=json.loads(row["lines"]))
            self.con.execute("UPDATE venue_settlements SET issued_at = ?, exit_pass = ? "
                             "WHERE order_no = ?", (iat, text, order_no))
            return self._settlement(self._settlement_row(order_no))

    @_db("cannot record the exit pass")
    def check_exit_pass(self, text: str, verifier: Verifier, *, now: float | None = None,
                        max_age_s: float = 3600) -> dict:
        """The gate's check: :func:`read_exit_pass` (PASS_FORMAT, PASS_SIGNATURE,
        PASS_EXPIRED), this venue's pass (PASS_WRONG_VENUE), then **consumed**:
        recorded in ``exit_passes_used``, and a pass already there is PASS_USED
        (details ``used_at``, ``order_no``). Returns the payload (the itemised list
        to show on the gate's screen). A refused pass is not consumed."""
        now = self._now(now)
        payload = read_exit_pass(text, verifier, now=now, max_age_s=max_age_s)
        if payload["venue"] != self.venue_id:
            raise _fail("PASS_WRONG_VENUE", f"the exit pass is for {payload['venue']}, not "
                        f"{self.venue_id}", venue=payload["venue"])
        with _Txn(self.con):
            used = self.con.execute("SELECT used_at FROM exit_passes_used WHERE "
                                    "pass_id = ?", (payload["pass"],)).fetchone()
            if used is not None:
                raise _fail("PASS_USED", f"this exit pass was used at {_iso(used[0])}",
                            order_no=payload["order"], used_at=used[0])
            self.con.execute("INSERT INTO exit_passes_used (pass_id, order_no, account_id, "
                             "used_at) VALUES (?, ?, ?, ?)",
                             (payload["pass"], payload["order"], payload["acct"], now))
        return payload


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _gateway_json(result) -> str:
    """The gateway's answer as JSON for the record (bounded, never failing)."""
    try:
        text = json.dumps(result, default=str, sort_keys=True)
    except (TypeError, ValueError):
        text = json.dumps(repr(result))
    if len(text) > _GATEWAY_TEXT_MAX:
        text = json.dumps({"truncated": text[:_GATEWAY_TEXT_MAX]})
    return text
