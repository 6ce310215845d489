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
    # keys in bucket order; a lookup answers the position there, order maps it back
    assert sorted(idx.order.tolist()) == [0, 1, 2, 3]
    assert idx.keys.tolist() == keys[idx.order].tolist()
    for row, key in enumerate(keys.tolist()):
        pos = idx.lookup(key)
        assert idx.keys[pos] == key and idx.order[pos] == row
        assert key in idx
    assert idx.lookup(5901234123458) == -1
    queries = np.array([96385074, 1, 90012345678908, 5901234123457], dtype=np.uint64)
    want = [idx.lookup(int(q)) for q in queries]
    assert want[1] == -1 and -1 not in want[:1] + want[2:]
    assert idx.lookup_many(queries).tolist() == want
    out = np.empty(4, dtype=np.int32)
    assert idx.lookup_many(queries, out) is out and out.tolist() == want


@pytest.mark.parametrize("key", [-1, MAX_KEY + 1, 2**64 - 1, "5901234123457", 1.5, None,
                                 True])
def test_anything_but_a_gtin_key_is_absent(lk, key):
    idx = lk.GtinIndex(np.array([5901234123457, 1], dtype=np.uint64))
    assert idx.lookup(key) == -1


def test_numpy_integers_are_keys(lk):
    idx = lk.GtinIndex(np.array([7, 8], dtype=np.uint64))
    assert idx.lookup(np.uint64(8)) == idx.lookup(8) >= 0
    assert idx.lookup(np.int64(7)) == idx.lookup(7) >= 0


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
    assert a.order.tolist() == b.order.tolist() and a.keys.tolist() == b.keys.tolist()
    assert a.n_buckets == b.n_buckets
    q = np.array(keys + extra, dtype=np.uint64)
    assert a.lookup_many(q).tolist() == b.lookup_many(q).tolist()
    assert [a.lookup(x) for x in keys + extra] == [b.lookup(x) for x in keys + extra]
    assert (a.keys[a.lookup_many(k)] == k).all()


def test_bucket_function_agrees():
    from lanecore.ext import _lookup, _lookup_py
    rng = np.random.default_rng(3)
    k = np.concatenate([rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True),
                        np.array([0, 1, 2**64 - 1, MAX_KEY], dtype=np.uint64)])
    for nb in (1, 2, 7, 250_000, 2**32 - 1):
        a, b = _lookup.buckets(k, nb), _lookup_py.buckets(k, nb)
        assert a.tolist() == b.tolist() and int(a.max()) < nb


def test_dense_keys_with_many_collisions(lk):
    # consecutive GTINs, the worst case for a weak hash
    keys = np.arange(5901234000000, 5901234000000 + 50_000, dtype=np.uint64)
    idx = lk.GtinIndex(keys)
    rows = idx.lookup_many(keys)
    assert (idx.keys[rows] == keys).all() and (idx.order[rows] == np.arange(50_000)).all()
    assert (idx.lookup_many(keys + np.uint64(50_000)) == -1).all()


def test_the_index_keys_are_read_only(lk):
    idx = lk.GtinIndex(np.array([7, 8], dtype=np.uint64))
    with pytest.raises(ValueError):
        idx.keys[0] = 9


def _columns(n, seed=1):
    rng = np.random.default_rng(seed)
    gtin = np.unique(rng.integers(10**7, MAX_KEY, n + n // 10, dtype=np.uint64))[:n]
    rng.shuffle(gtin)
    price = rng.integers(0, 2**31, n)            # the whole int32 range of the column
    price[:2] = [0, 2**31 - 1]
    mean = rng.lognormal(6, 1, n)
    sd = rng.uniform(0.5, 20, n)
    mean[::7] = np.nan
    sd[::5] = np.nan
    flags = rng.integers(0, 16, n, dtype=np.uint8)
    return gtin, price, mean, sd, flags


@pytest.mark.parametrize("impl", ["compiled", "twin"])
def test_catalog_table_round_trips_every_value(impl):
    from lanecore.ext import _lookup, _lookup_py
    gtin, price, mean, sd, flags = _columns(20_000)
    t = CatalogTable(gtin, price, mean, sd, flags,
                     index_type=(_lookup if impl == "compiled" else _lookup_py).GtinIndex)
    assert len(t) == len(gtin)
    rows = t.lookup_many(gtin)
    assert rows.min() >= 0 and sorted(rows.tolist()) == list(range(len(gtin)))
    assert [t.lookup(int(g)) for g in gtin[:500]] == rows[:500].tolist()
    assert (t.gtin[rows] == gtin).all()
    assert t.price_minor.dtype == np.int32 and (t.price_minor[rows] == price).all()
    assert t.weight_mean_g.dtype == np.float64 and t.weight_sd_g.dtype == np.float64
    np.testing.assert_array_equal(t.weight_mean_g[rows], mean)    # NaN where NaN
    np.testing.assert_array_equal(t.weight_sd_g[rows], sd)
    assert t.flags.dtype == np.uint8 and (t.flags[rows] == flags).all()
    assert t.index.order is None and not t.gtin.flags.writeable
    # what the service and the store do with a row: Python numbers, exact
    r = int(rows[1])
    assert int(t.price_minor[r]) == 2**31 - 1 and float(t.weight_mean_g[r]) == mean[1]
    assert int(t.price_minor[r]) * 3 == 3 * (2**31 - 1)        # int(): no int32 wrap


def test_compiled_and_twin_tables_are_the_same():
    from lanecore.ext import _lookup, _lookup_py
    cols = _columns(5_000, seed=2)
    a = CatalogTable(*cols, index_type=_lookup.GtinIndex)
    b = CatalogTable(*cols, index_type=_lookup_py.GtinIndex)
    for name in ("gtin", "price_minor", "weight_mean_g", "weight_sd_g", "flags"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_catalog_table_bytes_per_sku_at_1m():
    """The issue's figure: at most 32 bytes per SKU at 1M SKUs (29 of columns, about
    0.56 of bucket starts; the same at any size, as the starts scale with n)."""
    from lanecore.ext import _lookup
    n = 1_000_000
    gtin = np.arange(1, n + 1, dtype=np.uint64) * 7919
    t = CatalogTable(gtin, np.zeros(n, np.int32), np.zeros(n), np.zeros(n),
                     np.zeros(n, np.uint8), index_type=_lookup.GtinIndex)
    assert t.bytes_per_sku <= 32
    assert t.bytes_per_sku == pytest.approx(29 + 0.5625, abs=0.01)
    assert t.lookup(int(gtin[123_456])) >= 0 and t.gtin[t.lookup(int(gtin[-1]))] == gtin[-1]
    small = CatalogTable(gtin[:1000], np.zeros(1000, np.int32), np.zeros(1000),
                         np.zeros(1000), np.zeros(1000, np.uint8),
                         index_type=_lookup.GtinIndex)
    assert small.bytes_per_sku == pytest.approx(t.bytes_per_sku, abs=0.1)


def test_catalog_table_refuses_bad_columns():
    n = 100
    gtin = np.arange(1, n + 1, dtype=np.uint64) * 7919
    with pytest.raises(ValueError, match="price_minor"):
        CatalogTable(gtin, np.arange(n - 1), np.zeros(n), np.zeros(n), np.zeros(n))
    for bad in (2**31, -1):
        price = np.arange(n)
        price[7] = bad
        with pytest.raises(ValueError, match=f"column price_minor holds {bad}, outside "
                                             f"0..2147483647"):
            CatalogTable(gtin, price, np.zeros(n), np.zeros(n), np.zeros(n))
    with pytest.raises(ValueError, match="share GTIN"):
        CatalogTable(np.array([5, 5], np.uint64), [1, 2], [1.0, 1.0], [1.0, 1.0], [0, 0])
