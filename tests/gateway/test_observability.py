"""Metrics and logs of a demo store (issue 14, item 2): each long-running process
serves /metrics on loopback, with per-op counters and histograms that move while
shoppers run; every line each one logs is a JSON object, and no log of the demo holds
a PAN, a wallet payment code or key material."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from lanecore.gateway.net import metrics
from lanecore.gateway.net.security import SecurityError
from lanecore.gateway.store import Store, StoreSpec

pytestmark = pytest.mark.slow

PROCESSES = ("serve", "payments", "coupons")
PANS = ("4111111111111111", "5555555555554444")


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(metric name, labels text): value} of one /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode("utf-8")
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def total(sample: dict, name: str, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, lab), v in sample.items()
               if n == name and all(w in lab for w in want))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("observed")
    spec = StoreSpec(shoppers=24, seed=5, theft_rate=0.3, mistake_rate=0.25, concurrency=4)
    codes: list[str] = []
    out = open(d / "report.txt", "w")
    with Store(d / "store", spec, out=out) as store:
        real = store._wallet_code

        def recorded(rng):
            code = real(rng)
            codes.append(code)
            return code
        store._wallet_code = recorded          # every payment code the demo uses
        store.start()
        before = {name: scrape(port) for name, port in store.metrics_ports.items()}
        summary = store.run()
        after = {name: scrape(port) for name, port in store.metrics_ports.items()}
    out.close()
    return store, summary, before, after, codes


def test_each_process_serves_metrics_that_move(run):
    store, summary, before, after, _ = run
    assert set(store.metrics_ports) == set(PROCESSES)
    busy_op = {"serve": "basket.add", "payments": "pay.charge", "coupons": "checkout.mqr"}
    for name in PROCESSES:
        b, a = before[name], after[name]
        assert total(a, "lanecore_requests_total") > total(b, "lanecore_requests_total"), name
        op = busy_op[name]
        assert total(a, "lanecore_requests_total", op=op) > \
            total(b, "lanecore_requests_total", op=op), (name, op)
        # the op's latency histogram: its count, its sum and its top bucket moved
        for series in ("count", "sum"):
            assert total(a, f"lanecore_request_seconds_{series}", op=op) > \
                total(b, f"lanecore_request_seconds_{series}", op=op), (name, op, series)
        assert total(a, "lanecore_request_seconds_bucket", op=op, le="+Inf") == \
            total(a, "lanecore_request_seconds_count", op=op)
        buckets = [k for k, v in a.items() if k[0] == "lanecore_request_seconds_bucket"
                   and f'op="{op}"' in k[1] and v > b.get(k, 0)]
        assert buckets, name
        assert ("lanecore_queue_depth", "") in a and ("lanecore_uptime_seconds", "") in a
    serve, pay, cou = after["serve"], after["payments"], after["coupons"]
    assert serve[("lanecore_lanes", "")] >= 1
    assert total(serve, "lanecore_verdicts") > 0
    assert total(serve, "lanecore_orders", status="exited") > 0
    assert total(serve, "lanecore_events_total", topic="settled") > 0
    assert total(pay, "lanecore_charges", state="paid") > 0
    assert total(cou, "lanecore_checkouts") > 0


def test_every_log_line_is_json_and_holds_no_secret(run, tmp_path):
    store, _, _, _, codes = run
    assert codes, "the demo paid with no wallet code"
    for name in PROCESSES:
        lines = (store.dir / f"{name}.log").read_text("utf-8").splitlines()
        assert lines, name
        for line in lines:
            rec = json.loads(line)             # every line one JSON object
            assert isinstance(rec, dict) and rec["process"] == name, line
            assert {"ts", "level", "logger", "msg"} <= set(rec), line
    secrets = set(PANS) | set(codes) | set(getattr(store, "key_texts", {}).values())
    for path in store.dir.rglob("*"):                  # Z85 CurveZMQ secret keys
        if path.is_file() and path.name.endswith(".key_secret"):
            m = re.search(r'secret-key = "([^"]+)"', path.read_text("utf-8"))
            if m:
                secrets.add(m.group(1))
    assert len(secrets) > 5
    logs = list(store.dir.rglob("*.log"))
    assert len(logs) >= len(PROCESSES)
    for path in logs:
        text = path.read_text("utf-8", errors="replace")
        for secret in secrets:
            assert secret not in text, (path.name, secret[:6])


def test_metrics_are_served_on_loopback_only():
    assert metrics.check_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert metrics.check_address("9101") == ("127.0.0.1", 9101)
    with pytest.raises(SecurityError) as err:
        metrics.check_address("0.0.0.0:9100")
    assert err.value.code == "PLAIN_NOT_ALLOWED"
    assert metrics.check_address("0.0.0.0:9100", allow_remote=True)[1] == 9100


def test_json_log_lines_carry_the_request_fields():
    import logging
    fmt = metrics.JsonFormatter("serve")
    rec = logging.LogRecord("lanecore.service", logging.WARNING, __file__, 1, "x %s", ("y",),
                            None)
    rec.op, rec.lane, rec.order_no = "weigh.frame", "L1", "A-1"
    out = json.loads(fmt.format(rec))
    assert out["msg"] == "x y" and out["process"] == "serve" and out["level"] == "WARNING"
    assert (out["op"], out["lane"], out["order_no"]) == ("weigh.frame", "L1", "A-1")


def test_the_demo_runs_its_processes_from_a_store_file(run):
    """`make demo` starts its processes the way `lanecore store up` does: from the store
    file it writes (which `store check` accepts), with the same supervisor, whose
    state file saw each of them ready and then stopped, none restarted."""
    from clirun import lanecore
    store = run[0]
    r = lanecore("store", "check", store.dir / "store.toml", "--json")
    assert json.loads(r.stdout)["order"] == ["serve", "prov-wechat", "prov-alipay",
                                             "prov-bank", "payments", "coupons"]
    state = json.loads((store.dir / "run" / "state.json").read_text())
    assert state["running"] is False and set(state["processes"]) == {
        "serve", "prov-wechat", "prov-alipay", "prov-bank", "payments", "coupons"}
    for name, p in state["processes"].items():
        assert p["state"] == "stopped" and p["restarts"] == 0, (name, p)
        assert p["ready"]["ready"] is True, (name, p)      # its own ready line was seen
