"""`lanecore store up|check|status|down` (gateway/supervisor.py): the example store file
of docs/examples/store.toml run for real — every process killed with -9 comes back and
answers again, `down` and a killed supervisor leave no process behind — and every bad
store file refused with BAD_CONFIG naming what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lanecore.gateway.net.client import Client, ServiceError
from clirun import lanecore
from repo import REPO

EXAMPLE = REPO / "docs" / "examples" / "store.toml"
#: process name -> the ipc socket it answers `hello` on (relative to the store's dir)
ANSWERS = {"serve": "run/service.ipc", "payments": "run/payments.ipc",
           "coupons": "run/coupons.ipc"}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _status(d: Path) -> tuple[int, dict]:
    r = lanecore("store", "status", d / "store.toml", "--json", check=False)
    return r.returncode, json.loads(r.stdout)


def _answers(d: Path, name: str) -> bool:
    """Whether the process answers `hello` on its socket (one short try)."""
    try:
        with Client(f"ipc://{d / ANSWERS[name]}", timeout_s=3.0, retries=0,
                    connect_timeout_s=3.0) as c:
            return isinstance(c.hello(), dict)
    except ServiceError:
        return False


def _wait(what, timeout_s: float = 60.0, step: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """`lanecore store up` on a copy of the example store file, for this module; its
    directory and the `up` process. Stopped (and checked empty) at the end."""
    d = tmp_path_factory.mktemp("store")
    shutil.copy(EXAMPLE, d / "store.toml")
    err = open(d / "up.err", "wb")
    up = subprocess.Popen([sys.executable, "-m", "lanecore", "store", "up",
                           str(d / "store.toml"), "--json"], stdout=subprocess.PIPE,
                          stderr=err, cwd=d)
    line = up.stdout.readline()          # the ready line, once every process is ready
    assert line, f"store up ended: {(d / 'up.err').read_text()}"
    ready = json.loads(line)
    assert ready["ready"] is True and set(ready["processes"]) == {
        "serve", "provider-wechat", "payments", "coupons"}, ready
    yield d, up, ready
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    err.close()


def test_check_names_the_order_and_accepts_the_example(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "store.toml")
    r = lanecore("store", "check", tmp_path / "store.toml", "--json")
    out = json.loads(r.stdout)
    assert out["order"] == ["serve", "provider-wechat", "payments", "coupons"], out
    assert out["dir"] == str(tmp_path) and not (tmp_path / "run").exists()   # nothing run


BAD = {
    "unknown store key": ('[store]\nnmae = "x"\n[process.a]\ncommand = ["info"]\n', "nmae"),
    "unknown process key": ('[process.a]\ncomand = ["info"]\n', "comand"),
    "no command": ('[process.a]\nafter = []\n', "no command"),
    "not lanecore": ('[process.a]\ncommand = ["rm", "-rf", "x"]\n', "process.a"),
    "bad option": ('[process.a]\ncommand = ["serve", "--bnd", "x"]\n', "--bnd"),
    "bad address": ('[process.a]\ncommand = ["serve", "--bind", "tcp://127.0.0.1:99999"]\n',
                    "99999"),
    "after unknown": ('[process.a]\ncommand = ["info"]\nafter = ["b"]\n', "'b'"),
    "cycle": ('[process.a]\ncommand = ["info"]\nafter = ["b"]\n'
              '[process.b]\ncommand = ["info"]\nafter = ["a"]\n', "cycle"),
    "same bind": ('[process.a]\ncommand = ["serve", "--bind", "ipc://x.ipc"]\n'
                  '[process.b]\ncommand = ["serve", "--bind", "ipc://x.ipc", "--events", '
                  '"ipc://e.ipc"]\n', "both bind"),
    "ready line of a process without one": ('[process.a]\ncommand = ["info"]\n'
                                            'ready = "line"\n', "no ready line"),
    "wrong type": ('[store]\nbackoff_s = "fast"\n[process.a]\ncommand = ["info"]\n',
                   "backoff_s"),
    "no process": ('[store]\nname = "x"\n', "no [process"),
    "demo under a supervisor": ('[process.a]\ncommand = ["demo"]\n', "does not run"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_store_files_are_refused_naming_what_is_wrong(tmp_path, case):
    text, needle = BAD[case]
    (tmp_path / "store.toml").write_text(text)
    for cmd in ("check", "up"):
        r = lanecore("store", cmd, tmp_path / "store.toml", check=False, timeout=60)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert "BAD_CONFIG" in r.stderr and needle in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()               # nothing was started


def test_a_missing_store_file_is_a_clear_error(tmp_path):
    r = lanecore("store", "status", tmp_path / "nope.toml", check=False)
    assert r.returncode == 2 and "STORE_FILE_NOT_FOUND" in r.stderr, r.stderr


def test_up_starts_every_process_in_order_and_each_answers(store):
    d, up, ready = store
    code, st = _status(d)
    assert code == 0 and st["running"] and st["supervisor"] == up.pid, st
    assert {n: p["pid"] for n, p in st["processes"].items()} == ready["processes"]
    for name in ANSWERS:
        assert _answers(d, name), name
    started = [line.split("started ")[1].split()[0]
               for line in (d / "up.err").read_text().splitlines() if " started " in line]
    assert started[:4] == ["serve", "provider-wechat", "payments", "coupons"], started
    for name in ready["processes"]:       # each process's own log, and its stdout
        assert (d / "logs" / f"{name}.log").exists()
        assert (d / "logs" / f"{name}.out").stat().st_size > 0
    assert "lanecore serving on ipc://run/service.ipc" in (d / "logs" / "serve.log").read_text()


def test_each_server_printed_its_json_ready_line(store):
    """serve, gateway payments and gateway coupons with --json (added by the
    supervisor), sim provider always: one JSON ready line on stdout (docs/protocol.md,
    "Ready"), which the supervisor keeps in the process's NAME.out."""
    d, _, ready = store
    expect = {"serve": "serve", "payments": "payments", "coupons": "coupons",
              "provider-wechat": "provider-wechat"}
    for name, process in expect.items():
        lines = [json.loads(x) for x in (d / "logs" / f"{name}.out").read_text().splitlines()]
        first = [x for x in lines if x.get("ready") is True][0]
        assert first["process"] == process and first["pid"] == ready["processes"][name]
        assert first["bind"].startswith("ipc://run/"), first
    serve = json.loads((d / "logs" / "serve.out").read_text().splitlines()[0])
    assert serve["events"] == "ipc://run/events.ipc" and serve["workers"] == 1, serve


def test_a_second_up_is_refused_while_the_store_runs(store):
    d, _, _ = store
    r = lanecore("store", "up", d / "store.toml", check=False, timeout=60)
    assert r.returncode == 2 and "STORE_RUNNING" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["serve", "provider-wechat", "payments", "coupons"])
def test_a_process_killed_with_9_is_restarted_and_answers_again(store, name):
    d, _, _ = store
    _, st = _status(d)
    old, restarts = st["processes"][name]["pid"], st["processes"][name]["restarts"]
    os.kill(old, signal.SIGKILL)

    def back():
        code, now = _status(d)
        p = now["processes"][name]
        return code == 0 and p["pid"] not in (None, old) and p["state"] == "ready" and p
    p = _wait(back)
    assert p["restarts"] == restarts + 1 and p["last_exit"] == -9, p
    if name in ANSWERS:
        assert _wait(lambda: _answers(d, name), 30), name
    log = (d / "up.err").read_text()
    assert f"{name} exited (signal 9); restarting in" in log, log[-2000:]
    assert f"{name} ready again (restart {restarts + 1})" in log, log[-2000:]


def test_down_stops_everything_and_leaves_no_process(store):
    d, up, _ = store
    _, st = _status(d)
    pids = [p["pid"] for p in st["processes"].values()]
    assert all(pids) and all(map(_alive, pids))
    r = lanecore("store", "down", d / "store.toml", timeout=120)
    assert "stopped" in r.stderr
    assert up.wait(30) == 0
    assert not any(map(_alive, pids)), [p for p in pids if _alive(p)]
    code, st = _status(d)
    assert code == 3 and not st["running"], st
    assert all(p["state"] == "stopped" and p["pid"] is None for p in st["processes"].values())
    log = (d / "up.err").read_text().splitlines()
    stops = [line.split("stopping ")[1] for line in log if "stopping " in line]
    assert stops == ["coupons", "payments", "provider-wechat", "serve"], stops  # reverse


def test_a_killed_supervisor_takes_its_processes_with_it(tmp_path):
    """SIGKILL to `store up` itself: the kernel ends its children (PR_SET_PDEATHSIG);
    `store down` then finds nothing running and nothing left."""
    shutil.copy(EXAMPLE, tmp_path / "store.toml")
    up = subprocess.Popen([sys.executable, "-m", "lanecore", "store", "up",
                           str(tmp_path / "store.toml"), "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL)
    pids = list(json.loads(up.stdout.readline())["processes"].values())
    assert all(map(_alive, pids))
    up.kill()
    up.wait()
    _wait(lambda: not any(map(_alive, pids)), 30)
    r = lanecore("store", "down", tmp_path / "store.toml")
    assert "was not running" in r.stderr
    code, _ = _status(tmp_path)
    assert code == 3


def test_a_process_that_cannot_start_fails_up_and_nothing_stays(tmp_path):
    """The coupon gateway's data directory would be under a regular file (it exits 2,
    BAD_DATA_DIR): `up` says which process and where its log is, exits 2 and
    stops the processes it had started, the last first."""
    text = EXAMPLE.read_text().replace('"--data-dir",\n           "coupons", "--dev-open"',
                                       '"--data-dir",\n           "blocker/coupons", "--dev-open"')
    assert text != EXAMPLE.read_text()
    (tmp_path / "store.toml").write_text(text)
    (tmp_path / "blocker").write_text("a file, not a directory")
    r = lanecore("store", "up", tmp_path / "store.toml", check=False, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "STORE_START_FAILED" in r.stderr and "coupons exited" in r.stderr, r.stderr
    assert "BAD_DATA_DIR" in (tmp_path / "logs" / "coupons.log").read_text()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"].values() if p["pid"]]
    assert not any(map(_alive, pids))
    assert [line for line in r.stderr.splitlines() if "stopping " in line] == [
        "store example: stopping payments", "store example: stopping provider-wechat",
        "store example: stopping serve"], r.stderr
