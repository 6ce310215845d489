"""How many values a MessagePack message holds, counted without building them.

The service refuses a request of more than a bound of values at every depth
(``gateway/net/protocol.py``, ``MAX_OBJECTS``): 1 MiB of empty maps is a million
Python dicts, 64 MiB and 80 ms to build. This kernel walks the bytes once and stops at
the bound, so such a message costs a few tens of microseconds, not the building of
tens of thousands of objects first. Values: every map, list, string, binary, number,
nil, boolean and extension, at any depth; a map's key and value count two.

With ``NUMBA_DISABLE_JIT=1`` the same code runs as plain Python (its own twin).
"""

from __future__ import annotations

import numpy as np

from ._numba import IMPLEMENTATION, kernel, numba  # noqa: F401  (IMPLEMENTATION re-exported)

_T = numba.types
#: A read-only view of the message's bytes (``np.frombuffer`` of bytes), the bound.
_SIGNATURE = _T.int64(_T.Array(_T.uint8, 1, "C", readonly=True), _T.int64)


@kernel(_SIGNATURE)
def _count(buf, limit):
    n = buf.shape[0]
    i = 0
    pending = 1          # values still to read: the outermost one
    count = 0
    while pending > 0:
        if i >= n or count > limit:
            return count
        b = int(buf[i])     # not a uint8: arithmetic with it must not wrap
        i += 1
        pending -= 1
        count += 1
        if b <= 0x7F or b >= 0xE0:                 # fixints
            continue
        if b <= 0x8F:                              # fixmap
            pending += 2 * (b & 0x0F)
        elif b <= 0x9F:                            # fixarray
            pending += b & 0x0F
        elif b <= 0xBF:                            # fixstr
            i += b & 0x1F
        elif b == 0xC0 or b == 0xC2 or b == 0xC3:  # nil, false, true
            continue
        elif b == 0xC1:                            # never used: not MessagePack
            return count
        else:
            # lengths and counts that follow the type byte (big-endian)
            if b == 0xC4 or b == 0xD9 or b == 0xC7:        # bin8, str8, ext8
                width = 1
            elif b == 0xC5 or b == 0xDA or b == 0xC8 or b == 0xDC or b == 0xDE:
                width = 2
            elif b == 0xC6 or b == 0xDB or b == 0xC9 or b == 0xDD or b == 0xDF:
                width = 4
            else:
                width = 0
            if width:
                if i + width > n:
                    return count
                size = 0
                for k in range(width):
                    size = (size << 8) | int(buf[i + k])
                i += width
                if b == 0xDC or b == 0xDD:                 # array16, array32
                    pending += size
                elif b == 0xDE or b == 0xDF:               # map16, map32
                    pending += 2 * size
                elif b == 0xC7 or b == 0xC8 or b == 0xC9:  # ext: a type byte, data
                    i += 1 + size
                else:                                      # bin, str
                    i += size
            elif b == 0xCA or b == 0xCE or b == 0xD2:      # float32, (u)int32
                i += 4
            elif b == 0xCB or b == 0xCF or b == 0xD3:      # float64, (u)int64
                i += 8
            elif b == 0xCC or b == 0xD0:                   # (u)int8
                i += 1
            elif b == 0xCD or b == 0xD1:                   # (u)int16
                i += 2
            else:                                          # fixext 1, 2, 4, 8, 16
                i += 1 + (1 << (b - 0xD4))
    return count


def count_values(payload, limit: int) -> int:
    """The values of the first MessagePack value in ``payload`` (bytes-like), counted
    until they pass ``limit`` (then a number above it). A truncated or invalid message
    is counted as far as it goes: unpacking it says what is wrong."""
    return int(_count(np.frombuffer(payload, dtype=np.uint8), limit))
