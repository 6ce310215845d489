"""Catalogue CSV import: lanecore's checked import against the floor of the same
rows read with csv.reader and inserted unchecked into the same schema.

Issue 2 asks for a 1M-row import under a minute on this machine; the table shows the
seconds next to the ratio (how much the checks and upserts cost over the floor). Both
sides run in one loop (``bench/_paired.py``), floor and import alternating ABBA.
"""

from __future__ import annotations

import csv

import pytest

from lanecore.core.scan import catalog
from lanecore.core.scan.synth import write_catalog_csv

from _paired import paired  # bench/ is on sys.path (pyproject: pythonpath)

GROUP = "catalogue import"


@pytest.fixture(scope="module")
def price_list(tmp_path_factory, sizes):
    rows = 1_000_000 if sizes.real else 20_000
    path = tmp_path_factory.mktemp("import") / "catalog.csv"
    write_catalog_csv(path, rows, seed=5, region="GB")
    return path, rows


def _fresh_db(tmp_path_factory):
    return tmp_path_factory.mktemp("db") / "store.db"


def _floor(path, db):
    """The same rows with csv.reader, inserted unchecked into the same schema."""
    con = catalog.connect(db)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        con.execute("BEGIN")
        con.executemany("INSERT INTO items (gtin, name, price_minor, unit_weight_g, "
                        "weight_sd_g, flags, origin, producer, inspection, "
                        "supply_chain, promotion) VALUES (printf('%014d', ?), ?, ?, "
                        "NULLIF(?, ''), NULLIF(?, ''), 0, ?, ?, ?, ?, ?)",
                        ((r[0], r[1], int(r[2]), r[3], r[4], *r[6:]) for r in reader))
        con.execute("COMMIT")
    n = con.execute("SELECT count(*) FROM items").fetchone()[0]
    con.close()
    return n


def test_import_paired(price_list, tmp_path_factory, sizes, record, figures, note):
    """Floor and import_csv in one loop, ABBA (floor, import, import, floor), each
    into a fresh database made outside the timed window."""
    path, rows = price_list

    def fresh_db(r, side):
        return (_fresh_db(tmp_path_factory),)

    def check(out):
        assert out["floor"] == rows
        report = out["lanecore"]
        assert report.rows_imported == rows and report.rows_bad == 0

    res = paired({"floor": lambda db: _floor(path, db),
                  "lanecore": lambda db: catalog.import_csv(db, path)},
                 rounds=2 if sizes.real else 1, warmup=0, setup=fresh_db, check=check)
    if not sizes.real:
        return
    seconds = res.outputs["lanecore"].seconds
    record(res.side("floor"), GROUP, "csv.reader + INSERT, no checks", "baseline", rows)
    record(res.side("lanecore"), GROUP, "lanecore import_csv", "candidate", rows,
           seconds=round(seconds, 1))
    fig = figures.speedup(f"{GROUP}: lanecore import_csv vs csv.reader + INSERT, no checks",
                          res, "lanecore", "floor", rows=rows)
    side = res.side("lanecore")
    figures.values(f"{GROUP}: {rows:,} rows, seconds", res.side("lanecore").times, "s",
                   load=res.load)
    note(f"catalogue import, {rows:,} rows, {res.rounds} interleaved rounds (ABBA): "
         f"{res.summary()}; import_csv {1 / fig['value']:.2f}× the floor's time "
         f"(per-round {1 / fig['max']:.2f}–{1 / fig['min']:.2f}); import "
         f"{side.min:.1f} / {side.median:.1f} / {side.max:.1f} s (target ≤ 60 s for 1M "
         f"rows); {res.load}")
