"""Issue 14, item 4: the rough edges a newcomer hit, each refused with a clear
``lanecore: CODE: message`` (exit 2, or 1 for bad data) and never a traceback — run
as the real ``lanecore`` command."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from clirun import lanecore


def refused(r, code: str, *, status: int = 2, names: str | None = None) -> str:
    """``r`` exited ``status`` with ``lanecore: CODE: …`` on stderr, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert f"lanecore: {code}: " in r.stderr, r.stderr
    if names is not None:
        assert names in r.stderr, r.stderr
    return r.stderr


# -- 1. recon on the demo's own books ----------------------------------------------

def test_recon_on_the_demos_books_is_clean(tmp_path):
    d = tmp_path / "demo"
    r = lanecore("demo", "--shoppers", 30, "--seed", 3, "--json", "--data-dir", d,
                 check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    pay = d / "pay"
    (bill,) = {p.name[-14:-4] for p in (pay / "bills").glob("*.csv")}   # the day
    # the gateway's own copies, named by channel; cash from the drawer's record
    r = lanecore("recon", "--date", bill, "--ledger", pay / "payments.db",
                 "--bills", pay / "bills", "--json", check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["clean"] and rep["local"] == ["cash"] and rep["unreconciled"] == {}
    assert rep["totals"]["cash"]["charges"] == rep["totals"]["cash"]["ledger_paid"] > 0
    # the simulators' bills, named by provider: bank-DATE.csv is the card channel's
    provs = [a for k in ("wechat", "alipay", "bank") for a in ("--bills", d / f"prov-{k}" / "bills")]
    r = lanecore("recon", "--date", bill, "--ledger", pay / "payments.db", *provs,
                 check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "reconciliation: clean" in r.stdout and "bank-" in r.stdout
    # one channel's bill twice over is refused, not double counted
    r = lanecore("recon", "--date", bill, "--ledger", pay / "payments.db", "--bills",
                 pay / "bills", "--bills", d / "prov-bank" / "bills", check=False)
    refused(r, "DUPLICATE_BILL", names="card")


# -- 2. a data directory nothing can be written in ---------------------------------
# Tests run as root, which ignores permission bits: /proc/self/fdinfo is a directory
# even root cannot create a file in; a path under a regular file cannot be a directory.

UNWRITABLE = Path("/proc/self/fdinfo")


@pytest.mark.parametrize("args", [
    ("terminal", "add", "T1"),
    ("terminal", "list"),
    ("keys", "gen", "--server"),
    ("gateway", "coupons", "--dev-open", "--bind", "ipc://{tmp}/c.ipc"),
    ("sim", "provider", "--kind", "bank", "--bind", "ipc://{tmp}/p.ipc"),
])
def test_read_only_data_dir_is_a_clear_error(tmp_path, args):
    assert UNWRITABLE.is_dir(), "this test needs Linux's /proc (the machines lanecore runs on)"
    args = [a.format(tmp=tmp_path) for a in args] + ["--data-dir", UNWRITABLE]
    refused(lanecore(*args, check=False, timeout=60), "DATA_DIR_READ_ONLY",
            names=str(UNWRITABLE))


def test_data_dir_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    r = lanecore("sim", "provider", "--kind", "bank", "--data-dir", tmp_path / "file" / "d",
                 check=False, timeout=60)
    refused(r, "DATA_DIR_READ_ONLY", names=str(tmp_path / "file" / "d"))


# -- 3. addresses --------------------------------------------------------------------

@pytest.mark.parametrize("args, bad", [
    (("serve", "--bind", "tcp://127.0.0.1:99999"), "tcp://127.0.0.1:99999"),
    (("serve", "--bind", "5560"), "5560"),
    (("serve", "--events", "tcp://127.0.0.1:0"), "tcp://127.0.0.1:0"),
    (("gateway", "payments", "--dev-open", "--bind", "5560"), "5560"),
    (("gateway", "coupons", "--dev-open", "--bind", "tcp://127.0.0.1:65536"),
     "tcp://127.0.0.1:65536"),
    (("sim", "provider", "--kind", "bank", "--bind", "tcp://localhost"), "tcp://localhost"),
])
def test_malformed_addresses_are_refused(tmp_path, args, bad):
    r = lanecore(*args, "--data-dir", tmp_path / "d", check=False, timeout=60)
    err = refused(r, "BAD_ADDRESS", names=bad)
    assert "not loopback" not in err


def test_cannot_bind_names_the_address_that_is_taken(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    events = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
    try:
        r = lanecore("serve", "--bind", f"tcp://127.0.0.1:{port}", "--events", events,
                     "--data-dir", tmp_path / "d", check=False, timeout=60)
    finally:
        taken.close()
    err = refused(r, "CANNOT_BIND", names=events)
    assert f":{port}" not in err


# -- 4. one region check ---------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("scan", "parse", "--region", "XX", "5901234123457"),
    ("catalog", "lookup", "--region", "XX", "5901234123457"),
    ("catalog", "gen", "--rows", "2", "--out", "{tmp}/c.csv", "--region", "XX"),
])
def test_unknown_region_is_refused_by_every_command(tmp_path, args):
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] != "catalog" or args[1] != "gen":
        args += ["--data-dir", tmp_path / "d"]
    refused(lanecore(*args, check=False), "UNKNOWN_REGION", names="XX")


# -- 5. numbers in range ---------------------------------------------------------------

def test_numbers_out_of_range_are_refused(tmp_path):
    order = tmp_path / "order.json"
    order.write_text(json.dumps({"lines": [{"gtin": "05901234123457", "qty": 1,
                                            "unit_weight_g": 500, "weight_sd_g": 5}]}))
    for args, option, code in (
            (("weigh", "gen", "--items", "-1", "--out", tmp_path / "t.csv"), "--items",
             "BAD_ARGUMENT"),
            (("weigh", "gen", "--fs", "0", "--out", tmp_path / "t.csv"), "--fs",
             "BAD_ARGUMENT"),
            (("weigh", "gen", "--fs", "nan", "--out", tmp_path / "t.csv"), "--fs",
             "BAD_ARGUMENT"),
            (("demo", "--shoppers", "-1", "--data-dir", tmp_path / "demo"), "--shoppers",
             "BAD_ARGUMENT"),
            # a weight is the measurement's own code, as below -10 e always was
            (("verify", "--order", order, "--measured-g", "1e300",
              "--data-dir", tmp_path / "d"), "--measured-g", "BAD_MEASUREMENT")):
        err = refused(lanecore(*args, check=False), code, names=option)
        assert " must be " in err and "–" in err, err          # the allowed range
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "demo").exists()
    r = lanecore("verify", "--order", order, "--measured-g", "510",
                 "--data-dir", tmp_path / "d", check=False)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr


# -- 6. payment QR codes ---------------------------------------------------------------

SHOP = ("qr", "mpm", "--currency", "156", "--country", "CN", "--merchant-name", "MART",
        "--city", "SHENZHEN")


def test_qr_without_a_merchant_account_is_refused():
    refused(lanecore(*SHOP, "--amount-minor", "100", check=False), "NO_ACCOUNT")
    assert lanecore(*SHOP, "--amount-minor", "100", "--no-account", "--json",
                    check=False).returncode == 0
    assert lanecore(*SHOP, "--amount-minor", "100", "--gui", "com.lanecore.pay",
                    "--account", "M1", "--json", check=False).returncode == 0
    for amount in ("-5", "0"):
        err = refused(lanecore(*SHOP, "--amount-minor", amount, "--no-account",
                               check=False), "EMV_AMOUNT")
        assert "at least 1" in err and "not a whole number" not in err


# -- 7. a port that does not exist -------------------------------------------------------

def test_probe_of_a_missing_port_says_so(tmp_path):
    port = str(tmp_path / "ttyNOPE")
    err = refused(lanecore("device", "probe", port, check=False), "PORT_NOT_FOUND",
                  names=port)
    assert "NO_SCALE" not in err


# -- 8. configuration keys and types -----------------------------------------------------

def test_misspelt_store_config_key_is_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "lanecore.toml").write_text('[store]\nregoin = "GB"\n')
    refused(lanecore("scan", "parse", "5901234123457", "--data-dir", d, check=False),
            "BAD_CONFIG", names="regoin")
    (d / "lanecore.toml").write_text('[store]\nregion = "GB"\n'
                                     '[rcn.CN]\ncurrency = 5\ncurrency_numeric = 156\n'
                                     'exponent = 2\n[rcn.CN.prefixes]\n'
                                     '"20" = { measure = "price", pattern = "PPPPPPPVVVVV", '
                                     'decimals = 2 }\n')
    refused(lanecore("info", "--data-dir", d, check=False), "BAD_CONFIG", names="currency")
    (d / "lanecore.toml").write_text('[store]\nregion = "GB"\n'
                                     '[payments]\nreceipt_keys = []\n')
    assert lanecore("info", "--data-dir", d, check=False).returncode == 0


@pytest.mark.parametrize("text, names", [
    ("currency = 5\n", "currency"),
    ('[payments]\nendpont = "tcp://127.0.0.1:5560"\n', "endpont"),
    ('[payments]\ntimeout_s = "10"\n', "payments.timeout_s"),
])
def test_coupons_config_keys_and_types_are_checked(tmp_path, text, names):
    d = tmp_path / "coupons"
    d.mkdir()
    (d / "coupons.toml").write_text(text)
    r = lanecore("gateway", "coupons", "--dev-open", "--bind", f"ipc://{tmp_path}/c.ipc",
                 "--data-dir", d, check=False, timeout=60)
    refused(r, "BAD_CONFIG", names=names)


# -- the gateways no longer start silently -------------------------------------------
def test_a_gateway_without_channels_says_so_and_prints_its_ready_line(tmp_path):
    """`gateway payments` with no payments.toml: a warning that every charge will be
    refused, and with --json the ready line on stdout (docs/protocol.md, "Ready")."""
    import subprocess
    import sys
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", "payments",
                             "--bind", endpoint, "--data-dir", str(tmp_path / "pay"),
                             "--dev-open", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] is True and ready["process"] == "payments", ready
        assert ready["bind"] == endpoint and ready["pid"] == proc.pid, ready
        assert ready["mode"] == "dev-open", ready
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "no payment channel is configured" in err and "payments.toml" in err, err
    assert "Traceback" not in err
