"""kill -9 of HQ's consumer and of the stores' publishers at random points, ≥ 20 times:
afterwards HQ's books still equal every store's ledger, each source row once (issue
16, "Done when").

Two stores write their ledgers (charges paid, some reversed, refunds) and device
faults as the payment gateway and the service do, in this process, steadily. `lanecore
hq` and each store's `lanecore link` run as processes that kill themselves (SIGKILL) at
their named crash points with random probabilities (LANECORE_HQ_CRASH /
LANECORE_LINK_CRASH, seeded), and the test kills them at random times too; each is
started again at once. Then the writers stop, the processes run without faults, and
HQ must hold exactly what the stores hold."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time


from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import hq_books, start_hq, start_link, stop, store_books, wait_for
from lanecore.core.pay.ledger import Ledger
from lanecore.gateway.chain import hq as HQ
from lanecore.gateway.chain import link as LINK

SEED = 1616
RUN_S = 35.0
MIN_KILLS = 20


class StoreWriter(threading.Thread):
    """One store's own writes: its ledger (as the payment gateway makes them) and its
    device faults (as the service records them)."""

    def __init__(self, d, seed: int):
        super().__init__(daemon=True)
        self.d = d
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.n = 0

    def run(self) -> None:
        from lanecore.gateway.service import _SCHEMA_SQL
        self.ledger = Ledger.open(self.d / "payments.db")
        self.store = sqlite3.connect(self.d / "store.db", isolation_level=None)
        self.store.execute("PRAGMA journal_mode = WAL")
        for stmt in _SCHEMA_SQL:
            self.store.execute(stmt)
        try:
            self.write()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ledger.close()
            self.store.close()

    def write(self) -> None:
        paid = []
        while not self.stopping.is_set():
            self.n += 1
            c, _ = self.ledger.create(f"{self.d.name}-{self.n}", 1,
                                      self.rng.randint(1, 99_999), "CNY", "auth_code", "wx",
                                      "T1", sent=True)
            if self.rng.random() < 0.1:
                self.ledger.move(c.merchant_ref, "failed")
            else:
                self.ledger.move(c.merchant_ref, "paid")
                paid.append(c)
            if paid and self.n % 7 == 0:
                self.ledger.move(paid.pop(0).merchant_ref, "reversed")
            if paid and self.n % 5 == 0:
                ch = paid[-1]
                r, _ = self.ledger.create_refund(ch.merchant_ref, f"R{self.n}",
                                                 max(1, ch.amount_minor // 3))
                self.ledger.move_refund(r.refund_ref, "sent")
                self.ledger.move_refund(r.refund_ref,
                                        "paid" if self.rng.random() < 0.8 else "failed")
            if self.n % 3 == 0:
                self.store.execute("INSERT INTO device_events (at, lane, device, kind, code, "
                                   "message) VALUES (?, 'L1', 'scale', 'fault', 'E', ?)",
                                   (time.time(), f"fault {self.n}"))
            self.stopping.wait(0.01)


def _crash_env(rng: random.Random, var: str, points: tuple[str, ...]) -> dict:
    chosen = rng.sample(points, rng.randint(1, len(points)))
    spec = ",".join(f"{p}:{rng.uniform(0.02, 0.12):.3f}" for p in chosen)
    return {var: spec, var + "_SEED": str(rng.randrange(1 << 30))}


def test_kill_9_at_random_points_loses_nothing_and_applies_nothing_twice(
        tmp_path, pg_url, nats_server):  # noqa: F811
    rng = random.Random(SEED)
    writers = {}
    for i, sid in enumerate(("c1", "c2")):
        d = tmp_path / sid
        d.mkdir()
        writers[sid] = StoreWriter(d, SEED + i)

    def new_hq(faults=True):
        env = _crash_env(rng, "LANECORE_HQ_CRASH", HQ.CRASH_POINTS[:2]) if faults else {}
        return start_hq(pg_url, nats_server.url, tmp_path, env=env)

    def new_link(sid, faults=True):
        env = _crash_env(rng, "LANECORE_LINK_CRASH", LINK.CRASH_POINTS[:2]) if faults \
            else {}
        return start_link(sid, writers[sid].d, nats_server.url, env=env)

    procs = {"hq": new_hq(), **{sid: new_link(sid) for sid in writers}}
    kills = {"self": 0, "test": 0}
    try:
        for w in writers.values():
            w.start()
        end = time.monotonic() + RUN_S
        next_kill = time.monotonic() + rng.uniform(0.5, 2.5)
        while time.monotonic() < end or sum(kills.values()) < MIN_KILLS:
            assert time.monotonic() < end + 40, f"too few kills: {kills}"
            for name, p in list(procs.items()):
                if p.poll() is not None:
                    assert p.returncode == -signal.SIGKILL, (name, p.returncode)
                    kills["self"] += 1
                    procs[name] = new_hq() if name == "hq" else new_link(name)
            if time.monotonic() >= next_kill:
                name = rng.choice(sorted(procs))
                procs[name].kill()
                procs[name].wait()
                kills["test"] += 1
                procs[name] = new_hq() if name == "hq" else new_link(name)
                next_kill = time.monotonic() + rng.uniform(0.5, 2.5)
            time.sleep(0.05)
        for w in writers.values():
            w.stopping.set()
            w.join(10)
        assert [w.error for w in writers.values()] == [None, None]
        assert sum(kills.values()) >= MIN_KILLS and kills["self"] > 0, kills
        print(f"chain crash test: kills {kills}")
        # the rest without faults
        for name, p in list(procs.items()):
            stop(p, signal.SIGKILL)
        procs = {"hq": new_hq(False), **{sid: new_link(sid, False) for sid in writers}}
        want = {sid: store_books(w.d / "payments.db", w.d / "store.db")
                for sid, w in writers.items()}
        got = wait_for(lambda: (lambda h: h == want and h)(hq_books(pg_url)), 40,
                       "HQ equals every store's ledger after the kills")
        for sid in writers:
            assert got[sid]["events"]["payment"] > 500, got[sid]
            assert got[sid]["events"]["refund"] > 50 and got[sid]["events"]["reversal"] > 50
    finally:
        for w in writers.values():
            w.stopping.set()
        for p in procs.values():
            stop(p)
        for w in writers.values():
            w.join(10)
