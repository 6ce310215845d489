"""The GTIN index (compiled and twin, fixture ``lk``) and the catalogue table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from lanecore.ext.lookup import CatalogTable

MAX_KEY = 99_999_999_999_999


def test_single_and_batch_lookup(lk):
    keys = np.array([5901234123457, 96385074, 42100005264, 90012345678908], dtype=np.uint64)
    idx = lk.GtinIndex(keys)
    assert len(idx) == 4
    for row, key in enumerate(keys.tolist()):
        assert idx.lookup(key) == row
        assert key in idx
    assert idx.lookup(5901234123458) == -1
    queries = np.array([96385074, 1, 90012345678908, 5901234123457], dtype=np.uint64)
    assert idx.lookup_many(queries).tolist() == [1, -1, 3, 0]
    out = np.empty(4, dtype=np.int32)
    assert idx.lookup_many(queries, out) is out and out.tolist() == [1, -1, 3, 0]


@pytest.mark.parametrize("key", [-1, MAX_KEY + 1, 2**64 - 1, "5901234123457", 1.5, None,
                                 True])
def test_anything_but_a_gtin_key_is_absent(lk, key):
    idx = lk.GtinIndex(np.array([5901234123457, 1], dtype=np.uint64))
    assert idx.lookup(key) == -1


def test_numpy_integers_are_keys(lk):
    idx = lk.GtinIndex(np.array([7, 8], dtype=np.uint64))
    assert idx.lookup(np.uint64(8)) == 1 and idx.lookup(np.int64(7)) == 0


def test_batch_ignores_keys_beyond_gtin14(lk):
    idx = lk.GtinIndex(np.array([7], dtype=np.uint64))
    assert idx.lookup_many(np.array([2**64 - 1, 7], dtype=np.uint64)).tolist() == [-1, 0]


def test_duplicate_and_oversized_keys_are_refused(lk):
    with pytest.raises(ValueError, match="rows 0 and 2 share GTIN 00000000000007"):
        lk.GtinIndex(np.array([7, 8, 7], dtype=np.uint64))
    with pytest.raises(ValueError, match="not a GTIN-14"):
        lk.GtinIndex(np.array([MAX_KEY + 1], dtype=np.uint64))


def test_empty_index(lk):
    idx = lk.GtinIndex(np.array([], dtype=np.uint64))
    assert len(idx) == 0 and idx.lookup(1) == -1
    assert idx.lookup_many(np.array([], dtype=np.uint64)).tolist() == []


def test_wrong_out_length(lk):
    idx = lk.GtinIndex(np.array([1], dtype=np.uint64))
    with pytest.raises(ValueError):
        idx.lookup_many(np.array([1, 2], dtype=np.uint64), np.empty(1, dtype=np.int32))


@given(st.lists(st.integers(0, MAX_KEY), unique=True, max_size=300),
       st.lists(st.integers(0, MAX_KEY), max_size=100))
def test_compiled_and_twin_agree(keys, extra):
    from lanecore.ext import _lookup, _lookup_py
    k = np.array(keys, dtype=np.uint64)
    a, b = _lookup.GtinIndex(k), _lookup_py.GtinIndex(k)
    q = np.array(keys + extra, dtype=np.uint64)
    assert a.lookup_many(q).tolist() == b.lookup_many(q).tolist()
    assert [a.lookup(x) for x in keys + extra] == [b.lookup(x) for x in keys + extra]


def test_dense_keys_with_many_collisions(lk):
    # consecutive GTINs, the worst case for a weak hash
    keys = np.arange(5901234000000, 5901234000000 + 50_000, dtype=np.uint64)
    idx = lk.GtinIndex(keys)
    rows = idx.lookup_many(keys)
    assert (rows == np.arange(50_000)).all()
    assert (idx.lookup_many(keys + np.uint64(50_000)) == -1).all()


def test_catalog_table_columns_and_bytes_per_sku():
    n = 10_000
    gtin = np.arange(1, n + 1, dtype=np.uint64) * 7919
    t = CatalogTable(gtin, np.arange(n), np.full(n, 250.0), np.full(n, 5.0),
                     np.zeros(n, dtype=np.uint8))
    assert len(t) == n
    row = t.lookup(int(gtin[1234]))
    assert row == 1234 and t.price_minor[row] == 1234
    assert t.lookup_many(gtin[:3]).tolist() == [0, 1, 2]
    # 8+8+8+8+1 bytes of columns, plus the index
    assert 33 < t.bytes_per_sku < 80
    with pytest.raises(ValueError, match="price_minor"):
        CatalogTable(gtin, np.arange(n - 1), np.zeros(n), np.zeros(n), np.zeros(n))
