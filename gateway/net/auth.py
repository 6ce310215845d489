"""The POS terminals' request signature (the payment gateway with ``[pos] auth =
"hmac"``): what a client computes and the gateway checks, kept with the clients so a
caller needs nothing of the gateway's registry to sign.

Every request is one MessagePack frame followed by an *authentication frame*::

    frame 1  the request, exactly as without authentication
    frame 2  MessagePack map {"t": terminal id, "ts": unix seconds (int),
                              "n": 16 random bytes (the nonce), "mac": 32 bytes}

    mac = HMAC-SHA256(key, b"LCA2\n" + t + b"\n" + decimal(ts) + b"\n"
                           + hex(n) + b"\n" + frame 1)

``hex(n)`` is the nonce as 32 lowercase hex digits (ASCII). A nonce is used once:
the gateway remembers ``(t, n)`` for twice its clock window and answers a second use
``AUTH_REPLAYED``; every send (a retry too) gets a fresh frame — new ``ts`` and ``n``
around the same request bytes — so a retry meets the recorded reply, never a
refusal. The older ``LCA1`` frame (no nonce) is refused (``AUTH_OLD_FRAME``).

The registry of terminals, their keys and limits is
``lanecore.gateway.payments.terminals``; the wire contract is ``docs/protocol.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time

import msgpack

from lanecore.core.errors import LanecoreError

__all__ = ["AUTH_TAG", "OLD_AUTH_TAG", "KEY_BYTES", "NONCE_BYTES", "MAX_SKEW_S",
           "TerminalError", "key_text", "parse_key", "mac", "auth_frame"]

AUTH_TAG = b"LCA2"
#: The recipe before nonces: its frames are refused (AUTH_OLD_FRAME).
OLD_AUTH_TAG = b"LCA1"
KEY_BYTES = 32
NONCE_BYTES = 16
MAX_SKEW_S = 300.0


class TerminalError(LanecoreError):
    code = "BAD_TERMINAL"


def key_text(key: bytes) -> str:
    """A key as the terminal is given it: unpadded base64url (43 characters)."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def parse_key(text: str) -> bytes:
    """The inverse of :func:`key_text` (also accepts 64 hex digits)."""
    text = text.strip()
    try:
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            key = bytes.fromhex(text)
        else:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise TerminalError("a terminal key is 32 bytes: 43 base64url characters or "
                            "64 hex digits", code="BAD_KEY")
    return key


def mac(key: bytes, terminal: str, ts: int, nonce: bytes, payload: bytes) -> bytes:
    """The request MAC (module docstring): over ``LCA2``, the terminal id, the decimal
    ``ts``, the nonce in lowercase hex and the request's bytes, joined by LF."""
    msg = b"\n".join((AUTH_TAG, terminal.encode("utf-8"), str(int(ts)).encode("ascii"),
                      nonce.hex().encode("ascii"), payload))
    return hmac.new(key, msg, hashlib.sha256).digest()


def auth_frame(terminal: str, key: bytes, payload: bytes, *, ts: int | None = None,
               nonce: bytes | None = None) -> bytes:
    """The authentication frame a terminal sends after ``payload``: a fresh nonce
    (16 random bytes) and the current time unless given (tests, the worked example)."""
    ts = int(time.time()) if ts is None else int(ts)
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else bytes(nonce)
    if len(nonce) != NONCE_BYTES:
        raise TerminalError(f"a nonce is {NONCE_BYTES} bytes", code="BAD_NONCE")
    return msgpack.packb({"t": terminal, "ts": ts, "n": nonce,
                          "mac": mac(key, terminal, ts, nonce, payload)},
                         use_bin_type=True)
