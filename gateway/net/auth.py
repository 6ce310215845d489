"""The POS terminals' request signature (the payment gateway with ``[pos] auth =
"hmac"``): what a client computes and the gateway checks, kept with the clients so a
caller needs nothing of the gateway's registry to sign.

Every request is one MessagePack frame followed by an *authentication frame*::

    frame 1  the request, exactly as without authentication
    frame 2  MessagePack map {"t": terminal id, "ts": unix seconds (int), "mac": 32 bytes}

    mac = HMAC-SHA256(key, b"LCA1\\n" + t + b"\\n" + decimal(ts) + b"\\n" + frame 1)

The registry of terminals, their keys and limits is
``lanecore.gateway.payments.terminals``; the wire contract is ``docs/protocol.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

import msgpack

from lanecore.core.errors import LanecoreError

__all__ = ["AUTH_TAG", "KEY_BYTES", "MAX_SKEW_S", "TerminalError", "key_text",
           "parse_key", "mac", "auth_frame"]

AUTH_TAG = b"LCA1"
KEY_BYTES = 32
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


def mac(key: bytes, terminal: str, ts: int, payload: bytes) -> bytes:
    """The request MAC (module docstring)."""
    msg = b"\n".join((AUTH_TAG, terminal.encode("utf-8"), str(int(ts)).encode("ascii"),
                      payload))
    return hmac.new(key, msg, hashlib.sha256).digest()


def auth_frame(terminal: str, key: bytes, payload: bytes, *, ts: int | None = None) -> bytes:
    """The authentication frame a terminal sends after ``payload``."""
    ts = int(time.time()) if ts is None else int(ts)
    return msgpack.packb({"t": terminal, "ts": ts, "mac": mac(key, terminal, ts, payload)},
                         use_bin_type=True)
