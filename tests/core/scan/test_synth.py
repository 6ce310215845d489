"""The synthetic catalogue: deterministic, unique valid GTINs, the documented
proportions, in-store codes that follow the region, and a CSV that imports cleanly."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

import lanecore
from lanecore.core.scan import synth
from lanecore.core.scan.catalog import Catalog
from lanecore.core.errors import CatalogError
from lanecore.ext.lookup import FLAG_BITS


def test_generator_is_deterministic():
    a = list(synth.generate_catalog(500, seed=5))
    assert a == list(synth.generate_catalog(500, seed=5))
    assert a != list(synth.generate_catalog(500, seed=6))
    assert list(synth.generate_catalog(0)) == []


def test_generator_arguments_are_checked():
    for bad in (-1, 1.5, True):
        with pytest.raises(CatalogError):
            synth.generate_catalog(bad)
    with pytest.raises(CatalogError) as info:
        synth.generate_catalog(10, region="US")
    assert info.value.code == "UNKNOWN_REGION"


@pytest.fixture(scope="module")
def rows20k():
    return list(synth.generate_catalog(20_000, seed=1, region="GB"))


def test_generated_gtins_are_unique_and_valid(rows20k):
    gtins = [r["gtin"] for r in rows20k]
    results = lanecore.parse_many(gtins, region="GB")
    assert all(r.ok and r.kind in ("gtin", "rcn") for r in results)
    keys = [r.gtin for r in results]
    assert len(set(keys)) == len(keys)
    lengths = Counter(len(g) for g in gtins)
    assert lengths[13] > 0.8 * len(gtins)
    assert 0.07 < lengths[12] / len(gtins) < 0.13
    assert 0.01 < lengths[8] / len(gtins) < 0.03
    for row, res in zip(rows20k, results):
        vm = "variable_measure" in row["flags"]
        assert (res.kind == "rcn") == vm, row
        if vm:  # the listed code is its own lookup key, variable part zeroed
            assert row["gtin"].startswith("20") and row["gtin"][7:12] == "00000"
            assert res.lookup_gtin == res.gtin and res.price_minor == 0
        else:
            assert not (len(row["gtin"]) == 13 and row["gtin"][:1] in "02")


def test_generated_proportions(rows20k):
    n = len(rows20k)
    share = {f: sum(f in r["flags"].split("|") for r in rows20k) / n for f in FLAG_BITS}
    assert 0.02 < share["weight_exempt"] < 0.04
    assert 0.012 < share["variable_measure"] < 0.028
    assert 0.04 < share["eas_tagged"] < 0.06
    assert 0.02 < share["age_restricted"] < 0.04
    assert 0.08 < sum(r["promotion"] is not None for r in rows20k) / n < 0.12

    ordinary = [r for r in rows20k if not ({"weight_exempt", "variable_measure"}
                                           & set(r["flags"].split("|")))]
    prices = np.array([r["price_minor"] for r in ordinary])
    assert 200 < np.median(prices) < 320
    assert np.mean((prices >= 30) & (prices <= 5000)) > 0.95
    assert prices.max() <= 50_000 and prices.min() >= 0
    weights = np.array([r["unit_weight_g"] for r in ordinary])
    sds = np.array([r["weight_sd_g"] for r in ordinary])
    assert 330 < np.median(weights) < 480
    assert np.mean((weights >= 20) & (weights <= 5000)) > 0.95
    big = weights > 50  # where rounding to 0.01 g cannot blur the share
    rel = (sds[big] - 0.5) / weights[big]
    assert rel.min() > 0.0098 and rel.max() < 0.0402

    for r in rows20k:
        flags = r["flags"].split("|")
        if "weight_exempt" in flags or "variable_measure" in flags:
            assert r["unit_weight_g"] is None
        if "age_restricted" in flags:
            assert any(w in r["name"] for w in ("Wine", "Lager", "Ale", "Cider", "Gin",
                                                "Whisky", "Vodka", "Rum", "Prosecco",
                                                "Cigar", "Tobacco", "Vape"))
        assert r["origin"] and r["producer"] and r["supply_chain"]
        assert r["inspection"].startswith("Batch inspected ")


@pytest.mark.parametrize("region, prefix", [("SE", "23"), ("DE", "28"), ("DK", "26")])
def test_generated_in_store_codes_follow_the_region(region, prefix):
    rows = [r for r in synth.generate_catalog(3000, seed=2, region=region)
            if "variable_measure" in r["flags"]]
    assert rows
    for r in rows:
        res = lanecore.parse_scan(r["gtin"], region=region)
        assert res.ok and res.kind == "rcn" and r["gtin"].startswith(prefix)
        assert res.lookup_gtin == res.gtin


def test_generated_csv_matches_the_rows_and_imports_cleanly(tmp_path):
    path = tmp_path / "gen.csv"
    progress = []
    assert synth.write_catalog_csv(path, 2000, seed=9,
                                   progress=lambda *a: progress.append(a)) == 2000
    assert progress[-1] == (2000, 2000)
    with open(path, encoding="utf-8", newline="") as f:
        back = list(csv.DictReader(f))
    rows = list(synth.generate_catalog(2000, seed=9))
    assert len(back) == len(rows)
    for want, got in zip(rows, back):
        assert got == {k: "" if v is None else str(v) for k, v in want.items()}
    data = tmp_path / "data"
    data.mkdir()
    with Catalog.open(data) as c:
        report = c.import_csv(path)
        assert report.rows_bad == 0 and report.warnings == []
        assert report.rows_imported == 2000 == c.count()
