# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled GTIN index: GTIN-14 (uint64) -> row number of the catalogue columns.

The index is open addressing with linear probing over packed 12-byte slots
(key, row). A key is mixed (murmur3 finaliser) and mapped onto the table with a
multiply-shift ("fastrange"), so the capacity need not be a power of two and the
load factor stays near ``MAX_LOAD``. The batch lookup prefetches the slot of the key
``PREFETCH_AHEAD`` places ahead, so a large catalogue's cache misses overlap instead
of queueing. The twin is ``_lookup_py.py`` (a dict): same answers.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint64_t, int64_t, int32_t, uint8_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free

cnp.import_array()

IMPLEMENTATION = "cython"

cdef extern from *:
    """
    typedef unsigned __int128 lc_u128;
    static inline void lc_prefetch(const void* p) { __builtin_prefetch(p, 0, 1); }
    """
    ctypedef unsigned long long lc_u128
    void lc_prefetch(const void* p) nogil

cdef packed struct Slot:
    uint64_t key
    int32_t row

cdef extern from "<stdint.h>":
    const uint64_t EMPTY "UINT64_MAX"

cdef enum:
    PREFETCH_AHEAD = 16

#: Highest fraction of slots in use.
MAX_LOAD = 0.7
#: Largest valid GTIN-14 key (14 nines).
MAX_KEY = 99999999999999
cdef uint64_t C_MAX_KEY = 99999999999999ULL


cdef inline uint64_t _mix(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xff51afd7ed558ccdULL
    k ^= k >> 33
    k *= 0xc4ceb9fe1a85ec53ULL
    k ^= k >> 33
    return k


cdef inline uint64_t _home(uint64_t k, uint64_t cap) noexcept nogil:
    return <uint64_t>((<lc_u128>_mix(k) * <lc_u128>cap) >> 64)


cdef class GtinIndex:
    """GTIN-14 key (an int below 10**14) -> row number; -1 when absent."""

    cdef Slot* _slots
    cdef uint64_t _cap
    cdef Py_ssize_t _n

    def __cinit__(self):
        self._slots = NULL
        self._cap = 0
        self._n = 0

    def __dealloc__(self):
        if self._slots != NULL:
            PyMem_Free(self._slots)

    def __init__(self, keys):
        """Index ``keys`` (uint64 array-like); key ``keys[i]`` maps to row ``i``.

        Raises ValueError on a key above MAX_KEY or a repeated key (naming the rows).
        """
        cdef cnp.ndarray[uint64_t, ndim=1, mode="c"] k = np.ascontiguousarray(
            keys, dtype=np.uint64)
        cdef Py_ssize_t n = k.shape[0], i
        cdef uint64_t cap = <uint64_t>(n / MAX_LOAD) + 1
        cdef uint64_t key, h
        cdef uint64_t limit = C_MAX_KEY
        if cap < 8:
            cap = 8
        self._slots = <Slot*>PyMem_Malloc(cap * sizeof(Slot))
        if self._slots == NULL:
            raise MemoryError()
        self._cap = cap
        for i in range(<Py_ssize_t>cap):
            self._slots[i].key = EMPTY
            self._slots[i].row = -1
        for i in range(n):
            key = k[i]
            if key > limit:
                raise ValueError(f"row {i}: key {key} is not a GTIN-14")
            h = _home(key, cap)
            while self._slots[h].key != EMPTY:
                if self._slots[h].key == key:
                    raise ValueError(
                        f"rows {self._slots[h].row} and {i} share GTIN {key:014d}")
                h += 1
                if h == cap:
                    h = 0
            self._slots[h].key = key
            self._slots[h].row = <int32_t>i
        self._n = n

    def __len__(self):
        return self._n

    @property
    def capacity(self):
        """Number of slots."""
        return self._cap

    @property
    def nbytes(self):
        """Bytes held by the slots."""
        return self._cap * sizeof(Slot)

    cdef inline int32_t _find(self, uint64_t key) noexcept nogil:
        cdef uint64_t h = _home(key, self._cap)
        cdef Slot* s
        while True:
            s = &self._slots[h]
            if s.key == key:
                return s.row
            if s.key == EMPTY:
                return -1
            h += 1
            if h == self._cap:
                h = 0

    cpdef int lookup(self, object key) except -2:
        """Row of ``key`` (int), or -1. Anything but a GTIN-14 int is absent."""
        if type(key) is not int:
            if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
                return -1
            key = int(key)
        if key < 0 or key > MAX_KEY:
            return -1
        return self._find(<uint64_t>key)

    def __contains__(self, key):
        return self.lookup(key) >= 0

    def lookup_many(self, keys, out=None):
        """Rows of ``keys`` (uint64 array-like) as an int32 array; -1 where absent."""
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
        self._lookup_into(&k[0] if n else NULL, &res[0] if n else NULL, n)
        return res

    cdef void _lookup_into(self, const uint64_t* k, int32_t* res, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint64_t cap = self._cap
        cdef uint64_t limit = C_MAX_KEY
        for i in range(n):
            if i + PREFETCH_AHEAD < n:
                lc_prefetch(&self._slots[_home(k[i + PREFETCH_AHEAD], cap)])
            if k[i] > limit:
                res[i] = -1
            else:
                res[i] = self._find(k[i])
