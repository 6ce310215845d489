"""The chain demo on this machine (issue 16): HQ (PostgreSQL, NATS JetStream,
``lanecore hq``) and N = 5 stores, each with its own processes and shoppers, the first
store cut off from HQ for 10 s and reconnected (``gateway/chainstore.py``, the code of
``lanecore demo --stores N``).

Figures: the wall time of the shopping, how long HQ took after the last shopper to
equal every store's ledger, how long HQ's price change took to reach the stores, and
each process's CPU seconds (the stores' processes summed by kind), printed as a table
and kept in the JSON of ``make bench``. Not a ratio: what the chain costs on this
2-core machine, for the next change to compare against. With ``--benchmark-disable``:
2 stores, a few shoppers, a 2 s cut, and the same checks.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_chain_demo_five_stores(sizes, figures, note):
    from lanecore.gateway.chainstore import Chain, chain_checks
    from lanecore.gateway.store import StoreSpec
    stores, shoppers, cut_s = (5, 40, 10.0) if sizes.real else (2, 8, 2.0)
    root = Path(tempfile.mkdtemp(prefix="lanecore-bench-chain-demo-"))
    log = io.StringIO()
    try:
        with Chain(root / "chain", stores=stores, out=log,
                   spec=StoreSpec(shoppers=shoppers, seed=11, concurrency=4)) as chain:
            chain.start()
            s = chain.run(cut_store=0, cut_s=cut_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)       # made above, for this run only
    failed = chain_checks(s)
    assert not failed, (failed, log.getvalue()[-3000:])
    assert s["chain_balanced"] and s["sold_while_cut"] > 0
    assert all(t is not None for t in s["price_applied_s"].values())
    cpu = s["cpu_s"]
    by_kind: dict[str, float] = {}
    for k, v in cpu.items():
        kind = k.split("/", 1)[1] if "/" in k else k
        by_kind[kind] = by_kind.get(kind, 0.0) + v
    figures.add(f"chain demo, {stores} stores x {shoppers} shoppers: wall time of the "
                f"shopping", s["seconds"], "s", cpu_s=cpu)
    figures.add(f"chain demo, {stores} stores: HQ equal to every store's ledger after the "
                f"last shopper", s["caught_up_s"], "s")
    figures.add(f"chain demo, {stores} stores: HQ's price change applied (slowest store "
                f"not cut off)", max(t for sid, t in s["price_applied_s"].items()
                                     if sid != "S1"), "s")
    note(f"chain demo: {stores} stores x {shoppers} shoppers in {s['seconds']} s, "
         f"{s['hq_events']} events at HQ, caught up {s['caught_up_s']} s after the last "
         f"shopper; price change applied {s['price_applied_s']} s; CPU s by process kind: "
         + ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_kind.items(),
                                                       key=lambda kv: -kv[1])))
