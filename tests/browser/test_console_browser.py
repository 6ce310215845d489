"""The store's web console in real headless Chromium (issue 15), beside a running demo
store (`Store(..., console=...)`, as `lanecore demo --console` runs it): each role logs
in through the form and sees only its pages; a lane's weight and an alarm appear live
(no reload) while shoppers go through the exit lanes; an alarm acknowledged and
overridden in the page is in the service's own records with the attendant's name;
Chinese pages show no English; every main page is saved as a screenshot."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from clirun import lanecore

from lanecore.gateway.store import Store, StoreSpec

pytestmark = pytest.mark.slow

PASSWORD = "a long attendant passphrase"
#: What each role's session may open, and a page each may not.
PAGES = {"attendant": ["/lanes", "/alarms", "/audits", "/devices"],
         "manager": ["/lanes", "/alarms", "/audits", "/devices", "/products", "/promotions",
                     "/coupons", "/members", "/terminals", "/analytics"],
         "admin": ["/lanes", "/alarms", "/audits", "/devices", "/products", "/promotions",
                   "/coupons", "/members", "/terminals", "/analytics", "/staff"]}
ALL = sorted({p for pages in PAGES.values() for p in pages})


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    """A demo store with its console; an attendant and an admin added with the real
    `lanecore console user add`; the shoppers not started yet (``run()`` starts them
    in the background, once)."""
    d = tmp_path_factory.mktemp("console-floor")
    spec = StoreSpec(shoppers=36, seed=3, concurrency=4, theft_rate=0.4, mistake_rate=0.2)
    out = open(d / "demo.txt", "w")
    store = Store(d / "store", spec, out=out, console="127.0.0.1:0")
    store.start()
    try:
        users = {"manager": ("manager", (store.dir / "console-manager.password")
                             .read_text().strip())}
        for name, role in (("ann", "attendant"), ("ada", "admin")):
            pw = d / f"{name}.pw"
            pw.write_text(PASSWORD + "\n")
            pw.chmod(0o600)
            lanecore("console", "user", "add", name, "--role", role, "--password-file", pw,
                     "--data-dir", store.dir / "console")
            users[role] = (name, PASSWORD)
        done = threading.Event()
        summary: dict = {}

        def shoppers():
            summary.update(store.run())
            done.set()

        started = []

        def run():
            if not started:
                started.append(threading.Thread(target=shoppers, daemon=True))
                started[0].start()
            return done
        yield store, users, run, summary
        if started:
            started[0].join(300)
    finally:
        store.stop()
        out.close()


def login(browser, floor, role: str, lang: str | None = None):
    """A new browser context logged in as ``role`` through the login form."""
    store, users, _, _ = floor
    name, password = users[role]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(store.console_url.rstrip("/") + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("[data-testid=login-submit]")
    page.wait_for_selector("[data-testid=whoami]")
    assert name in page.inner_text("[data-testid=whoami]")
    return ctx, page


@pytest.mark.parametrize("role", ["attendant", "manager", "admin"])
def test_each_role_sees_only_its_pages(browser, floor, role, screenshot_dir):
    store = floor[0]
    ctx, page = login(browser, floor, role)
    try:
        nav = {a.get_attribute("href") for a in page.query_selector_all("nav a")}
        assert set(PAGES[role]) <= nav, (role, nav)
        assert not (set(ALL) - set(PAGES[role])) & nav, (role, nav)
        for path in ALL:
            response = page.goto(store.console_url.rstrip("/") + path)
            allowed = path in PAGES[role]
            assert response.status == (200 if allowed else 403), (role, path)
            if allowed and role == "admin" and path != "/analytics":   # (after the shoppers)
                page.screenshot(path=str(screenshot_dir / f"{path.strip('/')}.png"),
                                full_page=True)
            if not allowed:
                assert "FORBIDDEN" in page.content(), (role, path)
    finally:
        ctx.close()


def test_login_page_and_a_wrong_password(browser, floor, screenshot_dir):
    store = floor[0]
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(store.console_url.rstrip("/") + "/lanes")             # not logged in: to /login
        assert page.url.startswith(store.console_url.rstrip("/") + "/login")
        page.screenshot(path=str(screenshot_dir / "login.png"))
        page.fill("input[name=username]", "ann")
        page.fill("input[name=password]", "not the password")
        page.click("[data-testid=login-submit]")
        err = page.wait_for_selector("[data-testid=login-error]")
        assert err.get_attribute("data-code") == "BAD_LOGIN", err.inner_text()
    finally:
        ctx.close()


def test_a_lane_and_an_alarm_appear_live_and_the_alarm_is_resolved(browser, floor,
                                                                   screenshot_dir):
    """The lanes and alarms pages are open before the shoppers start; while they run,
    a lane card's weight changes and alarm rows appear with no reload. The attendant
    acknowledges one alarm and overrides another with a reason and a weight: the
    service's own records (alarm_actions in store.db) hold both with her name."""
    store, _, run, summary = floor
    ctx, lanes = login(browser, floor, "attendant")
    alarms = ctx.new_page()
    try:
        alarms.goto(store.console_url.rstrip("/") + "/alarms")
        lanes.goto(store.console_url.rstrip("/") + "/lanes")
        lanes.evaluate("window.__notReloaded = true")
        alarms.evaluate("window.__notReloaded = true")
        before = {c.get_attribute("data-lane"): c.inner_text()
                  for c in lanes.query_selector_all("#lanes [data-testid=lane-card]")}
        done = run()
        # a lane's live weight shows a number it did not show when the page opened
        lanes.wait_for_function(
            """(before) => Array.from(document.querySelectorAll(
                   '#lanes [data-testid=lane-card]')).some(c => {
                 const w = c.querySelector('[data-testid=lane-weight]').textContent;
                 return /[0-9]/.test(w) && (before[c.dataset.lane] || '').indexOf(w) < 0; })""",
            arg=before, timeout=120_000)
        alarms.wait_for_selector("#alarms [data-testid=alarm-row]", timeout=180_000)
        assert done.wait(300), "the shoppers did not finish"
        assert lanes.evaluate("window.__notReloaded") is True      # live, not reloaded
        assert alarms.evaluate("window.__notReloaded") is True
        lanes.screenshot(path=str(screenshot_dir / "lanes.png"), full_page=True)
        alarms.screenshot(path=str(screenshot_dir / "alarms.png"), full_page=True)
        weight = lanes.query_selector(
            "#lanes [data-testid=lane-card] [data-testid=lane-weight]").inner_text()
        assert re.fullmatch(r"-?[0-9,]+\.[0-9]|–", weight), weight   # grams, one decimal

        rows = alarms.query_selector_all("#alarms [data-testid=alarm-row]")
        orders = [r.get_attribute("data-order") for r in rows]
        assert len(orders) >= 1 and all(orders), orders
        first = orders[0]
        row = alarms.query_selector(f'#alarms [data-testid=alarm-row][data-order="{first}"]')
        row.query_selector("[data-testid=alarm-ack]").click()
        alarms.wait_for_load_state()
        row = alarms.wait_for_selector(
            f'#alarms [data-testid=alarm-row][data-order="{first}"]')
        row.query_selector("[data-testid=alarm-reason]").fill("bag checked by hand")
        row.query_selector("[data-testid=alarm-weight]").fill("1234.5")
        row.query_selector("[data-testid=alarm-override]").click()
        alarms.wait_for_load_state()
        history = alarms.wait_for_selector("[data-testid=alarm-history]").inner_text()
        assert "ann" in history and first in history, history
    finally:
        ctx.close()
    con = sqlite3.connect(f"file:{store.dir / 'store' / 'store.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT action, reason, staff, principal FROM alarm_actions "
                           "WHERE order_no = ? ORDER BY rowid", (first,)).fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == ["ack", "override"], rows
    assert rows[1][1] == "bag checked by hand" and all(r[2] == "ann" for r in rows), rows
    assert all(r[3] == "key:console" for r in rows), rows       # who proved itself
    assert summary.get("orders", summary) is not None


def english_messages() -> set[str]:
    """The console's English strings of two words or more (a one-word string such as
    "EAS" may be the same in both languages)."""
    from babel.messages.pofile import read_po
    from lanecore.gateway.console import i18n
    path = Path(i18n.__file__).parent / "locale" / "zh_Hans" / "LC_MESSAGES" / "console.po"
    with open(path, "rb") as f:
        catalog = read_po(f)
    out = set()
    for m in catalog:
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        for s in ids:
            text = re.sub(r"%\(\w+\)s", "", s or "").strip()
            if len(text.split()) >= 2:
                out.add(text)
    return out


def test_switched_to_chinese_the_main_pages_hold_no_english(browser, floor, screenshot_dir):
    store = floor[0]
    ctx, page = login(browser, floor, "admin")
    try:
        page.click("[data-testid=lang-switch] [data-lang=zh_Hans]")
        page.wait_for_load_state()
        english = english_messages()
        assert len(english) > 20
        for path in PAGES["admin"]:
            page.goto(store.console_url.rstrip("/") + path)
            text = page.inner_text("body")
            left = sorted(m for m in english if m in text)
            assert not left, (path, left)
            assert re.search(r"[\u4e00-\u9fff]", text), path        # Chinese is there
        page.goto(store.console_url.rstrip("/") + "/lanes")
        shown = [e.inner_text().strip() for e in page.query_selector_all(
            "#lanes [data-field=verdict], #lanes [data-field=order_status]")]
        assert shown and not set(shown) & {"ok", "short", "over", "submitted", "paid",
                                             "exited", "cancelled"}, shown
        page.screenshot(path=str(screenshot_dir / "lanes-zh.png"), full_page=True)
    finally:
        # back to English for the other tests' admin sessions
        page.click("[data-testid=lang-switch] [data-lang=en]")
        ctx.close()


def test_a_form_post_without_its_token_is_refused_in_the_browser(browser, floor):
    """The CSRF check as a browser meets it: the page's form with its token removed."""
    store = floor[0]
    ctx, page = login(browser, floor, "attendant")
    try:
        page.goto(store.console_url.rstrip("/") + "/alarms")
        status = page.evaluate("""async () => {
            const r = await fetch('/alarms/resolve', {method: 'POST',
                headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'lane=A1&order_no=X&action=ack'});
            return [r.status, await r.text()]; }""")
        assert status[0] == 403 and "CSRF" in status[1], status
    finally:
        ctx.close()


def _pending_audit(store, tries: int = 200) -> tuple[str, str]:
    """A handheld's order, paid by the demo's payment gateway, that the service picks
    for an audit (``audit.decide``; a fresh shopper is picked at the store's rate):
    (order number, a GTIN in it)."""
    with store.service("handheld") as svc, store.payments("HANDHELDS") as pay:
        for i in range(tries):
            gtin = store.gtin(store.goods[i % len(store.goods)])
            bid = svc.basket_open("HH-AUDIT")["basket"]["basket_id"]
            svc.basket_add(bid, [{"code": gtin, "qty": 1}])
            order = svc.basket_submit(bid)
            r = pay.call("pay.charge", order_no=order["order_no"],
                         amount_minor=order["total_minor"], currency=order["currency"],
                         method="auth_code",
                         auth_code=store._wallet_code(random.Random(i)))
            assert r["status"] == "paid", r
            receipt = pay.call("pay.receipt", order_no=order["order_no"])["receipt"]
            svc.call("order.status", order_no=order["order_no"], status="paid",
                     proof=receipt)
            got = svc.call("audit.decide", order_no=order["order_no"],
                           shopper="S-BROWSER")["audit"]
            if got["state"] == "pending":
                return order["order_no"], gtin
    raise AssertionError(f"no order picked for an audit in {tries}")


def test_an_audit_appears_live_and_its_result_is_recorded_in_the_page(browser, floor,
                                                                     screenshot_dir):
    """/audits is open when a handheld's order is picked for a check: its row appears
    with no reload (the service's ``audit`` event); the attendant records a
    discrepancy (one unscanned item, a mistake) in the row's form; the service's own
    record (``audit.get``) names her as staff, and the row moves to the recorded list."""
    store = floor[0]
    ctx, page = login(browser, floor, "attendant")
    try:
        page.goto(store.console_url.rstrip("/") + "/audits")
        page.wait_for_selector('[data-testid=live-state][data-live="on"]')
        page.evaluate("window.__notReloaded = true")
        order_no, gtin = _pending_audit(store)
        row = page.wait_for_selector(
            f'#audits-pending [data-testid=audit-row][data-order="{order_no}"]',
            timeout=30_000)
        assert page.evaluate("window.__notReloaded") is True         # live, not reloaded
        row.query_selector("[data-testid=audit-outcome-discrepancy]").check()
        blank = row.query_selector_all("[data-testid=audit-found-row]")[-1]
        blank.query_selector("[data-testid=audit-found-gtin]").fill(gtin)
        blank.query_selector("[data-testid=audit-found-qty]").fill("1")
        row.query_selector("[data-testid=audit-finding]").select_option("mistake")
        page.screenshot(path=str(screenshot_dir / "audits.png"), full_page=True)
        row.query_selector("[data-testid=audit-record]").click()
        done = page.wait_for_selector(
            f'#audits-done [data-testid=audit-done][data-order="{order_no}"]')
        assert done.get_attribute("data-finding") == "mistake"
        assert "ann" in done.query_selector("[data-testid=audit-staff]").inner_text()
        assert not page.query_selector(
            f'#audits-pending [data-testid=audit-row][data-order="{order_no}"]')
    finally:
        ctx.close()
    with store.service("handheld") as svc:
        audit = svc.call("audit.get", order_no=order_no)["audit"]
    assert (audit["state"], audit["staff"], audit["outcome"], audit["finding"]) == (
        "done", "ann", "discrepancy", "mistake"), audit
    assert audit["found"] == [{"gtin": gtin, "qty": 1}], audit


def test_the_healthz_answers(floor):
    import urllib.request
    with urllib.request.urlopen(floor[0].console_url.rstrip("/") + "/healthz", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["ok"] is True


def test_analytics_shows_the_shoppers_orders_in_charts(browser, floor, screenshot_dir):
    """After the shoppers (the rollups kept by triggers as their orders landed): the
    manager's analytics page has rows and a chart for sales and payments, and a view's
    CSV export holds the same orders."""
    store, _, run, _ = floor
    assert run().wait(300), "the shoppers did not finish"
    ctx, page = login(browser, floor, "manager")
    try:
        page.goto(store.console_url.rstrip("/") + "/analytics")
        for name in ("sales_by_hour", "payments_by_channel"):
            chart = page.query_selector(f"[data-testid=chart-{name}]")
            assert chart is not None and chart.query_selector("svg") is not None, name
        page.screenshot(path=str(screenshot_dir / "analytics.png"), full_page=True)
        csv = page.evaluate("""async () => (await (await fetch(
            '/analytics/sales_by_hour.csv')).text())""")
        lines = csv.strip().splitlines()
        assert lines[0].startswith("hour,orders") and len(lines) >= 2, csv[:300]
        assert sum(int(x.split(",")[1]) for x in lines[1:]) >= 1
    finally:
        ctx.close()


def test_a_csv_imported_in_the_products_page_is_served_by_scan(browser, floor, tmp_path,
                                                              screenshot_dir):
    """The manager imports a price list through /products/import (one listed item at a
    new price, one new item), the page shows the import's report, and the running
    service's ``scan`` answers the new price and the new item (it follows the
    catalogue version the import bumped) to the demo's handheld identity."""
    import time

    from lanecore.core.errors import LanecoreError
    from lanecore.core.scan.catalog import flag_names
    from lanecore.gateway.net.client import Client

    store = floor[0]
    db = store.dir / "store" / "store.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        gtin, name, price, weight, sd, flags = con.execute(
            "SELECT gtin, name, price_minor, unit_weight_g, weight_sd_g, flags FROM items "
            "WHERE flags = 0 AND unit_weight_g IS NOT NULL ORDER BY gtin LIMIT 1").fetchone()
        body = "299999900001"
        new = body + str((10 - sum(int(d) * (3 if i % 2 else 1)
                                   for i, d in enumerate(body)) % 10) % 10)
        assert con.execute("SELECT 1 FROM items WHERE gtin = ?",
                           (new.zfill(14),)).fetchone() is None
    finally:
        con.close()
    new_price = price + 7
    csv_path = tmp_path / "prices.csv"
    csv_path.write_text(
        "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
        f'{gtin},"{name}",{new_price},{weight},{"" if sd is None else sd},'
        f'{"|".join(flag_names(flags))}\n'
        f"{new},Console Test Candle,777,250,3,\n")
    ctx, page = login(browser, floor, "manager")
    try:
        page.goto(store.console_url.rstrip("/") + "/products/import")
        page.set_input_files("[data-testid=import-file]", str(csv_path))
        page.click("[data-testid=import-submit]")
        done = page.wait_for_selector("[data-testid=import-done]", timeout=60_000)
        assert page.query_selector("[data-testid=import-progress]") is not None
        assert (done.get_attribute("data-imported"), done.get_attribute("data-bad")) == (
            "2", "0"), done.inner_text()

        with Client(store.ep("service"), curve=store.curve[("service", "handheld")],
                    timeout_s=2.0, retries=1) as c:
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    old_item = c.scan("HH-CONSOLE", gtin.lstrip("0").zfill(13))["item"]
                    new_item = c.scan("HH-CONSOLE", new)["item"]
                except LanecoreError as exc:
                    if exc.code != "UNKNOWN_ITEM" or time.monotonic() > deadline:
                        raise
                    old_item = new_item = None
                if (old_item and old_item["price_minor"] == new_price) or \
                        time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert old_item is not None and old_item["price_minor"] == new_price, old_item
        assert new_item["name"] == "Console Test Candle" and new_item["price_minor"] == 777

        page.goto(store.console_url.rstrip("/") + "/products?q=Console+Test+Candle")
        rows = page.query_selector_all("[data-testid=product-row]")
        assert [r.get_attribute("data-gtin") for r in rows] == [new.zfill(14)]
        page.goto(store.console_url.rstrip("/") + f"/products/item/{gtin}")
        shown = page.wait_for_selector("[data-testid=product-price]")
        assert shown.get_attribute("data-minor") == str(new_price)
        page.screenshot(path=str(screenshot_dir / "products.png"), full_page=True)
    finally:
        ctx.close()


def test_a_promotion_made_in_the_page_prices_the_next_basket_until_ended(browser, floor,
                                                                       screenshot_dir):
    """The manager creates a 20 % promotion on an item through /promotions: the very
    next basket the till prices at the demo's coupon gateway has it; ended in the
    page, the next basket has it no more (no restart)."""
    from lanecore.gateway.net.client import Client
    store, _, run, _ = floor
    assert run().wait(300), "the shoppers did not finish"      # no journey priced mid-way
    gtin = store.gtin(store.coupon_goods[0])
    promo = "BROWSER-20"

    def priced(till) -> dict:
        return till.call("price.basket", lines=[{"code": gtin, "qty": 1}])["priced"]

    ctx, page = login(browser, floor, "manager")
    try:
        with Client(store.ep("coupons"), curve=store.curve[("coupons", "till")],
                    timeout_s=10, retries=1) as till:
            before = priced(till)
            assert promo not in before["promotions_applied"], before
            list_price = before["lines"][0]["unit_price_minor"]
            page.goto(store.console_url.rstrip("/") + "/promotions")
            form = page.wait_for_selector("[data-testid=promo-create]")
            form.query_selector("select[name=kind]").select_option("item_percent")
            form.query_selector("input[name=gtin]").fill(gtin)
            form.query_selector("input[name=percent]").fill("20")
            form.query_selector("input[name=promo_id]").fill(promo)
            form.query_selector("[data-testid=promo-create-submit]").click()
            row = page.wait_for_selector(
                f'[data-testid=promo-row][data-promo="{promo}"][data-state="active"]')
            assert gtin in row.inner_text()
            page.screenshot(path=str(screenshot_dir / "promotions.png"), full_page=True)
            with_promo = priced(till)
            off = (list_price * 2000 + 5000) // 10000
            assert with_promo["promotions_applied"].get(promo) == off, with_promo
            assert with_promo["total_minor"] == before["total_minor"] - off, with_promo
            row.query_selector("[data-testid=promo-end]").click()
            page.wait_for_selector(
                f'[data-testid=promo-row][data-promo="{promo}"][data-state="ended"]')
            after = priced(till)
            assert promo not in after["promotions_applied"], after
            assert after["total_minor"] == before["total_minor"], after
    finally:
        ctx.close()
    con = sqlite3.connect(f"file:{store.dir / 'console' / 'console.db'}?mode=ro", uri=True)
    try:
        acts = con.execute("SELECT staff, action, target, result FROM actions WHERE action "
                           "LIKE 'promo.%' ORDER BY action_id").fetchall()
    finally:
        con.close()
    assert acts[-2:] == [("manager", "promo.create", promo, "ok"),
                         ("manager", "promo.end", promo, "ok")], acts


def test_points_adjusted_in_the_members_page_are_the_gateway_s_balance(browser, floor,
                                                                       screenshot_dir):
    """The manager enrols a member in /members, adjusts their points with a reason in
    the member's page: the demo's coupon gateway answers the new balance to the till,
    and the page's points history shows the adjustment with her name and the reason."""
    from lanecore.gateway.net.client import Client
    store = floor[0]
    card = "6200777700011"
    ctx, page = login(browser, floor, "manager")
    try:
        page.goto(store.console_url.rstrip("/") + "/members")
        enrol = page.wait_for_selector("[data-testid=member-enrol]")
        enrol.query_selector("input[name=card_no]").fill(card)
        enrol.query_selector("input[name=name]").fill("Browser Member")
        enrol.query_selector("[data-testid=member-enrol-submit]").click()
        shown = page.wait_for_selector("[data-testid=member]")
        member_id = shown.get_attribute("data-member")
        form = page.wait_for_selector("[data-testid=member-points-form]")
        form.query_selector("input[name=points]").fill("+75")
        form.query_selector("input[name=reason]").fill("welcome bonus")
        form.query_selector("[data-testid=member-points-submit]").click()
        page.wait_for_selector('[data-testid=member-points]:text-is("75")')
        move = page.wait_for_selector('[data-testid=member-move][data-kind="adjust"]')
        assert move.get_attribute("data-points") == "75"
        assert "welcome bonus" in move.inner_text() and "manager" in move.inner_text()
        page.screenshot(path=str(screenshot_dir / "members.png"), full_page=True)
        with Client(store.ep("coupons"), curve=store.curve[("coupons", "till")],
                    timeout_s=10, retries=1) as till:
            found = till.call("member.find", identifier=card)["member"]
        assert (found["member_id"], found["points"]) == (member_id, 75), found
    finally:
        ctx.close()
