"""``lanecore demo --stores N``: a chain on one machine (docs/chain.md).

HQ's PostgreSQL and NATS JetStream servers (real ones, :mod:`gateway.db.servers`),
``lanecore hq``, and N simulated stores (:class:`gateway.store.Store`, each with its
own processes, data and shoppers) whose coupon gateways share HQ's database and
whose ``lanecore link`` processes reach HQ's NATS through a loopback relay
(:mod:`gateway.db.relay`). The shoppers of every store shop at once; halfway through,
one store's relay is cut (its link really loses HQ) and later restored. At the end
HQ's consolidated ledger is compared with every store's own, store by store, and each
process's CPU time is reported.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from lanecore.core.config import private_dir, write_private
from lanecore.core.errors import LanecoreError
from lanecore.gateway.db.relay import Relay
from lanecore.gateway.db.servers import Nats, Postgres
from lanecore.gateway.net.client import Client, CurveKeys
from lanecore.gateway.store import Store, StoreSpec, checks, prepare_demo_dir

#: The chain's database on HQ's server.
CHAIN_DB = "lanecore_chain"


class ChainStore(Store):
    """One store of the chain: its coupon gateway on HQ's PostgreSQL, its link to HQ
    supervised beside its other processes."""

    COUPON_IDENTITIES = {**Store.COUPON_IDENTITIES, "link": "manager"}

    def __init__(self, data_dir, spec: StoreSpec, *, db_url: str, nats_url: str,
                 defines_coupons: bool, out=None) -> None:
        super().__init__(data_dir, spec, out=out)
        self.db_url = db_url
        self.nats_url = nats_url
        self.defines_coupons = defines_coupons

    @property
    def order_prefix(self) -> str:
        return f"{self.spec.store_id}-"

    def _coupons_config(self) -> None:
        super()._coupons_config()
        path = self.dir / "coupons" / "coupons.toml"       # 0600: it holds keys
        text = path.read_text(encoding="utf-8")
        write_private(path, (text + f"\n[db]\nurl = {json.dumps(self.db_url)}\n")
                      .encode("utf-8"))

    def _stock_coupons(self) -> None:
        """The chain's coupons are HQ's: the first store defines them in the shared
        book, the others find the same goods there."""
        if self.defines_coupons:
            super()._stock_coupons()
            # the shoppers' loyalty cards are the chain's: enrolled once, at HQ's
            # database, they earn points in every store (sales reach HQ as events)
            with self.coupons("manager", timeout_s=5, retries=2) as c:
                for i in range(self.spec.shoppers):
                    c.call("member.enrol", card_no=f"8888{i:06d}")
            return
        rng = random.Random(self.spec.seed + 5)
        rng.sample(self.goods, 6)
        with self.coupons("manager", timeout_s=5, retries=2) as c:
            defs = {d["coupon_def_id"]: d for d in c.call("coupon.list")["definitions"]}
        by_gtin = {self.gtin(r): r for r in self.goods}
        self.coupon_goods = [by_gtin[defs[f"CPN-DEF-{i}"]["target_gtin"]] for i in range(6)]

    def _extra_processes(self) -> list[str]:
        ids = self.dir / "identities" / "coupons"
        return [self._process(
            "link", "link", "--store-id", self.spec.store_id, "--data-dir",
            str(self.dir / "store"), "--payments-dir", str(self.dir / "pay"),
            "--nats", self.nats_url, "--coupons", self.ep("coupons"),
            "--coupons-key", str(self.dir / "coupons" / "keys" / "server.key"),
            "--coupons-client-key", str(ids / "link.key_secret"),
            after=["serve", "payments", "coupons"])]

    def books(self) -> dict:
        """The store's own ledger net and event counts, as HQ's copy must hold them."""
        from lanecore.gateway.chain.link import store_books
        return store_books(self.dir / "pay" / "payments.db", self.dir / "store" / "store.db")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, its reaped children and its live
    descendants (PostgreSQL's backends, say)."""
    tick = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                kids.setdefault(int(st[1]), []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        st = _stat(p)
        if st is None:
            continue
        total += sum(int(st[i]) for i in (11, 12, 13, 14))
        todo += kids.get(p, [])
    return total / tick


def _wait_price(store: "ChainStore", gtin: str, price: int, since: float,
                timeout_s: float) -> float | None:
    """Seconds from ``since`` until ``store``'s catalogue holds ``price`` for ``gtin``
    (None: not within ``timeout_s``)."""
    import sqlite3
    path = store.dir / "store" / "store.db"
    while True:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT price_minor FROM items WHERE gtin = ?",
                              (gtin,)).fetchone()
        finally:
            con.close()
        waited = time.monotonic() - since
        if row is not None and row[0] == price:
            return round(waited, 2)
        if waited > timeout_s:
            return None
        time.sleep(0.05)


class Chain:
    """HQ's servers and process, and the stores."""

    def __init__(self, data_dir, *, stores: int, spec: StoreSpec, out) -> None:
        self.dir = Path(data_dir)
        self.n = stores
        self.spec = spec
        self.out = out
        self.stores: list[ChainStore] = []
        self.relays: list[Relay] = []
        self.pg = self.nats = None
        self.hq: subprocess.Popen | None = None
        self.cut_log: list[str] = []
        self.sold_while_cut = 0
        self.price_change: dict = {}
        self.price_applied: dict[str, float | None] = {}

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def start(self) -> None:
        t0 = time.perf_counter()
        self.dir = prepare_demo_dir(self.dir)
        hq = private_dir(self.dir / "hq")
        self.pg = Postgres(hq / "pg").start()
        db_url = self.pg.create_database(CHAIN_DB)
        self.nats = Nats(hq / "nats").start()
        self.say(f"HQ: PostgreSQL on 127.0.0.1:{self.pg.port}, NATS JetStream on "
                 f"127.0.0.1:{self.nats.port} ({time.perf_counter() - t0:.1f} s)")
        self._start_hq(hq, db_url)
        for i in range(self.n):
            sid = f"S{i + 1}"
            relay = Relay(self.nats.port).start()
            self.relays.append(relay)
            spec = replace(self.spec, store_id=sid, seed=self.spec.seed + 101 * i,
                           catalog_seed=self.spec.seed)
            store = ChainStore(self.dir / f"store-{sid}", spec, db_url=db_url,
                               nats_url=relay.url, defines_coupons=(i == 0), out=self.out)
            self.say(f"store {sid}:")
            store.start()
            self.stores.append(store)
        self.say(f"chain up in {time.perf_counter() - t0:.1f} s: HQ and {self.n} stores")

    def _start_hq(self, hq: Path, db_url: str) -> None:
        from lanecore.gateway.net.security import generate
        import zmq.auth
        keys = private_dir(hq / "data" / "keys")
        server_pub, _ = generate(keys, "server")
        pub, secret = generate(private_dir(hq / "identities"), "books",
                               {"name": "books", "roles": "hq"})
        write_private(private_dir(keys / "devices") / pub.name, pub.read_bytes())
        self.hq_curve = CurveKeys(zmq.auth.load_certificate(str(server_pub))[0],
                                  *zmq.auth.load_certificate(str(secret)))
        self.hq_ep = f"ipc://{hq}/hq.ipc"
        log = open(hq / "hq.log", "ab")
        self.hq = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "hq", "--db", db_url, "--nats", self.nats.url, "--bind",
             self.hq_ep, "--curve", "--data-dir", str(hq / "data")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        with self.hq_client(timeout_s=1.0, retries=0) as c:
            while True:
                try:
                    c.call("hello")
                    return
                except LanecoreError:
                    if self.hq.poll() is not None or time.monotonic() > deadline:
                        raise LanecoreError(f"HQ did not start: see {hq / 'hq.log'}",
                                            code="DEMO_START") from None

    def hq_client(self, **kw) -> Client:
        return Client(self.hq_ep, curve=self.hq_curve, **kw)

    def run(self, *, cut_store: int = 0, cut_s: float = 10.0) -> dict:
        """Every store's shoppers at once; store ``cut_store`` (0-based) cut off from
        HQ once half of its shoppers are through, for ``cut_s`` seconds, while the
        other half shop; HQ changes a price meanwhile."""
        t0 = time.perf_counter()
        results: dict[str, dict] = {}
        errors: list[str] = []
        restored = threading.Event()

        def shop(store: ChainStore) -> None:
            try:
                results[store.spec.store_id] = store.run()
            except Exception as exc:          # reported in the summary, not swallowed
                errors.append(f"{store.spec.store_id}: {exc!r}")

        cutter: list[threading.Thread] = []

        def halfway() -> None:                # in store ``cut_store``'s run, once
            self._cut_now(cut_store)
            t = threading.Thread(target=self._restore_after, args=(cut_store, cut_s,
                                                                  restored), daemon=True)
            t.start()
            cutter.append(t)

        self.stores[cut_store].halfway = halfway
        threads = [threading.Thread(target=shop, args=(s,), name=f"shop-{s.spec.store_id}")
                   for s in self.stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t in cutter:
            t.join()
        return self._summary(results, errors, time.perf_counter() - t0)

    def _cut_now(self, k: int) -> None:
        store = self.stores[k]
        self.relays[k].cut()
        self._cut_at = time.monotonic()
        self._orders_at_cut = store.tally.c["orders"]
        self.say(f"store {store.spec.store_id}: link to HQ cut after "
                 f"{self._orders_at_cut} orders; selling on")

    def _restore_after(self, k: int, cut_s: float, restored: threading.Event) -> None:
        """While store ``k`` is cut off, HQ changes a price (every other store applies
        it at once, the cut-off one when its link returns); restore after ``cut_s``."""
        store, t = self.stores[k], self._cut_at
        sid = store.spec.store_id
        gtin, price = self._change_price()
        self.price_change = {"gtin": gtin, "price_minor": price}
        others = [s for i, s in enumerate(self.stores) if i != k]
        self.price_applied = {s.spec.store_id: _wait_price(s, gtin, price, t, 10.0)
                              for s in others}
        time.sleep(max(0.0, cut_s - (time.monotonic() - t)))
        self.sold_while_cut = store.tally.c["orders"] - self._orders_at_cut
        self.relays[k].restore()
        back = time.monotonic()
        self.cut_log.append(f"{sid} cut for {back - t:.1f} s, {self.sold_while_cut} orders "
                            f"taken meanwhile")
        self.say(f"store {sid}: link restored after {back - t:.1f} s")
        self.price_applied[sid] = _wait_price(store, gtin, price, back, 30.0)
        restored.set()

    def _change_price(self) -> tuple[str, int]:
        """HQ raises by 1 the price of an item no shopper of the demo takes."""
        s = self.stores[0]
        goods = set(s.goods)
        row = next(r for r in range(len(s.table)) if r not in goods
                   and int(s.table.price_minor[r]) > 0)
        gtin, price = s.gtin(row), int(s.table.price_minor[row]) + 1
        with self.hq_client(timeout_s=5.0, retries=2) as c:
            c.call("price.set", gtin=gtin, price_minor=price)
        return gtin, price

    def _caught_up(self, timeout_s: float = 60.0) -> tuple[dict, dict, float]:
        """Wait until HQ's totals equal every store's ledger; (hq, stores, seconds)."""
        t = time.monotonic()
        want = {s.spec.store_id: s.books() for s in self.stores}
        with self.hq_client(timeout_s=5.0, retries=2) as c:
            while True:
                got = c.call("hq.totals")["stores"]
                if all(_same(got.get(sid, {}), w) for sid, w in want.items()) or \
                        time.monotonic() - t > timeout_s:
                    return got, want, time.monotonic() - t
                time.sleep(0.2)

    def _summary(self, results: dict, errors: list, seconds: float) -> dict:
        hq, stores, waited = self._caught_up()
        per_store = {}
        for sid, want in stores.items():
            got = hq.get(sid, {})
            per_store[sid] = {"store": want, "hq": {"net_minor": got.get("net_minor", 0),
                                                    "events": got.get("events", {})},
                              "equal": _same(got, want)}
        with self.hq_client(timeout_s=5.0, retries=2) as c:
            stats = c.call("hq.stats")
        cpu = {"postgres": _cpu_s(self.pg.proc.pid), "nats-server": _cpu_s(self.nats.proc.pid),
               "hq": _cpu_s(self.hq.pid)}
        for s in self.stores:
            for name, proc in s.procs:
                cpu[f"{s.spec.store_id}/{name}"] = _cpu_s(proc.pid)
        cpu["demo (shoppers)"] = _cpu_s(os.getpid())
        return {"stores": self.n, "seconds": round(seconds, 1),
                "store_summaries": results, "store_errors": errors,
                "cut": self.cut_log, "sold_while_cut": self.sold_while_cut,
                "price_change": self.price_change, "price_applied_s": self.price_applied,
                "books": per_store,
                "chain_balanced": all(v["equal"] for v in per_store.values()),
                "hq_events": stats.get("events"), "caught_up_s": round(waited, 2),
                "points_sales": stats.get("sales", {}),
                "cpu_s": {k: round(v, 2) for k, v in cpu.items()}}

    def stop(self) -> None:
        for s in self.stores:
            try:
                s.stop()
            except Exception:
                pass
        for r in self.relays:
            r.cut()
        if self.hq is not None and self.hq.poll() is None:
            self.hq.terminate()
            try:
                self.hq.wait(10)
            except subprocess.TimeoutExpired:
                self.hq.kill()
        for server in (self.nats, self.pg):
            if server is not None:
                server.stop()

    def __enter__(self) -> "Chain":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _same(hq: dict, store: dict) -> bool:
    """HQ's copy of a store equals the store's own books: the net, and the event
    count of every kind of row the store's books count (bills are checked by HQ's
    reconciliation instead)."""
    from lanecore.gateway.chain.link import BOOK_KINDS
    return int(hq.get("net_minor", 0)) == store["net_minor"] and \
        {k: int(v) for k, v in hq.get("events", {}).items()
         if v and k in BOOK_KINDS} == store["events"]


def chain_checks(summary: dict) -> list[str]:
    """What the chain must be able to trust: every store's own checks, every store's
    ledger equal to HQ's copy, and no store that failed to run."""
    bad = [f"store {e}" for e in summary["store_errors"]]
    for sid, s in summary["store_summaries"].items():
        bad += [f"store {sid}: {c}" for c in checks(s)]
    if summary["cut"] and not summary["sold_while_cut"]:
        bad.append("the cut-off store took no order while cut off")
    late = {sid: t for sid, t in summary["price_applied_s"].items() if t is None}
    if late:
        bad.append(f"HQ's price change never reached {sorted(late)}")
    for sid, b in summary["books"].items():
        if not b["equal"]:
            bad.append(f"store {sid}: HQ's totals {b['hq']} != the store's ledger "
                       f"{b['store']}")
    return bad

