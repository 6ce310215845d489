"""The wire protocol: MessagePack maps in ZeroMQ frames, and how a request is checked.

Everything here is shared by the service, its workers and the client library; the
contract itself is written down in ``docs/protocol.md``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import msgpack

PROTOCOL_VERSION = 1

#: Largest message the service accepts (libzmq's MAXMSGSIZE on its socket: a peer
#: that sends more is disconnected).
MAX_MESSAGE_BYTES = 1 << 20
#: What CurveZMQ adds to each message on the wire, which libzmq's MAXMSGSIZE counts:
#: the MESSAGE command name (8), the short nonce (8), the flags byte and the box's
#: MAC (16). A server with CURVE allows this much more, so the limit on a request
#: stays MAX_MESSAGE_BYTES either way.
CURVE_OVERHEAD = 33


def max_wire_bytes(security) -> int:
    """MAXMSGSIZE for a socket: the request limit, plus CURVE's envelope if any."""
    return MAX_MESSAGE_BYTES + (CURVE_OVERHEAD if security is not None else 0)
#: Limits when unpacking a request: no value may be larger than the message anyway,
#: but lists and maps are bounded well below what would cost real memory.
UNPACK_LIMITS = dict(max_str_len=64 * 1024, max_bin_len=MAX_MESSAGE_BYTES,
                     max_array_len=10_000, max_map_len=256, max_ext_len=0)
#: Most values in one request, at every depth: maps, lists and scalars (a map's key
#: and value count two). The largest legitimate request, a ``basket.add`` of 1,000
#: scans, holds about 5,000; 1 MiB of empty maps would be a million (64 MiB and 80 ms
#: to unpack). Past it: ``TOO_COMPLEX``. Every value takes at least one byte, so a
#: message of at most this many bytes is never counted (the hot path pays nothing); a
#: larger one is counted by a compiled walk over its bytes that stops at the bound
#: (``ext/msgcount.py``: ~10 µs for a legitimate 55 KB basket.add, ~40 µs to refuse
#: 1 MiB of empty maps) before anything is built.
MAX_OBJECTS = 32_768
#: Longest request id (as a string) and client name.
MAX_ID_LEN = 128


class ProtocolError(Exception):
    """A request the service answers with ``ok: false`` and this stable code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


#: Every envelope-level error code, with what it means (docs/protocol.md).
ENVELOPE_ERRORS = {
    "NOT_MSGPACK": "the frame is not MessagePack",
    "NOT_A_MAP": "the request is not a MessagePack map",
    "BAD_KEY_TYPE": "a map key, at any depth, that is not a string (or binary)",
    "TOO_LARGE": "a string, binary, list or map in the request is over its limit",
    "TOO_COMPLEX": f"the request holds more than {MAX_OBJECTS:,} values in all (maps, "
                   "lists and scalars at every depth)",
    "BUSY": "this peer has too many requests or bytes waiting at the service; the "
            "request was not read: retry with the same id after a pause",
    "BAD_FRAMES": "the message does not have the frames of a DEALER or REQ request",
    "MISSING_FIELD": "a required field is absent",
    "BAD_FIELD": "a field has the wrong type or an impossible value",
    "UNKNOWN_OP": "the op is not one this service offers",
    "INTERNAL": "the service failed on this request; it goes on serving others",
    "UNAVAILABLE": "the worker for this request is restarting; retry with the same id",
}


def unpack(payload: bytes) -> dict:
    """A request map from its frame, or ProtocolError (id unknown)."""
    try:
        if len(payload) > MAX_OBJECTS and _count_values(payload) > MAX_OBJECTS:
            raise ProtocolError("TOO_COMPLEX", f"the request holds more than "
                                               f"{MAX_OBJECTS:,} values (maps, lists and "
                                               f"scalars at every depth)")
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, **UNPACK_LIMITS)
    except ProtocolError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, TypeError) as exc:
        raise ProtocolError("NOT_MSGPACK", f"not one MessagePack value: {exc}") from None
    except ValueError as exc:
        text = str(exc)
        if "not allowed for map key" in text:     # strict_map_key: keys are strings
            raise ProtocolError("BAD_KEY_TYPE", f"map keys are strings: {text}") from None
        if "exceeds" in text or "max_" in text:
            raise ProtocolError("TOO_LARGE", text) from None
        raise ProtocolError("NOT_MSGPACK", f"not MessagePack: {text}") from None
    except Exception as exc:  # msgpack raises a few more kinds on garbage
        raise ProtocolError("NOT_MSGPACK", f"not MessagePack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("NOT_A_MAP", f"the request is a {type(obj).__name__}, not a map")
    return obj


def _count_values(payload: bytes) -> int:
    """The values of ``payload``, counted (without building them) until they pass
    MAX_OBJECTS: ``ext/msgcount.py``, imported when a message first needs it."""
    from lanecore.ext.msgcount import count_values
    return count_values(payload, MAX_OBJECTS)


def warm_up() -> None:
    """Load the value counter now, in a process that has its compiler loaded anyway
    (the service's kernels), so the first large request does not wait for it."""
    if "numba" in sys.modules:
        _count_values(bytes(MAX_OBJECTS + 1))


def pack(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def ok(req_id, **fields) -> dict:
    return {"id": req_id, "ok": True, **fields}


def error(req_id, code: str, message: str) -> dict:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def request_id(req: dict):
    """The request's id if it is one we can echo (str ≤ 128 or int), else None."""
    rid = req.get("id")
    if type(rid) is str:
        return rid if len(rid) <= MAX_ID_LEN else None
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and -(2 ** 63) <= rid < 2 ** 64:
        return rid
    if isinstance(rid, str) and len(rid) <= MAX_ID_LEN:
        return rid
    return None


# ----------------------------------------------------------------------------------
# Field checks
# ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """What a request field must be."""

    kind: str                      # str, int, float, bool, bin, list, map, any
    required: bool = True
    min: float | None = None       # numbers: range; str/bin/list: length
    max: float | None = None
    choices: tuple | None = None
    code: str = "BAD_FIELD"        # the error of a wrong type or value (e.g. BAD_AMOUNT)


def _describe(f: Field) -> str:
    parts = [f.kind]
    if f.min is not None or f.max is not None:
        lo = "" if f.min is None else f.min
        hi = "" if f.max is None else f.max
        parts.append(f"{lo}..{hi}")
    if f.choices:
        parts.append("one of " + ", ".join(map(str, f.choices)))
    return " ".join(parts)


def check(req: dict, schema: dict[str, Field]) -> dict:
    """The request's fields after checking them against ``schema`` (unknown fields
    are ignored, so a newer client can talk to an older service)."""
    out = {}
    for name, f in schema.items():
        if name not in req or req[name] is None:
            if f.required:
                raise ProtocolError("MISSING_FIELD", f"field {name!r} ({_describe(f)}) is required")
            continue
        v = req[name]
        bad = False
        if f.kind == "str":
            bad = not isinstance(v, str)
        elif f.kind == "int":
            bad = isinstance(v, bool) or not isinstance(v, int)
        elif f.kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad = True
            else:
                v = float(v)
                bad = not math.isfinite(v)
        elif f.kind == "bool":
            bad = not isinstance(v, bool)
        elif f.kind == "bin":
            bad = not isinstance(v, (bytes, bytearray))
        elif f.kind == "list":
            bad = not isinstance(v, list)
        elif f.kind == "map":
            bad = not isinstance(v, dict)
        if bad:
            raise ProtocolError(f.code, f"field {name!r} must be {_describe(f)}, "
                                             f"got {type(v).__name__}")
        size = v if f.kind in ("int", "float") else (
            len(v) if f.kind in ("str", "bin", "list", "map") else None)
        if size is not None:
            if (f.min is not None and size < f.min) or (f.max is not None and size > f.max):
                what = "value" if f.kind in ("int", "float") else "length"
                raise ProtocolError(f.code, f"field {name!r}: {what} {size} is outside "
                                                 f"{_describe(f)}")
        if f.choices is not None and v not in f.choices:
            raise ProtocolError(f.code, f"field {name!r} must be {_describe(f)}")
        out[name] = v
    return out


#: Names of lanes, gates, devices, baskets: printable, short.
NAME = Field("str", min=1, max=64)
