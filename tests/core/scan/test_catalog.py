"""The store catalogue against real SQLite files: import rules, line numbers, the
one-transaction guarantee, the lookup table, scan lookups and the generator."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from lanecore.core.scan import catalog, synth
from lanecore.core.scan.catalog import Catalog, CatalogError, ImportReport
from lanecore.core.config import DATABASE_FILE
from lanecore.ext.barcode import gs1_check_digit
from lanecore.ext.lookup import FLAG_BITS

HEADER = ("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags,origin,promotion,"
          "colour")


def write(path, text: str, *, encoding="utf-8", bom=False):
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)
    return path


@pytest.fixture
def cat(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with Catalog.open(data) as c:
        yield c


def codes(report: ImportReport):
    return [(line, code) for line, code, _ in report.errors]


# --------------------------------------------------------------------------------------
# Import rules
# --------------------------------------------------------------------------------------

def ean13(i: int) -> str:
    """A valid GTIN-13 of the test series 400000000iiii."""
    payload = "40000000%04d" % i
    return payload + str(gs1_check_digit(payload))


# Each bad row is on a known line (every row has its own GTIN unless it tests
# duplicates); the comment gives the expected code.
MESSY = "\n".join([
    HEADER,  # 1
    "5012345678900,Baked Beans 415 g,125,432.5,4.2,,United Kingdom,,red",  # 2 good
    "5012345678901,Bad Check,100,100,,,,,",  # 3 BAD_GTIN
    f"{ean13(4)},Decimal Price,12.50,100,,,,,",  # 4 BAD_PRICE
    f"{ean13(5)},Negative Price,-5,100,,,,,",  # 5 BAD_PRICE
    f"{ean13(6)},   ,100,100,,,,,",  # 6 MISSING_NAME
    f"{ean13(7)},Frozen Peas,100,100,,frozen,,,",  # 7 BAD_FLAGS
    f"{ean13(8)},Weightless,100,abc,,,,,",  # 8 BAD_WEIGHT
    f"{ean13(9)},No Weight,100,,,,,,",  # 9 BAD_WEIGHT
    f"{ean13(10)},Too Few Fields,100",  # 10 BAD_ROW
    "5012345678900,Same GTIN Again,130,432.5,,,,,",  # 11 DUPLICATE_GTIN
    f"{ean13(12)}," + "N" * 201 + ",100,100,,,,,",  # 12 TOO_LONG
    f"{ean13(13)},Long Origin,100,100,,," + "O" * 2001 + ",,",  # 13 TOO_LONG
    f"{ean13(14)},Gift Card 20,2000,,,Weight_Exempt; EAS_TAGGED,,,",  # 14 good
    "2011122000005,Loose Bananas (per kg),110,,,variable_measure,,2 for 1,",  # 15 good
    '96385074,Two-Line Origin,250,30.5,0.8,,"Farm 7',  # 16 good...
    'Field 3",,',  # 17 ...same row
    "003456789012345670,An SSCC,100,100,,,,,",  # 18 BAD_GTIN
    "",  # 19 blank
    f"{ean13(20)},Not A Number,100,nan,,,,,",  # 20 BAD_WEIGHT
    f"{ean13(21)},Negative SD,99,250,-1,,,,",  # 21 BAD_WEIGHT
    " 036000291452 ,UPC Item,99,250,3,age_restricted|eas_tagged,,,",  # 22 good
    '73513537,"Quoted, With Comma",100,50,,,,,',  # 23 good
    f"]E0{ean13(24)},Symbology Prefix,100,100,,,,,",  # 24 BAD_GTIN
    f"{ean13(25)},Huge Price,10000000000000000,100,,,,,",  # 25 BAD_PRICE
]) + "\n"

MESSY_ERRORS = [
    (3, "BAD_GTIN"), (4, "BAD_PRICE"), (5, "BAD_PRICE"), (6, "MISSING_NAME"),
    (7, "BAD_FLAGS"), (8, "BAD_WEIGHT"), (9, "BAD_WEIGHT"), (10, "BAD_ROW"),
    (11, "DUPLICATE_GTIN"), (12, "TOO_LONG"), (13, "TOO_LONG"), (18, "BAD_GTIN"),
    (20, "BAD_WEIGHT"), (21, "BAD_WEIGHT"), (24, "BAD_GTIN"), (25, "BAD_PRICE"),
]


def test_every_bad_row_is_reported_on_its_line_and_good_rows_import(cat, tmp_path):
    path = write(tmp_path / "messy.csv", MESSY)
    seen = []
    report = cat.import_csv(path, progress=lambda *a: seen.append(a))

    assert codes(report) == MESSY_ERRORS
    assert report.rows_imported == 6
    assert report.rows_bad == len(MESSY_ERRORS)
    assert report.rows_read == 6 + len(MESSY_ERRORS)  # the blank line is not a row
    assert not report.errors_truncated
    assert any("colour" in w for w in report.warnings)
    assert report.seconds >= 0
    size = path.stat().st_size
    assert seen[-1] == (report.rows_read, size, size)

    messages = {line: msg for line, _, msg in report.errors}
    assert "minor units" in messages[4]
    assert "line 2" in messages[11]
    assert "frozen" in messages[7]
    assert "weight_exempt" in messages[9]

    assert cat.count() == 6
    beans = cat.item("05012345678900")
    assert beans["name"] == "Baked Beans 415 g"
    assert beans["price_minor"] == 125
    assert beans["unit_weight_g"] == 432.5 and beans["weight_sd_g"] == 4.2
    assert beans["flags"] == [] and beans["origin"] == "United Kingdom"
    assert beans["promotion"] is None and beans["producer"] is None
    gift = cat.item(ean13(14))
    assert gift["flags"] == ["weight_exempt", "eas_tagged"]
    assert gift["unit_weight_g"] is None and gift["weight_sd_g"] is None
    assert cat.item("02011122000005")["promotion"] == "2 for 1"
    assert cat.item("96385074")["origin"] == "Farm 7\nField 3"
    upc = cat.item("036000291452")
    assert upc["gtin"] == "00036000291452"
    assert upc["flags"] == ["eas_tagged", "age_restricted"]
    assert cat.item("73513537")["name"] == "Quoted, With Comma"


def test_csv_syntax_error_is_a_bad_row_and_the_import_goes_on(cat, tmp_path):
    path = write(tmp_path / "syntax.csv", "\n".join([
        "gtin,name,price_minor,unit_weight_g",
        '5012345678900,"Broken"quote,100,100',
        "4006381333931,Fine,100,100",
    ]) + "\n")
    report = cat.import_csv(path)
    assert codes(report) == [(2, "BAD_ROW")]
    assert cat.count() == 1 and cat.item("4006381333931")["name"] == "Fine"


def test_only_the_first_thousand_bad_rows_are_kept_but_all_are_counted(cat, tmp_path):
    rows = ["gtin,name,price_minor,unit_weight_g"]
    rows += [f"5012345678901,Bad {i},1,1" for i in range(1500)]  # bad check digit
    rows.append("4006381333931,Good,100,100")
    report = cat.import_csv(write(tmp_path / "many.csv", "\n".join(rows)))
    assert report.rows_bad == 1500 and len(report.errors) == catalog.MAX_ERROR_DETAILS
    assert report.errors_truncated
    assert report.errors[-1][0] == 1001
    assert report.rows_imported == 1
    assert report.to_dict()["errors_truncated"] is True


@pytest.mark.parametrize("header, why", [
    ("gtin,name,unit_weight_g", "price_minor"),
    ("barcode,name,price_minor", "gtin"),
    ("gtin,name,price_minor,name", "twice"),
])
def test_header_errors_raise_before_anything_is_imported(cat, tmp_path, header, why):
    cat.import_csv(write(tmp_path / "ok.csv", "gtin,name,price_minor,unit_weight_g\n"
                                              "4006381333931,Kept,100,100\n"))
    bad = write(tmp_path / "bad.csv", header + "\n5012345678900,X,1\n")
    with pytest.raises(CatalogError) as info:
        cat.import_csv(bad)
    assert info.value.code == "BAD_CSV_HEADER"
    assert why in info.value.message
    assert cat.count() == 1 and cat.item("4006381333931")["name"] == "Kept"


def test_file_errors(cat, tmp_path):
    with pytest.raises(CatalogError) as info:
        cat.import_csv(tmp_path / "absent.csv")
    assert info.value.code == "CSV_NOT_FOUND"
    with pytest.raises(CatalogError) as info:
        cat.import_csv(tmp_path)
    assert info.value.code == "CSV_UNREADABLE"
    with pytest.raises(CatalogError) as info:
        cat.import_csv(write(tmp_path / "empty.csv", ""))
    assert info.value.code == "BAD_CSV_HEADER"
    with pytest.raises(CatalogError) as info:
        cat.import_csv(write(tmp_path / "latin1.csv",
                             "gtin,name,price_minor\n4006381333931,Café,1\n",
                             encoding="latin-1"))
    assert info.value.code == "CSV_UNREADABLE"
    assert cat.count() == 0


def test_bom_and_header_spelling_are_accepted(cat, tmp_path):
    path = write(tmp_path / "bom.csv",
                 " GTIN ,Name,PRICE_MINOR,Unit_Weight_G\r\n"
                 "4006381333931,Café Crème,199,250\r\n", bom=True)
    report = cat.import_csv(path)
    assert report.errors == [] and report.warnings == []
    assert cat.item("4006381333931")["name"] == "Café Crème"


def test_unnamed_spreadsheet_columns_are_ignored(cat, tmp_path):
    path = write(tmp_path / "excel.csv", "gtin,name,price_minor,unit_weight_g,,\n"
                                         "4006381333931,Soap,250,100,,\n")
    report = cat.import_csv(path)
    assert report.errors == [] and report.rows_imported == 1
    assert any("without a name" in w for w in report.warnings)


def test_without_a_weight_column_items_import_without_weight(cat, tmp_path):
    path = write(tmp_path / "noweight.csv", "gtin,name,price_minor,flags\n"
                                            "4006381333931,Magazine,450,weight_exempt\n"
                                            "5012345678900,Beans,125,\n")
    report = cat.import_csv(path)
    assert any("unit_weight_g" in w for w in report.warnings)
    assert report.errors == [] and cat.count() == 2
    assert cat.item("5012345678900")["unit_weight_g"] is None
    assert math.isnan(cat.table().weight_mean_g[cat.table().lookup(5012345678900)])


def test_import_upserts_and_replaces_whole_rows(cat, tmp_path):
    cat.import_csv(write(tmp_path / "v1.csv",
                         "gtin,name,price_minor,unit_weight_g,promotion\n"
                         "5012345678900,Beans,125,432,3 for 2\n"
                         "4006381333931,Soap,250,100,\n"))
    first = cat.item("5012345678900")
    report = cat.import_csv(write(tmp_path / "v2.csv",
                                  "gtin,price_minor,name,unit_weight_g\n"
                                  "5012345678900,139,Beans,432\n"
                                  "96385074,80,Mints,30\n"))
    assert report.rows_imported == 2 and report.errors == []
    assert cat.count() == 3
    beans = cat.item("5012345678900")
    assert beans["price_minor"] == 139
    assert beans["promotion"] is None  # a listed GTIN is replaced whole
    assert beans["updated_at"] >= first["updated_at"]
    assert cat.item("4006381333931")["price_minor"] == 250  # not listed: untouched


def test_a_failure_mid_import_leaves_the_previous_catalogue(cat, tmp_path):
    cat.import_csv(write(tmp_path / "v1.csv", "gtin,name,price_minor,unit_weight_g\n"
                                              "5012345678900,Beans,125,432\n"))
    rows = ["gtin,name,price_minor,unit_weight_g"]
    rows += ["5012345678900,Beans,999,432"] + [
        f"{g},Item,{i},{i}" for i, g in enumerate(
            r["gtin"] for r in synth.generate_catalog(1500, seed=3)
            if r["unit_weight_g"] is not None and r["gtin"] != "5012345678900")]
    path = write(tmp_path / "v2.csv", "\n".join(rows) + "\n")

    class Boom(Exception):
        pass

    def progress(rows_done, bytes_done, bytes_total):
        raise Boom  # the final call comes after every row is written, before COMMIT

    with pytest.raises(Boom):
        cat.import_csv(path, progress=progress)
    assert cat.count() == 1 and cat.item("5012345678900")["price_minor"] == 125
    with Catalog.open(cat.path.parent) as other:
        assert other.count() == 1

    # A file that stops being UTF-8 after the first read-ahead block: rows before it
    # were written inside the transaction, and are rolled back.
    broken = write(tmp_path / "v3.csv", "\n".join(rows) + "\n")
    broken.write_bytes(broken.read_bytes() + b"40063813339\xff1,X,1,1\n")
    with pytest.raises(CatalogError) as info:
        cat.import_csv(broken)
    assert info.value.code == "CSV_UNREADABLE"
    assert "nothing imported" in info.value.message  # it failed inside the import
    assert cat.count() == 1

    report = cat.import_csv(path)  # the connection is usable again
    assert report.rows_bad == 0 and cat.item("5012345678900")["price_minor"] == 999


def test_an_import_waits_for_the_write_lock_then_reports_busy(cat, tmp_path):
    cat.import_csv(write(tmp_path / "v1.csv", "gtin,name,price_minor,unit_weight_g\n"
                                              "5012345678900,Beans,125,432\n"))
    other = sqlite3.connect(cat.path)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    try:
        con = catalog.connect(cat.path, timeout=0.05)
        with pytest.raises(CatalogError) as info:
            catalog.import_csv(con, write(tmp_path / "v2.csv",
                                          "gtin,name,price_minor,unit_weight_g\n"
                                          "4006381333931,Soap,250,100\n"))
        assert info.value.code == "DB_BUSY"
        con.close()
    finally:
        other.rollback()
        other.close()
    assert cat.count() == 1


# --------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------

def test_database_settings_and_schema(cat):
    con = cat.connection
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert con.execute("PRAGMA user_version").fetchone()[0] == catalog.SCHEMA_VERSION
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                       ).fetchone()[0] == "1"
    assert cat.path.name == DATABASE_FILE


def test_database_errors_are_catalog_errors(tmp_path):
    (tmp_path / DATABASE_FILE).write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(CatalogError) as info:
        Catalog.open(tmp_path)
    assert info.value.code == "DB_ERROR"

    newer = tmp_path / "newer"
    newer.mkdir()
    con = sqlite3.connect(newer / DATABASE_FILE)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(CatalogError) as info:
        Catalog.open(newer)
    assert info.value.code == "SCHEMA_TOO_NEW"

    with pytest.raises(CatalogError) as info:
        Catalog.open(tmp_path / "no-such-dir")
    assert info.value.code == "DB_ERROR"

    ok = tmp_path / "ok"
    ok.mkdir()
    c = Catalog.open(ok)
    with pytest.raises(CatalogError) as info:
        c.item("not a gtin")
    assert info.value.code == "BAD_GTIN"
    c.close()
    c.close()
    with pytest.raises(CatalogError):
        c.count()


# --------------------------------------------------------------------------------------
# The lookup table
# --------------------------------------------------------------------------------------

def test_load_table_agrees_with_item(tmp_path):
    csv_path = tmp_path / "gen.csv"
    synth.write_catalog_csv(csv_path, 2000, seed=11)
    data = tmp_path / "data"
    data.mkdir()
    report = catalog.import_csv(data, csv_path)  # a data directory as the target
    assert report.rows_bad == 0 and report.rows_imported == 2000

    table = catalog.load_table(data / DATABASE_FILE)
    assert len(table) == 2000
    assert table.gtin.dtype == np.uint64 and table.flags.dtype == np.uint8
    with Catalog.open(data) as c:
        for i in range(0, 2000, 97):
            key = int(table.gtin[i])
            assert table.lookup(key) == i
            it = c.item("%014d" % key)
            assert it["price_minor"] == table.price_minor[i]
            for col, arr in (("unit_weight_g", table.weight_mean_g),
                             ("weight_sd_g", table.weight_sd_g)):
                if it[col] is None:
                    assert math.isnan(arr[i])
                else:
                    assert it[col] == arr[i]
            assert sum(FLAG_BITS[f] for f in it["flags"]) == table.flags[i]
    assert table.lookup(99999999999999) == -1


def test_price_bound_is_the_tables_int32(cat, tmp_path):
    """Prices are int32 in the lookup table: the import refuses 2**31 and above as
    BAD_PRICE (naming the bound), takes 2**31 - 1, and the table returns it exactly."""
    assert catalog.MAX_PRICE_MINOR == 2**31 - 1
    path = write(tmp_path / "bound.csv", "\n".join([
        "gtin,name,price_minor,unit_weight_g",
        f"{ean13(1)},Most Expensive,2147483647,100",   # 2 good: the bound itself
        f"{ean13(2)},One Too Many,2147483648,100",     # 3 BAD_PRICE
        f"{ean13(3)},Ten Digits,9999999999,100",       # 4 BAD_PRICE
        f"{ean13(4)},Free,0,100",                      # 5 good
    ]) + "\n")
    report = cat.import_csv(path)
    assert codes(report) == [(3, "BAD_PRICE"), (4, "BAD_PRICE")]
    assert "exceeds 2147483647 minor units" in report.errors[0][2]
    table = cat.table()
    assert table.price_minor.dtype == np.int32
    row = table.lookup(int(ean13(1)))
    assert int(table.price_minor[row]) == 2**31 - 1
    assert int(table.price_minor[row]) * 1000 == (2**31 - 1) * 1000   # int(): no wrap
    with pytest.raises(CatalogError) as e:
        cat.update_item(ean13(4), price_minor=2**31)
    assert e.value.code == "BAD_PRICE"


def test_a_price_above_the_bound_in_an_older_database_is_bad_price(tmp_path):
    """A database written before the int32 bound (its CHECK allowed 10**15 - 1)
    cannot become a table: load_table says which item, as BAD_PRICE."""
    data = tmp_path / "data"
    data.mkdir()
    with Catalog.open(data) as c:
        c.import_csv(write(tmp_path / "a.csv", "gtin,name,price_minor,unit_weight_g\n"
                           f"{ean13(1)},Old,5,100\n{ean13(2)},Older,7,100\n"))
    con = sqlite3.connect(data / DATABASE_FILE)
    con.execute("PRAGMA ignore_check_constraints = ON")
    con.execute("UPDATE items SET price_minor = ? WHERE gtin = ?",
                (10**15 - 1, "%014d" % int(ean13(2))))
    con.commit()
    con.close()
    with pytest.raises(CatalogError) as e:
        catalog.load_table(data / DATABASE_FILE)
    assert e.value.code == "BAD_PRICE"
    assert "%014d" % int(ean13(2)) in str(e.value) and "999999999999999" in str(e.value)


def test_empty_catalogue_loads(cat):
    table = cat.table()
    assert len(table) == 0 and table.lookup(4006381333931) == -1


def test_table_is_cached_and_reloaded_after_imports(cat, tmp_path):
    t0 = cat.table()
    assert cat.table() is t0
    cat.import_csv(write(tmp_path / "a.csv", "gtin,name,price_minor,unit_weight_g\n"
                                             "4006381333931,Soap,250,100\n"))
    t1 = cat.table()
    assert t1 is not t0 and len(t1) == 1
    # Another connection (another process, in real life) imports: seen too.
    catalog.import_csv(cat.path, write(tmp_path / "b.csv",
                                       "gtin,name,price_minor,unit_weight_g\n"
                                       "5012345678900,Beans,125,432\n"))
    assert len(cat.table()) == 2


def test_catalog_version_counts_imports_that_write_rows(cat, tmp_path):
    assert cat.version() == 0 and catalog.catalog_version(cat.path) == 0
    good = write(tmp_path / "a.csv", "gtin,name,price_minor,unit_weight_g\n"
                                     "4006381333931,Soap,250,100\n")
    cat.import_csv(good)
    assert cat.version() == 1
    # Another connection imports: it bumps the same counter.
    catalog.import_csv(cat.path, write(tmp_path / "b.csv",
                                       "gtin,name,price_minor,unit_weight_g\n"
                                       "4006381333931,Soap,275,100\n"))
    assert cat.version() == 2
    version, table = catalog.load_versioned_table(cat)
    assert version == 2 and len(table) == 1
    assert int(table.price_minor[table.lookup(4006381333931)]) == 275
    # Nothing written (every row bad), or a failed import: no new version.
    report = cat.import_csv(write(tmp_path / "c.csv", "gtin,name,price_minor\n"
                                                      "4006381333932,Bad check,1\n"))
    assert report.rows_imported == 0 and cat.version() == 2

    def progress(*_):
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError):
        cat.import_csv(good, progress=progress)
    assert cat.version() == 2
    assert cat.connection.execute(
        "SELECT value FROM meta WHERE key = 'catalog_version'").fetchone() == ("2",)


def test_update_item_validates_writes_and_bumps_the_version_like_an_import(cat, tmp_path):
    cat.import_csv(write(tmp_path / "a.csv", "gtin,name,price_minor,unit_weight_g,flags\n"
                                             "4006381333931,Soap,250,100,\n"))
    assert cat.version() == 1
    out = catalog.update_item(cat.path, "4006381333931", price_minor=275,
                              unit_weight_g=101.5, eas=True)
    assert out["catalog_version"] == 2 and cat.version() == 2
    assert out["changed"] == {"price_minor": [250, 275], "unit_weight_g": [100.0, 101.5],
                              "eas": [False, True]}
    row = cat.item("4006381333931")
    assert (row["price_minor"], row["unit_weight_g"], row["flags"]) == (
        275, 101.5, ["eas_tagged"])
    assert out["item"] == row
    version, table = catalog.load_versioned_table(cat)
    assert version == 2 and int(table.price_minor[table.lookup(4006381333931)]) == 275
    # Through the Catalog, one field at a time; nothing different: no new version.
    assert cat.update_item("4006381333931", eas=False)["changed"] == {"eas": [True, False]}
    assert cat.version() == 3
    assert cat.update_item("4006381333931", price_minor=275)["changed"] == {}
    assert cat.update_item("4006381333931")["catalog_version"] == 3 == cat.version()
    # Refused as the import refuses, and nothing written.
    for kw, code in [({"price_minor": -1}, "BAD_PRICE"), ({"price_minor": 12.5}, "BAD_PRICE"),
                     ({"price_minor": True}, "BAD_PRICE"),
                     ({"price_minor": catalog.MAX_PRICE_MINOR + 1}, "BAD_PRICE"),
                     ({"unit_weight_g": -0.1}, "BAD_WEIGHT"),
                     ({"unit_weight_g": float("nan")}, "BAD_WEIGHT"),
                     ({"unit_weight_g": "abc"}, "BAD_WEIGHT"),
                     ({"eas": 1}, "BAD_ARGUMENT")]:
        with pytest.raises(CatalogError) as e:
            cat.update_item("4006381333931", **kw)
        assert e.value.code == code, kw
    with pytest.raises(CatalogError) as e:
        cat.update_item("4006381333948", price_minor=1)
    assert e.value.code == "UNKNOWN_ITEM"
    with pytest.raises(CatalogError) as e:
        cat.update_item("12", price_minor=1)
    assert e.value.code == "BAD_GTIN"
    assert cat.version() == 3 and cat.item("4006381333931")["price_minor"] == 275
    assert not cat.connection.in_transaction


# --------------------------------------------------------------------------------------
# Scan lookups
# --------------------------------------------------------------------------------------

@pytest.fixture
def store(cat, tmp_path):
    report = cat.import_csv(write(tmp_path / "store.csv", "\n".join([
        "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags",
        "5012345678900,Baked Beans 415 g,125,432.5,4.2,",
        "2011122000005,Deli Ham (per kg),1899,,,variable_measure",
        "2312345600004,Loose Apples (per kg),2000,,,variable_measure",
        "2312346600003,Loose Cherries (per kg),1001,,,variable_measure",
    ]) + "\n"))
    assert report.errors == [] and report.rows_imported == 4
    return cat


def test_lookup_of_a_normal_item(store):
    res = store.lookup_code("5012345678900")
    assert res["found"] and res["error"] is None
    assert res["scan"]["gtin"] == "05012345678900"
    assert res["item"]["name"] == "Baked Beans 415 g"
    assert res["item"]["line_price_minor"] == 125


def test_lookup_of_an_unknown_item_and_a_bad_scan(store):
    res = store.lookup_code("4006381333931")
    assert not res["found"] and res["item"] is None
    assert res["error"]["code"] == "UNKNOWN_ITEM"
    assert res["scan"]["ok"]

    res = store.lookup_code("5012345678901")
    assert not res["found"] and res["error"]["code"] == "BAD_CHECK_DIGIT"
    assert res["error"] == res["scan"]["error"]

    res = store.lookup_code("5012345678900", region="G1")
    assert res["error"]["code"] == "UNKNOWN_REGION"

    res = store.lookup_code("003456789012345670")  # an SSCC names no item
    assert res["error"]["code"] == "UNKNOWN_ITEM"


def test_lookup_of_a_gb_price_label(store):
    res = store.lookup_code("2011122912346", region="GB")
    assert res["found"], res
    assert res["scan"]["lookup_gtin"] == "02011122000005"
    assert res["item"]["name"] == "Deli Ham (per kg)"
    assert res["item"]["line_price_minor"] == 1234
    # Without the region the label is not decoded, so it names no catalogue item.
    assert store.lookup_code("2011122912346")["error"]["code"] == "UNKNOWN_ITEM"


def test_lookup_of_a_se_weight_label(store):
    res = store.lookup_code("2312345607508", region="SE")  # 0.750 kg at 2000/kg
    assert res["found"] and res["scan"]["weight_g"] == 750
    assert res["item"]["line_price_minor"] == 1500
    res = store.lookup_code("2312346605008", region="SE")  # 0.500 kg at 1001/kg
    assert res["item"]["line_price_minor"] == 501          # 500.5, half up
    # The listed code itself, read without a region: the item needs weighing.
    res = store.lookup_code("2312345600004")
    assert res["found"] and res["item"]["line_price_minor"] is None


def test_line_price_rounding_is_half_up():
    class Scan:
        price_minor = None
        count = None
        kind = "rcn"

        def __init__(self, grams):
            self.weight_g = grams

    vm = {"price_minor": 999, "flag_bits": FLAG_BITS["variable_measure"]}
    assert catalog.line_price_minor(vm, Scan(1.5)) == 1        # 1.4985
    assert catalog.line_price_minor(vm, Scan(500.0)) == 500     # 499.5 -> 500
    assert catalog.line_price_minor({"price_minor": 1, "flag_bits": 2}, Scan(500)) == 1
    assert catalog.line_price_minor({"price_minor": 3, "flag_bits": 2}, Scan(500)) == 2
