"""Promotions made at run time at the coupon gateway (``promo.create``, ``promo.end``,
``promo.list``): checked as ``coupons.toml``'s ``[[promotions]]`` are, kept in
coupons.db, and in the very next ``price.basket`` (and the one-scan checkout) with no
restart — from their window's start, until it ends or they are ended; managers only."""

from __future__ import annotations


import pytest
from lanecore.core.scan.catalog import import_csv
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.net.identity import Principal

from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db_toml, reopen  # noqa: F401 - [sqlite] and [postgresql]

SHAMPOO = "06901234567892"
SOAP = "06901234567809"
T0 = 1_800_000_000
MANAGER = Principal("key:console", frozenset({"attendant", "manager"}), "curve")
TILL = Principal("key:till", frozenset({"till"}), "curve")
ADMIN = Principal("key:boss", frozenset({"admin"}), "curve")


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def gw(tmp_path, db_toml):  # noqa: F811 - the dbfix fixture
    (tmp_path / "catalog.csv").write_text(
        "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
        f"{SHAMPOO},Shampoo 400 ml,3000,420,4,\n{SOAP},Soap,450,100,2,\n")
    assert import_csv(tmp_path, tmp_path / "catalog.csv").rows_bad == 0
    (tmp_path / "coupons.toml").write_text(
        'currency = "CNY"\n[[promotions]]\nid = "TOML-SOAP"\nkind = "item"\n'
        f'gtin = "{SOAP}"\namount_off_minor = 50\n' + db_toml)
    clock = Clock()
    g = CouponGateway(tmp_path, clock=clock)
    g.clock_ = clock
    yield g
    g.close()


_ids = iter(range(10 ** 9))


def call(gw, who, op, **fields) -> dict:
    return gw.handle({"op": op, "id": f"r{next(_ids)}", **fields}, "c", who)


def ok(gw, who, op, **fields) -> dict:
    r = call(gw, who, op, **fields)
    assert r["ok"], r
    return r


def code(gw, who, op, **fields) -> str:
    r = call(gw, who, op, **fields)
    assert not r["ok"], r
    return r["error"]["code"]


def shampoo_total(gw) -> tuple[int, dict]:
    p = ok(gw, TILL, "price.basket", lines=[{"code": SHAMPOO, "qty": 2}])["priced"]
    return p["total_minor"], p["promotions_applied"]


ITEM = {"kind": "item", "gtin": SHAMPOO, "percent_bp": 1000}


def test_a_created_promotion_prices_the_next_basket_and_an_ended_one_does_not(gw):
    assert shampoo_total(gw) == (6000, {})
    r = ok(gw, MANAGER, "promo.create", definition={**ITEM, "id": "SH-10"}, staff="max")
    assert r["promotion"]["state"] == "active" and r["promotion"]["staff"] == "max"
    assert r["promotion"]["created_by"] == "key:console"
    assert shampoo_total(gw) == (5400, {"SH-10": 600})
    listed = ok(gw, MANAGER, "promo.list")
    assert [p["promo_id"] for p in listed["promotions"]] == ["SH-10"]
    assert [p["promo_id"] for p in listed["configured"]] == ["TOML-SOAP"]
    ended = ok(gw, MANAGER, "promo.end", promo_id="SH-10", staff="max")["promotion"]
    assert ended["state"] == "ended" and ended["ended_by"] == "key:console (max)"
    assert shampoo_total(gw) == (6000, {})
    assert ok(gw, MANAGER, "promo.end", promo_id="SH-10")["promotion"]["state"] == "ended"
    assert ok(gw, MANAGER, "promo.list")["promotions"] == []
    assert [p["promo_id"] for p in ok(gw, MANAGER, "promo.list", include_ended=True)
            ["promotions"]] == ["SH-10"]
    # the toml's promotion priced all along
    soap = ok(gw, TILL, "price.basket", lines=[{"code": SOAP}])["priced"]
    assert soap["promotions_applied"] == {"TOML-SOAP": 50}


def test_a_scheduled_promotion_prices_only_within_its_window(gw):
    clock = gw.clock_
    r = ok(gw, MANAGER, "promo.create",
           definition={"kind": "item", "gtin": SHAMPOO, "amount_off_minor": 500},
           valid_from=T0 + 3600, valid_until=T0 + 7200)["promotion"]
    assert r["state"] == "scheduled" and r["promo_id"].startswith("P-")
    assert shampoo_total(gw) == (6000, {})
    clock.t = T0 + 3600
    assert shampoo_total(gw) == (5000, {r["promo_id"]: 1000})
    assert ok(gw, MANAGER, "promo.list")["promotions"][0]["state"] == "active"
    clock.t = T0 + 7200
    assert shampoo_total(gw) == (6000, {})
    assert ok(gw, MANAGER, "promo.list")["promotions"][0]["state"] == "expired"


def test_another_process_s_promotion_prices_the_next_basket(gw, tmp_path):
    """Two gateways over one coupons.db: one creates, the other prices with it."""
    other = CouponGateway(tmp_path, clock=gw.clock_)
    try:
        assert shampoo_total(other) == (6000, {})
        ok(gw, MANAGER, "promo.create", definition={**ITEM, "id": "X"})
        assert shampoo_total(other) == (5400, {"X": 600})
        ok(gw, MANAGER, "promo.end", promo_id="X")
        assert shampoo_total(other) == (6000, {})
    finally:
        other.close()


def test_multibuy_and_threshold_kinds(gw):
    ok(gw, MANAGER, "promo.create", definition={"kind": "multibuy", "gtin": SHAMPOO,
                                                "buy_qty": 2, "pay_qty": 1, "id": "B2G1"})
    assert shampoo_total(gw) == (3000, {"B2G1": 3000})
    ok(gw, MANAGER, "promo.create", definition={"kind": "threshold", "threshold_minor": 1000,
                                                "amount_off_minor": 100, "id": "T10"})
    assert shampoo_total(gw) == (2900, {"B2G1": 3000, "T10": 100})


@pytest.mark.parametrize("definition, fields, field", [
    ({"kind": "item", "gtin": SHAMPOO}, {}, None),                       # no amount
    ({"kind": "item", "gtin": SHAMPOO, "percent_bp": 20000}, {}, None),
    ({"kind": "item", "gtin": "123", "percent_bp": 100}, {}, None),
    ({"kind": "bogo", "gtin": SHAMPOO, "percent_bp": 100}, {}, None),
    ({"kind": "item", "gtin": SHAMPOO, "percent_bp": 100, "bogus": 1}, {}, None),
    ({"kind": "item", "gtin": SHAMPOO, "percent_bp": 100, "valid_from": 1}, {}, "valid_from"),
    ({**ITEM, "id": "has space"}, {}, "id"),
    (ITEM, {"valid_from": T0 + 10, "valid_until": T0 + 5}, "valid_until"),
    (ITEM, {"valid_until": T0 - 5}, "valid_until"),
])
def test_bad_definitions_are_refused_with_bad_promotion(gw, definition, fields, field):
    r = call(gw, MANAGER, "promo.create", definition=definition, **fields)
    assert not r["ok"] and r["error"]["code"] == "BAD_PROMOTION", r
    if field:
        assert r["error"]["details"]["field"] == field, r
    assert ok(gw, MANAGER, "promo.list", include_ended=True)["promotions"] == []
    assert shampoo_total(gw) == (6000, {})


def test_ids_are_unique_and_unknown_ones_cannot_be_ended(gw):
    ok(gw, MANAGER, "promo.create", definition={**ITEM, "id": "A"})
    assert code(gw, MANAGER, "promo.create", definition={**ITEM, "id": "A"}) == "PROMO_EXISTS"
    assert code(gw, MANAGER, "promo.create",
                definition={**ITEM, "id": "TOML-SOAP"}) == "PROMO_EXISTS"
    assert code(gw, MANAGER, "promo.end", promo_id="nope") == "UNKNOWN_PROMOTION"
    assert code(gw, MANAGER, "promo.create", definition="x") == "BAD_FIELD"
    assert code(gw, MANAGER, "promo.end") == "MISSING_FIELD"


def test_only_managers_and_admins_manage_promotions(gw):
    assert code(gw, TILL, "promo.create", definition=ITEM) == "FORBIDDEN"
    assert code(gw, TILL, "promo.list") == "FORBIDDEN"
    attendant = Principal("key:ann", frozenset({"attendant"}), "curve")
    assert code(gw, attendant, "promo.create", definition=ITEM) == "FORBIDDEN"
    ok(gw, ADMIN, "promo.create", definition={**ITEM, "id": "ADM"})
    assert code(gw, TILL, "promo.end", promo_id="ADM") == "FORBIDDEN"
    assert shampoo_total(gw)[1] == {"ADM": 600}
    ok(gw, ADMIN, "promo.end", promo_id="ADM")


def test_the_promotions_table_holds_what_was_asked(gw, tmp_path):
    ok(gw, MANAGER, "promo.create", definition={**ITEM, "id": "S1"}, valid_until=T0 + 60,
       staff="max")
    ok(gw, MANAGER, "promo.end", promo_id="S1")
    con = reopen(gw)
    try:
        row = con.execute("SELECT id, definition, valid_from, valid_until, created_by, "
                          "created_at, ended_at FROM promotions").fetchone()
    finally:
        con.close()
    assert row[0] == "S1" and row[2] == T0 and row[3] == T0 + 60
    assert row[1] == '{"gtin": "06901234567892", "kind": "item", "percent_bp": 1000}'
    assert row[4] == "key:console" and row[5] == T0 and row[6] == T0


def soap_total(gw) -> tuple[int, dict]:
    p = ok(gw, TILL, "price.basket", lines=[{"code": SOAP}])["priced"]
    return p["total_minor"], p["promotions_applied"]


def test_a_file_promotion_ended_stops_at_the_next_basket_and_is_listed_ended(gw, tmp_path):
    listed = ok(gw, MANAGER, "promo.list")
    [toml] = listed["configured"]
    assert (toml["promo_id"], toml["source"], toml["state"], toml["ended_at"]) == \
        ("TOML-SOAP", "file", "active", None)
    assert soap_total(gw) == (400, {"TOML-SOAP": 50})
    gw.clock_.t = T0 + 5
    r = ok(gw, MANAGER, "promo.end", promo_id="TOML-SOAP", staff="max")["promotion"]
    assert (r["state"], r["source"], r["ended_at"], r["ended_by"]) == \
        ("ended", "file", T0 + 5, "key:console (max)")
    assert soap_total(gw) == (450, {})                     # no restart
    # ending again: the same answer, as for a database promotion
    gw.clock_.t = T0 + 60
    again = ok(gw, MANAGER, "promo.end", promo_id="TOML-SOAP")["promotion"]
    assert again == r
    assert ok(gw, MANAGER, "promo.list")["configured"] == []
    [shown] = ok(gw, MANAGER, "promo.list", include_ended=True)["configured"]
    assert shown["state"] == "ended" and shown["source"] == "file"
    # the id stays taken; a database promotion lists its source as db
    assert code(gw, MANAGER, "promo.create",
                definition={**ITEM, "id": "TOML-SOAP"}) == "PROMO_EXISTS"
    ok(gw, MANAGER, "promo.create", definition={**ITEM, "id": "DB-1"})
    assert [(p["promo_id"], p["source"]) for p in ok(gw, MANAGER, "promo.list")
            ["promotions"]] == [("DB-1", "db")]
    con = reopen(gw)
    try:
        assert con.execute("SELECT promo_id, ended_at, ended_by, staff FROM "
                           "promo_overrides").fetchall() == \
            [("TOML-SOAP", T0 + 5, "key:console", "max")]
    finally:
        con.close()
    # a restart keeps it ended; another process over the same db sees it at once
    other = CouponGateway(tmp_path, clock=gw.clock_)
    try:
        assert soap_total(other) == (450, {})
    finally:
        other.close()


def test_a_file_promotion_ended_by_another_process_stops_here_too(gw, tmp_path):
    other = CouponGateway(tmp_path, clock=gw.clock_)
    try:
        assert soap_total(gw) == (400, {"TOML-SOAP": 50})
        ok(other, MANAGER, "promo.end", promo_id="TOML-SOAP")
        assert soap_total(gw) == (450, {})
    finally:
        other.close()


def test_only_managers_end_file_promotions(gw):
    assert code(gw, TILL, "promo.end", promo_id="TOML-SOAP") == "FORBIDDEN"
    attendant = Principal("key:ann", frozenset({"attendant"}), "curve")
    assert code(gw, attendant, "promo.end", promo_id="TOML-SOAP") == "FORBIDDEN"
    assert soap_total(gw) == (400, {"TOML-SOAP": 50})
