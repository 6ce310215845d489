"""A running `lanecore serve` follows a catalogue re-import (issue 14, item 3).

`lanecore catalog import` bumps ``meta.catalog_version`` in its transaction; the
service notices it between requests, reloads its lookup table off the loop, swaps it
in and publishes a ``catalog`` event. Scans never fail meanwhile, and afterwards
``scan`` and ``basket.add`` agree on the new prices; a basket keeps the prices its
lines were given."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
import time
import uuid

import msgpack
import zmq

DEADLINE_S = 2.0


def gtin13(body12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body12))
    return body12 + str((10 - total % 10) % 10)


class Dealer:
    def __init__(self, served):
        self.sock = served.secure(zmq.Context.instance().socket(zmq.DEALER))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(served.endpoint)

    def call(self, req: dict, timeout_ms: int = 10_000) -> dict:
        req = {"id": uuid.uuid4().hex, **req}
        self.sock.send(msgpack.packb(req))
        if not self.sock.poll(timeout_ms):
            raise TimeoutError(f"no reply to {req['op']} in {timeout_ms} ms")
        reply = msgpack.unpackb(self.sock.recv())
        assert reply["id"] == req["id"], (req, reply)
        return reply

    def close(self) -> None:
        self.sock.close(0)


class Scanner(threading.Thread):
    """Scans one code in a loop on its own socket until stopped; keeps every reply
    that was not ok and the prices it saw."""

    def __init__(self, served, code: str):
        super().__init__(daemon=True)
        self.served, self.code = served, code
        self.stopping = threading.Event()
        self.failures: list = []
        self.prices: list[int] = []
        self.n = 0

    def run(self) -> None:
        c = Dealer(self.served)
        try:
            while not self.stopping.is_set():
                try:
                    r = c.call({"op": "scan", "lane": "L1", "code": self.code},
                               timeout_ms=5000)
                except Exception as exc:   # a timeout is a failure too
                    self.failures.append(repr(exc))
                    return
                self.n += 1
                if r.get("ok"):
                    price = r["item"]["price_minor"]
                    if not self.prices or self.prices[-1] != price:
                        self.prices.append(price)
                else:
                    self.failures.append(r)
        finally:
            c.close()


def write_csv(path, rows: list[dict]) -> None:
    cols = ["gtin", "name", "price_minor", "unit_weight_g", "weight_sd_g", "flags"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def import_catalog(served, path) -> None:
    r = subprocess.run([sys.executable, "-m", "lanecore", "catalog", "import", str(path),
                        "--data-dir", str(served.data_dir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def new_gtin(served) -> str:
    known = {row["gtin"].zfill(14) for row in served.rows}
    for n in range(1000):
        g = gtin13(f"5099{n:08d}")
        if g.zfill(14) not in known:
            return g
    raise AssertionError("no free GTIN")


def test_reimport_reaches_scan_and_basket_without_a_restart(serve, tmp_path):
    s = serve()
    item = s.items(1)[0]
    code, old_price = item["gtin"], int(item["price_minor"])
    new_price = old_price + 1001
    added = {"gtin": new_gtin(s), "name": "Live catalogue test bar", "price_minor": "1336",
             "unit_weight_g": "50", "weight_sd_g": "1", "flags": ""}
    c = Dealer(s)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"catalog")
    sub.connect(s.events)
    scanner = Scanner(s, code)
    try:
        # before: the old price, the new item unknown; a basket priced at the old price
        r = c.call({"op": "scan", "lane": "L1", "code": code})
        assert r["ok"] and r["item"]["price_minor"] == old_price, r
        r = c.call({"op": "scan", "lane": "L1", "code": added["gtin"]})
        assert not r["ok"] and r["error"]["code"] == "UNKNOWN_ITEM", r
        n_items = c.call({"op": "hello"})["store"]["items"]
        r = c.call({"op": "basket.open", "device": "HH01"})
        assert r["ok"], r
        held = r["basket"]["basket_id"]
        r = c.call({"op": "basket.add", "basket": held, "scans": [{"code": code}]})
        assert r["ok"] and r["basket"]["total_minor"] == old_price, r
        time.sleep(0.3)        # ZeroMQ's slow joiner: let the subscription arrive

        scanner.start()
        while scanner.n < 20 and scanner.is_alive():
            time.sleep(0.01)
        csv_path = tmp_path / "reprice.csv"
        write_csv(csv_path, [dict(item, price_minor=str(new_price)), added])
        import_catalog(s, csv_path)

        deadline = time.monotonic() + DEADLINE_S
        while True:
            a = c.call({"op": "scan", "lane": "L1", "code": code})
            b = c.call({"op": "scan", "lane": "L1", "code": added["gtin"]})
            if (a["ok"] and a["item"]["price_minor"] == new_price
                    and a["item"]["line_price_minor"] == new_price and b["ok"]):
                break
            assert time.monotonic() < deadline, \
                f"the service still answers {a} and {b} {DEADLINE_S} s after the import"
            time.sleep(0.05)
        assert b["item"]["price_minor"] == 1336 and b["item"]["name"] == added["name"], b
        n_scans = scanner.n
        while scanner.n < n_scans + 20 and scanner.is_alive():
            time.sleep(0.01)
    finally:
        scanner.stopping.set()
        scanner.join(10)
    try:
        assert not scanner.failures, scanner.failures[:5]
        assert scanner.prices[0] == old_price and scanner.prices[-1] == new_price, \
            scanner.prices
        assert c.call({"op": "hello"})["store"]["items"] == n_items + 1

        # a new basket is priced as the scans are
        r = c.call({"op": "basket.open", "device": "HH02"})
        bid = r["basket"]["basket_id"]
        r = c.call({"op": "basket.add", "basket": bid,
                    "scans": [{"code": code}, {"code": added["gtin"]}]})
        assert r["ok"], r
        prices = {ln["gtin"].lstrip("0"): ln["line_price_minor"] for ln in r["basket"]["lines"]}
        assert prices == {code.lstrip("0"): new_price, added["gtin"].lstrip("0"): 1336}, r
        # the basket opened before keeps its line's price; a new scan there is a new line
        r = c.call({"op": "basket.add", "basket": held, "scans": [{"code": code}]})
        assert r["ok"], r
        lines = [(ln["qty"], ln["unit_price_minor"]) for ln in r["basket"]["lines"]]
        assert lines == [(1, old_price), (1, new_price)], r
        assert r["basket"]["total_minor"] == old_price + new_price, r

        # one catalog event: {version, items}
        assert sub.poll(2000), "no catalog event"
        topic, body = sub.recv_multipart()
        event = msgpack.unpackb(body)
        assert topic == b"catalog" and event["items"] == n_items + 1, event
        assert isinstance(event["version"], int) and event["version"] >= 2, event
    finally:
        sub.close(0)
        c.close()
