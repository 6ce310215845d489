"""Baskets and orders against real SQLite files: adding and removing in batches that
succeed or fail whole, in-store price, weight and count labels, every error code,
the caller's transaction (a rollback leaves nothing, a failed call leaves the
caller's earlier work), order numbers that never repeat, the order QR, and the
weigh-check fed from an order."""

from __future__ import annotations

import re
import sqlite3

import pytest

from lanecore.core.store.basket import (MAX_LINES, MAX_QTY, ORDER_STATUSES,
                                        ORDER_TRANSITIONS, BasketError, BasketStore, atomic,
                                        lines_digest)
from lanecore.core.scan.catalog import Catalog, connect
from lanecore.core.errors import LanecoreError
from lanecore.core.store.orderqr import Signer, verify_qr
from lanecore.core.scan.synth import write_catalog_csv
from lanecore.core.weigh.verify import verify
from lanecore.ext.barcode import gs1_check_digit, parse_scan, price_check_digit


def ean13(body12: str) -> str:
    return body12 + str(gs1_check_digit(body12))


BEANS = ean13("500000000001")      # 125p, 432.5 g
MILK = ean13("500000000002")       # 99p, 1040 g
GIFT = ean13("500000000003")       # weight-exempt gift card
BANANAS = ean13("500000000004")    # variable measure under an ordinary GTIN: weigh it
CHEESE_GB = ean13("201112200000")  # GB deli counter, 1999p per kg (2011122000005)
CHEESE_SE = ean13("231234500000")  # SE deli counter, 25000 öre per kg
ROLLS_DE = ean13("251234000000")   # DE count code item: 35 cents per roll, 60 g each
UNLISTED = ean13("500000000099")   # valid, not in the catalogue

CATALOG = "\n".join([
    "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags",
    f"{BEANS},Baked Beans 415 g,125,432.5,4,",
    f"{MILK},Milk 1 l,99,1040,6,",
    f"{GIFT},Gift Card,2000,,,weight_exempt",
    f"{BANANAS},Bananas per kg,110,,,variable_measure",
    f"{CHEESE_GB},Deli Cheddar per kg,1999,,,variable_measure",
    f"{CHEESE_SE},Prästost per kg,25000,,,variable_measure",
    f"{ROLLS_DE},Brötchen,35,60,2,",
]) + "\n"


def gb_price_code(pence: int) -> str:
    """A GB deli label for CHEESE_GB carrying a price (prefix 20, PPPPPPPCVVVV)."""
    value = f"{pence:04d}"
    return ean13("2011122" + str(price_check_digit(value)) + value)


def se_weight_code(grams: int) -> str:
    """A Swedish label for CHEESE_SE carrying a weight (prefix 23, kg, 3 decimals)."""
    return ean13("23123450" + f"{grams:04d}")


def de_count_code(count: int) -> str:
    """A German count label for ROLLS_DE (prefix 25, PPPPPPCVVVVV)."""
    value = f"{count:05d}"
    return ean13("251234" + str(price_check_digit(value)) + value)


def g14(code: str) -> str:
    return code.zfill(14)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    csv = tmp_path / "prices.csv"
    csv.write_text(CATALOG, encoding="utf-8")
    with Catalog.open(d) as cat:
        report = cat.import_csv(csv)
        assert report.rows_bad == 0, report.errors
    return d


@pytest.fixture
def cat(data_dir):
    with Catalog.open(data_dir) as c:
        yield c


@pytest.fixture
def signer():
    return Signer.generate()


def make_store(cat, region="GB", **kw) -> BasketStore:
    return BasketStore(cat.connection, cat.table, region=region, item=cat.item, **kw)


@pytest.fixture
def store(cat):
    return make_store(cat)


def call(store, method, *args, **kw):
    """One mutating call in its own transaction, as the service makes it."""
    with atomic(store.con):
        return getattr(store, method)(*args, **kw)


def error_of(fn, *args, **kw) -> BasketError:
    with pytest.raises(BasketError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, LanecoreError)
    return info.value


def failing(store, method, *args, **kw) -> BasketError:
    """The BasketError of a mutating call; the transaction is rolled back."""
    return error_of(call, store, method, *args, **kw)


def counts(con) -> dict:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("baskets", "basket_lines", "orders", "order_counters")}


# --------------------------------------------------------------------------------------
# open / add / get
# --------------------------------------------------------------------------------------

def test_open_gives_an_empty_basket_with_an_unguessable_id(store):
    b = call(store, "open", "HH07", member="07700900123")
    assert re.fullmatch(r"[A-Z2-7]{12}", b["basket_id"])
    assert b == store.get(b["basket_id"])
    assert (b["device"], b["member"], b["status"], b["order_no"]) == \
        ("HH07", "07700900123", "open", None)
    assert (b["lines"], b["n_items"], b["total_minor"], b["currency"]) == ([], 0, 0, "GBP")
    ids = {call(store, "open", "HH07")["basket_id"] for _ in range(50)}
    assert len(ids) == 50


def test_add_merges_plain_items_and_prices_lines(store):
    bid = call(store, "open", "HH07")["basket_id"]
    b = call(store, "add", bid, [{"code": BEANS, "qty": 2}, {"code": MILK},
                                 {"code": BEANS}])
    assert [(ln["line_no"], ln["gtin"], ln["qty"], ln["unit_price_minor"],
             ln["line_price_minor"]) for ln in b["lines"]] == \
        [(1, g14(BEANS), 3, 125, 375), (2, g14(MILK), 1, 99, 99)]
    assert b["lines"][0]["name"] == "Baked Beans 415 g"
    assert b["lines"][0]["code"] == BEANS
    assert (b["n_items"], b["total_minor"]) == (4, 474)
    # the same item scanned as a GTIN-14 with a symbology identifier: the same line
    b = call(store, "add", bid, [{"code": "]E0" + BEANS, "qty": None},
                                 {"code": g14(MILK), "qty": 5}])
    assert [(ln["line_no"], ln["qty"]) for ln in b["lines"]] == [(1, 4), (2, 6)]
    assert b["total_minor"] == 4 * 125 + 6 * 99
    assert store.get(bid) == b


def test_in_store_labels_are_one_line_each(store):
    bid = call(store, "open", "HH07")["basket_id"]
    code = gb_price_code(1234)
    assert code == "2011122912346"
    b = call(store, "add", bid, [{"code": code}, {"code": code}, {"code": GIFT}])
    cheese = [ln for ln in b["lines"] if ln["gtin"] == g14(CHEESE_GB)]
    assert [(ln["line_no"], ln["qty"], ln["line_price_minor"], ln["unit_price_minor"],
             ln["weight_g"], ln["flags"]) for ln in cheese] == \
        [(1, 1, 1234, 1999, None, ["variable_measure"]),
         (2, 1, 1234, 1999, None, ["variable_measure"])]
    assert b["lines"][2]["flags"] == ["weight_exempt"]
    assert b["total_minor"] == 2 * 1234 + 2000


def test_weight_labels_price_per_kg_times_weight_rounded_half_up(cat):
    store = make_store(cat, region="SE")
    assert store.currency == "SEK"
    bid = call(store, "open", "HH07")["basket_id"]
    # 25000 öre/kg: 0.500 kg = 12500; 0.123 kg = 3075; 0.0002 kg... 0.001 kg = 25
    b = call(store, "add", bid, [{"code": se_weight_code(500)},
                                 {"code": se_weight_code(123)},
                                 {"code": se_weight_code(1)}])
    assert [(ln["qty"], ln["weight_g"], ln["line_price_minor"]) for ln in b["lines"]] == \
        [(1, 500.0, 12500), (1, 123.0, 3075), (1, 1.0, 25)]


def test_half_up_rounding_of_a_weighed_price(data_dir, tmp_path):
    # 1999 per kg x 0.25 kg = 499.75 -> 500; x 0.0025 ... a 1 g label: 1.999 -> 2
    csv = tmp_path / "more.csv"
    csv.write_text(f"gtin,name,price_minor,flags\n{CHEESE_SE},Ost,1999,variable_measure\n")
    with Catalog.open(data_dir) as cat:
        cat.import_csv(csv)
        store = make_store(cat, region="SE")
        bid = call(store, "open", "HH07")["basket_id"]
        b = call(store, "add", bid, [{"code": se_weight_code(250)},
                                     {"code": se_weight_code(1)}])
    assert [ln["line_price_minor"] for ln in b["lines"]] == [500, 2]


def test_count_labels(cat):
    store = make_store(cat, region="DE")
    bid = call(store, "open", "T1")["basket_id"]
    b = call(store, "add", bid, [{"code": de_count_code(6)}])
    (line,) = b["lines"]
    assert (line["qty"], line["count"], line["line_price_minor"]) == (1, 6, 6 * 35)
    order = call(store, "submit", bid, Signer.generate())
    assert store.order_lines_for_verify(order["order_no"]) == \
        {"lines": [{"gtin": g14(ROLLS_DE), "qty": 6}]}


def test_synthetic_catalogue(tmp_path):
    d = tmp_path / "synth"
    d.mkdir()
    write_catalog_csv(tmp_path / "synth.csv", 300, seed=1)
    with Catalog.open(d) as cat:
        assert cat.import_csv(tmp_path / "synth.csv").rows_bad == 0
        rows = cat.connection.execute(
            "SELECT gtin, price_minor FROM items WHERE (flags & 2) = 0 "
            "ORDER BY gtin LIMIT 40").fetchall()
        store = make_store(cat)
        bid = call(store, "open", "HH01")["basket_id"]
        b = call(store, "add", bid, [{"code": g, "qty": 1 + i % 3}
                                     for i, (g, _) in enumerate(rows)])
        assert len(b["lines"]) == 40
        assert b["total_minor"] == sum(p * (1 + i % 3) for i, (_, p) in enumerate(rows))
        # every line's scan reads back to the line's GTIN
        assert all(parse_scan(ln["code"]).lookup_gtin == ln["gtin"] for ln in b["lines"])


def test_table_may_be_a_fixed_table_or_absent(cat):
    for table in (cat.table(), None):
        store = BasketStore(cat.connection, table, region="GB")
        bid = call(store, "open", "HH07")["basket_id"]
        b = call(store, "add", bid, [{"code": BEANS}, {"code": gb_price_code(50)}])
        assert b["total_minor"] == 175
        assert failing(store, "add", bid, [{"code": UNLISTED}]).code == "UNKNOWN_ITEM"


# --------------------------------------------------------------------------------------
# batches are all or nothing
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, code, scan_code", [
    ({"code": "5000000000013"}, "BAD_SCAN", "BAD_CHECK_DIGIT"),
    ({"code": ""}, "BAD_SCAN", "EMPTY"),
    ({"code": ean13("201112281234")}, "BAD_SCAN", "BAD_PRICE_CHECK_DIGIT"),
    ({"code": UNLISTED}, "UNKNOWN_ITEM", None),
    ({"code": "]C0HELLO"}, "UNKNOWN_ITEM", None),            # a text scan names no item
    ({"code": BANANAS}, "NEEDS_WEIGHING", None),
    ({"code": BEANS, "qty": 0}, "BAD_QUANTITY", None),
    ({"code": BEANS, "qty": MAX_QTY + 1}, "BAD_QUANTITY", None),
    ({"code": BEANS, "qty": "2"}, "BAD_QUANTITY", None),
    ({"code": BEANS, "qty": True}, "BAD_QUANTITY", None),
    ({"code": BEANS, "qty": 2.0}, "BAD_QUANTITY", None),
    ({"code": gb_price_code(99), "qty": 2}, "BAD_QUANTITY", None),  # one label, one item
    ({"code": 5000000000012}, "BAD_REQUEST", None),
    ({"qty": 1}, "BAD_REQUEST", None),
    ({"code": BEANS, "price": 1}, "BAD_REQUEST", None),
    ("5000000000012", "BAD_REQUEST", None),
])
def test_a_bad_scan_adds_nothing_and_names_its_index(store, bad, code, scan_code):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": MILK}])
    before = store.get(bid)
    err = failing(store, "add", bid, [{"code": BEANS}, {"code": gb_price_code(100)}, bad,
                                      {"code": MILK}])
    assert (err.code, err.index) == (code, 2)
    assert err.to_dict()["index"] == 2
    if scan_code:
        assert err.scan_error["code"] == scan_code
        assert err.to_dict()["scan_error"]["code"] == scan_code
    else:
        assert "scan_error" not in err.to_dict()
    assert store.get(bid) == before


def test_needs_weighing_for_an_in_store_item_scanned_without_a_label(cat):
    store = make_store(cat, region=None)   # no region: no rule reads the label
    bid = call(store, "open", "HH07")["basket_id"]
    assert failing(store, "add", bid, [{"code": CHEESE_GB}]).code == "NEEDS_WEIGHING"
    # without the region's rules a label is a code of its own, not in the catalogue
    assert failing(store, "add", bid, [{"code": gb_price_code(1234)}]).code == \
        "UNKNOWN_ITEM"


def test_batch_shapes(store):
    bid = call(store, "open", "HH07")["basket_id"]
    for scans in ([], {"code": BEANS}, "BEANS", None, [{"code": BEANS}] * 501):
        err = failing(store, "add", bid, scans)
        assert err.code == "BAD_REQUEST" and err.index is None
    assert store.get(bid)["lines"] == []


def test_too_many_lines(store):
    bid = call(store, "open", "HH07")["basket_id"]
    labels = [{"code": gb_price_code(p)} for p in range(1, MAX_LINES + 1)]
    b = call(store, "add", bid, labels)
    assert len(b["lines"]) == MAX_LINES
    err = failing(store, "add", bid, [{"code": BEANS}])
    assert (err.code, err.index) == ("TOO_MANY_LINES", 0)
    assert len(store.get(bid)["lines"]) == MAX_LINES


def test_too_many_lines_spares_units_of_existing_lines(store):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS}] +
         [{"code": gb_price_code(p)} for p in range(1, MAX_LINES)])
    b = call(store, "add", bid, [{"code": BEANS, "qty": 5}])
    assert b["lines"][0]["qty"] == 6 and len(b["lines"]) == MAX_LINES
    err = failing(store, "add", bid, [{"code": BEANS}, {"code": MILK}])
    assert (err.code, err.index) == ("TOO_MANY_LINES", 1)
    assert store.get(bid)["lines"][0]["qty"] == 6


def test_a_line_holds_at_most_max_qty(store):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS, "qty": MAX_QTY - 1}])
    err = failing(store, "add", bid, [{"code": BEANS}, {"code": BEANS}])
    assert (err.code, err.index) == ("BAD_QUANTITY", 1)
    assert store.get(bid)["lines"][0]["qty"] == MAX_QTY - 1


# --------------------------------------------------------------------------------------
# remove
# --------------------------------------------------------------------------------------

def test_remove_by_line_and_by_gtin(store):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS, "qty": 5}, {"code": MILK, "qty": 2},
                             {"code": gb_price_code(300)}, {"code": gb_price_code(400)},
                             {"code": GIFT}])
    b = call(store, "remove", bid, [{"line_no": 1, "qty": 2}, {"gtin": MILK}])
    assert [(ln["line_no"], ln["qty"], ln["line_price_minor"]) for ln in b["lines"]] == \
        [(1, 3, 375), (3, 1, 300), (4, 1, 400), (5, 1, 2000)]
    # by the catalogue GTIN of the labels: the newest label first
    b = call(store, "remove", bid, [{"gtin": CHEESE_GB, "qty": 1}])
    assert [ln["line_no"] for ln in b["lines"]] == [1, 3, 5]
    # by the GTIN the label itself carries (a rescan of that label)
    b = call(store, "remove", bid, [{"gtin": gb_price_code(300)}, {"line_no": 5}])
    assert [ln["line_no"] for ln in b["lines"]] == [1]
    # a GTIN-14, GTIN-13 or the whole line: the same
    b = call(store, "remove", bid, [{"gtin": g14(BEANS), "qty": 1}, {"line_no": 1}])
    assert b["lines"] == [] and b["total_minor"] == 0


def test_line_numbers_are_never_reused(store):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS}, {"code": MILK}])
    call(store, "remove", bid, [{"line_no": 2}])
    b = call(store, "add", bid, [{"code": MILK}])
    assert [ln["line_no"] for ln in b["lines"]] == [1, 3]


def test_a_removed_plain_line_no_longer_collects_units(store):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS}])
    call(store, "remove", bid, [{"gtin": BEANS}])
    b = call(store, "add", bid, [{"code": BEANS}])
    assert [(ln["line_no"], ln["qty"]) for ln in b["lines"]] == [(2, 1)]


@pytest.mark.parametrize("bad, code", [
    ({"line_no": 9}, "BAD_LINE"),
    ({"line_no": 1, "qty": 3}, "BAD_LINE"),    # 3 units, but item 0 took one
    ({"gtin": BEANS, "qty": 3}, "BAD_LINE"),
    ({"gtin": UNLISTED}, "BAD_LINE"),
    ({"gtin": MILK, "qty": 2}, "BAD_LINE"),
    ({"line_no": 2, "qty": 0}, "BAD_QUANTITY"),
    ({"line_no": 2, "qty": 1000}, "BAD_QUANTITY"),
    ({"line_no": "2"}, "BAD_REQUEST"),
    ({"line_no": 2, "gtin": MILK}, "BAD_REQUEST"),
    ({"qty": 1}, "BAD_REQUEST"),
    ({"gtin": 5000000000029}, "BAD_REQUEST"),
    ({"gtin": "50000000000X9"}, "BAD_REQUEST"),
    ({"line_no": 2, "all": True}, "BAD_REQUEST"),
    ([2], "BAD_REQUEST"),
])
def test_a_bad_removal_removes_nothing(store, bad, code):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS, "qty": 3}, {"code": MILK}])
    before = store.get(bid)
    err = failing(store, "remove", bid, [{"line_no": 1, "qty": 1}, bad])
    assert (err.code, err.index) == (code, 1)
    assert store.get(bid) == before


def test_a_line_removed_earlier_in_the_batch_is_gone(store):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS, "qty": 3}, {"code": MILK}])
    for second in ({"line_no": 1}, {"gtin": BEANS, "qty": 1}):
        err = failing(store, "remove", bid, [{"gtin": BEANS}, second])
        assert (err.code, err.index) == ("BAD_LINE", 1)
    assert store.get(bid)["n_items"] == 4


def test_remove_batch_shapes(store):
    bid = call(store, "open", "HH07")["basket_id"]
    for items in ([], None, {"line_no": 1}, [{"line_no": 1}] * 501):
        assert failing(store, "remove", bid, items).code == "BAD_REQUEST"


# --------------------------------------------------------------------------------------
# baskets that do not exist or are closed
# --------------------------------------------------------------------------------------

def test_unknown_and_closed_baskets(store, signer):
    for bid in ("AAAAAAAAAAAA", "nope", "a" * 12, ""):
        assert error_of(store.get, bid).code == "UNKNOWN_BASKET"
        assert failing(store, "add", bid, [{"code": BEANS}]).code == "UNKNOWN_BASKET"
        assert failing(store, "remove", bid, [{"line_no": 1}]).code == "UNKNOWN_BASKET"
        assert failing(store, "submit", bid, signer).code == "UNKNOWN_BASKET"
        assert failing(store, "cancel", bid).code == "UNKNOWN_BASKET"
    assert error_of(store.get, 12).code == "BAD_REQUEST"

    submitted = call(store, "open", "HH07")["basket_id"]
    call(store, "add", submitted, [{"code": BEANS}])
    call(store, "submit", submitted, signer)
    cancelled = call(store, "open", "HH07")["basket_id"]
    b = call(store, "cancel", cancelled)
    assert b["status"] == "cancelled"
    for bid in (submitted, cancelled):
        assert failing(store, "add", bid, [{"code": BEANS}]).code == "BASKET_CLOSED"
        assert failing(store, "remove", bid, [{"line_no": 1}]).code == "BASKET_CLOSED"
        assert failing(store, "submit", bid, signer).code == "BASKET_CLOSED"
        assert failing(store, "cancel", bid).code == "BASKET_CLOSED"
    assert store.get(submitted)["status"] == "submitted"


def test_empty_basket_cannot_be_submitted(store, signer):
    bid = call(store, "open", "HH07")["basket_id"]
    assert failing(store, "submit", bid, signer).code == "EMPTY_BASKET"
    call(store, "add", bid, [{"code": BEANS}])
    call(store, "remove", bid, [{"line_no": 1}])
    assert failing(store, "submit", bid, signer).code == "EMPTY_BASKET"
    assert failing(store, "submit", bid, None).code == "BAD_REQUEST"
    assert store.get(bid)["status"] == "open"


@pytest.mark.parametrize("device, member", [
    ("", None), (" HH07", None), ("H" * 65, None), ("HH\n07", None), (7, None),
    ("HH07", ""), ("HH07", 7700900123),
])
def test_open_checks_device_and_member(store, device, member):
    assert failing(store, "open", device, member=member).code == "BAD_REQUEST"


# --------------------------------------------------------------------------------------
# submit, orders and order numbers
# --------------------------------------------------------------------------------------

def test_submit_creates_the_order_with_a_signed_qr(store, signer):
    bid = call(store, "open", "hh-07", member="M1")["basket_id"]
    call(store, "add", bid, [{"code": BEANS, "qty": 2}, {"code": gb_price_code(1234)}])
    o = call(store, "submit", bid, signer)
    assert re.fullmatch(r"HH-07-\d{6}-0001", o["order_no"])
    assert (o["total_minor"], o["currency"], o["n_items"], o["status"]) == \
        (1484, "GBP", 3, "submitted")
    assert o["lines"] == store.get(bid)["lines"]
    assert o["lines_digest"] == lines_digest(o["lines"])
    payload = verify_qr(o["qr"], signer.verifier())
    assert payload == {"v": 1, "store": "STORE", "order": o["order_no"], "total": 1484,
                       "cur": "GBP", "n": 3, "digest": o["lines_digest"][:32],
                       "iat": int(o["created_at"])}
    assert len(o["qr"]) < 300

    b = store.get(bid)
    assert (b["status"], b["order_no"]) == ("submitted", o["order_no"])
    got = store.order(o["order_no"])
    assert {k: got[k] for k in ("order_no", "basket_id", "total_minor", "currency",
                                "n_items", "qr", "lines", "lines_digest", "status")} == \
        {**{k: o[k] for k in ("order_no", "basket_id", "total_minor", "currency",
                              "n_items", "qr", "lines", "lines_digest")},
         "status": "submitted"}
    assert (got["device"], got["member"]) == ("hh-07", "M1")
    # a typed order number: any case, stray spaces
    assert store.order(" " + o["order_no"].lower() + " ")["order_no"] == o["order_no"]


def test_unknown_orders(store):
    assert error_of(store.order, "HH07-000000-0001").code == "UNKNOWN_ORDER"
    assert error_of(store.order_lines_for_verify, "X").code == "UNKNOWN_ORDER"
    assert failing(store, "set_order_status", "X", "paid").code == "UNKNOWN_ORDER"
    assert error_of(store.order, None).code == "BAD_REQUEST"


def _fill_and_submit(store, device, signer, code=BEANS):
    bid = call(store, "open", device)["basket_id"]
    call(store, "add", bid, [{"code": code}])
    return call(store, "submit", bid, signer)["order_no"]


def test_order_numbers_are_unique_across_devices_and_reopening(data_dir, signer):
    # "HH 07", "hh-07" and "HH_07" share the prefix HH-07 and so its counter
    devices = ["HH 07", "hh-07", "HH_07", "KIOSK-1", "lane/3", "a" * 64, "!!!"]
    seen = []
    for round_ in range(2):
        with Catalog.open(data_dir) as cat:
            store = make_store(cat)
            for i in range(30):
                seen.append(_fill_and_submit(store, devices[i % len(devices)], signer))
    assert len(seen) == len(set(seen)) == 60
    for no in seen:
        assert re.fullmatch(r"[A-Z0-9-]{1,32}", no), no
    hh = sorted(int(no.rsplit("-", 1)[1]) for no in seen if no.startswith("HH-07-"))
    assert hh == list(range(1, len(hh) + 1))  # one counter, continued after reopening
    assert any(no.startswith("X-") for no in seen)           # "!!!" has no usable letter
    assert any(no.startswith("A" * 16 + "-") for no in seen)  # long names are cut


def test_order_numbers_count_per_day(cat, signer):
    t = [1_700_000_000.0]
    store = make_store(cat, clock=lambda: t[0])
    first = [_fill_and_submit(store, "HH07", signer) for _ in range(3)]
    t[0] += 86400
    second = [_fill_and_submit(store, "HH07", signer) for _ in range(2)]
    day1, day2 = first[0].split("-")[1], second[0].split("-")[1]
    assert day1 != day2
    assert first == [f"HH07-{day1}-{n:04d}" for n in (1, 2, 3)]
    assert second == [f"HH07-{day2}-{n:04d}" for n in (1, 2)]


def test_a_counter_row_lost_does_not_repeat_a_number(cat, signer):
    store = make_store(cat, clock=lambda: 1_700_000_000.0)
    a = _fill_and_submit(store, "HH07", signer)
    cat.connection.execute("DELETE FROM order_counters")
    b = _fill_and_submit(store, "HH07", signer)
    assert a.endswith("-0001") and b.endswith("-0002")


def test_order_status_transitions(store, signer):
    for start_path, target in [((), s) for s in ORDER_STATUSES] + \
            [(("paid",), s) for s in ORDER_STATUSES] + \
            [(("paid", "exited"), s) for s in ORDER_STATUSES] + \
            [(("cancelled",), s) for s in ORDER_STATUSES]:
        no = _fill_and_submit(store, "HH07", signer)
        for s in start_path:
            call(store, "set_order_status", no, s)
        current = start_path[-1] if start_path else "submitted"
        if target in ORDER_TRANSITIONS[current]:
            o = call(store, "set_order_status", no, target)
            assert o["status"] == target == store.order(no)["status"]
        else:
            err = failing(store, "set_order_status", no, target)
            assert err.code == "BAD_STATUS"
            assert store.order(no)["status"] == current
    no = _fill_and_submit(store, "HH07", signer)
    for bad in ("PAID", "open", "", None, 1):
        assert failing(store, "set_order_status", no, bad).code == "BAD_STATUS"
    assert ORDER_TRANSITIONS == {"submitted": ("paid", "cancelled"),
                                 "paid": ("exited", "cancelled"),
                                 "exited": (), "cancelled": ()}


# --------------------------------------------------------------------------------------
# the caller's transaction
# --------------------------------------------------------------------------------------

def test_mutating_calls_need_the_callers_transaction(store, signer):
    with atomic(store.con):
        bid = store.open("HH07")["basket_id"]
    for method, args in [("open", ("HH07",)), ("add", (bid, [{"code": BEANS}])),
                         ("remove", (bid, [{"line_no": 1}])), ("submit", (bid, signer)),
                         ("cancel", (bid,)), ("set_order_status", ("X", "paid"))]:
        assert error_of(getattr(store, method), *args).code == "NO_TRANSACTION"
    assert not store.con.in_transaction
    # reads need none
    assert store.get(bid)["lines"] == []


def test_rolling_back_the_callers_transaction_leaves_nothing(cat, signer):
    store = make_store(cat, clock=lambda: 1_700_000_000.0)
    con = store.con
    before = counts(con)
    con.execute("BEGIN IMMEDIATE")
    bid = store.open("HH07")["basket_id"]
    store.add(bid, [{"code": BEANS, "qty": 2}, {"code": gb_price_code(1234)}])
    store.remove(bid, [{"line_no": 1, "qty": 1}])
    order_no = store.submit(bid, signer)["order_no"]
    store.set_order_status(order_no, "paid")
    assert con.in_transaction  # nothing committed behind the caller's back
    con.execute("ROLLBACK")
    assert counts(con) == before
    assert error_of(store.get, bid).code == "UNKNOWN_BASKET"
    # and the order number was not used up
    assert _fill_and_submit(store, "HH07", signer) == order_no


def test_a_failed_call_keeps_the_callers_earlier_work(cat, signer):
    """The service's pattern: one transaction holds the call and the service's own
    idempotency record; a refused call is recorded and committed too."""
    store = make_store(cat)
    con = store.con
    con.execute("CREATE TABLE replies (request_id TEXT PRIMARY KEY, reply TEXT)")
    with atomic(con):
        bid = store.open("HH07")["basket_id"]
    con.execute("BEGIN IMMEDIATE")
    store.add(bid, [{"code": MILK}])
    with pytest.raises(BasketError) as info:
        store.add(bid, [{"code": BEANS}, {"code": UNLISTED}])
    con.execute("INSERT INTO replies VALUES ('r1', ?)", (info.value.code,))
    assert con.in_transaction
    con.execute("COMMIT")
    assert [ln["gtin"] for ln in store.get(bid)["lines"]] == [g14(MILK)]
    assert con.execute("SELECT reply FROM replies").fetchall() == [("UNKNOWN_ITEM",)]


def test_a_database_error_mid_call_is_rolled_back_to_the_call(cat, signer):
    store = make_store(cat)
    con = store.con
    with atomic(con):
        bid = store.open("HH07")["basket_id"]
    # a trigger that refuses the orders insert: submit has already written the counter
    con.execute("CREATE TEMP TRIGGER no_orders BEFORE INSERT ON orders "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with atomic(con):
        store.add(bid, [{"code": BEANS}])
        err = error_of(store.submit, bid, signer)
        assert err.code == "DB_ERROR" and "disk on fire" in err.message
        assert con.execute("SELECT count(*) FROM order_counters").fetchone()[0] == 0
    assert store.get(bid)["status"] == "open"
    assert len(store.get(bid)["lines"]) == 1


def test_atomic_commits_rolls_back_and_nests(cat):
    con = cat.connection
    con.execute("CREATE TABLE t (x)")
    with atomic(con):
        con.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ZeroDivisionError), atomic(con):
            con.execute("INSERT INTO t VALUES (2)")
            1 / 0
        assert con.in_transaction
    with pytest.raises(KeyError), atomic(con):
        con.execute("INSERT INTO t VALUES (3)")
        raise KeyError
    assert not con.in_transaction
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_db_busy_when_another_connection_holds_the_write_lock(data_dir, cat):
    store = make_store(cat)
    bid = call(store, "open", "HH07")["basket_id"]
    other = connect(data_dir / "store.db")
    mine = connect(data_dir / "store.db", timeout=0.05)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BasketError) as info, atomic(mine):
            pass
        assert info.value.code == "DB_BUSY"
        assert not mine.in_transaction
        assert error_of(BasketStore, mine, None).code == "DB_BUSY"
        # reads go on next to the writer (WAL)
        assert store.get(bid)["status"] == "open"
    finally:
        other.execute("ROLLBACK")
        other.close()
        mine.close()


# --------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------

def test_schema_is_created_once_and_versioned(cat):
    make_store(cat)
    make_store(cat)   # a second store on the same database: nothing to do
    con = cat.connection
    assert con.execute("SELECT value FROM meta WHERE key = 'basket_schema_version'"
                       ).fetchone() == ("1",)
    con.execute("UPDATE meta SET value = '2' WHERE key = 'basket_schema_version'")
    assert error_of(make_store, cat).code == "SCHEMA_TOO_NEW"


def test_a_foreign_orders_table_is_refused(tmp_path):
    con = connect(tmp_path / "store.db")
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, what TEXT)")
    err = error_of(BasketStore, con, None)
    assert err.code == "DB_ERROR" and "orders" in err.message
    con.close()


def test_store_settings_are_checked(cat):
    con = cat.connection
    assert error_of(BasketStore, con, None, region="XX1").code == "BAD_REQUEST"
    assert error_of(BasketStore, con, None, region="SE", currency="GBP").code == \
        "BAD_REQUEST"
    assert error_of(BasketStore, con, None, currency="pounds").code == "BAD_REQUEST"
    assert error_of(BasketStore, con, None, store="my store").code == "BAD_REQUEST"
    assert BasketStore(con, None).currency == "GBP"
    assert BasketStore(con, None, region="de").currency == "EUR"
    with pytest.raises(TypeError):
        BasketStore("store.db", None)


def test_the_basket_survives_reopening(data_dir, signer):
    with Catalog.open(data_dir) as cat:
        store = make_store(cat)
        bid = call(store, "open", "HH07")["basket_id"]
        call(store, "add", bid, [{"code": BEANS, "qty": 2}])
        before = store.get(bid)
    with Catalog.open(data_dir) as cat:
        store = make_store(cat)
        assert store.get(bid) == before
        assert call(store, "submit", bid, signer)["total_minor"] == 250


# --------------------------------------------------------------------------------------
# the weigh-check
# --------------------------------------------------------------------------------------

def test_order_lines_for_verify_gives_an_ok_verdict_with_the_true_weight(cat, signer):
    store = make_store(cat, region="SE")
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS, "qty": 2}, {"code": MILK},
                             {"code": GIFT}, {"code": se_weight_code(437)},
                             {"code": se_weight_code(1250)}])
    no = call(store, "submit", bid, signer)["order_no"]
    order = store.order_lines_for_verify(no)
    assert order == {"lines": [
        {"gtin": g14(BEANS), "qty": 2}, {"gtin": g14(MILK), "qty": 1},
        {"gtin": g14(GIFT), "qty": 1},
        {"gtin": g14(CHEESE_SE), "qty": 1, "unit_weight_g": 437.0},
        {"gtin": g14(CHEESE_SE), "qty": 1, "unit_weight_g": 1250.0}]}
    true_g = 2 * 432.5 + 1040 + 437 + 1250
    assert verify(order, true_g, cat.table(), region="SE").verdict == "ok"
    assert verify(order, true_g, cat.table()).verdict == "ok"   # region not needed
    # and it is not blind: the milk left behind
    v = verify(order, true_g - 1040, cat.table(), region="SE")
    assert v.verdict == "short"
    assert v.explanations[0]["gtin"] == g14(MILK)


def test_price_labels_weigh_what_their_price_says(cat, signer):
    store = make_store(cat, region="GB")
    bid = call(store, "open", "HH07")["basket_id"]
    # 1999p per kg: 1234p is 617.3 g, 500p is 250.1 g
    call(store, "add", bid, [{"code": gb_price_code(1234)}, {"code": gb_price_code(500)},
                             {"code": BEANS}])
    no = call(store, "submit", bid, signer)["order_no"]
    order = store.order_lines_for_verify(no)
    cheese = order["lines"][:2]
    assert [round(x["unit_weight_g"], 1) for x in cheese] == [617.3, 250.1]
    assert all(1.0 < x["weight_sd_g"] < 1.1 for x in cheese)
    true_g = 617.3 + 250.1 + 432.5
    assert verify(order, true_g, cat.table(), region="GB").verdict == "ok"
    assert verify(order, true_g + 300, cat.table(), region="GB").verdict == "over"


def test_a_forged_zero_price_label_does_not_weigh_nothing_unnoticed(cat, signer):
    store = make_store(cat, region="GB")
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": CHEESE_GB}])   # reads as a 0.00 label
    no = call(store, "submit", bid, signer)["order_no"]
    order = store.order_lines_for_verify(no)
    assert order["lines"][0]["unit_weight_g"] == 0.0
    assert verify(order, 600.0, cat.table(), region="GB").verdict == "over"


def test_lines_digest_is_the_documented_canonical_json():
    import hashlib
    lines = [{"line_no": 2, "gtin": "02011122000005", "qty": 1, "unit_price_minor": 1999,
              "line_price_minor": 1234, "weight_g": 617.3, "count": None},
             {"line_no": 1, "gtin": "05000000000012", "qty": 3, "unit_price_minor": 125,
              "line_price_minor": 375, "weight_g": None, "count": None}]
    text = ('[[1,"05000000000012",3,125,375,null,null],'
            '[2,"02011122000005",1,1999,1234,617300,null]]')
    assert lines_digest(lines) == hashlib.sha256(text.encode()).hexdigest()


def test_reads_inside_and_outside_a_transaction_agree(store, signer):
    bid = call(store, "open", "HH07")["basket_id"]
    call(store, "add", bid, [{"code": BEANS}])
    outside = store.get(bid)
    with atomic(store.con):
        assert store.get(bid) == outside
    assert not store.con.in_transaction


def test_sqlite_connection_in_legacy_mode_works(data_dir, signer):
    con = sqlite3.connect(data_dir / "store.db")  # isolation_level "" (Python default)
    try:
        store = BasketStore(con, None, region="GB")
        with atomic(con):
            bid = store.open("HH07")["basket_id"]
            store.add(bid, [{"code": BEANS}])
        assert store.get(bid)["total_minor"] == 125
    finally:
        con.close()
