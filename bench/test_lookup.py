"""Catalogue lookups: the compiled GTIN index against a Python dict on the same integer
keys (GTIN -> the same row), on a 50k-SKU and a 1M-SKU catalogue, each pair of sides
interleaved in one loop (``bench/_paired.py``: alternating order, many rounds,
min/median/max per side and the ratio of medians):

* single key: ``[lookup(k) for k in keys]`` against ``[get(k, -1) for k in keys]``
  (both bound before the loop, so both sides are a Python call per key);
* batch: ``lookup_many(keys, out)`` into a preallocated int32 array against the list
  comprehension ``[d.get(k, -1) for k in keys]``;

and the table's bytes per SKU. The queries are 90 % catalogue GTINs, 10 % unknown,
shuffled; both sides must give the same rows.

Targets (issue 19, ``bench/targets.toml``): at most 32 bytes per SKU at 1M SKUs; single
key no slower than before (about 2.5-3x faster than ``dict.get``); batch at least 20x
the list comprehension.
"""

from __future__ import annotations

import numpy as np
import pytest

from lanecore.ext import _lookup
from lanecore.ext.lookup import CatalogTable

from _data import gtin13_keys  # bench/ is on sys.path (pyproject: pythonpath)
from _paired import paired


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


@pytest.fixture(scope="module", params=["small", "large"])
def catalogue(request, sizes):
    n = sizes.catalogues[0 if request.param == "small" else 1]
    keys = gtin13_keys(n, seed=n)
    rng = np.random.default_rng(1)
    # The compiled index, whatever LANECORE_PURE says: this is what is measured.
    table = CatalogTable(keys, rng.integers(30, 5000, n), rng.lognormal(6, 1, n),
                         rng.uniform(0.5, 20, n), rng.integers(0, 16, n, dtype=np.uint8),
                         index_type=_lookup.GtinIndex)
    assert isinstance(table.index, _lookup.GtinIndex)
    by_key = dict(zip(table.gtin.tolist(), range(n)))       # the same rows as the table
    rng = np.random.default_rng(7)
    hits = keys[rng.integers(0, n, int(sizes.queries * 0.9))]
    misses = gtin13_keys(sizes.queries - len(hits), seed=n + 1)
    queries = np.concatenate([hits, misses])
    rng.shuffle(queries)
    q_int = queries.tolist()
    expected = [by_key.get(k, -1) for k in q_int]
    assert expected.count(-1) == len(misses)
    return n, table, by_key, queries, q_int, expected


def _group(n, kind):
    return f"lookup {_label(n)} SKUs {kind}"


def _rows_equal(expected):
    def check(out):
        for side, rows in out.items():
            got = rows.tolist() if isinstance(rows, np.ndarray) else rows
            assert got == expected, side
    return check


def test_bytes_per_sku(catalogue, figures, note):
    n, table, *_ = catalogue
    b = table.bytes_per_sku
    assert b <= 32, b
    if n >= 1_000_000:
        figures.add(f"lookup {_label(n)} SKUs: bytes per SKU", round(b, 2), "B")
    note(f"lookup {_label(n)} SKUs: {b:.2f} bytes per SKU (columns 29 B: gtin u8, "
         f"price_minor i4, weights 2 x f8, flags u1; index {table.index.nbytes / n:.2f} B)")


def test_single_key(catalogue, sizes, figures, record, note):
    n, table, by_key, _q, q_int, expected = catalogue
    lookup, get = table.lookup, by_key.get

    def compiled():
        return [lookup(k) for k in q_int]

    def dict_get():
        return [get(k, -1) for k in q_int]

    res = paired({"dict.get": dict_get, "lanecore compiled": compiled},
                 rounds=40 if sizes.real else 1, warmup=1, check=_rows_equal(expected))
    group = _group(n, "single key")
    record(res.side("dict.get"), group, "dict.get", "baseline", len(q_int))
    record(res.side("lanecore compiled"), group, "lanecore compiled", "candidate",
           len(q_int), bytes_per_sku=round(table.bytes_per_sku, 1))
    # bench/targets.toml guards this one as a speed-up over dict.get (min 2.5: today's)
    figures.speedup(f"{group}: lanecore compiled vs dict.get", res,
                    "lanecore compiled", "dict.get")
    lo, med, hi = res.paired_speedup("lanecore compiled", "dict.get")
    note(f"{group}, {res.rounds} rounds interleaved: {res.summary(len(q_int))}; "
         f"compiled {res.speedup('lanecore compiled', 'dict.get'):.2f}x faster than "
         f"dict.get (ratio of medians; per round {lo:.2f}/{med:.2f}/{hi:.2f}); {res.load}")


def test_batch(catalogue, sizes, figures, record, note):
    n, table, d, queries, q_int, expected = catalogue
    out = np.empty(len(queries), dtype=np.int32)
    lookup_many = table.lookup_many

    def compiled():
        return lookup_many(queries, out)

    def listcomp():
        return [d.get(k, -1) for k in q_int]

    res = paired({"list comprehension": listcomp, "lanecore compiled": compiled},
                 rounds=40 if sizes.real else 1, warmup=1, check=_rows_equal(expected))
    group = _group(n, "batch")
    record(res.side("list comprehension"), group, "list comprehension", "baseline",
           len(q_int))
    record(res.side("lanecore compiled"), group, "lanecore compiled", "candidate",
           len(q_int), bytes_per_sku=round(table.bytes_per_sku, 1))
    figures.speedup(f"{group}: lanecore compiled vs list comprehension", res,
                    "lanecore compiled", "list comprehension")
    lo, med, hi = res.paired_speedup("lanecore compiled", "list comprehension")
    note(f"{group}, {res.rounds} rounds interleaved: {res.summary(len(q_int))}; "
         f"{res.speedup('lanecore compiled', 'list comprehension'):.1f}x (ratio of "
         f"medians; per round {lo:.1f}/{med:.1f}/{hi:.1f}); {res.load}")
