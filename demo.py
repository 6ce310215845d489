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
    log = sys.stderr if as_json else out

    def say(text: str = "") -> None:
        log.write(text + "\n")
        log.flush()

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
