"""The ``lanecore`` command, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lanecore.ext.gs1data import ERROR_CODES

EXAMPLE_CONFIG = Path(__file__).parents[2] / "docs" / "examples" / "lanecore.toml"
ROW_KEYS = ["input", "ok", "kind", "gtin", "lookup_gtin", "price_minor", "weight_g",
            "count", "ais", "error"]


def run(*args, data_dir=None, stdin=None, env=None):
    e = dict(os.environ, **(env or {}))
    if data_dir is not None:
        e["LANECORE_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "lanecore", *map(str, args)],
                          input=stdin, capture_output=True, env=e, timeout=300)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "store"


def rows(proc):
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_scan_parse_json_rows(data_dir):
    p = run("scan", "parse", "--json", "--region", "gb", "2011122912346",
            "]C10105901234123457\x1d10AB1", "5901234123458", data_dir=data_dir)
    assert p.returncode == 1          # one input was bad
    out = rows(p)
    assert [list(r) for r in out] == [ROW_KEYS] * 3
    assert out[0]["price_minor"] == 1234 and out[0]["lookup_gtin"] == "02011122000005"
    assert out[1]["ais"] == {"01": "05901234123457", "10": "AB1"}
    assert out[2]["error"]["code"] == "BAD_CHECK_DIGIT"


def test_scan_parse_file_splits_on_newlines_only(tmp_path, data_dir):
    f = tmp_path / "scans.txt"
    f.write_bytes(b"5901234123457\r\n]C10105901234123457\x1d10L1\x1d21S9\n\n"
                  b"\xff\xfe\n96385074")
    p = run("scan", "parse", "--file", f, "--json", data_dir=data_dir)
    out = rows(p)
    assert len(out) == 5
    assert out[0]["ok"] and out[0]["input"] == "5901234123457\r"
    assert out[1]["ais"] == {"01": "05901234123457", "10": "L1", "21": "S9"}
    assert out[2]["error"]["code"] == "EMPTY"
    assert out[3]["error"]["code"] == "NON_ASCII"      # undecodable bytes are not a crash
    assert out[4]["gtin"] == "00000096385074"
    assert p.returncode == 1


def test_scan_parse_stdin_and_all_good_exit_zero(data_dir):
    p = run("scan", "parse", "--file", "-", "--json", stdin=b"5901234123457\n96385074\n",
            data_dir=data_dir)
    assert p.returncode == 0 and len(rows(p)) == 2


def test_scan_parse_never_crashes_on_garbage(tmp_path, data_dir):
    f = tmp_path / "garbage.bin"
    f.write_bytes(bytes(range(256)) * 4 + b"\n" + b"9" * 10000 + b"\n\x00\x1d\x1d\n")
    p = run("scan", "parse", "--file", f, "--json", data_dir=data_dir)
    assert p.returncode == 1
    for r in rows(p):
        assert r["ok"] or r["error"]["code"] in ERROR_CODES


def test_human_output(data_dir):
    p = run("scan", "parse", "]E004252614", "x1", data_dir=data_dir)
    lines = p.stdout.decode().splitlines()
    assert lines[0].startswith("OK") and "00042100005264" in lines[0]
    assert lines[1].startswith("ERR") and "NON_DIGIT" in lines[1]


@pytest.mark.parametrize("args", [["scan", "parse", "--region", "GBR", "1"],
                                  ["scan", "parse"],
                                  ["catalog", "gen", "--rows", "0", "--out", "x.csv"]])
def test_usage_errors_exit_2(args, data_dir):
    p = run(*args, data_dir=data_dir)
    assert p.returncode == 2
    assert p.stderr


def test_bad_config_is_a_clear_error(data_dir):
    data_dir.mkdir(parents=True)
    (data_dir / "lanecore.toml").write_text("[store]\nregion = 'Britain'\n")
    p = run("scan", "parse", "5901234123457", data_dir=data_dir)
    assert p.returncode == 2
    assert b"BAD_CONFIG" in p.stderr and b"store.region" in p.stderr


def test_store_region_and_tables_from_config(data_dir):
    data_dir.mkdir(parents=True)
    (data_dir / "lanecore.toml").write_text(EXAMPLE_CONFIG.read_text())
    out = rows(run("scan", "parse", "--json", "2012345012349", data_dir=data_dir))
    assert out[0]["price_minor"] == 1234 and out[0]["lookup_gtin"] == "02012345000001"


def test_catalog_gen_import_lookup(tmp_path, data_dir):
    csv_path = tmp_path / "cat.csv"
    p = run("catalog", "gen", "--rows", 3000, "--out", csv_path, "--seed", 3,
            data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    p = run("catalog", "import", csv_path, "--json", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["rows_imported"] == 3000 and summary["rows_bad"] == 0
    assert b"rows" in p.stderr                      # progress was shown
    first = csv_path.read_text().splitlines()[1].split(",")[0]
    p = run("catalog", "lookup", "--json", first, "5901234123458", "4006381333932",
            data_dir=data_dir)
    out = rows(p)
    assert out[0]["found"] and out[0]["item"]["gtin"].endswith(first)
    assert out[1]["error"]["code"] == "BAD_CHECK_DIGIT"
    assert p.returncode == 1


def test_catalog_import_reports_bad_rows(tmp_path, data_dir):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("gtin,name,price_minor\n5901234123457,Soap,199\n"
                        "5901234123458,Bad check,100\n96385074,Cheese,12.50\n")
    p = run("catalog", "import", csv_path, data_dir=data_dir)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert f"{csv_path}:3: BAD_GTIN" in err and f"{csv_path}:4: BAD_PRICE" in err
    assert "imported 1 of 3 rows" in p.stdout.decode()


def test_info_reports_compiled_or_twin(data_dir):
    info = json.loads(run("info", data_dir=data_dir).stdout)
    want = "python" if os.environ.get("LANECORE_PURE") == "1" else "cython"
    assert info["kernels"] == {"barcode": want, "lookup": want}
    assert "GB" in info["regions"]


def test_demo_runs_a_small_store_and_its_json_summary_reconciles(tmp_path):
    p = run("demo", "--shoppers", 16, "--seed", 3, "--json", "--data-dir", tmp_path / "demo")
    assert p.returncode == 0, p.stdout.decode()[-2000:] + p.stderr.decode()[-3000:]
    s = json.loads(p.stdout)
    for key in ("orders", "paid", "exited", "payments_by_channel", "alarms",
                "injected_thefts", "thefts_alarmed", "honest_alarmed", "audits",
                "ledger_balanced", "latency_ms"):
        assert key in s, key
    assert set(s["latency_ms"]) >= {"p50", "p99"} and s["latency_ms"]["p99"] > 0
    assert s["paid"] == s["exited"] + s["inside"] and s["ledger_balanced"] is True
    assert s["checks_failed"] == [] and s["journey_errors"] == 0
    assert sum(v["count"] for v in s["payments_by_channel"].values()) == s["paid"]
    p = run("demo", "--shoppers", 6, "--seed", 3, "--data-dir", tmp_path / "demo2")
    assert p.returncode == 0 and "every check passed" in p.stdout.decode()


def test_demo_stores_runs_a_chain_whose_books_equal_every_stores_ledger(tmp_path):
    """`lanecore demo --stores N` (docs/chain.md): real PostgreSQL and NATS, HQ and a
    store whose link is cut and restored; every store's ledger equals HQ's copy."""
    p = run("demo", "--stores", 1, "--shoppers", 6, "--cut-s", 1, "--seed", 5, "--json",
            "--data-dir", tmp_path / "chain")
    assert p.returncode == 0, p.stdout.decode()[-2000:] + p.stderr.decode()[-3000:]
    s = json.loads(p.stdout)
    assert s["checks_failed"] == [] and s["chain_balanced"] is True
    assert s["stores"] == 1 and set(s["books"]) == {"S1"}
    b = s["books"]["S1"]
    assert b["equal"] and b["store"]["net_minor"] == b["hq"]["net_minor"] > 0
    from lanecore.gateway.chain.link import BOOK_KINDS
    assert {k: v for k, v in b["hq"]["events"].items() if k in BOOK_KINDS} == \
        b["store"]["events"] and b["store"]["events"]["payment"] > 0
    assert s["price_applied_s"]["S1"] is not None and s["cut"][0].startswith("S1 cut for")
    assert {"postgres", "nats-server", "hq", "S1/serve", "S1/link"} <= set(s["cpu_s"])
    p = run("demo", "--stores", 0, "--data-dir", tmp_path / "chain2")
    assert p.returncode == 2 and b"BAD_ARGUMENT" in p.stderr


def test_output_closed_early_is_not_an_error(tmp_path, data_dir):
    f = tmp_path / "many.txt"
    f.write_text("5901234123457\n" * 200_000)
    env = dict(os.environ, LANECORE_DATA_DIR=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "scan", "parse", "--file",
                             str(f), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()                      # like `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert json.loads(first)["ok"] and err == b""


def test_weigh_gen_and_replay(tmp_path, data_dir):
    trace = tmp_path / "t.csv"
    p = run("weigh", "gen", "--out", trace, "--seed", 4, "--items", 2, "--mains-g", 1.5,
            data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    truth = json.loads((tmp_path / "t.truth.json").read_text())
    p = run("weigh", "replay", trace, "--fs", 1000, "--json", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    events = rows(p)
    assert all({"t", "event", "weight_g", "sigma_g"} <= set(e) for e in events)
    settled = [e for e in events if e["event"] == "settled"]
    assert [round(e["weight_g"] / 5) for e in settled[1:]] == \
        [round(pl["after_g"] / 5) for pl in truth["placements"]]
    placed = [e for e in events if e["event"] == "placed"]
    assert len(placed) == 2 and placed[0]["delta_g"] > 0


def test_weigh_replay_raw_counts(tmp_path, data_dir):
    trace = tmp_path / "c.csv"
    run("weigh", "gen", "--out", trace, "--counts-per-g", 250, "--zero", 12000,
        "--items", 1, data_dir=data_dir)
    truth = json.loads((tmp_path / "c.truth.json").read_text())
    events = rows(run("weigh", "replay", trace, "--fs", 1000, "--counts-per-g", 250,
                      "--zero", 12000, "--json", data_dir=data_dir))
    last = [e for e in events if e["event"] == "settled"][-1]
    assert last["weight_g"] == pytest.approx(truth["placements"][0]["after_g"], abs=5)


def test_weigh_replay_bad_samples_and_files(tmp_path, data_dir):
    trace = tmp_path / "bad.csv"
    noisy = [f"{100 + 0.3 * ((i * 7919) % 13 - 6) / 6:.3f}\n" for i in range(800)]
    trace.write_text("grams\n" + "".join(noisy[:400]) + "nan\n" + "".join(noisy[400:]))
    p = run("weigh", "replay", trace, "--fs", 1000, "--json", data_dir=data_dir)
    assert p.returncode == 1                          # a fault was seen
    assert [e["reason"] for e in rows(p) if e["event"] == "fault"] == ["nan"]
    trace.write_text("grams\n100\n1O0\n")
    p = run("weigh", "replay", trace, "--fs", 1000, data_dir=data_dir)
    assert p.returncode == 2 and b"BAD_TRACE" in p.stderr and b":3:" in p.stderr
    p = run("weigh", "replay", trace, "--fs", 0, data_dir=data_dir)
    assert p.returncode == 2 and b"BAD_SAMPLE_RATE" in p.stderr
    p = run("weigh", "replay", tmp_path / "missing.csv", "--fs", 1000, data_dir=data_dir)
    assert p.returncode == 2 and b"CANNOT_READ" in p.stderr


def test_verify_command(tmp_path, data_dir):
    order = tmp_path / "order.json"
    order.write_text(json.dumps({"lines": [
        {"gtin": "5901234123457", "qty": 2, "unit_weight_g": 410.0, "weight_sd_g": 6.0},
        {"gtin": "96385074", "qty": 1, "unit_weight_g": 1020.0, "weight_sd_g": 12.0}]}))
    ok = json.loads(run("verify", "--order", order, "--measured-g", 1838, "--json",
                        data_dir=data_dir).stdout)
    assert ok["verdict"] == "ok" and ok["expected_g"] == 1840.0 and ok["explanations"] == []
    short = json.loads(run("verify", "--order", order, "--measured-g", 1430, "--json",
                           data_dir=data_dir).stdout)
    assert short["verdict"] == "short" and short["z"] < -3
    top = short["explanations"][0]
    assert (top["kind"], top["gtin"], top["qty"]) == ("missing", "05901234123457", 1)
    p = run("verify", "--order", order, "--measured-g=-1e9", data_dir=data_dir)
    assert p.returncode == 2 and b"BAD_MEASUREMENT" in p.stderr
    order.write_text('{"lines": []}')
    p = run("verify", "--order", order, "--measured-g", 100, data_dir=data_dir)
    assert p.returncode == 2 and b"EMPTY_ORDER" in p.stderr
