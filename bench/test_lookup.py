"""Catalogue lookups: the compiled GTIN index, single and batch, against a Python dict
keyed by GTIN string, on a 50k-SKU and a 1M-SKU catalogue.

Target (issue 2): batch lookup at least 5x faster per key than the dict on 1M SKUs.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lanecore.ext import _lookup
from lanecore.ext.lookup import CatalogTable

from _data import gtin13_keys  # bench/ is on sys.path (pyproject: pythonpath)


def _catalogue(n):
    keys = gtin13_keys(n, seed=n)
    rng = np.random.default_rng(1)
    # The compiled index, whatever LANECORE_PURE says: this is what is measured.
    table = CatalogTable(keys, rng.integers(30, 5000, n), rng.lognormal(6, 1, n),
                         rng.uniform(0.5, 20, n), rng.integers(0, 16, n, dtype=np.uint8),
                         index_type=_lookup.GtinIndex)
    as_text = [f"{k:014d}" for k in keys.tolist()]
    by_text = {t: i for i, t in enumerate(as_text)}
    return keys, table, by_text


@pytest.fixture(scope="module", params=["small", "large"])
def catalogue(request, sizes):
    n = sizes.catalogues[0 if request.param == "small" else 1]
    keys, table, by_text = _catalogue(n)
    rng = np.random.default_rng(7)
    hits = keys[rng.integers(0, n, int(sizes.queries * 0.9))]
    misses = gtin13_keys(sizes.queries - len(hits), seed=n + 1)
    queries = np.concatenate([hits, misses])
    rng.shuffle(queries)
    q_int = queries.tolist()
    q_text = [f"{k:014d}" for k in q_int]
    expected = np.array([by_text.get(t, -1) for t in q_text], dtype=np.int32)
    return n, table, by_text, queries, q_int, q_text, expected


def _group(n, kind):
    return f"lookup {kind}: {n:,} SKUs"


def _dict_bytes_per_sku(d):
    total = sys.getsizeof(d) + sum(sys.getsizeof(k) for k in d) + \
        sum(sys.getsizeof(v) for v in d.values())
    return round(total / len(d), 1)


def test_dict_single(benchmark, record, catalogue, sizes):
    n, _table, by_text, _q, _qi, q_text, expected = catalogue
    get = by_text.get

    def run():
        return [get(t, -1) for t in q_text]

    rows = benchmark.pedantic(run, rounds=20 if sizes.real else 1, warmup_rounds=1)
    for kind in ("single", "batch"):
        record(benchmark, _group(n, kind), "dict[str]", "baseline", len(q_text),
               bytes_per_sku=_dict_bytes_per_sku(by_text))
    assert rows == expected.tolist()


def test_compiled_single(benchmark, record, catalogue, sizes):
    n, table, _d, _q, q_int, _qt, expected = catalogue
    lookup = table.lookup

    def run():
        return [lookup(k) for k in q_int]

    rows = benchmark.pedantic(run, rounds=20 if sizes.real else 1, warmup_rounds=1)
    record(benchmark, _group(n, "single"), "lanecore compiled", "candidate", len(q_int),
           bytes_per_sku=round(table.bytes_per_sku, 1))
    assert rows == expected.tolist()


def test_compiled_batch(benchmark, record, catalogue, sizes):
    n, table, _d, queries, _qi, _qt, expected = catalogue
    assert isinstance(table.index, _lookup.GtinIndex)
    out = np.empty(len(queries), dtype=np.int32)

    def run():
        return table.lookup_many(queries, out)

    rows = benchmark.pedantic(run, rounds=200 if sizes.real else 1, warmup_rounds=3)
    record(benchmark, _group(n, "batch"), "lanecore compiled", "candidate", len(queries),
           target=5 if n >= 1_000_000 else None,
           bytes_per_sku=round(table.bytes_per_sku, 1))
    assert (rows == expected).all()
