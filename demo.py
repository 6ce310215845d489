"""``lanecore demo``: a whole simulated store, run from an empty directory.

``gateway/store.py`` starts the store's processes (verification service, provider
simulators, payment and coupon gateways) and sends N shoppers through the journeys
of the seeds at once — handheld scan-and-go, exit lanes A and B with the kiosk, the
coupon till, the multi-channel POS terminal, a handheld carried out unpaid — with
thefts and mistakes injected. At the end it prints what happened and checks what a
store owner must be able to trust: paid = exited + still inside, every theft the
lanes could physically see alarmed, honest shoppers alarmed no more often than the
false-alarm rate allows, and the ledger balanced against the providers. Exit status
1 if a check fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import lanecore
from lanecore.ext import barcode, lookup


def _money(minor) -> str:
    return f"{minor / 100:,.2f}"


def run_demo(data_dir: Path, *, shoppers: int = 60, seed: int = 7, rows: int = 2000,
             concurrency: int = 6, live: bool = False, as_json: bool = False,
             out=None, console: str | None = None) -> int:
    """The demo; ``console`` (HOST:PORT): also run the store's web console, and keep
    the store up after the summary until interrupted (SIGINT or SIGTERM)."""
    import sys

    from lanecore.gateway.store import Store, StoreSpec, checks
    out = out or sys.stdout
    log, say = _narrator(out, as_json)

    say(f"lanecore {lanecore.__version__} demo — a simulated store with {shoppers} shoppers "
        f"(seed {seed}); kernels: barcode={barcode.IMPLEMENTATION}, "
        f"lookup={lookup.IMPLEMENTATION}")
    spec = StoreSpec(shoppers=shoppers, seed=seed, rows=rows, concurrency=concurrency)
    with Store(data_dir, spec, out=log, live=live, console=console) as store:
        store.start()
        summary = store.run()
        if console is not None:
            _report_and_wait(say, summary, out, as_json, store.console_url)
    failed = checks(summary)
    summary["checks_failed"] = failed
    if summary.pop("_reported", False):
        return 0 if not failed else 1
    if as_json:
        out.write(json.dumps(summary) + "\n")
        out.flush()
    else:
        _report(say, summary)
    return 0 if not failed else 1


def _report_and_wait(say, summary: dict, out, as_json: bool, url) -> None:
    """``--console``: the summary now, then the store stays up for the console until
    SIGINT or SIGTERM."""
    import signal
    import threading
    failed = checks_of(summary)
    if as_json:
        out.write(json.dumps({**summary, "checks_failed": failed, "console": url}) + "\n")
        out.flush()
    else:
        _report(say, {**summary, "checks_failed": failed})
    summary["_reported"] = True
    say(f"the store stays up for its console at {url}: Ctrl-C (or SIGTERM) stops it")
    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)


def _narrator(out, as_json: bool):
    """Where the demo's narrative goes (stderr when stdout carries the JSON summary)
    and the function that writes a line of it."""
    import sys
    log = sys.stderr if as_json else out

    def say(text: str = "") -> None:
        log.write(text + "\n")
        log.flush()
    return log, say


def checks_of(summary: dict) -> list[str]:
    from lanecore.gateway.store import checks
    return checks(summary)


def _report(say, s: dict) -> None:
    say()
    say(f"{s['shoppers']} shoppers in {s['seconds']} s: "
        + ", ".join(f"{v} {k}" for k, v in s["journeys"].items()))
    say(f"orders {s['orders']}, paid {s['paid']}, exited {s['exited']}, still inside "
        f"{s['inside']} (held at the gate), abandoned handhelds {s['abandoned']}")
    say("payments: " + ", ".join(f"{ch} {v['count']} = {_money(v['amount_minor'])}"
                                 for ch, v in sorted(s["payments_by_channel"].items())))
    a = s["alarms"]
    say(f"alarms: weight over {a['weight_over']}, weight short {a['weight_short']}, "
        f"EAS {a['eas']}")
    say(f"thefts injected {s['injected_thefts']}: the lanes could see "
        f"{s['thefts_visible']}, and alarmed on {s['thefts_visible_alarmed']} of those "
        f"({s['thefts_alarmed']} alarms on thefts in all)")
    say(f"mistakes (a paid item left behind) {s['mistakes']}: alarmed {s['mistakes_alarmed']}")
    pi = s["per_item"]
    say(f"per-item exit lane {', '.join(pi['lanes'])}: {pi['steps']} items weighed one by "
        f"one; of its {pi['alarmed']} alarms on thefts and mistakes, {pi['named_first']} "
        "named the item (or its step) first")
    bg = s["bagging"]
    say(f"kiosk bagging scales: {bg['items']} items checked; honest transactions "
        f"{bg['honest']}, alarmed {bg['honest_alarmed']}; thefts {bg['thefts']}, alarmed "
        f"{bg['thefts_alarmed']}, the unscanned item's delta named first "
        f"{bg['named_first']}")
    say(f"honest exits {s['honest_exits']}: alarmed {s['honest_alarmed']} (the policy's "
        f"false-alarm rate expects {s['honest_alarms_expected']}, allows at most "
        f"{s['honest_alarms_bound']})")
    say(f"audits {s['audits']} ({s['audit_items']} items rescanned); voided lines "
        f"{s['voids']}; SMS receipts {s['sms_receipts']}; printed receipts "
        f"{s['receipts_printed']}; coupons redeemed {s['coupons_redeemed']} "
        f"(saved {_money(s['coupon_savings_minor'])})")
    b = s["books"]
    say(f"books: reconciliation {'clean' if b['recon_clean'] else 'NOT CLEAN'} "
        f"{b['recon_counts']}; ledger {b['ledger_paid_minor']} vs providers "
        f"{b['provider_paid_minor']} -> {'balanced' if s['ledger_balanced'] else 'NOT BALANCED'}")
    lat = s["latency_ms"]
    say(f"service round trips: p50 {lat['p50']} ms, p99 {lat['p99']} ms over {lat['n']:,}")
    if s["checks_failed"]:
        say("CHECKS FAILED: " + "; ".join(s["checks_failed"]))
    else:
        say("every check passed: paid = exited + inside; every visible theft alarmed; "
            "honest alarms within the false-alarm rate; the ledger balances")


def run_chain_demo(data_dir: Path, *, stores: int, shoppers: int = 30, seed: int = 7,
                   rows: int = 2000, concurrency: int = 4, cut_s: float = 10.0,
                   as_json: bool = False, out=None) -> int:
    """``lanecore demo --stores N``: HQ (PostgreSQL, NATS JetStream, ``lanecore hq``)
    and N stores on this machine, the first store cut off from HQ halfway and
    reconnected; the summary reconciles the chain store by store (docs/chain.md).
    Exit status 1 if a check fails."""
    import sys

    from lanecore.gateway.chainstore import Chain, chain_checks
    from lanecore.gateway.store import StoreSpec
    out = out or sys.stdout
    log, say = _narrator(out, as_json)

    say(f"lanecore {lanecore.__version__} chain demo — HQ and {stores} stores with "
        f"{shoppers} shoppers each (seed {seed}); kernels: barcode={barcode.IMPLEMENTATION}, "
        f"lookup={lookup.IMPLEMENTATION}")
    spec = StoreSpec(shoppers=shoppers, seed=seed, rows=rows, concurrency=concurrency)
    with Chain(data_dir, stores=stores, spec=spec, out=log) as chain:
        chain.start()
        summary = chain.run(cut_store=0, cut_s=cut_s)
    failed = chain_checks(summary)
    summary["checks_failed"] = failed
    if as_json:
        out.write(json.dumps(summary) + "\n")
        out.flush()
    else:
        _report_chain(say, summary)
    return 0 if not failed else 1


def _report_chain(say, s: dict) -> None:
    say()
    say(f"{s['stores']} stores in {s['seconds']} s; {'; '.join(s['cut']) or 'no cut'}")
    for sid, b in s["books"].items():
        st = s["store_summaries"].get(sid, {})
        say(f"  {sid}: {st.get('paid', '?')} paid, {st.get('coupons_redeemed', 0)} coupons "
            f"redeemed; ledger net {_money(b['store']['net_minor'])} = HQ "
            f"{_money(b['hq']['net_minor'])}: {'equal' if b['equal'] else 'NOT EQUAL'}; "
            f"events at HQ {sum(b['hq']['events'].values())}")
    pts = s.get("points_sales", {})
    say(f"HQ caught up {s['caught_up_s']} s after the last shopper; {s['hq_events']} events "
        f"applied once each; members' sales earning points at HQ: {pts.get('earned', 0)} "
        f"(skipped, not members of the chain: {pts.get('skipped', 0)})")
    if s["price_change"]:
        say(f"HQ changed the price of {s['price_change']['gtin']} during the cut: applied "
            + ", ".join(f"{sid} in {t} s" if t is not None else f"{sid} NEVER"
                        for sid, t in s["price_applied_s"].items())
            + " (the cut-off store's time counted from its link's return)")
    cpu = s["cpu_s"]
    say("CPU seconds: " + ", ".join(f"{k} {v}" for k, v in cpu.items()
                                    if "/" not in k))
    per_kind: dict[str, float] = {}
    for k, v in cpu.items():
        if "/" in k:
            per_kind[k.split("/", 1)[1]] = per_kind.get(k.split("/", 1)[1], 0.0) + v
    say("  stores' processes, summed over stores: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_kind.items())))
    if s["checks_failed"]:
        say("CHECKS FAILED: " + "; ".join(s["checks_failed"]))
    else:
        say("every check passed: every store's own checks, and HQ's books equal every "
            "store's ledger after the cut")
