"""Weight learning and scale health against real SQLite files: the weighted Welford
update against numpy, outliers, the catalogue prior, persistence, transactions that
die half-way (an interrupted statement, a killed process), the lookup table, exits,
and the CUSUM drift alarm."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from lanecore.core.scan.catalog import Catalog, connect, load_table
from lanecore.core.weigh.learning import (LearningError, ScaleHealth, WeightBook,
                                          WeightStats, cusum_update)
from lanecore.ext.barcode import gs1_check_digit


def ean13(i: int) -> str:
    payload = "40000000%04d" % i
    return payload + str(gs1_check_digit(payload))


BEANS, MILK, SOAP, GIFT, BANANAS, NEW, UNLISTED = (ean13(i) for i in range(1, 8))
CATALOG = "\n".join([
    "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags",
    f"{BEANS},Baked Beans 415 g,125,432.5,4,",
    f"{MILK},Milk 1 l,99,1040,,",  # catalogue weight without an sd
    f"{SOAP},Soap,150,100,2,",
    f"{GIFT},Gift Card,2000,,,weight_exempt",
    f"{BANANAS},Bananas per kg,110,,,variable_measure",
]) + "\n"


def g14(gtin: str) -> str:
    return gtin.zfill(14)


def import_text(cat: Catalog, tmp_path, text: str, name="prices.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    report = cat.import_csv(path)
    assert report.rows_bad == 0, report.errors
    return report


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    with Catalog.open(d) as cat:
        import_text(cat, tmp_path, CATALOG)
        # An item listed without any weight column: no catalogue weight at all.
        import_text(cat, tmp_path, f"gtin,name,price_minor\n{NEW},New Line,300\n",
                    "new.csv")
    return d


@pytest.fixture
def book(data_dir):
    with WeightBook(data_dir) as b:
        yield b


def replay(values, prior=None, weights=None, units=None) -> WeightStats:
    s = WeightStats.prior(*prior, 3.0) if prior else WeightStats()
    for i, x in enumerate(values):
        q = 1 if units is None else units[i]
        w = q if weights is None else weights[i]
        s = s.add(x, w, q)
    return s


# --------------------------------------------------------------------------------------
# The weighted Welford / West update
# --------------------------------------------------------------------------------------

def test_unweighted_update_matches_numpy():
    x = np.random.default_rng(1).normal(432.5, 4.0, 500)
    s = replay(x.tolist())
    assert s.n == 500
    assert s.mean_g == pytest.approx(np.mean(x), rel=1e-13)
    assert s.variance_g2 == pytest.approx(np.var(x, ddof=1), rel=1e-10)


def test_weighted_update_matches_numpy_reliability_weights():
    rng = np.random.default_rng(2)
    x = rng.normal(1000.0, 7.0, 400)
    w = np.where(rng.random(400) < 0.2, 3.0, 1.0) * rng.uniform(0.5, 2.0, 400)
    s = replay(x.tolist(), weights=w.tolist(), units=[1] * 400)
    assert s.n == pytest.approx(w.sum(), rel=1e-13)
    assert s.mean_g == pytest.approx(np.average(x, weights=w), rel=1e-13)
    # ddof=1 with aweights divides by V1 - V2/V1: the unbiased reliability estimator.
    assert s.variance_g2 == pytest.approx(np.cov(x, aweights=w), rel=1e-9)


def test_prior_counts_as_pseudo_observations():
    # mean m, sd s as 3 points (m - s, m, m + s): their ddof=1 sd is exactly s.
    xs = [431.0, 440.0, 425.5, 433.0]
    s = replay(xs, prior=(432.5, 4.0))
    points = np.array([428.5, 432.5, 436.5] + xs)
    assert s.n == 7
    assert s.mean_g == pytest.approx(points.mean(), rel=1e-13)
    assert s.variance_g2 == pytest.approx(np.var(points, ddof=1), rel=1e-10)
    # A prior without an sd weighs on the mean only.
    only_mean = WeightStats.prior(1040.0, None, 3.0)
    assert only_mean.variance_g2 is None
    s = only_mean.add(1046.0)
    assert s.mean_g == 1041.5 and s.variance_g2 == pytest.approx(36.0)


def test_means_of_several_units_give_the_mean_and_an_unbiased_variance():
    rng = np.random.default_rng(3)
    sizes = [1, 6, 2, 4, 1, 3, 12, 2]
    sigma = 5.0
    estimates, naive = [], []
    for _ in range(1500):
        units = rng.normal(100.0, sigma, sum(sizes))
        groups = np.split(units, np.cumsum(sizes)[:-1])
        s = replay([g.mean() for g in groups], units=sizes)
        # Weighted by q, the group means average to the mean of every unit.
        assert s.mean_g == pytest.approx(units.mean(), rel=1e-12)
        estimates.append(s.variance_g2)
        naive.append(s.m2 / (s.n - 1))
    # Unbiased for sigma^2 = 25 (standard error of this mean about 2.3 %) ...
    assert np.mean(estimates) == pytest.approx(sigma ** 2, rel=0.08)
    # ... where counting each unit as an observation would think it 4x smaller.
    assert np.mean(naive) < 0.3 * sigma ** 2


# --------------------------------------------------------------------------------------
# The book: cold start, outliers, what is never learned, bad input
# --------------------------------------------------------------------------------------

def test_cold_start_from_the_catalogue(book):
    r = book.learn(BEANS, 440.5)
    assert r.learned and r.code == "LEARNED" and not r.restarted
    assert r.gtin == g14(BEANS) and r.weight == 1 and r.units == 1
    assert r.z == pytest.approx(8.0 / 4.325)  # the floor: 1 % of 432.5 g > 4 g
    assert r.n == 4 and r.mean_g == pytest.approx((3 * 432.5 + 440.5) / 4)
    assert book.stats(BEANS) == (r.mean_g, r.sd_g, 4.0)
    rec = book.record(BEANS)
    assert (rec["n_obs"], rec["n_rejected"], rec["n_confirmed"]) == (1, 0, 0)
    assert (rec["prior_mean_g"], rec["prior_sd_g"]) == (432.5, 4.0)
    assert rec["current"] is True


def test_an_item_without_catalogue_weight_starts_empty(book):
    assert book.stats(NEW) is None
    r = book.learn(NEW, 250.0)
    assert (r.mean_g, r.sd_g, r.n) == (250.0, None, 1.0)  # one weighing: no spread
    r = book.learn(NEW, 254.0)
    assert r.mean_g == 252.0 and r.sd_g == pytest.approx(math.sqrt(8.0))


def test_sd_floor(book):
    for _ in range(4):
        r = book.learn(SOAP, 100.0)  # prior sd 2 g, then identical weighings
    assert r.sd_g == pytest.approx(2.0 * math.sqrt(2 / 6))
    for _ in range(200):
        r = book.learn(SOAP, 100.0)
    assert r.sd_g == 1.0  # 1 % of 100 g, not the vanishing sample sd


def test_outliers_are_rejected_and_counted_unless_confirmed(book):
    early = book.learn(SOAP, 130.0)  # n = 3 < min_n: not yet judged
    assert early.learned and early.n == 4
    assert book.forget(SOAP) is True
    for x in (99.0, 101.0):
        assert book.learn(SOAP, x).learned
    before = book.stats(SOAP)
    assert before.n == 5

    r = book.learn(SOAP, 130.0)
    assert r.code == "OUTLIER" and not r.learned and r.z > 4
    assert book.stats(SOAP) == before
    assert book.record(SOAP)["n_rejected"] == 1
    assert book.learn(SOAP, 105.0).learned  # 2.5 sd: kept

    # A confirmation moves the mean at most 1 sd (the catalogue's 2 g): 130 g would
    # move it 9.7 g, refused and nothing changed (docs/weigh/learning.md).
    r = book.learn(SOAP, 130.0, confirmed=True, confirmed_by="key:att")
    assert r.code == "CONFIRM_TOO_FAR" and not r.learned
    assert r.confirmation["max_step_g"] == pytest.approx(2.0)
    assert book.record(SOAP)["n_confirmed"] == 0 and book.confirmations(SOAP) == []
    # Without the bound, a confirmed weighing is never rejected as an outlier.
    unbounded = WeightBook(book.connection, confirm_max_step_sd=None,
                           confirm_daily_max=None)
    r = unbounded.learn(SOAP, 130.0, confirmed=True)  # the attendant saw the soap
    assert r.learned and r.weight == 3.0
    rec = book.record(SOAP)
    assert (rec["n_obs"], rec["n_confirmed"], rec["n_rejected"]) == (4, 1, 1)
    expected = replay([99.0, 101.0, 105.0, 130.0], prior=(100.0, 2.0),
                      weights=[1, 1, 1, 3], units=[1, 1, 1, 1])
    assert book.stats(SOAP).mean_g == pytest.approx(expected.mean_g, rel=1e-13)


def test_confirmations_are_bounded_per_step_and_per_day_and_recorded(book):
    # BEANS: catalogue 432.5 g, sd 4 g -> sigma for the bound min(learned, 4.325 g
    # floor or 4 g sd) = 4.325 g (1 % of the weight is the floor).
    step = book.confirm_max_step_sd * max(4.0, 0.01 * 432.5)
    start = 432.5
    means = [start]
    codes = []
    for i in range(12):      # the attack: each as far as the bound allows, and further
        r = book.learn(BEANS, means[-1] + 40.0, confirmed=True, confirmed_by="key:att-1")
        codes.append(r.code)
        if r.code == "CONFIRM_TOO_FAR":   # then exactly at the bound
            s = book.stats(BEANS)
            n = s.n if s else 3.0
            x = means[-1] + 0.999 * step * (n + 3.0) / 3.0
            r = book.learn(BEANS, x, confirmed=True, confirmed_by="key:att-1")
            codes[-1] = r.code
        if r.learned:
            assert abs(r.mean_g - means[-1]) <= step * (1 + 1e-9)
            assert r.confirmation["confirmed_by"] == "key:att-1"
            means.append(r.mean_g)
    assert codes[:5] == ["LEARNED"] * 5
    assert codes[5:] == ["CONFIRM_DAILY_LIMIT"] * 7
    assert means[-1] - start <= 5 * step * (1 + 1e-9)        # 21.6 g at most in a day
    rows = book.confirmations(BEANS)
    assert len(rows) == 5 and {r["confirmed_by"] for r in rows} == {"key:att-1"}
    assert [r["mean_after_g"] for r in rows] == pytest.approx(means[1:])
    assert book.record(BEANS)["n_confirmed"] == 5
    # another item has its own day; a far confirmation is refused, nothing recorded
    r = book.learn(SOAP, 300.0, confirmed=True, confirmed_by="key:att-2")
    assert r.code == "CONFIRM_TOO_FAR" and book.confirmations(SOAP) == []
    assert book.learn(SOAP, 100.5, confirmed=True, confirmed_by="key:att-2").learned
    assert [r["confirmed_by"] for r in book.confirmations(SOAP)] == ["key:att-2"]


def test_units_weighed_together(book):
    r = book.learn(BEANS, 6 * 433.0, units=6)
    assert r.observed_g == 433.0 and r.weight == 6 and r.n == 9
    r = book.learn(BEANS, 2 * 433.0, units=2, confirmed=True)
    assert r.weight == 6.0 and r.n == 15
    # The mean of 4 bars varies half as much as one bar: 5 g off is 5 standard
    # errors for four bars (the 1 g floor) but 3.1 for one (sd 1.63 g).
    assert book.learn(SOAP, 4 * 100.0, units=4).n == 7
    r = book.learn(SOAP, 4 * 105.0, units=4)
    assert r.code == "OUTLIER" and r.z == pytest.approx(5.0)
    r = book.learn(SOAP, 105.0)
    assert r.learned and r.z == pytest.approx(5.0 / math.sqrt(8 / 3))


def test_exempt_variable_measure_and_unknown_items_are_not_learned(book):
    for gtin, code in ((GIFT, "NOT_LEARNABLE"), (BANANAS, "NOT_LEARNABLE"),
                       (UNLISTED, "UNKNOWN_ITEM")):
        r = book.learn(gtin, 50.0)
        assert r.code == code and not r.learned and gtin[-5:] in r.message
        assert book.record(gtin) is None and book.stats(gtin) is None
    assert "weight-exempt" in book.learn(GIFT, 5.0).message
    assert "variable-measure" in book.learn(BANANAS, 5.0).to_dict()["message"]


@pytest.mark.parametrize("call, code", [
    (lambda b: b.learn("4000000000011", 10.0), "BAD_GTIN"),  # check digit
    (lambda b: b.learn("40000000000x1", 10.0), "BAD_GTIN"),
    (lambda b: b.learn(True, 10.0), "BAD_GTIN"),
    (lambda b: b.learn(None, 10.0), "BAD_GTIN"),
    (lambda b: b.learn(BEANS, math.nan), "BAD_WEIGHT"),
    (lambda b: b.learn(BEANS, math.inf), "BAD_WEIGHT"),
    (lambda b: b.learn(BEANS, 0.0), "BAD_WEIGHT"),
    (lambda b: b.learn(BEANS, -3.0), "BAD_WEIGHT"),
    (lambda b: b.learn(BEANS, "430"), "BAD_WEIGHT"),
    (lambda b: b.learn(BEANS, 2e6), "BAD_WEIGHT"),
    (lambda b: b.learn(BEANS, 430.0, units=0), "BAD_QUANTITY"),
    (lambda b: b.learn(BEANS, 430.0, units=1.5), "BAD_QUANTITY"),
    (lambda b: b.learn(BEANS, 430.0, units=True), "BAD_QUANTITY"),
    (lambda b: b.learn(BEANS, 430.0, confirmed="no"), "BAD_ARGUMENT"),
    (lambda b: b.learn_many([(BEANS,)]), "BAD_ARGUMENT"),
])
def test_bad_input_has_a_stable_code(book, call, code):
    with pytest.raises(LearningError) as e:
        call(book)
    assert e.value.code == code and e.value.to_dict()["code"] == code
    assert book.record(BEANS) is None


@pytest.mark.parametrize("kwargs", [{"min_n": 0}, {"reject_z": -1}, {"prior_n": 0.5},
                                    {"confirmed_weight": math.nan}, {"sd_floor_g": -1}])
def test_bad_parameters(data_dir, kwargs):
    with pytest.raises(LearningError) as e:
        WeightBook(data_dir, **kwargs)
    assert e.value.code == "BAD_ARGUMENT"


def test_a_batch_is_all_or_nothing(book):
    with pytest.raises(LearningError) as e:
        book.learn_many([(BEANS, 430.0), (SOAP, 100.0, 2), (MILK, math.nan)])
    assert e.value.code == "BAD_WEIGHT"
    assert book.record(BEANS) is None and book.record(SOAP) is None
    rs = book.learn_many([(BEANS, 430.0), (SOAP, 200.0, 2), (SOAP, 101.0, 1, True)])
    assert [r.n for r in rs] == [4, 5, 8]


def test_a_new_catalogue_weight_restarts_learning(book, data_dir, tmp_path):
    for x in (430.0, 431.0, 433.0):
        book.learn(BEANS, x)
    with Catalog.open(data_dir) as cat:  # the tin shrank to 400 g
        import_text(cat, tmp_path, "gtin,name,price_minor,unit_weight_g,weight_sd_g\n"
                    f"{BEANS},Baked Beans 400 g,125,400.5,4\n", "shrink.csv")
    assert book.stats(BEANS) is None  # the old learning is not used any more
    assert book.record(BEANS)["current"] is False
    r = book.learn(BEANS, 401.0)
    assert r.restarted and r.n == 4 and r.mean_g == pytest.approx(400.625)
    assert book.record(BEANS)["n_obs"] == 1


# --------------------------------------------------------------------------------------
# Persistence and transactions
# --------------------------------------------------------------------------------------

def test_learning_persists_across_reopen(data_dir):
    with Catalog.open(data_dir) as cat:  # through a Catalog's own connection
        book = WeightBook(cat)
        for x in (430.0, 436.0, 429.0):
            book.learn(BEANS, x)
        book.learn(SOAP, 300.0, units=3)
        book.close()
        assert cat.count() == 6  # the catalogue's connection is not ours to close
    s = replay([430.0, 436.0, 429.0], prior=(432.5, 4.0))
    with WeightBook(data_dir / "store.db") as again:
        got = again.record(BEANS)
        assert (got["n"], got["mean_g"], got["m2"], got["n_obs"]) == \
            (s.n, s.mean_g, s.m2, 3)
        assert again.stats(SOAP).n == 6
    # The catalogue's schema version is untouched by the new tables.
    con = connect(data_dir / "store.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()


def test_an_interrupted_update_is_all_or_nothing_at_every_point(book):
    book.learn_many([(BEANS, 430.0), (SOAP, 100.0)])
    con = book.connection
    batch = [(BEANS, 436.0), (SOAP, 101.0, 2)]

    def rows():
        return book.record(BEANS), book.record(SOAP)

    before = rows()
    outcomes = []
    while True:
        calls = 0

        def abort_once(at=len(outcomes) + 1):
            nonlocal calls
            calls += 1
            return calls == at  # interrupts whatever statement runs at step `at`

        con.set_progress_handler(abort_once, 1)
        try:
            book.learn_many(batch)
        except LearningError as e:
            assert e.code == "DB_ERROR" and "interrupted" in e.message
            outcomes.append("error")
        else:
            outcomes.append("ok")
        finally:
            con.set_progress_handler(None, 1)
        assert not con.in_transaction
        now = rows()
        if now == before:
            continue
        # Both rows moved together, never one of them.
        assert (now[0]["n_obs"], now[1]["n_obs"]) == (2, 2)
        assert now[0]["n"] == 5 and now[1]["n"] == 6
        break
    # Interrupted in BEGIN, the reads, both writes and COMMIT, each time rolled
    # back. (An interrupt in COMMIT's last steps can report an error after the
    # commit is durable: SQLite's own behaviour, so the last outcome may be either.)
    assert len(outcomes) > 30 and set(outcomes[:-1]) == {"error"}
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_exception_inside_a_callers_transaction_leaves_nothing(book):
    con = book.connection
    con.execute("BEGIN")
    book.learn(BEANS, 430.0)  # a savepoint inside the caller's transaction
    con.execute("ROLLBACK")
    assert book.record(BEANS) is None


CHILD = textwrap.dedent("""
    import sys
    from lanecore.core.weigh.learning import WeightBook
    book = WeightBook(sys.argv[1])
    i = 0
    while True:
        book.learn(sys.argv[2], 430.0 + (i % 7) * 0.75)
        print(i, flush=True)
        i += 1
""")


def test_a_killed_process_leaves_a_consistent_row(data_dir):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), BEANS],
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(30):
            assert proc.stdout.readline(), "the learner died on its own"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    printed = 30 + len(proc.stdout.read().split())
    proc.stdout.close()
    with WeightBook(data_dir) as book:
        rec = book.record(BEANS)
        # Every printed update committed; at most one more committed unprinted.
        assert printed <= rec["n_obs"] <= printed + 1
        s = replay([430.0 + (i % 7) * 0.75 for i in range(rec["n_obs"])],
                   prior=(432.5, 4.0))
        assert (rec["n"], rec["mean_g"], rec["m2"], rec["v1"], rec["v2"]) == \
            (s.n, s.mean_g, s.m2, s.v1, s.v2)
        assert book.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_foreign_table_of_the_same_name_is_refused(tmp_path):
    con = connect(tmp_path / "store.db")
    con.execute("CREATE TABLE weight_stats (gtin TEXT, grams REAL)")
    with pytest.raises(LearningError) as e:
        WeightBook(con)
    assert e.value.code == "DB_ERROR" and "weight_stats" in e.value.message
    con.close()


# --------------------------------------------------------------------------------------
# The lookup table
# --------------------------------------------------------------------------------------

def test_apply_to_table_writes_learned_weights(book, data_dir):
    table = load_table(data_dir)
    row = {g: table.lookup(int(g)) for g in (BEANS, MILK, SOAP, GIFT, NEW)}
    original_mean = table.weight_mean_g.copy()
    original_sd = table.weight_sd_g.copy()
    assert book.apply_to_table(table) == 0

    for x in (440.0, 441.5):  # beans: n = 5, learned
        book.learn(BEANS, x)
    book.learn(SOAP, 102.0)  # soap: n = 4 < min_n, not used yet
    book.learn(NEW, 500.0, units=2)
    book.learn(NEW, 753.0, units=3)  # new: n = 5, from nothing
    assert book.apply_to_table(table) == 2

    beans = book.stats(BEANS)
    assert table.weight_mean_g[row[BEANS]] == beans.mean_g
    assert table.weight_sd_g[row[BEANS]] == beans.sd_g
    new = book.stats(NEW)
    assert (table.weight_mean_g[row[NEW]], table.weight_sd_g[row[NEW]]) == \
        (new.mean_g, new.sd_g) == (pytest.approx(250.6), pytest.approx(2.506))
    # (250 g twice and 251 g three times: sample sd 1.1 g, below the 1 % floor)
    untouched = [row[g] for g in (MILK, SOAP, GIFT)]
    np.testing.assert_array_equal(table.weight_mean_g[untouched],
                                  original_mean[untouched])
    np.testing.assert_array_equal(table.weight_sd_g[untouched], original_sd[untouched])
    assert book.apply_to_table(table) == 0  # already there


def test_apply_to_table_leaves_an_unknown_sd_and_absent_rows(book, data_dir):
    for x in (1046.0, 1041.0):  # milk: catalogue mean, no sd; n = 5, sd known
        book.learn(MILK, x)
    assert book.forget(NEW) is False  # nothing to forget
    book.learn(NEW, 1250.0, units=5)  # n = 5 but one observation: sd unknown
    table = load_table(data_dir)
    assert book.apply_to_table(table) == 2
    new = table.lookup(int(NEW))
    assert table.weight_mean_g[new] == 250.0
    assert np.isnan(table.weight_sd_g[new])  # unknown, as the catalogue had it
    assert table.weight_sd_g[table.lookup(int(MILK))] == book.stats(MILK).sd_g
    # A table without those SKUs is left alone.
    small = load_table(data_dir)
    small = type(small)(small.gtin[:1], small.price_minor[:1], small.weight_mean_g[:1],
                        small.weight_sd_g[:1], small.flags[:1])
    assert book.apply_to_table(small) == 0


# --------------------------------------------------------------------------------------
# Exits
# --------------------------------------------------------------------------------------

def test_an_exit_of_one_sku_is_learned(book):
    lines = [(BEANS, 2), {"gtin": GIFT, "qty": 1}, SimpleNamespace(gtin=BEANS, qty=1)]
    r = book.learn_exit(lines, 3 * 433.0 + 25.0, tare_g=25.0)
    assert r.learned and r.gtin == g14(BEANS)
    assert r.units == 3 and r.weight == 3 and r.observed_g == pytest.approx(433.0)
    assert book.stats(BEANS).n == 6
    r = book.learn_exit([{"gtin": int(SOAP), "quantity": 1}], 101.0, confirmed=True)
    assert r.learned and r.weight == 3.0


def test_an_exit_line_is_found_by_its_lookup_key(book):
    # Like lanecore.core.weigh.verify.OrderLine: an in-store code as scanned (its price in
    # the digits) and the catalogue key it is listed under.
    label = SimpleNamespace(gtin="02011122912346", lookup_key=int(BANANAS), qty=1)
    assert book.learn_exit([label], 740.0).code == "NOT_LEARNABLE"
    beans = SimpleNamespace(gtin=g14(BEANS), lookup_key=int(BEANS), qty=2)
    assert book.learn_exit([beans, label], 1600.0).code == "MULTI_SKU"
    assert book.learn_exit([beans], 866.0).learned


@pytest.mark.parametrize("lines, code", [
    ([(BEANS, 1), (SOAP, 2)], "MULTI_SKU"),
    ([(BEANS, 1), (BANANAS, 1)], "MULTI_SKU"),
    ([(GIFT, 2)], "NO_WEIGHED_ITEM"),
    ([], "NO_WEIGHED_ITEM"),
    ([(BEANS, 1), (UNLISTED, 1)], "UNKNOWN_ITEM"),
    ([(BANANAS, 1), (GIFT, 1)], "NOT_LEARNABLE"),
])
def test_an_exit_that_is_not_one_sku_teaches_nothing(book, lines, code):
    r = book.learn_exit(lines, 1200.0)
    assert r.code == code and not r.learned and r.message
    assert book.connection.execute("SELECT count(*) FROM weight_stats").fetchone() == (0,)


@pytest.mark.parametrize("lines, measured, tare, code", [
    ([(BEANS, 1)], 400.0, 400.0, "BAD_WEIGHT"),
    ([(BEANS, 1)], 400.0, -1.0, "BAD_WEIGHT"),
    ([(BEANS, 1)], math.nan, 0.0, "BAD_WEIGHT"),
    ([(BEANS, 0)], 400.0, 0.0, "BAD_QUANTITY"),
    ([(BEANS, -2)], 400.0, 0.0, "BAD_QUANTITY"),
    ([("123", 1)], 400.0, 0.0, "BAD_GTIN"),
    ([{"qty": 1}], 400.0, 0.0, "BAD_GTIN"),
])
def test_bad_exits(book, lines, measured, tare, code):
    with pytest.raises(LearningError) as e:
        book.learn_exit(lines, measured, tare)
    assert e.value.code == code


# --------------------------------------------------------------------------------------
# Scale health
# --------------------------------------------------------------------------------------

@pytest.fixture
def health(data_dir):
    with ScaleHealth(data_dir) as h:
        yield h


def test_a_constant_one_sigma_drift_warns_after_8_and_fails_after_16(health):
    states = [health.observe("lane-3/exit", 1.0) for _ in range(20)]
    names = [s.state for s in states]
    assert names == ["ok"] * 7 + ["warning"] * 8 + ["failure"] * 5
    assert [s.n for s in states] == list(range(1, 21))
    assert [i for i, s in enumerate(states) if s.changed] == [7, 15]
    assert states[-1].direction == "high" and states[-1].cusum_high == 10.0
    assert states[-1].failed_at is not None
    # A failure stays until the scale is recalibrated, whatever comes next.
    later = health.observe_many("lane-3/exit", [-1.0] * 30)
    assert later[-1].state == "failure" and later[-1].direction == "high"
    assert later[-1].cusum_low > 4 and not any(s.changed for s in later)


def test_a_scale_reading_light_warns_low_and_the_warning_clears(health):
    states = health.observe_many("lane-1/exit", [-1.5] * 4)
    assert states[-1].state == "warning" and states[-1].direction == "low"
    back = health.observe_many("lane-1/exit", [0.0] * 8)
    assert back[-1].state == "ok" and back[-1].direction is None
    assert [s.changed for s in back] == [True] + [False] * 7


def test_zero_mean_errors_stay_ok(health):
    states = health.observe_many("lane-2/exit", [1.0, -1.0] * 200)
    assert {s.state for s in states} == {"ok"}
    assert max(max(s.cusum_high, s.cusum_low) for s in states) == 0.5
    assert abs(states[-1].ewma) < 1.0


def test_random_zero_mean_errors_never_fail(health):
    z = np.random.default_rng(7).standard_normal(400)
    states = health.observe_many("lane-2/exit", z)
    assert "failure" not in {s.state for s in states}
    # Warnings do happen by chance (two-sided ARL about 170) and clear again.
    assert sum(s.state == "warning" for s in states) < 40
    assert abs(states[-1].ewma) < 1.0


def test_a_random_one_sigma_drift_warns_then_fails(health):
    z = np.random.default_rng(11).normal(1.0, 1.0, 60)
    states = [health.observe("lane-4/exit", v) for v in z]
    first = {name: next(i for i, s in enumerate(states) if s.state == name) + 1
             for name in ("warning", "failure")}
    # ARLs measured for k = 0.5: about 8.4 to h = 4 and 16.4 to h = 8.
    assert first["warning"] < first["failure"] <= 40
    assert states[-1].direction == "high"


def test_one_wild_weighing_cannot_fail_a_scale(health):
    s = health.observe("lane-5/exit", 250.0)
    assert s.state == "ok" and s.cusum_high == 2.5  # clipped at 3, minus k


def test_reset_and_persistence(data_dir, health):
    health.observe_many("lane-6/exit", [2.0] * 10)
    health.observe_many("lane-7/exit", [0.3, -0.2])
    with ScaleHealth(data_dir / "store.db") as again:
        s = again.state("lane-6/exit")
        assert (s.state, s.direction, s.n) == ("failure", "high", 10)
        assert s.cusum_high == 15.0 and s.failed_at is not None
        assert [x.scale_id for x in again.scales()] == ["lane-6/exit", "lane-7/exit"]
        r = again.reset("lane-6/exit")
        assert (r.state, r.n, r.cusum_high, r.changed) == ("ok", 0, 0.0, True)
        assert r.failed_at == s.failed_at and r.reset_at is not None
    s = health.state("lane-6/exit")
    assert (s.state, s.n, s.cusum_high, s.reset_at) == ("ok", 0, 0.0, r.reset_at)
    assert health.state("never-seen") == type(s)("never-seen")
    assert health.observe("lane-6/exit", 1.0).n == 1


@pytest.mark.parametrize("z", [math.nan, math.inf, -math.inf, "1.0", None, True])
def test_bad_z(health, z):
    with pytest.raises(LearningError) as e:
        health.observe_many("lane-1/exit", [0.5, z])
    assert e.value.code == "BAD_Z"
    assert health.state("lane-1/exit").n == 0  # nothing of the batch was kept


@pytest.mark.parametrize("scale_id", ["", " lane", "lane\n1", 3, None, "x" * 101])
def test_bad_scale_id(health, scale_id):
    with pytest.raises(LearningError) as e:
        health.observe(scale_id, 0.0)
    assert e.value.code == "BAD_SCALE_ID"


def test_bad_health_parameters(data_dir):
    for kwargs in ({"h_warn": 5, "h_fail": 4}, {"k": -0.1}, {"ewma_lambda": 2},
                   {"clip_z": 0}):
        with pytest.raises(LearningError) as e:
            ScaleHealth(data_dir, **kwargs)
        assert e.value.code == "BAD_ARGUMENT"


def run_lengths(h: float, shift: float, runs: int, seed: int) -> np.ndarray:
    """Observations until either CUSUM side reaches h, per run (cusum_update)."""
    rng = np.random.default_rng(seed)
    out = np.empty(runs)
    for r in range(runs):
        hi = lo = 0.0
        n = 0
        while hi < h and lo < h:
            for z in rng.normal(shift, 1.0, 64).tolist():
                hi, lo = cusum_update(hi, lo, min(max(z, -3.0), 3.0))
                n += 1
                if hi >= h or lo >= h:
                    break
        out[r] = n
    return out


def test_run_lengths_quoted_in_the_docs():
    in_control = run_lengths(4.0, 0.0, 600, seed=5).mean()
    assert 150 < in_control < 200  # docs: about 170 two-sided (334 per side)
    drift = run_lengths(8.0, 1.0, 400, seed=6).mean()
    assert 15 < drift < 18  # docs: about 16.5
