"""HQ's ingest (issue 16): store events/s through HQ's consumer into PostgreSQL,
against a bare nats-py publish → durable consume loop on the same server, in the same
run, interleaved (ABBA, ``bench/_paired.py``).

Each round, each side gets N new events published (the same publisher: nats-py
``js.publish`` with a ``Nats-Msg-Id``, 500 in flight, on the same nats-server with
JetStream on file storage) and consumes all N with a durable pull consumer:

* ``bare``: fetch (1,000 a pull), ack each — nothing else;
* ``hq``: HQ's own path (``gateway/chain/hq.py``: ``ingest_batch``): fetch 1,000,
  decode, one PostgreSQL transaction (``hq_events`` ON CONFLICT DO NOTHING RETURNING,
  then the ``hq_ledger`` rows), commit, ack each.

Figure: the ratio of the bare loop's time to HQ's (``x``: HQ's events/s as a share of
the bare loop's), target ≥ 0.5×, and each side's events/s. With
``--benchmark-disable`` one short round checks that every event reached HQ once.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path

import msgpack
import pytest

from _paired import paired

pytestmark = pytest.mark.kernel_free

BARE_STREAM = "BENCH_BARE"


@pytest.fixture(scope="module")
def servers():
    from lanecore.gateway.db.servers import Nats, Postgres
    root = Path(tempfile.mkdtemp(prefix="lanecore-bench-chain-", dir="/tmp"))
    pg = Postgres(root / "pg").start()
    nats = Nats(root / "nats").start()
    try:
        yield pg, nats
    finally:
        nats.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)      # made above, for this module only


def _event(store: str, i: int) -> tuple[str, bytes, dict]:
    body = {"store": store, "kind": "payment", "id": i, "merchant_ref": f"B{i}-1",
            "order_no": f"B{i}", "attempt": 1, "amount_minor": 100 + i % 9000,
            "currency": "CNY", "method": "auth_code", "channel": "wx", "terminal": "T1",
            "scope": "", "at": 1.7e9 + i}
    return (f"lanecore.store.{store}.payment", msgpack.packb(body),
            {"Nats-Msg-Id": f"{store}/payment/{i}"})


async def _publish(js, subject_prefix: str | None, store: str, lo: int, n: int) -> None:
    msgs = [_event(store, i) for i in range(lo, lo + n)]
    for k in range(0, n, 500):
        await asyncio.gather(*(
            js.publish(subj if subject_prefix is None else subject_prefix + subj, data,
                       headers=hdr, timeout=10)
            for subj, data, hdr in msgs[k:k + 500]))


def test_hq_ingest_against_bare_consume(servers, sizes, figures, note):
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

    import nats
    from lanecore.gateway.chain import hq as HQ
    from lanecore.gateway.chain import streams as S
    pg, nats_srv = servers
    db_url = pg.create_database("bench_hq")
    n = 20_000 if sizes.real else 300
    rounds = 5 if sizes.real else 1
    loop = asyncio.new_event_loop()
    state = {"next": 0}

    async def setup_all():
        nc = await nats.connect(nats_srv.url)
        js = nc.jetstream()
        await S.ensure_streams(js)
        await js.add_stream(StreamConfig(name=BARE_STREAM, subjects=["bench.>"],
                                         storage=StorageType.FILE,
                                         duplicate_window=S.DUPLICATE_WINDOW_S))
        bare = await js.pull_subscribe(
            "bench.>", durable="bench-bare", stream=BARE_STREAM,
            config=ConsumerConfig(durable_name="bench-bare", ack_policy=AckPolicy.EXPLICIT,
                                  ack_wait=30.0, max_ack_pending=50_000))
        ingest = await asyncio.to_thread(HQ.Ingest, db_url)
        hq_sub = await HQ.Pump(db_url, nats_srv.url)._subscribe(js)
        return nc, js, bare, hq_sub, ingest

    nc, js, bare_sub, hq_sub, ingest = loop.run_until_complete(setup_all())

    async def consume(sub, want: int, handle) -> int:
        got = 0
        while got < want:
            try:
                msgs = await sub.fetch(HQ.FETCH, timeout=2.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                raise AssertionError(f"only {got} of {want} events came back") from None
            await handle(msgs)
            got += len(msgs)
        return got

    async def bare_ack(msgs):
        for m in msgs:
            await m.ack()

    def side(name):
        async def run():
            lo = state["next"]
            state["next"] += n
            prefix = "bench." if name == "bare" else None
            await _publish(js, prefix, "b1", lo, n)
            if name == "bare":
                return await consume(bare_sub, n, bare_ack)
            new = [0]

            async def handle(msgs):
                new[0] += await HQ.ingest_batch(ingest, msgs)
            got = await consume(hq_sub, n, handle)
            assert new[0] == got == n
            return got
        return lambda: loop.run_until_complete(run())

    def check(out):
        assert out["bare"] == n and out["hq"] == n

    try:
        res = paired({"bare": side("bare"), "hq": side("hq")}, rounds=rounds, warmup=1,
                     check=check, pids=[nats_srv.proc.pid])
        # every event published to HQ is in hq_events and the ledger once
        with ingest.con.transaction():
            events = ingest.con.execute("SELECT COUNT(*) FROM hq_events").fetchone()[0]
            ledger = ingest.con.execute("SELECT COUNT(*) FROM hq_ledger").fetchone()[0]
        assert events == ledger == n * (rounds + 1)
    finally:
        ingest.close()
        loop.run_until_complete(nc.close())
        loop.close()
    hq_rates = [n / t for t in res.side("hq").times]
    bare_rates = [n / t for t in res.side("bare").times]
    figures.speedup("HQ ingest vs bare NATS publish+consume: events/s ratio", res, "hq",
                    "bare", events_per_round=n)
    figures.values("HQ ingest: events/s (publish + consume into PostgreSQL)", hq_rates, "/s",
                   load=res.load)
    figures.values("bare NATS publish + durable consume: events/s", bare_rates, "/s",
                   load=res.load)
    note(f"HQ ingest {statistics.median(hq_rates):,.0f} events/s, bare "
         f"{statistics.median(bare_rates):,.0f} events/s; ratio "
         f"{res.speedup('hq', 'bare'):.2f}x ({res.summary(n)})")
