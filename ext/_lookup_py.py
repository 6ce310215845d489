"""Pure-Python twin of the compiled GTIN index (``_lookup.pyx``): the same bucket
order (``keys``, ``order``), a dict for the lookups; same answers."""

from __future__ import annotations

import sys

import numpy as np

IMPLEMENTATION = "python"
BUCKET_KEYS = 4
MAX_KEY = 99999999999999
MAX_KEYS = 2**31 - 1

_M32 = np.uint64(0xFFFFFFFF)


def _mix(k: np.ndarray) -> np.ndarray:
    """The murmur3 finaliser on uint64 (numpy wraps the products, as C does)."""
    k = k ^ (k >> np.uint64(33))
    k = k * np.uint64(0xFF51AFD7ED558CCD)
    k = k ^ (k >> np.uint64(33))
    k = k * np.uint64(0xC4CEB9FE1A85EC53)
    return k ^ (k >> np.uint64(33))


def buckets(keys, nb) -> np.ndarray:
    """Bucket of every key among ``nb`` (< 2**32) buckets: the high 64 bits of
    ``mix(key) * nb``, exact in uint64 by halves."""
    m = _mix(np.ascontiguousarray(keys, dtype=np.uint64))
    nb = np.uint64(nb)
    lo = ((m & _M32) * nb) >> np.uint64(32)
    return ((m >> np.uint64(32)) * nb + lo) >> np.uint64(32)


class GtinIndex:
    """GTIN-14 key (an int below 10**14) -> its position in ``keys``; -1 when absent.

    ``keys`` (read-only uint64) is the input in bucket order, ``keys[order]``; see
    ``_lookup.pyx``."""

    def __init__(self, keys):
        k = np.ascontiguousarray(keys, dtype=np.uint64)
        n = len(k)
        if n > MAX_KEYS:
            raise ValueError(f"{n} keys; an index holds at most {MAX_KEYS}")
        over = np.flatnonzero(k > np.uint64(MAX_KEY))
        if over.size:
            i = int(over[0])
            raise ValueError(f"row {i}: key {int(k[i])} is not a GTIN-14")
        self._nb = max(1, (n + BUCKET_KEYS - 1) // BUCKET_KEYS)
        self.order = np.argsort(buckets(k, self._nb), kind="stable").astype(np.int64)
        sk = k[self.order]
        sk.flags.writeable = False
        self.keys = sk
        self._map: dict[int, int] = dict(zip(sk.tolist(), range(n)))
        if len(self._map) != n:
            seen: dict[int, int] = {}
            for i, key in enumerate(k.tolist()):
                prev = seen.setdefault(key, i)
                if prev != i:
                    raise ValueError(f"rows {prev} and {i} share GTIN {key:014d}")

    def __len__(self) -> int:
        return len(self._map)

    @property
    def n_buckets(self) -> int:
        return self._nb

    @property
    def nbytes(self) -> int:
        """What this twin really holds besides ``keys``: the dict (its table only)."""
        return sys.getsizeof(self._map)

    def lookup(self, key) -> int:
        """Position (row) of ``key`` (int), or -1. Anything but a GTIN-14 int is absent."""
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            return -1
        key = int(key)
        if key < 0 or key > MAX_KEY:
            return -1
        return self._map.get(key, -1)

    def __contains__(self, key) -> bool:
        return self.lookup(key) >= 0

    def lookup_many(self, keys, out=None):
        """Positions (rows) of ``keys`` (uint64 array-like) as an int32 array; -1 where
        absent."""
        k = np.ascontiguousarray(keys, dtype=np.uint64)
        get = self._map.get
        res = np.fromiter((get(x, -1) for x in k.tolist()), dtype=np.int32, count=len(k))
        if out is not None:
            if out.shape[0] != len(k):
                raise ValueError("out has the wrong length")
            out[:] = res
            return out
        return res
