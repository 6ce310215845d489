"""The members ops the console's members page uses: ``member.list`` (search and
paging), ``member.tier`` and ``member.points`` (a staff adjustment: idempotent by
``ref``, never below zero, recorded with the reason, the staff name and the caller's
proved identity) — attendants may list, only managers may change."""

from __future__ import annotations

import pytest
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.net.identity import Principal

from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db_toml  # noqa: F401 - [sqlite] and [postgresql]

T0 = 1_800_000_000
MANAGER = Principal("key:console", frozenset({"attendant", "manager"}), "curve")
ATTENDANT = Principal("key:ann", frozenset({"attendant"}), "curve")
TILL = Principal("key:till", frozenset({"till"}), "curve")
ADMIN = Principal("key:boss", frozenset({"admin"}), "curve")


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def gw(tmp_path, db_toml):  # noqa: F811 - the dbfix fixture
    (tmp_path / "coupons.toml").write_text('currency = "CNY"\n' + db_toml)
    clock = Clock()
    g = CouponGateway(tmp_path, clock=clock)
    g.clock_ = clock
    yield g
    g.close()


_ids = iter(range(10 ** 9))


def call(gw, who, op, rid=None, **fields) -> dict:
    return gw.handle({"op": op, "id": rid or f"r{next(_ids)}", **fields}, "c", who)


def ok(gw, who, op, **fields) -> dict:
    r = call(gw, who, op, **fields)
    assert r["ok"], r
    return r


def code(gw, who, op, **fields) -> str:
    r = call(gw, who, op, **fields)
    assert not r["ok"], r
    return r["error"]["code"]


@pytest.fixture
def three(gw):
    out = []
    for i, (card, phone, name, tier) in enumerate((
            ("6200123456789", "+8613800138000", "Li Lei", "basic"),
            ("6200123456790", None, "Han Meimei", "gold"),
            (None, "+447700900123", "Ann", "basic"))):
        gw.clock_.t = T0 + i
        fields = {k: v for k, v in (("card_no", card), ("phone", phone), ("name", name),
                                    ("tier", tier)) if v is not None}
        out.append(ok(gw, TILL, "member.enrol", **fields)["member"])
    return out


def test_member_list_searches_card_phone_and_name_with_paging(gw, three):
    li, han, ann = three
    ids = lambda r: ([m["member_id"] for m in r["members"]], r["total"])
    assert ids(ok(gw, ATTENDANT, "member.list")) == \
        ([ann["member_id"], han["member_id"], li["member_id"]], 3)
    assert ids(ok(gw, MANAGER, "member.list", query="62001234567")) == \
        ([han["member_id"], li["member_id"]], 2)
    assert ids(ok(gw, MANAGER, "member.list", query="+86138")) == ([li["member_id"]], 1)
    assert ids(ok(gw, MANAGER, "member.list", query="han")) == ([han["member_id"]], 1)
    assert ids(ok(gw, MANAGER, "member.list", tier="basic")) == \
        ([ann["member_id"], li["member_id"]], 2)
    assert ids(ok(gw, MANAGER, "member.list", limit=1, offset=1)) == \
        ([han["member_id"]], 3)
    assert ok(gw, MANAGER, "member.list", query="Li")["members"][0] == \
        ok(gw, MANAGER, "member.find", identifier=li["member_id"])["member"]
    assert ids(ok(gw, MANAGER, "member.list", query="zzz")) == ([], 0)
    assert code(gw, MANAGER, "member.list", query="x" * 33) == "BAD_FIELD"
    assert code(gw, MANAGER, "member.list", limit=0) == "BAD_FIELD"
    assert code(gw, MANAGER, "member.list", limit=201) == "BAD_FIELD"
    assert code(gw, MANAGER, "member.list", offset=-1) == "BAD_FIELD"
    assert code(gw, MANAGER, "member.list", tier="no tier") == "BAD_TIER"
    assert code(gw, TILL, "member.list") == "FORBIDDEN"


def test_member_tier_moves_a_member_managers_only(gw, three):
    li = three[0]
    r = ok(gw, MANAGER, "member.tier", identifier="6200123456789", tier="gold")
    assert r["member"]["tier"] == "gold" and r["member"]["member_id"] == li["member_id"]
    assert ok(gw, ADMIN, "member.tier", identifier=li["member_id"],
              tier="silver")["member"]["tier"] == "silver"
    assert code(gw, ATTENDANT, "member.tier", identifier=li["member_id"],
                tier="gold") == "FORBIDDEN"
    assert code(gw, MANAGER, "member.tier", identifier="6200999999999",
                tier="gold") == "UNKNOWN_MEMBER"
    assert code(gw, MANAGER, "member.tier", identifier=li["member_id"],
                tier="no tier") == "BAD_TIER"
    assert code(gw, MANAGER, "member.tier", identifier=li["member_id"]) == "MISSING_FIELD"
    assert gw.members.find(li["member_id"]).tier == "silver"


def test_member_points_adjusts_once_per_ref_with_who_and_why(gw, three):
    li = three[0]
    r = ok(gw, MANAGER, "member.points", identifier="6200123456789", points=120,
           reason="lost receipt", ref="adj-1", staff="max")
    assert r["member"]["points"] == 120
    move = r["move"]
    assert (move["ref"], move["kind"], move["points"], move["balance_after"]) == \
        ("adjust:adj-1", "adjust", 120, 120)
    assert move["terms"] == {"member_id": li["member_id"], "points": 120,
                             "reason": "lost receipt", "staff": "max",
                             "principal": "key:console"}
    # the same ref and terms in a new request: the same move, nothing moved again
    again = ok(gw, MANAGER, "member.points", identifier=li["member_id"], points=120,
               reason="lost receipt", ref="adj-1", staff="max")
    assert again["move"] == move and again["member"]["points"] == 120
    # the same request id again: the recorded reply
    first = call(gw, MANAGER, "member.points", rid="same-id", identifier=li["member_id"],
                 points=5, reason="goodwill", ref="adj-2", staff="max")
    assert call(gw, MANAGER, "member.points", rid="same-id", identifier=li["member_id"],
                points=5, reason="goodwill", ref="adj-2", staff="max") == first
    assert gw.members.balance(li["member_id"]) == 125
    # the same ref with other terms
    assert code(gw, MANAGER, "member.points", identifier=li["member_id"], points=121,
                reason="lost receipt", ref="adj-1", staff="max") == "REF_CONFLICT"
    assert code(gw, MANAGER, "member.points", identifier=three[1]["member_id"],
                points=120, reason="lost receipt", ref="adj-1",
                staff="max") == "REF_CONFLICT"
    # below zero: refused and not recorded (the ref may be used again)
    r = call(gw, MANAGER, "member.points", identifier=li["member_id"], points=-126,
             reason="typo", ref="adj-3", staff="max")
    assert r["error"]["code"] == "INSUFFICIENT_POINTS"
    assert r["error"]["details"]["balance"] == 125
    assert ok(gw, MANAGER, "member.points", identifier=li["member_id"], points=-125,
              reason="typo", ref="adj-3", staff="max")["member"]["points"] == 0
    # the history shows the adjustments, newest first, with who and why
    h = ok(gw, ATTENDANT, "member.history", identifier=li["member_id"])
    assert [(mv["ref"], mv["points"], mv["terms"]["reason"], mv["terms"]["staff"])
            for mv in h["moves"]] == [("adjust:adj-3", -125, "typo", "max"),
                                      ("adjust:adj-2", 5, "goodwill", "max"),
                                      ("adjust:adj-1", 120, "lost receipt", "max")]


@pytest.mark.parametrize("fields, want", [
    ({"points": 0}, "BAD_POINTS"),
    ({"points": 10 ** 9 + 1}, "BAD_POINTS"),
    ({"points": "5"}, "BAD_POINTS"),
    ({"points": True}, "BAD_POINTS"),
    ({"reason": ""}, "BAD_FIELD"),
    ({"reason": "   "}, "BAD_REQUEST"),
    ({"reason": "x" * 201}, "BAD_FIELD"),
    ({"reason": None}, "MISSING_FIELD"),
    ({"ref": "has space"}, "BAD_REF"),
    ({"ref": None}, "MISSING_FIELD"),
    ({"staff": None}, "MISSING_FIELD"),
    ({"staff": "x" * 65}, "BAD_FIELD"),
    ({"identifier": "6200999999999"}, "UNKNOWN_MEMBER"),
    ({"identifier": "12"}, "BAD_MEMBER"),
])
def test_member_points_refusals(gw, three, fields, want):
    good = {"identifier": three[0]["member_id"], "points": 10, "reason": "why",
            "ref": "r-1", "staff": "max"}
    req = {k: v for k, v in {**good, **fields}.items() if v is not None}
    assert code(gw, MANAGER, "member.points", **req) == want
    assert gw.members.balance(three[0]["member_id"]) == 0


def test_only_managers_and_admins_adjust_points(gw, three):
    mid = three[0]["member_id"]
    req = {"identifier": mid, "points": 10, "reason": "why", "ref": "r-1", "staff": "x"}
    assert code(gw, ATTENDANT, "member.points", **req) == "FORBIDDEN"
    assert code(gw, TILL, "member.points", **req) == "FORBIDDEN"
    assert gw.members.balance(mid) == 0
    assert ok(gw, ADMIN, "member.points", **req)["move"]["terms"]["principal"] == \
        "key:boss"
