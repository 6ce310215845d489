"""The signed order QR: what a handheld shows after "submit" and an exit lane checks
with the store's public key alone, offline.

The text of the QR (all printable ASCII, so it fits a QR code's byte mode)::

    LCO1.<payload>.<signature>

* ``LCO1``: the format tag, ``LCO`` and the version digit ``1``.
* ``<payload>``: base64url without padding (RFC 4648 §5) of the canonical JSON
  ``{"cur":..,"digest":..,"iat":..,"n":..,"order":..,"store":..,"total":..,"v":1}``:
  keys sorted, no spaces, ASCII only (see :func:`canonical_json`).
* ``<signature>``: base64url without padding of the 64-byte Ed25519 signature
  (RFC 8032) over the ASCII bytes ``LCO1.<payload>``: the tag, the dot and the
  payload exactly as they appear in the text.

``docs/store/baskets.md`` describes every field and byte, with a verification recipe for a
device written in another language. A QR for a 16-character order number, a
five-character store and a five-digit total is 284 characters (QR version 12, 65 x 65
modules, at error correction M); the longest possible is 360 (version 14).

Keys: :class:`Signer` holds the Ed25519 private key in ``data_dir/keys/
order_signing.key`` (the raw 32-byte seed, mode 0600, created atomically on first
use); :class:`Verifier` needs only the public key (32 bytes, or base64 of them).

Errors are :class:`OrderQrError` with a stable ``code``: QR_FORMAT (not this
format, or malformed), QR_SIGNATURE (forged or altered, or another store's key),
QR_EXPIRED (older than the caller's ``max_age_s``), QR_VERSION (a format version
this lanecore does not read), BAD_REQUEST (impossible values to sign). A key or key
file that cannot be used is :class:`lanecore.core.signing.SigningError`, KEY_ERROR
(BAD_PERMISSIONS when the group or others may use it).

Rendering: :func:`qr_png` (a 1-bit PNG written with the standard library's zlib:
neither Pillow nor pypng is needed), :func:`qr_svg` (``qrcode.image.svg``) and
:func:`qr_terminal` (text for a terminal). Pure Python, no I/O besides the key file
and the image files asked for.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
import zlib
from pathlib import Path

from lanecore.core.errors import LanecoreError
# The keys and encodings every signed artefact shares; re-exported here, where
# callers of the order QR have always found them.
from lanecore.core.signing import (KEY_DIR, KEY_FILE, Signer, SigningError, Verifier,
                                   b64url_decode, b64url_encode, canonical_json)

__all__ = [
    "OrderQrError", "SigningError", "Signer", "Verifier", "QR_TAG", "QR_VERSION", "MAX_QR_CHARS",
    "KEY_DIR", "KEY_FILE", "PAYLOAD_KEYS", "canonical_json", "b64url_encode",
    "b64url_decode", "make_qr", "verify_qr", "qr_matrix", "qr_png", "qr_svg",
    "qr_terminal",
]

#: The format tag before the first dot: "LCO" (lanecore order) and the version.
QR_PREFIX = "LCO"
QR_VERSION = 1
QR_TAG = f"{QR_PREFIX}{QR_VERSION}"
#: Longest text verify_qr reads: anything longer is not one of ours (QR_FORMAT).
MAX_QR_CHARS = 1024
#: Exactly the keys of a version-1 payload.
PAYLOAD_KEYS = frozenset({"v", "store", "order", "total", "cur", "n", "digest", "iat"})

_STORE_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
_ORDER_RE = re.compile(r"[A-Z0-9-]{1,32}")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_DIGEST_RE = re.compile(r"[0-9a-f]{32}")
_MAX_TOTAL = 10 ** 18 - 1          # below SQLite's and every JSON reader's int64
_MAX_N = 10 ** 9
_MAX_IAT = 2 ** 40                 # year 36812: a sanity bound, not a policy
_SIGNATURE_LEN = 64


class OrderQrError(LanecoreError):
    """An order QR that cannot be made, read or trusted, or an unusable key."""

    code = "QR_FORMAT"


# --------------------------------------------------------------------------------------
# Making and verifying the QR text
# --------------------------------------------------------------------------------------

def _check_payload(p: dict) -> None:
    """ValueError naming the first field a version-1 payload may not hold."""
    def is_int(x):
        return type(x) is int

    if set(p) != PAYLOAD_KEYS:
        raise ValueError(f"keys {sorted(p)}; a payload has {sorted(PAYLOAD_KEYS)}")
    if p["v"] != QR_VERSION or not is_int(p["v"]):
        raise ValueError(f"v = {p['v']!r}")
    if not (isinstance(p["store"], str) and _STORE_RE.fullmatch(p["store"])):
        raise ValueError(f"store {p['store']!r} is not 1-32 of [A-Za-z0-9._-]")
    if not (isinstance(p["order"], str) and _ORDER_RE.fullmatch(p["order"])):
        raise ValueError(f"order {p['order']!r} is not 1-32 of [A-Z0-9-]")
    if not (is_int(p["total"]) and 0 <= p["total"] <= _MAX_TOTAL):
        raise ValueError(f"total {p['total']!r} is not an integer 0..{_MAX_TOTAL}")
    if not (isinstance(p["cur"], str) and _CURRENCY_RE.fullmatch(p["cur"])):
        raise ValueError(f"cur {p['cur']!r} is not an ISO 4217 code")
    if not (is_int(p["n"]) and 1 <= p["n"] <= _MAX_N):
        raise ValueError(f"n {p['n']!r} is not an integer 1..{_MAX_N}")
    if not (isinstance(p["digest"], str) and _DIGEST_RE.fullmatch(p["digest"])):
        raise ValueError(f"digest {p['digest']!r} is not 32 lowercase hex digits")
    if not (is_int(p["iat"]) and 0 <= p["iat"] <= _MAX_IAT):
        raise ValueError(f"iat {p['iat']!r} is not a Unix time in whole seconds")


def make_qr(signer: Signer, *, store: str, order_no: str, total_minor: int,
            currency: str, n_items: int, lines_digest: str,
            issued_at: float | None = None) -> str:
    """The signed QR text of one order.

    ``lines_digest``: the SHA-256 of the order's canonical lines as 64 hex digits (or
    already cut to 32); the QR carries its first 16 bytes. ``issued_at``: Unix time
    in seconds (default now), floored to whole seconds. Raises OrderQrError
    BAD_REQUEST for values the format cannot carry.
    """
    if not isinstance(lines_digest, str) or len(lines_digest) not in (32, 64):
        raise OrderQrError("lines_digest must be SHA-256 hex", code="BAD_REQUEST")
    iat = time.time() if issued_at is None else issued_at
    if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not math.isfinite(iat):
        raise OrderQrError(f"issued_at {issued_at!r} is not a Unix time",
                           code="BAD_REQUEST")
    payload = {"v": QR_VERSION, "store": store, "order": order_no, "total": total_minor,
               "cur": currency, "n": n_items, "digest": lines_digest[:32].lower(),
               "iat": int(math.floor(iat))}
    try:
        _check_payload(payload)
    except ValueError as exc:
        raise OrderQrError(f"cannot sign this order: {exc}", code="BAD_REQUEST") from None
    signed = f"{QR_TAG}.{b64url_encode(canonical_json(payload))}"
    return f"{signed}.{b64url_encode(signer.sign(signed.encode('ascii')))}"


def verify_qr(text, verifier: Verifier, *, now: float | None = None,
              max_age_s: float | None = None) -> dict:
    """Check an order QR and return its payload (the JSON object, as a dict).

    Order of checks: the tag (QR_FORMAT if it is not ``LCO<digits>``, QR_VERSION
    for another version), the shape (QR_FORMAT: three dot-separated parts, strict
    base64url, a 64-byte signature), the signature (QR_SIGNATURE), the payload
    (QR_FORMAT), then its age: with ``max_age_s`` (seconds), a QR issued more than
    that before ``now`` (Unix seconds, default the current time) is QR_EXPIRED.
    The caller decides what the payload means: that ``store`` is this store, that
    the order is paid.
    """
    if not isinstance(verifier, Verifier):
        raise TypeError(f"verifier must be a Verifier, not {type(verifier).__name__}")
    if not isinstance(text, str):
        raise OrderQrError(f"a QR text is a string, not {type(text).__name__}",
                           code="QR_FORMAT")
    if len(text) > MAX_QR_CHARS:
        raise OrderQrError(f"{len(text)} characters; an order QR has at most "
                           f"{MAX_QR_CHARS}", code="QR_FORMAT")
    tag, dot, rest = text.partition(".")
    version = tag[len(QR_PREFIX):]
    if not (dot and tag.startswith(QR_PREFIX) and version.isascii()
            and version.isdigit() and len(version) <= 3):
        raise OrderQrError("not a lanecore order QR (no LCO<version>. tag)",
                           code="QR_FORMAT")
    if version != str(QR_VERSION):
        raise OrderQrError(f"order QR version {version}; this lanecore reads version "
                           f"{QR_VERSION}", code="QR_VERSION")
    body, dot, sig_text = rest.partition(".")
    if not dot:
        raise OrderQrError("an order QR has three parts separated by dots",
                           code="QR_FORMAT")
    try:
        payload_bytes = b64url_decode(body)
        signature = b64url_decode(sig_text)
    except ValueError as exc:
        raise OrderQrError(f"malformed order QR: {exc}", code="QR_FORMAT") from None
    if len(signature) != _SIGNATURE_LEN:
        raise OrderQrError(f"the signature is {len(signature)} bytes; Ed25519 "
                           f"signatures are {_SIGNATURE_LEN}", code="QR_FORMAT")
    if not verifier.verify(signature, f"{tag}.{body}".encode("ascii")):
        raise OrderQrError("the order QR's signature does not match: altered, forged, "
                           "or signed with another key", code="QR_SIGNATURE")
    try:
        payload = json.loads(payload_bytes.decode("ascii"))
        if not isinstance(payload, dict):
            raise ValueError("the payload is not a JSON object")
        _check_payload(payload)
        if canonical_json(payload) != payload_bytes:
            raise ValueError("the payload is not canonical JSON")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # Signed but malformed: a signer bug, never a shopper's doing.
        raise OrderQrError(f"bad order QR payload: {exc}", code="QR_FORMAT") from None
    if max_age_s is not None:
        t = time.time() if now is None else now
        age = t - payload["iat"]
        if age > max_age_s:
            raise OrderQrError(f"the order QR was issued {age:.0f} s ago; it is valid "
                               f"for {max_age_s:g} s", code="QR_EXPIRED")
    return payload


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

def _qr(text: str, border: int):
    import qrcode  # here, so verifying needs nothing but cryptography
    from qrcode.constants import ERROR_CORRECT_M

    if not isinstance(text, str) or not text.isascii():
        raise OrderQrError("only ASCII text is rendered (the QR's byte mode)",
                           code="BAD_REQUEST")
    if not isinstance(border, int) or not 0 <= border <= 100:
        raise OrderQrError("border must be 0..100 modules", code="BAD_REQUEST")
    # M (15 % of codewords recoverable) is the usual choice for a code shown on a
    # screen; the data is added as bytes so it is encoded in byte mode as documented.
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=border)
    qr.add_data(text.encode("ascii"))
    qr.make(fit=True)
    return qr


def qr_matrix(text: str, *, border: int = 4) -> list[list[bool]]:
    """The QR symbol of ``text`` as rows of modules (True = dark), with ``border``
    light modules of quiet zone on every side (4 is the standard's minimum)."""
    return [list(map(bool, row)) for row in _qr(text, border).get_matrix()]


def _png(rows: list[list[bool]], scale: int) -> bytes:
    """A 1-bit greyscale PNG (black = dark module), every module ``scale`` pixels."""
    size = len(rows) * scale
    raw = bytearray()
    for row in rows:
        bits = "".join(("0" if dark else "1") * scale for dark in row)
        bits += "1" * (-len(bits) % 8)
        line = b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big")  # filter: none
        raw += line * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
            + chunk(b"IEND", b""))


def qr_png(text: str, path: str | os.PathLike, *, scale: int = 4,
           border: int = 4) -> Path:
    """Write the QR of ``text`` as a PNG file (1-bit greyscale, ``scale`` pixels per
    module, ``border`` modules of quiet zone) and return its path.

    The PNG is encoded here with zlib: the ``qrcode`` package's own PNG output needs
    Pillow or pypng, and this keeps the runtime dependencies to ``qrcode``.
    """
    if not isinstance(scale, int) or not 1 <= scale <= 100:
        raise OrderQrError("scale must be 1..100 pixels per module", code="BAD_REQUEST")
    out = Path(path)
    out.write_bytes(_png(qr_matrix(text, border=border), scale))
    return out


def qr_svg(text: str, path: str | os.PathLike, *, border: int = 4) -> Path:
    """Write the QR of ``text`` as an SVG file (``qrcode.image.svg``, one path,
    white background) and return its path."""
    from qrcode.image.svg import SvgPathFillImage

    qr = _qr(text, border)
    out = Path(path)
    with open(out, "wb") as f:
        qr.make_image(image_factory=SvgPathFillImage).save(f)
    return out


def qr_terminal(text: str, *, invert: bool = False, ascii_only: bool = False,
                border: int = 2) -> str:
    """The QR of ``text`` as lines of text for a terminal (``\\n``-separated).

    By default two module rows share one line, drawn with the half-block characters
    ``▀ ▄ █`` (a 61-module code is 65 columns by 33 lines with the 2-module border).
    ``ascii_only`` draws ``##`` per dark module instead (twice as wide and tall, any
    character set). Ink stands for dark modules, for a light background; on a
    terminal with a dark background pass ``invert=True`` so that the ink draws the
    light modules and the code reads dark-on-light to a scanner. A quiet zone of 2
    modules is enough for most phone and handheld scanners on a screen.
    """
    rows = qr_matrix(text, border=border)
    if invert:
        rows = [[not m for m in row] for row in rows]
    if ascii_only:
        return "\n".join("".join("##" if m else "  " for m in row)
                         for row in rows) + "\n"
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    glyph = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584",
             (True, True): "\u2588"}
    return "\n".join("".join(glyph[pair] for pair in zip(rows[i], rows[i + 1]))
                     for i in range(0, len(rows), 2)) + "\n"
