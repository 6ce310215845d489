"""Files and directories (issue 13, item 7; docs/security.md): every lanecore process
runs under umask 077, data and key directories are created 0700, key files are
written 0600 (O_EXCL under a temporary name, renamed into place), SQLite databases
and their -wal/-shm are 0600, and start-up refuses with BAD_PERMISSIONS, naming the
path, a key file or key directory that the group or others may use.

Mostly against real processes: the command line, a running payment gateway."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth
from payfix import start_gateway

from lanecore.gateway.net.client import Client, CurveKeys, ServiceError
from clirun import lanecore as run_cli


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def lanecore(*args, env=None, timeout=60):
    return run_cli(*args, check=False, env=env, timeout=timeout)


@pytest.fixture
def wide_umask():
    """The test process under umask 022, as a shell usually is: a lanecore process
    started from it must not inherit it, and an in-process opener must not rely
    on it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# --------------------------------------------------------------------------------------
# The payment gateway's database while it runs
# --------------------------------------------------------------------------------------

def test_a_running_gateway_keeps_its_database_wal_shm_and_directories_private(
        tmp_path, wide_umask):
    data = tmp_path / "site" / "payments"          # neither exists: lanecore makes both
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    key_file = tmp_path / "pos1.key"
    key_file.write_text("an old key\n")            # 0644: what a shell leaves
    assert mode(key_file) == 0o644
    proc = start_gateway("payments", data, endpoint)
    try:
        # a terminal registered while the gateway runs: its key goes to the WAL first
        r = lanecore("terminal", "add", "POS-1", "--key-file", key_file,
                     "--data-dir", data)
        assert r.returncode == 0, r.stderr
        key = json.loads(r.stdout)["key"]
        with Client(endpoint, timeout_s=5, retries=1) as c:
            assert c.call("hello")                   # still serving, the WAL in use
        for name in ("payments.db", "payments.db-wal", "payments.db-shm"):
            assert (data / name).exists(), name
            assert mode(data / name) == 0o600, (name, oct(mode(data / name)))
        assert mode(data) == 0o700 and mode(data.parent) == 0o700
        # the key file was replaced, not rewritten in place at its old mode
        assert key_file.read_text() == key + "\n" and mode(key_file) == 0o600
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pos1")] == []
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, proc.stderr.read()


def test_a_database_left_readable_by_others_is_made_private_when_opened(
        tmp_path, wide_umask):
    """The observed attack: payments.db 0600, but -wal and -shm made 0644 by an
    earlier process. Opening the database makes all three 0600."""
    data = tmp_path / "payments"
    data.mkdir()
    con = sqlite3.connect(data / "payments.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE scratch (x)")
    con.execute("INSERT INTO scratch VALUES (1)")   # -wal and -shm exist, held open
    try:
        for name in ("payments.db", "payments.db-wal", "payments.db-shm"):
            assert mode(data / name) == 0o644, name  # the precondition of the attack
        proc = start_gateway("payments", data, f"ipc://{tmp_path}/pay.ipc")
        try:
            for name in ("payments.db", "payments.db-wal", "payments.db-shm"):
                assert mode(data / name) == 0o600, (name, oct(mode(data / name)))
        finally:
            proc.terminate()
            assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        con.close()


def _ledger(path):
    from lanecore.core.pay.ledger import Ledger
    return Ledger.open(path).con


def _catalog(path):
    from lanecore.core.scan.catalog import connect
    return connect(path)


def _till(path):
    from lanecore.gateway.till import open_store_db
    return open_store_db(path)


def _provider(path):
    from lanecore.gateway.sim.provider import Behaviour, Provider
    return Provider("wechat", path.parent, Behaviour()).con


@pytest.mark.parametrize("opener, name", [(_ledger, "payments.db"), (_catalog, "store.db"),
                                          (_till, "store.db"),
                                          (_provider, "wechat.sqlite")])
def test_every_opener_makes_its_database_private_whatever_the_umask(tmp_path, wide_umask,
                                                                   opener, name):
    path = tmp_path / name
    con = opener(path)
    try:
        con.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
        con.execute("INSERT INTO scratch VALUES (1)")
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert p.exists() and mode(p) == 0o600, (p.name, oct(mode(p)))
    finally:
        con.close()
    for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm"))):
        if p.exists():
            os.chmod(p, 0o644)                      # spoiled behind its back
    con = opener(path)
    try:
        assert mode(path) == 0o600
        for s in ("-wal", "-shm"):
            if Path(f"{path}{s}").exists():
                assert mode(f"{path}{s}") == 0o600, s
    finally:
        con.close()


# --------------------------------------------------------------------------------------
# The process umask
# --------------------------------------------------------------------------------------

def test_every_lanecore_process_runs_under_umask_077(tmp_path, wide_umask):
    out = tmp_path / "catalog.csv"
    r = lanecore("catalog", "gen", "--rows", "5", "--out", out)
    assert r.returncode == 0, r.stderr
    assert mode(out) == 0o600                       # the parent's umask is 022


def test_cli_main_in_process_restores_the_callers_umask(tmp_path, wide_umask, capsys):
    from lanecore import cli
    assert cli.main(["info", "--data-dir", str(tmp_path)]) == 0
    assert os.umask(0o022) == 0o022


# --------------------------------------------------------------------------------------
# Curve keys
# --------------------------------------------------------------------------------------

def test_keys_gen_makes_the_key_directories_0700_and_the_key_files_0600(tmp_path,
                                                                        wide_umask):
    data = tmp_path / "store"
    r = lanecore("keys", "gen", "--server", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    keys = data / "keys"
    assert mode(data) == 0o700 and mode(keys) == 0o700
    assert Path(made["secret"]) == keys / "server.key_secret"
    for name in ("server.key", "server.key_secret"):
        assert mode(keys / name) == 0o600, name
    assert sorted(p.name for p in keys.iterdir()) == ["server.key", "server.key_secret"]
    public, secret = zmq.auth.load_certificate(keys / "server.key_secret")
    assert zmq.auth.load_certificate(keys / "server.key") == (public, None)
    assert secret and len(public) == len(secret) == 40
    devdir = tmp_path / "till1"
    r = lanecore("keys", "gen", "--name", "till1", "--role", "till", "--dir", devdir)
    assert r.returncode == 0, r.stderr
    assert mode(devdir) == 0o700
    assert mode(devdir / "till1.key") == mode(devdir / "till1.key_secret") == 0o600


def test_generate_is_private_under_any_umask_and_keeps_the_certificate_format(tmp_path):
    from lanecore.gateway.net.security import generate, load_keypair
    old = os.umask(0)
    try:
        public, secret = generate(tmp_path / "a" / "keys", "till-1",
                                  metadata={"role": "till"})
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "keys") == 0o700
    assert mode(public) == mode(secret) == 0o600
    assert sorted(os.listdir(public.parent)) == ["till-1.key", "till-1.key_secret"]
    pub, sec = load_keypair(secret)
    assert zmq.auth.load_certificate(public) == (pub, None)
    assert zmq.auth.load_certificate(secret) == (pub, sec)
    text = secret.read_text()
    assert "metadata\n    role = till\ncurve\n" in text and "DO NOT PROVIDE" in text
    # a new keypair replaces the old one whole, still 0600
    _, secret2 = generate(tmp_path / "a" / "keys", "till-1")
    assert load_keypair(secret2) != (pub, sec) and mode(secret2) == 0o600


@pytest.fixture
def curve_store(tmp_path):
    """A payment gateway's data directory with a server key and one device allowed,
    and a check that `lanecore gateway payments --curve` starts and answers that
    device over CurveZMQ (any answer: which ops it may call is not this test's)."""
    data = tmp_path / "pay"
    r = lanecore("keys", "gen", "--server", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    r = lanecore("keys", "gen", "--name", "pos1", "--role", "pos", "--dir", tmp_path / "pos1")
    assert r.returncode == 0, r.stderr
    (data / "keys" / "devices").mkdir(mode=0o700)
    shutil.copy(tmp_path / "pos1" / "pos1.key", data / "keys" / "devices" / "pos1.key")

    def serves() -> bool:
        endpoint = f"ipc://{tmp_path}/curve.ipc"
        proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", "payments",
                                 "--curve", "--bind", endpoint, "--data-dir", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            keys = CurveKeys.from_files(data / "keys" / "server.key",
                                        tmp_path / "pos1" / "pos1.key_secret")
            with Client(endpoint, curve=keys, timeout_s=5, retries=3) as c:
                try:
                    return bool(c.call("hello"))
                except ServiceError as e:   # an answer all the same: the handshake
                    return e.code not in ("TIMEOUT", "UNAVAILABLE")  # passed
        finally:
            proc.terminate()
            proc.wait(10)
    return data, serves


@pytest.mark.parametrize("spoil, new_mode", [
    ("keys/server.key_secret", 0o644), ("keys/server.key_secret", 0o640),
    ("keys", 0o755), ("keys/devices", 0o755), ("keys/devices", 0o730)])
def test_the_server_refuses_keys_others_may_use_naming_the_path(curve_store, spoil,
                                                                new_mode):
    data, serves = curve_store
    assert serves()                                 # as made, the keys are fine
    target = data / spoil
    os.chmod(target, new_mode)
    r = lanecore("gateway", "payments", "--curve", "--bind",
                 f"ipc://{data.parent}/refused.ipc", "--data-dir", data)
    assert r.returncode == 2, r.stderr
    assert "BAD_PERMISSIONS" in r.stderr and f"{target} has mode" in r.stderr, r.stderr
    assert mode(target) == new_mode                 # reported, not silently changed
    os.chmod(target, 0o600 if target.is_file() else 0o700)
    assert serves()


def test_the_verification_service_refuses_a_key_directory_others_can_read(tmp_path):
    data = tmp_path / "store"
    assert lanecore("keys", "gen", "--server", "--data-dir", data).returncode == 0
    os.chmod(data / "keys", 0o755)
    r = lanecore("serve", "--curve", "--bind", f"ipc://{tmp_path}/s.ipc", "--events",
                 f"ipc://{tmp_path}/e.ipc", "--data-dir", data)
    assert r.returncode == 2, r.stderr
    assert "BAD_PERMISSIONS" in r.stderr and str(data / "keys") in r.stderr, r.stderr


def test_a_device_refuses_its_own_secret_key_readable_by_others(tmp_path):
    from lanecore.core.errors import LanecoreError
    from lanecore.gateway.net.security import generate
    server_public, _ = generate(tmp_path / "srv", "server")
    _, secret = generate(tmp_path / "dev", "till1")
    CurveKeys.from_files(server_public, secret)
    os.chmod(secret, 0o644)
    with pytest.raises(LanecoreError) as e:
        CurveKeys.from_files(server_public, secret)
    assert e.value.code == "BAD_PERMISSIONS" and str(secret) in e.value.message


def test_a_terminal_key_in_the_coupon_gateways_config_must_be_private(tmp_path):
    from lanecore.core.errors import LanecoreError
    from lanecore.gateway.coupons import CouponGateway
    data = tmp_path / "coupons"
    data.mkdir()
    cfg = data / "coupons.toml"
    cfg.write_text('[payments]\nendpoint = "ipc:///nowhere"\nterminal = "COUPONS"\n'
                   'key = "not-read-here"\n')
    os.chmod(cfg, 0o644)
    with pytest.raises(LanecoreError) as e:
        CouponGateway(data)
    assert e.value.code == "BAD_PERMISSIONS" and str(cfg) in e.value.message
    os.chmod(cfg, 0o600)
    CouponGateway(data).close()
