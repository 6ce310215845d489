"""The merchant's products pages (console/products.py): search by name (the store
database, read only) and by code (the service's ``scan``, here a stand-in that looks
the code up in the same catalogue), the item page with its learned weight, the edit
(CSRF, roles, exact money, the catalogue version bumped, the actions log), and the
CSV import on a thread with its progress and report, and the upload limit."""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest
from consolefix import csrf_of, login
from starlette.testclient import TestClient

from lanecore.core.errors import LanecoreError
from lanecore.core.scan import catalog
from lanecore.core.scan.catalog import Catalog
from lanecore.core.weigh.learning import WeightBook
from lanecore.gateway.console import products

SOAP, BEANS, TEA = "04006381333931", "05012345678900", "00036000291452"
JSON = {"Accept": "application/json"}


def gtin13(body12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body12))
    return body12 + str((10 - total % 10) % 10)


@pytest.fixture
def store(tmp_path):
    """A store database with three items (and 120 more 'Widget's for paging), and a
    learned weight for the soap."""
    d = tmp_path / "store"
    d.mkdir()
    rows = ["gtin,name,price_minor,unit_weight_g,weight_sd_g,flags",
            "4006381333931,Lavender Soap,250,100,2,",
            "5012345678900,Baked Beans 415 g,125,432.5,4.2,eas_tagged",
            "036000291452,Green Tea,399,80,1.5,"]
    rows += [f"{gtin13('40000001%04d' % i)},Widget {i:03d},{100 + i},50,1," for i in range(120)]
    (tmp_path / "seed.csv").write_text("\n".join(rows) + "\n")
    with Catalog.open(d) as cat:
        report = cat.import_csv(tmp_path / "seed.csv")
        assert report.rows_bad == 0 and report.rows_imported == 123
        with WeightBook(cat) as book:
            for w in (101.0, 102.0, 101.5, 100.5, 101.0, 102.5):
                assert book.learn(SOAP, w).learned
    return d / "store.db"


@pytest.fixture
def app_for(make_app, store):
    def make(**kw):
        app, _clock = make_app(store_db=store, **kw)

        async def scan(op, **fields):       # the service's scan, over the same catalogue
            assert op == "scan" and fields["lane"] == "console"
            with Catalog(catalog.connect(store)) as cat:
                found = cat.lookup_code(fields["code"])
            if not found["found"]:
                raise LanecoreError("not found", code=found["error"]["code"])
            return {"scan": found["scan"], "item": found["item"]}
        app.state.service.call = scan
        return app
    return make


def actions(app, prefix="product."):
    return app.state.staff.actions(prefix=prefix)


def test_search_by_name_pages_and_by_code(app_for):
    app = app_for()
    with TestClient(app) as c:
        login(c, "max")
        r = c.get("/products", params={"q": "soap"})
        assert r.status_code == 200
        assert re.findall(r'data-testid="product-row" data-gtin="(\d+)"', r.text) == [SOAP]
        assert "Lavender Soap" in r.text and "£2.50" in r.text
        # a name query with LIKE's wildcards is taken literally
        r = c.get("/products", params={"q": "%"})
        assert 'data-testid="product-none"' in r.text
        # 120 widgets: 50 a page, then the rest
        pages = [re.findall(r'data-testid="product-row" data-gtin="(\d+)"',
                            c.get("/products", params={"q": "widget", "page": n}).text)
                 for n in (1, 2, 3)]
        assert [len(p) for p in pages] == [50, 50, 20]
        assert len({g for p in pages for g in p}) == 120
        assert 'data-testid="product-next"' in c.get("/products?q=widget&page=2").text
        assert 'data-testid="product-next"' not in c.get("/products?q=widget&page=3").text
        # by code: the service's scan (a GTIN-13, a UPC-A)
        r = c.get("/products", params={"q": "5012345678900"})
        assert re.findall(r'data-testid="product-row" data-gtin="(\d+)"', r.text) == [BEANS]
        r = c.get("/products", params={"q": "036000291452", "by": "code"})
        assert re.findall(r'data-testid="product-row" data-gtin="(\d+)"', r.text) == [TEA]
        r = c.get("/products", params={"q": "4006381333932"})      # bad check digit
        assert 'data-testid="product-problem"' in r.text and "product-row" not in r.text


def test_the_item_page_shows_price_weights_learned_and_eas(app_for, store):
    app = app_for()
    with TestClient(app) as c:
        login(c, "max")
        r = c.get(f"/products/item/{SOAP}")
        assert r.status_code == 200
        assert re.search(r'data-testid="product-price" data-minor="250">£2.50<', r.text)
        weight = re.search(r'data-testid="product-weight">([^<]*)<', r.text).group(1)
        assert weight == "100.0 g ± 2.0 g"
        learned = re.search(r'data-testid="product-learned">([^<]*)<', r.text).group(1)
        with WeightBook(store) as book:                # what the verdicts use
            mean, sd, _n = book.stats(SOAP)
        assert learned == f"{mean:,.1f} g ± {sd:,.1f} g (weighings: 6; used by the " \
                          "verdicts)", learned
        assert re.search(r'data-testid="product-eas">no<', r.text)
        r = c.get(f"/products/item/{BEANS}")
        assert re.search(r'data-testid="product-eas">yes<', r.text)
        assert "nothing learned yet" in r.text
        assert c.get("/products/item/4006381333948").headers["x-error-code"] == \
            "UNKNOWN_ITEM"
        assert c.get("/products/item/abc").status_code == 404


def test_an_edit_bumps_the_catalogue_version_and_is_recorded(app_for, store):
    app = app_for()
    v0 = catalog.catalog_version(store)
    with TestClient(app) as c:
        login(c, "max")
        token = csrf_of(c.get(f"/products/item/{SOAP}").text)
        r = c.post(f"/products/item/{SOAP}", data={
            "csrf": token, "price": "12.34", "unit_weight_g": "101.5", "eas_shown": "1",
            "eas": "1"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == \
            f"/products/item/{SOAP}?saved=1"
        page = c.get(r.headers["location"]).text
        assert 'data-testid="product-saved"' in page and 'data-minor="1234"' in page
        # a price only (the form's other fields absent): the flag is left as it is
        r = c.post(f"/products/item/{SOAP}", data={"csrf": token, "price": "12.3"},
                   headers=JSON)
        assert r.status_code == 200 and r.json()["changed"] == {"price_minor": [1234, 1230]}
    row = catalog.item(store, SOAP)
    assert (row["price_minor"], row["unit_weight_g"], row["flags"]) == (
        1230, 101.5, ["eas_tagged"])
    assert catalog.catalog_version(store) == v0 + 2
    done = actions(app)
    assert [(a["staff"], a["role"], a["action"], a["target"]) for a in done] == [
        ("max", "manager", "product.edit", SOAP)] * 2
    assert done[0]["result"] == f"ok v{v0 + 2}" and "price_minor 1234→1230" in done[0]["detail"]
    assert "eas False→True" in done[1]["detail"] and done[1]["result"] == f"ok v{v0 + 1}"


def test_an_edit_without_the_token_or_by_an_attendant_is_refused(app_for, store):
    app = app_for()
    v0 = catalog.catalog_version(store)
    with TestClient(app) as c:
        login(c, "max")
        c.get(f"/products/item/{SOAP}")
        r = c.post(f"/products/item/{SOAP}", data={"price": "1.00"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        r = c.post(f"/products/item/{SOAP}", data={"price": "1.00", "csrf": "forged"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        login(c, "ann")
        token = csrf_of(c.get("/lanes").text)
        for path in ("/products", f"/products/item/{SOAP}", "/products/import"):
            r = c.get(path)
            assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN", path
        r = c.post(f"/products/item/{SOAP}", data={"price": "1.00", "csrf": token})
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
        r = c.post("/products/import", data={"csrf": token},
                   files={"file": ("a.csv", b"gtin,name,price_minor\n")})
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
    assert catalog.item(store, SOAP)["price_minor"] == 250
    assert catalog.catalog_version(store) == v0
    refused = app.state.staff.actions(prefix="refused")
    assert {a["result"] for a in refused} == {"CSRF", "FORBIDDEN"}
    assert {a["staff"] for a in refused} == {"max", "ann"}


@pytest.mark.parametrize("price,weight", [
    ("-1.00", ""), ("12.345", ""), ("1e3", ""), ("12,34", ""), ("abc", ""),
    ("", "-5"), ("", "heavy"), ("", "nan")])
def test_a_bad_price_or_weight_is_refused_with_a_code(app_for, store, price, weight):
    app = app_for()
    v0 = catalog.catalog_version(store)
    with TestClient(app) as c:
        login(c, "max")
        token = csrf_of(c.get(f"/products/item/{SOAP}").text)
        r = c.post(f"/products/item/{SOAP}", data={
            "csrf": token, "price": price, "unit_weight_g": weight})
        code = "BAD_PRICE" if price else "BAD_WEIGHT"
        assert r.status_code == 400 and r.headers["x-error-code"] == code
        assert f'data-code="{code}"' in r.text
        r = c.post(f"/products/item/{SOAP}", headers=JSON, data={
            "csrf": token, "price": price, "unit_weight_g": weight})
        assert r.json()["error"]["code"] == code
    assert catalog.item(store, SOAP)["price_minor"] == 250
    assert catalog.catalog_version(store) == v0
    assert [a["result"] for a in actions(app)] == [code, code]


def test_prices_convert_exactly_within_the_currencys_decimals():
    assert products.parse_price("12.34", 2) == 1234
    assert products.parse_price("0.10", 2) == 10
    assert products.parse_price("19.99", 2) == 1999           # no float rounding
    assert products.parse_price("1234567.8", 2) == 123456780
    assert products.parse_price("7", 0) == 7
    for bad, decimals in (("1.5", 0), ("0.001", 2), ("-0", 2), ("+1", 2), (" ", 2),
                          ("1.", 2), (".5", 2), ("0x10", 2)):
        with pytest.raises(LanecoreError) as e:
            products.parse_price(bad, decimals)
        assert e.value.code == "BAD_PRICE", bad
    assert products.format_price(1234, 2) == "12.34" and products.format_price(5, 0) == "5"


def wait_job(c, job, *, seen=None):
    """Poll the job's JSON (as the page's script does) until it finishes."""
    for _ in range(2000):
        j = c.get(f"/products/import/{job}").json()
        if seen is not None:
            seen.append(j)
        if j["state"] != "running":
            return j
        time.sleep(0.01)
    raise AssertionError(f"import {job} did not finish")


def test_a_csv_import_runs_on_a_thread_with_progress_and_its_report(app_for, store,
                                                                    monkeypatch):
    monkeypatch.setattr(catalog, "BATCH_ROWS", 2)       # progress every two rows
    # The import pauses after its first progress report until the test has seen it.
    seen_running = threading.Event()
    real_import = Catalog.import_csv

    def paused_import(self, path, *, progress=None):
        def report(*args):
            progress(*args)
            if args[0] == 2:
                assert seen_running.wait(30)
        return real_import(self, path, progress=report)
    monkeypatch.setattr(Catalog, "import_csv", paused_import)
    app = app_for()
    v0 = catalog.catalog_version(store)
    csv = ("gtin,name,price_minor,unit_weight_g\n"
           "4006381333931,Lavender Soap,275,100\n"          # a new price
           f"{gtin13('400000020001')},New Candle,999,300\n"  # a new item
           "4006381333932,Bad Check,100,10\n"                # line 4: BAD_GTIN
           f"{gtin13('400000020002')},Decimal,1.50,10\n"      # line 5: BAD_PRICE
           f"{gtin13('400000020003')},Mug,650,350\n")
    with TestClient(app) as c:
        login(c, "max")
        page = c.get("/products/import")
        assert 'data-testid="import-file"' in page.text
        assert 'data-testid="import-submit"' in page.text
        r = c.post("/products/import", data={"csrf": csrf_of(page.text)},
                   files={"file": ("prices.csv", csv.encode(), "text/csv")},
                   follow_redirects=False)
        assert r.status_code == 303
        job = re.fullmatch(r"/products/import\?job=([\w-]+)", r.headers["location"]).group(1)
        running = c.get(f"/products/import/{job}").json()
        for _ in range(3000):
            if running["rows_done"]:
                break
            time.sleep(0.01)
            running = c.get(f"/products/import/{job}").json()
        assert running["state"] == "running" and running["rows_done"] == 2, running
        assert 0 < running["bytes_done"] <= running["bytes_total"] == len(csv)
        during = c.get(r.headers["location"]).text         # the page while it runs
        assert 'data-testid="import-running"' in during and "import-done" not in during
        assert 'src="/static/products.js"' in during
        seen_running.set()
        seen = []
        j = wait_job(c, job, seen=seen)
        assert j["state"] == "done", j
        assert j["rows_done"] == 5 and j["bytes_done"] == j["bytes_total"] == len(csv)
        assert all(s["rows_done"] <= 5 for s in seen)
        rep = j["report"]
        assert (rep["rows_imported"], rep["rows_bad"]) == (3, 2)
        assert [(e["line"], e["code"]) for e in rep["errors"]] == [(4, "BAD_GTIN"),
                                                                   (5, "BAD_PRICE")]
        assert j["catalog_version"] == v0 + 1
        done = c.get(r.headers["location"]).text
        m = re.search(r'data-testid="import-done" data-imported="(\d+)" data-bad="(\d+)"', done)
        assert m and m.groups() == ("3", "2")
        assert 'data-line="4" data-code="BAD_GTIN"' in done
        assert 'data-testid="import-progress"' in done
        assert c.get("/products/import/nosuchjob").status_code == 404
        # a file that is not a price list: the job fails with the catalogue's code
        r = c.post("/products/import", data={"csrf": csrf_of(page.text)}, headers=JSON,
                   files={"file": ("x.csv", b"just,some,columns\n1,2,3\n")})
        assert r.status_code == 202
        failed = wait_job(c, r.json()["job"])
        assert failed["state"] == "failed" and failed["error"]["code"] == "BAD_CSV_HEADER"
    assert catalog.item(store, SOAP)["price_minor"] == 275
    assert catalog.item(store, gtin13("400000020001"))["name"] == "New Candle"
    assert catalog.catalog_version(store) == v0 + 1
    log = [(a["staff"], a["action"], a["target"], a["result"]) for a in actions(app)][::-1]
    assert log == [("max", "product.import", "prices.csv", "started"),
                   ("max", "product.import", "prices.csv", f"ok v{v0 + 1}"),
                   ("max", "product.import", "x.csv", "started"),
                   ("max", "product.import", "x.csv", "BAD_CSV_HEADER")]
    assert not list((store.parent.parent / "console" / "uploads").iterdir())


def test_an_oversized_upload_or_one_without_a_token_is_refused(app_for, store,
                                                               monkeypatch):
    monkeypatch.setattr(products, "MAX_UPLOAD_BYTES", 1000)
    app = app_for()
    v0 = catalog.catalog_version(store)
    big = b"gtin,name,price_minor\n" + b"4006381333931,Soap,1\n" * 60     # > 1000 bytes
    with TestClient(app) as c:
        login(c, "max")
        token = csrf_of(c.get("/products/import").text)
        # within the framing allowance of the header check: caught while saving
        r = c.post("/products/import", data={"csrf": token},
                   files={"file": ("big.csv", big)})
        assert r.status_code == 413 and r.headers["x-error-code"] == "TOO_LARGE"
        assert 'data-testid="import-problem" data-code="TOO_LARGE"' in r.text
        # far beyond: refused from Content-Length, before the body is read
        r = c.post("/products/import", data={"csrf": token}, headers=JSON,
                   files={"file": ("huge.csv", big * 2000)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "TOO_LARGE"
        r = c.post("/products/import", files={"file": ("a.csv", b"gtin,name,price_minor\n")})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        r = c.post("/products/import", data={"csrf": token})
        assert r.status_code == 400 and r.headers["x-error-code"] == "NO_FILE"
    assert catalog.catalog_version(store) == v0
    assert catalog.item(store, SOAP)["price_minor"] == 250
    assert [a["result"] for a in actions(app)][::-1] == ["TOO_LARGE", "TOO_LARGE",
                                                          "NO_FILE"]


def test_the_console_reads_the_store_database_read_only(app_for, store, monkeypatch):
    """Search and the item page open store.db with mode=ro; only an edit opens it
    read-write (through the catalogue module)."""
    opened = []
    real = sqlite3.connect

    def spy(target, *a, **kw):
        opened.append((str(target), kw.get("uri", False)))
        return real(target, *a, **kw)
    monkeypatch.setattr(sqlite3, "connect", spy)
    app = app_for()
    with TestClient(app) as c:
        login(c, "max")
        opened.clear()
        c.get("/products", params={"q": "soap"})
        c.get(f"/products/item/{SOAP}")
        assert opened and all(t.endswith("store.db?mode=ro") and uri for t, uri in opened)
