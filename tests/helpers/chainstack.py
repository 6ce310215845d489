"""The chain's processes for tests: `lanecore hq` and `lanecore link` subprocesses,
each store's link behind a relay that can be cut (gateway/db/relay.py), and what a
store's own files say HQ must have (tests/gateway/chain/)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from lanecore.gateway.chain.link import store_books  # noqa: F401 (the tests' import)


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for k in ("LANECORE_HQ_CRASH", "LANECORE_LINK_CRASH"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _ready(proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 60.0) -> dict:
    """The process's JSON ready line on stdout (it was started with --json)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if sel.select(0.2):
            line = proc.stdout.readline()
            if line:
                return json.loads(line)
        if proc.poll() is not None:
            break
    raise AssertionError(f"{what} did not start: {log.read_text()[-3000:]}")


def start_hq(db_url: str, nats_url: str, root: Path, *, bind: str | None = None,
             env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    """`lanecore hq` (ingest; ops on ``bind`` with --dev-open), once ready."""
    log = root / "hq.log"
    args = [sys.executable, "-m", "lanecore", "hq", "--db", db_url, "--nats", nats_url,
            "--json", "--data-dir", str(root / "hq-data")]
    if bind:
        args += ["--bind", bind, "--dev-open"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log, "ab"),
                            text=True, env=_env(env))
    if wait:
        _ready(proc, log, "lanecore hq")
    return proc


def start_link(store_id: str, data_dir: Path, nats_url: str | None, *, payments_dir=None,
               coupons: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """`lanecore link` for one store, once it runs. ``nats_url`` None: the store id
    and HQ's NATS server come from the store's lanecore.toml ([chain])."""
    log = Path(data_dir).parent / f"link-{store_id}.log"
    args = [sys.executable, "-m", "lanecore", "link", "--data-dir", str(data_dir), "--json"]
    if nats_url is not None:
        args += ["--store-id", store_id, "--nats", nats_url]
    if payments_dir:
        args += ["--payments-dir", str(payments_dir)]
    if coupons:
        args += ["--coupons", coupons]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                            env=_env(env))
    _ready(proc, log, f"lanecore link {store_id}")
    return proc


def start_payments(data_dir: Path, endpoint: str) -> subprocess.Popen:
    """`lanecore gateway payments --dev-open` (its log in a file: a long run must not
    fill a pipe), once it answers hello."""
    from lanecore.gateway.net.client import Client, ServiceError
    log = Path(data_dir).parent / f"{Path(data_dir).name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", "payments",
                             "--bind", endpoint, "--data-dir", str(data_dir), "--dev-open"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=_env())
    end = time.monotonic() + 30
    with Client(endpoint, timeout_s=1.0, retries=0) as c:
        while True:
            try:
                c.call("hello")
                return proc
            except ServiceError:
                if proc.poll() is not None or time.monotonic() > end:
                    proc.kill()
                    raise AssertionError(f"the payment gateway did not start: "
                                         f"{log.read_text()[-3000:]}") from None


def stop(proc: subprocess.Popen | None, sig=signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _ro(path: Path) -> sqlite3.Connection | None:
    if not Path(path).is_file():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def hq_books(db_url: str) -> dict:
    """What HQ holds, per store: the same shape as :func:`store_books`."""
    out: dict[str, dict] = {}
    with psycopg.connect(db_url) as con:
        for store, kind, n in con.execute("SELECT store_id, kind, COUNT(*) FROM hq_events "
                                          "GROUP BY 1, 2"):
            out.setdefault(store, {"net_minor": 0, "events": {}})["events"][kind] = n
        for store, net in con.execute("SELECT store_id, SUM(signed_minor) FROM hq_ledger "
                                      "GROUP BY 1"):
            out.setdefault(store, {"net_minor": 0, "events": {}})["net_minor"] = int(net)
        # every event applied once: one effect row per ledger event
        for store, n_events, n_ledger in con.execute(
                "SELECT e.store_id, COUNT(*), COUNT(l.event_id) FROM hq_events e LEFT JOIN "
                "hq_ledger l ON l.event_id = e.event_id WHERE e.kind IN ('payment', "
                "'reversal', 'refund') GROUP BY 1"):
            assert n_events == n_ledger, (store, n_events, n_ledger)
    return out


def wait_for(check, timeout_s: float, what: str, step_s: float = 0.25):
    """``check()`` until it returns a true value (returned) or ``timeout_s`` passes."""
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")
