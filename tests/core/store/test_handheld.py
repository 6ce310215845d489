"""The handheld fleet (core/store/handheld.py): register, take, give back, battery, every
error code, and the geofence — goodbye and a wipe only for an unpaid basket."""

from __future__ import annotations

import sqlite3

import pytest

from lanecore.core.store.basket import BasketStore, atomic
from lanecore.core.scan.catalog import Catalog
from lanecore.core.errors import LanecoreError
from lanecore.core.store.handheld import (GOODBYE, MIN_TAKE_BATTERY_PCT, ZONES,
                                          HandheldError, Handhelds)
from lanecore.core.store.orderqr import Signer
from lanecore.ext.barcode import gs1_check_digit

#: Pure Python; the one test with real baskets reaches the barcode and lookup kernels
#: through BasketStore, whose own tests run on both implementations, so once is enough.
pytestmark = pytest.mark.kernel_free

T0 = 1_700_000_000.0


class Paid:
    """A stand-in for the orders table: the set of paid basket ids."""

    def __init__(self):
        self.ids: set[str] = set()

    def __call__(self, basket_id: str) -> bool:
        return basket_id in self.ids


@pytest.fixture
def con():
    c = sqlite3.connect(":memory:", isolation_level=None)
    yield c
    c.close()


@pytest.fixture
def paid():
    return Paid()


@pytest.fixture
def fleet(con, paid):
    h = Handhelds(con, clock=lambda: T0, is_paid=paid)
    for i in range(1, 4):
        h.register(f"HH-{i:02d}", now=T0)
    return h


def code_of(fn, *args, **kw) -> HandheldError:
    with pytest.raises(HandheldError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, LanecoreError)
    assert info.value.to_dict()["code"] == info.value.code
    return info.value


# --------------------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------------------

def test_lifecycle_register_take_bind_give_back(fleet):
    s = fleet.status()
    assert (s["total"], s["free"], s["in_use"], s["available"]) == (3, 3, 0, 3)
    dev = fleet.take("HH-02", shopper="M123", now=T0 + 5)
    assert dev["state"] == "in_use" and dev["shopper"] == "M123"
    assert dev["taken_at"] == T0 + 5 and dev["zone"] == "shopping"
    dev = fleet.bind_basket("HH-02", "BASKETAAAAAA", now=T0 + 6)
    assert dev["basket_id"] == "BASKETAAAAAA"
    s = fleet.status()
    assert (s["free"], s["in_use"], s["available"]) == (2, 1, 2)
    back = fleet.give_back("HH-02", now=T0 + 600)
    assert back["state"] == "free" and back["shopper"] is None
    assert back["basket_id"] is None and back["taken_at"] is None
    assert back["wipe"] == "BASKETAAAAAA"          # carried back unpaid: wipe it
    assert fleet.status()["free"] == 3


def test_register_is_idempotent_and_keeps_state(fleet):
    fleet.take("HH-01", shopper="M1", now=T0)
    again = fleet.register("HH-01", battery_pct=50, now=T0 + 9)
    assert again["state"] == "in_use" and again["battery_pct"] == 100.0
    assert fleet.status()["total"] == 3


def test_take_without_a_device_picks_the_fullest_battery(fleet):
    fleet.report("HH-01", 60, now=T0)
    fleet.report("HH-02", 95, now=T0)
    fleet.report("HH-03", 95, now=T0)
    assert fleet.take(None, shopper="A", now=T0)["device_id"] == "HH-02"   # tie: lowest id
    assert fleet.take(None, shopper="B", now=T0)["device_id"] == "HH-03"
    assert fleet.take(None, shopper="C", now=T0)["device_id"] == "HH-01"


def test_a_retried_take_returns_the_same_handheld(fleet):
    first = fleet.take(None, shopper="A", now=T0)
    assert fleet.take(None, shopper="A", now=T0 + 1) == first
    assert fleet.take(first["device_id"], shopper="A", now=T0 + 2) == first
    assert fleet.status()["in_use"] == 1


def test_give_back_of_a_free_handheld_changes_nothing(fleet):
    before = fleet.device("HH-01")
    assert fleet.give_back("HH-01", now=T0 + 1) == {**before, "wipe": None}


def test_give_back_of_a_paid_basket_wipes_nothing(fleet, paid):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.bind_basket("HH-01", "BASKETPAID22")
    paid.ids.add("BASKETPAID22")
    assert fleet.give_back("HH-01", now=T0 + 1)["wipe"] is None


def test_clock_is_used_without_now(con):
    h = Handhelds(con, clock=lambda: 42.0)
    assert h.register("HH-09")["registered_at"] == 42.0
    assert h.take("HH-09", shopper="S")["taken_at"] == 42.0


# --------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------

def test_unknown_handheld(fleet):
    for fn, args, kw in [(fleet.take, ("HH-99",), {"shopper": "A"}),
                         (fleet.give_back, ("HH-99",), {}),
                         (fleet.report, ("HH-99", 50), {}),
                         (fleet.zone_event, ("HH-99", "exit"), {}),
                         (fleet.bind_basket, ("HH-99", "B1"), {}),
                         (fleet.device, ("HH-99",), {})]:
        e = code_of(fn, *args, **kw)
        assert e.code == "UNKNOWN_HANDHELD" and e.details == {"device_id": "HH-99"}


def test_handheld_in_use(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    e = code_of(fleet.take, "HH-01", shopper="B", now=T0)
    assert e.code == "HANDHELD_IN_USE" and e.details["device_id"] == "HH-01"
    assert fleet.device("HH-01")["shopper"] == "A"


def test_no_handheld_free_all_in_use(fleet):
    for s in "ABC":
        fleet.take(None, shopper=s, now=T0)
    e = code_of(fleet.take, None, shopper="D", now=T0)
    assert e.code == "NO_HANDHELD_FREE" and e.details == {"free": 0, "low_battery": 0}


def test_no_handheld_free_when_the_free_ones_are_flat(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.report("HH-02", 10, now=T0)
    fleet.report("HH-03", MIN_TAKE_BATTERY_PCT - 0.5, now=T0)
    e = code_of(fleet.take, None, shopper="D", now=T0)
    assert e.code == "NO_HANDHELD_FREE" and e.details == {"free": 2, "low_battery": 2}
    s = fleet.status()
    assert s["available"] == 0 and s["low_battery"] == 2


def test_low_battery_refuses_take_below_20_percent(fleet):
    fleet.report("HH-01", 19.9, now=T0)
    e = code_of(fleet.take, "HH-01", shopper="A", now=T0)
    assert e.code == "LOW_BATTERY"
    assert e.details == {"device_id": "HH-01", "battery_pct": 19.9, "min_pct": 20.0}
    assert fleet.device("HH-01")["state"] == "free"
    fleet.report("HH-01", 20, now=T0 + 60)         # exactly the line is enough
    assert fleet.take("HH-01", shopper="A", now=T0 + 60)["state"] == "in_use"


def test_bad_zone(fleet):
    for zone in ("car park", None, "", "EXIT"):
        assert code_of(fleet.zone_event, "HH-01", zone, now=T0).code == "BAD_ZONE"
    assert code_of(fleet.report, "HH-01", 50, "roof", now=T0).code == "BAD_ZONE"
    assert code_of(fleet.register, "HH-77", zone="roof").code == "BAD_ZONE"
    assert fleet.device("HH-01")["battery_pct"] == 100.0     # the report did nothing


def test_bind_needs_a_taken_handheld_and_a_free_basket(fleet):
    assert code_of(fleet.bind_basket, "HH-01", "B1").code == "HANDHELD_NOT_TAKEN"
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.take("HH-02", shopper="B", now=T0)
    fleet.bind_basket("HH-01", "B1")
    e = code_of(fleet.bind_basket, "HH-02", "B1")
    assert e.code == "BASKET_BOUND" and e.details == {"basket_id": "B1", "device_id": "HH-01"}
    assert fleet.bind_basket("HH-01", "B1")["basket_id"] == "B1"   # same again: fine
    assert fleet.bind_basket("HH-01", "B2")["basket_id"] == "B2"   # a new trip replaces


@pytest.mark.parametrize("kw", [
    {"device_id": "", "shopper": "A"}, {"device_id": "HH 01", "shopper": "A"},
    {"device_id": "HH-01", "shopper": ""}, {"device_id": "HH-01", "shopper": 7},
    {"device_id": "HH-01", "shopper": "A", "now": "noon"},
])
def test_bad_request_on_take(fleet, kw):
    device_id = kw.pop("device_id")
    assert code_of(fleet.take, device_id, **kw).code == "BAD_REQUEST"


@pytest.mark.parametrize("pct", [-1, 100.5, "80", True, float("nan")])
def test_bad_battery(fleet, pct):
    assert code_of(fleet.report, "HH-01", pct, now=T0).code == "BAD_REQUEST"


def test_db_error_is_a_handheld_error(con, paid):
    h = Handhelds(con, is_paid=paid)
    con.execute("DROP TABLE handhelds")
    assert code_of(h.status).code == "DB_ERROR"
    assert code_of(h.register, "HH-01").code == "DB_ERROR"


# --------------------------------------------------------------------------------------
# The geofence
# --------------------------------------------------------------------------------------

def test_zones_are_the_four(fleet):
    assert ZONES == ("shopping", "checkout", "exit", "outside")


def test_outside_with_an_unpaid_basket_says_goodbye_and_wipes(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.bind_basket("HH-01", "BASKETUNPAID")
    act = fleet.zone_event("HH-01", "outside", now=T0 + 10)
    assert act == {"say": GOODBYE, "wipe": "BASKETUNPAID"}
    dev = fleet.device("HH-01")
    assert dev["basket_id"] is None and dev["zone"] == "outside"
    assert dev["state"] == "in_use"                  # still signed out to the shopper
    assert fleet.status()["outside"] == 1
    assert fleet.zone_event("HH-01", "outside", now=T0 + 11) == {}   # no second goodbye


def test_exit_with_an_unpaid_basket_wipes(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.bind_basket("HH-01", "BASKETUNPAID")
    assert fleet.zone_event("HH-01", "checkout", now=T0 + 1) == {}   # may still pay
    act = fleet.zone_event("HH-01", "exit", now=T0 + 2)
    assert act == {"say": GOODBYE, "wipe": "BASKETUNPAID"}
    assert fleet.device("HH-01")["basket_id"] is None


def test_exit_with_a_paid_basket_is_the_way_out(fleet, paid):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.bind_basket("HH-01", "BASKETPAID22")
    paid.ids.add("BASKETPAID22")
    assert fleet.zone_event("HH-01", "exit", now=T0 + 1) == {}
    assert fleet.device("HH-01")["basket_id"] == "BASKETPAID22"   # its QR opens lane A
    act = fleet.zone_event("HH-01", "outside", now=T0 + 2)
    assert act == {"say": GOODBYE, "wipe": None}                   # paid: nothing to wipe
    assert fleet.device("HH-01")["basket_id"] is None


def test_outside_without_a_basket_only_says_goodbye(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    assert fleet.zone_event("HH-01", "exit", now=T0) == {}
    assert fleet.zone_event("HH-01", "outside", now=T0) == {"say": GOODBYE, "wipe": None}


def test_moves_inside_the_store_do_nothing(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.bind_basket("HH-01", "B1")
    for zone in ("checkout", "shopping", "checkout", "shopping"):
        assert fleet.zone_event("HH-01", zone, now=T0) == {}
    assert fleet.device("HH-01")["basket_id"] == "B1"


def test_report_with_a_zone_crosses_the_geofence(fleet):
    fleet.take("HH-01", shopper="A", now=T0)
    fleet.bind_basket("HH-01", "B1")
    assert fleet.report("HH-01", 80, "checkout", now=T0) == {}
    assert fleet.report("HH-01", 79, "outside", now=T0 + 1) == {"say": GOODBYE, "wipe": "B1"}
    dev = fleet.device("HH-01")
    assert dev["battery_pct"] == 79 and dev["zone"] == "outside"


def test_custom_goodbye(con, paid):
    h = Handhelds(con, is_paid=paid, goodbye="Tschüss!")
    h.register("HH-01", now=T0)
    assert h.zone_event("HH-01", "outside", now=T0)["say"] == "Tschüss!"


def test_a_failed_call_inside_the_callers_transaction_leaves_it_intact(con, paid):
    h = Handhelds(con, is_paid=paid)
    con.execute("BEGIN IMMEDIATE")
    h.register("HH-01", now=T0)
    code_of(h.take, "HH-01", shopper="")        # refused before any write
    h.report("HH-01", 10, now=T0)
    code_of(h.take, "HH-01", shopper="A")       # LOW_BATTERY inside a savepoint
    con.execute("COMMIT")
    assert h.device("HH-01")["battery_pct"] == 10


# --------------------------------------------------------------------------------------
# With the real orders table
# --------------------------------------------------------------------------------------

def test_default_is_paid_reads_the_orders_table(tmp_path):
    beans = "500000000001"
    beans += str(gs1_check_digit(beans))
    csv = tmp_path / "prices.csv"
    csv.write_text("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
                   f"{beans},Baked Beans 415 g,125,432.5,4,\n", encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    with Catalog.open(data) as cat:
        assert cat.import_csv(csv).rows_bad == 0
        con = cat.connection
        store = BasketStore(con, cat.table, region="GB", item=cat.item)
        fleet = Handhelds(con)                       # is_paid: the orders table
        for dev in ("HH-01", "HH-02"):
            fleet.register(dev, now=T0)
            fleet.take(dev, shopper=f"S{dev}", now=T0)
        signer = Signer.generate()
        orders = {}
        for dev in ("HH-01", "HH-02"):
            with atomic(con):
                b = store.open(dev)
                store.add(b["basket_id"], [{"code": beans, "qty": 2}])
                orders[dev] = store.submit(b["basket_id"], signer)
            fleet.bind_basket(dev, b["basket_id"])
        with atomic(con):
            store.set_order_status(orders["HH-01"]["order_no"], "paid")
        assert fleet.zone_event("HH-01", "exit", now=T0 + 5) == {}
        assert fleet.zone_event("HH-02", "exit", now=T0 + 5) == {
            "say": GOODBYE, "wipe": orders["HH-02"]["basket_id"]}
