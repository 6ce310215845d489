"""The multi-information QR of seed 001: one code on the shopper's phone carrying a
single-use payment token and the shopper's coupons, signed by the wallet provider.

The text (printable ASCII, for a QR code's byte mode)::

    LCM1.<payload>.<signature>.<check>

* ``LCM1``: the format tag (``LCM``, lanecore multi-information, version ``1``).
* ``<payload>``: base64url without padding of the canonical JSON (keys sorted, no
  spaces, ASCII only: :func:`lanecore.core.store.orderqr.canonical_json`) of::

      {"v": 1, "kid": key id, "iss": wallet provider, "qid": this QR's id,
       "cust": customer id, "tok": payment token (digits), "cur": ISO 4217,
       "iat": issued (Unix s), "exp": expires (Unix s),
       "cpn": [[coupon id, GTIN-14, amount off in minor units], …]}

* ``<signature>``: base64url of the 64-byte Ed25519 signature over the ASCII bytes
  ``LCM1.<payload>`` (tag, dot and payload exactly as in the text).
* ``<check>``: 8 lowercase hex digits, CRC-32 (zlib/IEEE) of the ASCII bytes
  ``LCM1.<payload>.<signature>``.

Why a CRC as well as a signature: so the till can say *which* failure it saw.
A text whose CRC does not match was changed or damaged after it was made
(``MQR_ALTERED``: one changed byte, a misread). A text that is intact but whose
signature is not a trusted wallet key's is a forgery (``MQR_FORGED``: someone
recomputed the CRC, or signed with a key of their own). An intact, genuine QR
past ``exp`` is ``MQR_EXPIRED``; one whose ``qid`` was already used for another
order is ``MQR_REPLAYED`` (the coupon gateway keeps the used ids). Others:
``MQR_FORMAT`` (not this format), ``MQR_VERSION`` (a later version),
``MQR_UNKNOWN_KEY`` (a ``kid`` the till has no key for).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import zlib
from dataclasses import dataclass

from lanecore.core.errors import LanecoreError
from lanecore.core.signing import (Signer, Verifier, b64url_decode, b64url_encode,
                                   canonical_json)

__all__ = ["MqrError", "MqrCoupon", "Mqr", "make_mqr", "read_mqr", "TAG", "MAX_COUPONS"]

TAG = "LCM1"
MAX_CHARS = 2048
MAX_COUPONS = 20
PAYLOAD_KEYS = frozenset({"v", "kid", "iss", "qid", "cust", "tok", "cur", "iat", "exp",
                          "cpn"})
_ID = re.compile(r"[A-Za-z0-9._-]{1,40}")
_TOKEN = re.compile(r"[0-9]{10,32}")
_GTIN = re.compile(r"[0-9]{14}")
_CUR = re.compile(r"[A-Z]{3}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_MAX_AMOUNT = 10 ** 12
_MAX_TIME = 2 ** 40


class MqrError(LanecoreError):
    code = "MQR_FORMAT"


@dataclass(frozen=True)
class MqrCoupon:
    coupon_id: str
    gtin: str
    amount_minor: int

    def to_dict(self) -> dict:
        return {"coupon_id": self.coupon_id, "gtin": self.gtin,
                "amount_minor": self.amount_minor}


@dataclass(frozen=True)
class Mqr:
    """A multi-information QR that was read and trusted."""

    key_id: str
    issuer: str
    qr_id: str
    customer: str
    token: str
    currency: str
    issued_at: int
    expires_at: int
    coupons: tuple[MqrCoupon, ...]

    def to_dict(self) -> dict:
        return {"key_id": self.key_id, "issuer": self.issuer, "qr_id": self.qr_id,
                "customer": self.customer, "currency": self.currency,
                "issued_at": self.issued_at, "expires_at": self.expires_at,
                "coupons": [c.to_dict() for c in self.coupons]}   # never the token


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(p: dict) -> None:
    """MqrError BAD_REQUEST (making) for a payload that is not version 1's."""
    bad = []
    for key, rx in (("kid", _ID), ("iss", _ID), ("qid", _ID), ("cust", _ID),
                    ("tok", _TOKEN), ("cur", _CUR)):
        if not (isinstance(p.get(key), str) and rx.fullmatch(p[key])):
            bad.append(key)
    for key in ("iat", "exp"):
        if not (_is_int(p.get(key)) and 0 <= p[key] < _MAX_TIME):
            bad.append(key)
    if not bad and p["exp"] <= p["iat"]:
        bad.append("exp")
    cpn = p.get("cpn")
    if not (isinstance(cpn, list) and len(cpn) <= MAX_COUPONS and all(
            isinstance(c, list) and len(c) == 3 and isinstance(c[0], str)
            and _ID.fullmatch(c[0]) and isinstance(c[1], str) and _GTIN.fullmatch(c[1])
            and _is_int(c[2]) and 0 < c[2] <= _MAX_AMOUNT for c in cpn)):
        bad.append("cpn")
    elif len({c[0] for c in cpn}) != len(cpn):
        bad.append("cpn (a coupon twice)")
    if p.get("v") != 1 or set(p) != PAYLOAD_KEYS:
        bad.append("v/keys")
    if bad:
        raise MqrError(f"not a version-1 payload: {', '.join(bad)}", code="BAD_REQUEST")


def make_mqr(signer: Signer, *, key_id: str, issuer: str, customer: str, token: str,
             currency: str, coupons, ttl_s: int = 120, now: float | None = None,
             qr_id: str | None = None) -> str:
    """The text of a multi-information QR (what the wallet shows). ``coupons``:
    ``(coupon_id, gtin14, amount_minor)`` triples or :class:`MqrCoupon`."""
    iat = int(time.time() if now is None else now)
    cpn = [list(c) if not isinstance(c, MqrCoupon) else [c.coupon_id, c.gtin,
                                                         c.amount_minor] for c in coupons]
    p = {"v": 1, "kid": key_id, "iss": issuer, "qid": qr_id or secrets.token_urlsafe(12),
         "cust": customer, "tok": token, "cur": currency, "iat": iat, "exp": iat + ttl_s,
         "cpn": cpn}
    _check(p)
    head = f"{TAG}.{b64url_encode(canonical_json(p))}"
    signed = f"{head}.{b64url_encode(signer.sign(head.encode('ascii')))}"
    return f"{signed}.{zlib.crc32(signed.encode('ascii')):08x}"


def read_mqr(text, keys: dict[str, Verifier], *, now: float | None = None) -> Mqr:
    """Check a scanned text and return what it carries; MqrError with the codes of
    the module docstring, in this order: format, integrity (CRC), version, key,
    signature, payload, expiry. ``keys``: key id → the wallet provider's Verifier.
    (Replay is the caller's: it knows which ``qr_id`` were used.)"""
    if not isinstance(text, str) or not text.isascii() or len(text) > MAX_CHARS:
        raise MqrError("not a multi-information QR (ASCII text of at most "
                       f"{MAX_CHARS} characters)")
    if len(text) < 14 or text.count(".") < 2:
        raise MqrError("not a multi-information QR: LCMn.<payload>.<signature>.<crc>")
    signed = text[:-9]
    if text[-9] != "." or text[-8:] != f"{zlib.crc32(signed.encode('ascii')):08x}":
        raise MqrError("the QR's check does not match: it was changed or misread",
                       code="MQR_ALTERED")
    parts = signed.split(".")
    if len(parts) != 3 or not re.fullmatch(r"LCM[0-9]", parts[0]):
        raise MqrError("not a multi-information QR: LCMn.<payload>.<signature>.<crc>")
    if parts[0] != TAG:
        raise MqrError(f"format {parts[0]} is not one this lanecore reads ({TAG})",
                       code="MQR_VERSION")
    try:
        if not (_B64.fullmatch(parts[1]) and _B64.fullmatch(parts[2])):
            raise ValueError("not base64url")
        raw = b64url_decode(parts[1])
        sig = b64url_decode(parts[2])
        p = json.loads(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError, LanecoreError):
        raise MqrError("the payload or signature is not readable", code="MQR_FORGED") \
            from None
    if not isinstance(p, dict) or not isinstance(p.get("kid"), str):
        raise MqrError("the payload names no key", code="MQR_FORGED")
    verifier = keys.get(p["kid"])
    if verifier is None:
        raise MqrError(f"no wallet key {p['kid'][:40]!r} is trusted here",
                       code="MQR_UNKNOWN_KEY")
    if len(sig) != 64 or not verifier.verify(sig, f"{parts[0]}.{parts[1]}".encode("ascii")):
        raise MqrError("the signature is not the wallet provider's", code="MQR_FORGED")
    try:
        _check(p)
    except MqrError as exc:   # signed by the wallet, but not what we read: its bug
        raise MqrError(f"a signed payload this lanecore cannot use: {exc.message}",
                       code="MQR_FORMAT") from None
    if canonical_json(p) != raw:
        raise MqrError("the payload is not in canonical form", code="MQR_FORMAT")
    t = time.time() if now is None else now
    if t >= p["exp"]:
        raise MqrError(f"the QR expired at {p['exp']} (now {int(t)})", code="MQR_EXPIRED")
    return Mqr(p["kid"], p["iss"], p["qid"], p["cust"], p["tok"], p["cur"], p["iat"],
               p["exp"], tuple(MqrCoupon(*c) for c in p["cpn"]))
