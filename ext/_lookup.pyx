# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled GTIN index: GTIN-14 (uint64) -> position of the key in bucket order.

The keys are grouped into ``nb = ceil(n / BUCKET_KEYS)`` buckets, bucket =
fastrange(murmur3 finaliser(key), nb), and kept in ``keys`` bucket after bucket (a
stable counting sort: input order within a bucket). Bucket b starts at
``base[b >> 4] + delta[b]`` (uint32 a group of 16 buckets, uint16 a bucket: 0.56
bytes a key, small enough to stay in L2 at 1M keys) and ends where bucket b + 1
starts. A lookup reads those two starts and compares the key with the bucket's keys
(about BUCKET_KEYS adjacent uint64: one cache line, at most two). The index holds no
row numbers and no copy of the keys: a table stores its columns in the index's order
(``order``, the permutation applied to the input), so a key's position is its row,
and ``keys`` is the table's ``gtin`` column.

The batch lookup is software-pipelined over blocks of BLOCK keys: bucket and prefetch
of its start for block j, read of the start and prefetch of the bucket's keys for block
j - 1, comparison for block j - 2; so a large catalogue's cache misses overlap instead
of queueing.

The twin is ``_lookup_py.py`` (the same order, a dict for the lookups): same answers.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint64_t, int64_t, int32_t, uint32_t, uint16_t
from cpython.long cimport PyLong_AsLongLongAndOverflow

cnp.import_array()

IMPLEMENTATION = "cython"

cdef extern from *:
    """
    typedef unsigned __int128 lc_u128;
    static inline void lc_prefetch(const void* p) { __builtin_prefetch(p, 0, 1); }
    """
    ctypedef unsigned long long lc_u128
    void lc_prefetch(const void* p) nogil

cdef enum:
    BLOCK = 16          # keys a stage of the batch pipeline
    GROUP_SHIFT = 4     # 16 buckets a group

#: Average keys in a bucket: ``starts`` costs 4 / BUCKET_KEYS bytes a key.
BUCKET_KEYS = 4
#: Largest valid GTIN-14 key (14 nines).
MAX_KEY = 99999999999999
#: Most keys an index holds (rows are int32, bucket starts uint32).
MAX_KEYS = 2**31 - 1
cdef uint64_t C_MAX_KEY = 99999999999999ULL


cdef inline uint64_t _mix(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xff51afd7ed558ccdULL
    k ^= k >> 33
    k *= 0xc4ceb9fe1a85ec53ULL
    k ^= k >> 33
    return k


cdef inline uint64_t _bucket(uint64_t k, uint64_t nb) noexcept nogil:
    return <uint64_t>((<lc_u128>_mix(k) * <lc_u128>nb) >> 64)


def buckets(keys, nb):
    """Bucket of every key (uint64 array-like) among ``nb`` buckets, as uint64."""
    cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] k = np.ascontiguousarray(
        keys, dtype=np.uint64)
    cdef Py_ssize_t i, n = k.shape[0]
    cdef uint64_t m = nb
    cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = _bucket(k[i], m)
    return out


def _check_keys(k):
    """ValueError for a key above MAX_KEY or a repeated key, as the twin words it:
    the first offending row in input order."""
    over = np.flatnonzero(k > np.uint64(MAX_KEY))
    if over.size:
        i = int(over[0])
        raise ValueError(f"row {i}: key {int(k[i])} is not a GTIN-14")
    seen = {}
    for i, key in enumerate(k.tolist()):
        prev = seen.setdefault(key, i)
        if prev != i:
            raise ValueError(f"rows {prev} and {i} share GTIN {key:014d}")


cdef class GtinIndex:
    """GTIN-14 key (an int below 10**14) -> its position in ``keys``; -1 when absent.

    ``GtinIndex(keys)`` orders ``keys`` by bucket: ``index.keys`` (read-only uint64)
    is ``keys[index.order]``, and a lookup answers a position in ``index.keys``
    (``index.order[position]`` is the input row). CatalogTable stores its columns in
    this order and then drops ``order``.
    """

    cdef const uint64_t* _keys
    cdef const uint32_t* _base
    cdef const uint16_t* _delta
    cdef uint64_t _nb
    cdef Py_ssize_t _n
    cdef readonly object keys
    cdef object _base_arr, _delta_arr
    cdef public object order

    def __init__(self, keys):
        """Index ``keys`` (uint64 array-like).

        Raises ValueError on a key above MAX_KEY or a repeated key (naming the rows).
        """
        cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] k = np.ascontiguousarray(
            keys, dtype=np.uint64)
        cdef Py_ssize_t n = k.shape[0], i
        if n > MAX_KEYS:
            raise ValueError(f"{n} keys; an index holds at most {MAX_KEYS}")
        cdef uint64_t nb = max(1, (n + BUCKET_KEYS - 1) // BUCKET_KEYS)
        cdef uint64_t ng = (nb >> GROUP_SHIFT) + 1
        cdef cnp.ndarray[uint32_t, ndim=1, mode="c"] starts = np.zeros(nb + 1,
                                                                        dtype=np.uint32)
        cdef cnp.ndarray[uint32_t, ndim=1, mode="c"] b = np.empty(n, dtype=np.uint32)
        cdef cnp.ndarray[int64_t, ndim=1, mode="c"] order = np.empty(n, dtype=np.int64)
        cdef cnp.ndarray[uint32_t, ndim=1, mode="c"] base = np.empty(ng, dtype=np.uint32)
        cdef cnp.ndarray[uint16_t, ndim=1, mode="c"] delta = np.empty(nb + 1,
                                                                       dtype=np.uint16)
        cdef cnp.ndarray[uint32_t, ndim=1, mode="c"] fill
        cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] sk
        cdef uint64_t limit = C_MAX_KEY, key, bi
        cdef uint32_t p, q, e
        cdef bint bad = False
        for i in range(n):
            key = k[i]
            if key > limit:
                bad = True
                break
            bi = _bucket(key, nb)
            b[i] = <uint32_t>bi
            starts[bi + 1] += 1
        if bad:
            _check_keys(k)
        for i in range(<Py_ssize_t>nb):
            starts[i + 1] += starts[i]
        # stable counting sort: input order within a bucket (the twin's argsort)
        fill = starts[:nb].copy()
        for i in range(n):
            order[fill[b[i]]] = i
            fill[b[i]] += 1
        del b, fill
        sk = k[order]
        for i in range(<Py_ssize_t>nb):
            e = starts[i + 1]
            p = starts[i]
            while p < e and not bad:
                key = sk[p]
                q = p + 1
                while q < e:
                    if sk[q] == key:
                        bad = True
                        break
                    q += 1
                p += 1
            if bad:
                break
        if bad:
            _check_keys(k)
        # the starts, compressed: a uint32 base a group, a uint16 offset a bucket
        for i in range(<Py_ssize_t>ng):
            base[i] = starts[i << GROUP_SHIFT]
        for i in range(<Py_ssize_t>nb + 1):
            p = starts[i] - base[i >> GROUP_SHIFT]
            if p > 65535:   # 16 buckets of ~4 keys holding 65536: a broken hash
                raise ValueError(f"{p} keys fall in 16 adjacent buckets; the index "
                                 "cannot hold such a skewed key set")
            delta[i] = <uint16_t>p
        sk.flags.writeable = False
        self.keys = sk
        self.order = order
        self._base_arr = base
        self._delta_arr = delta
        self._keys = &sk[0] if n else NULL
        self._base = &base[0]
        self._delta = &delta[0]
        self._nb = nb
        self._n = n

    def __len__(self):
        return self._n

    @property
    def n_buckets(self):
        return self._nb

    @property
    def nbytes(self):
        """Bytes the index holds besides the keys (the table's ``gtin`` column) and
        ``order`` (dropped by the table): the bucket starts."""
        return self._base_arr.nbytes + self._delta_arr.nbytes

    cdef inline int32_t _find(self, uint64_t key) noexcept nogil:
        cdef uint64_t b = _bucket(key, self._nb)
        cdef uint32_t p = self._base[b >> GROUP_SHIFT] + self._delta[b]
        cdef uint32_t e = self._base[(b + 1) >> GROUP_SHIFT] + self._delta[b + 1]
        if e > p + 1:
            lc_prefetch(&self._keys[e - 1])   # a bucket may span two lines: ask for both
        while p < e:
            if self._keys[p] == key:
                return <int32_t>p
            p += 1
        return -1

    cpdef int lookup(self, object key) except -2:
        """Position (row) of ``key`` (int), or -1. Anything but a GTIN-14 int is absent."""
        cdef int overflow = 0
        cdef long long v
        if type(key) is not int:
            if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
                return -1
            key = int(key)
        v = PyLong_AsLongLongAndOverflow(key, &overflow)
        if overflow or v < 0 or <uint64_t>v > C_MAX_KEY:
            return -1
        return self._find(<uint64_t>v)

    def __contains__(self, key):
        return self.lookup(key) >= 0

    def lookup_many(self, keys, out=None):
        """Positions (rows) of ``keys`` (uint64 array-like) as an int32 array; -1 where
        absent. ``out`` (int32, same length) is filled and returned when given."""
        cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] k = np.ascontiguousarray(
            keys, dtype=np.uint64)
        cdef Py_ssize_t n = k.shape[0]
        cdef cnp.ndarray[int32_t, ndim=1, mode="c"] res
        if out is None:
            res = np.empty(n, dtype=np.int32)
        else:
            res = out
            if res.shape[0] != n:
                raise ValueError("out has the wrong length")
        with nogil:
            self._lookup_into(&k[0] if n else NULL, &res[0] if n else NULL, n)
        return res

    cdef void _lookup_into(self, const uint64_t* k, int32_t* res, Py_ssize_t n) noexcept nogil:
        # Three stages over blocks of BLOCK keys, software-pipelined: block j's buckets
        # are computed and their starts prefetched, block j - 1's starts read and its
        # keys' cache lines (first and last) prefetched, block j - 2 compared.
        cdef uint64_t bk[3][BLOCK]
        cdef uint32_t st[3][BLOCK]
        cdef uint32_t en[3][BLOCK]
        cdef Py_ssize_t nblk = (n + BLOCK - 1) // BLOCK, j, i, lo, hi
        cdef int t, c
        cdef uint64_t nb = self._nb, b, key
        cdef uint64_t limit = C_MAX_KEY
        cdef uint32_t p, e
        cdef const uint32_t* base = self._base
        cdef const uint16_t* delta = self._delta
        cdef const uint64_t* keys = self._keys
        for j in range(nblk + 2):
            if j < nblk:
                c = j % 3
                lo = j * BLOCK
                hi = min(lo + BLOCK, n)
                for i in range(lo, hi):
                    b = _bucket(k[i], nb)
                    bk[c][i - lo] = b
                    lc_prefetch(&delta[b])
                    lc_prefetch(&base[b >> GROUP_SHIFT])
            if 1 <= j <= nblk:
                c = (j - 1) % 3
                lo = (j - 1) * BLOCK
                hi = min(lo + BLOCK, n)
                for i in range(lo, hi):
                    b = bk[c][i - lo]
                    p = base[b >> GROUP_SHIFT] + delta[b]
                    e = base[(b + 1) >> GROUP_SHIFT] + delta[b + 1]
                    st[c][i - lo] = p
                    en[c][i - lo] = e
                    if e > p:
                        lc_prefetch(&keys[p])
                        lc_prefetch(&keys[e - 1])
            if j >= 2:
                c = (j - 2) % 3
                lo = (j - 2) * BLOCK
                hi = min(lo + BLOCK, n)
                for i in range(lo, hi):
                    key = k[i]
                    res[i] = -1
                    if key > limit:
                        continue
                    p = st[c][i - lo]
                    e = en[c][i - lo]
                    while p < e:
                        if keys[p] == key:
                            res[i] = <int32_t>p
                            break
                        p += 1
