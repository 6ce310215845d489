"""A store's processes, run supervised: ``lanecore store up|check|status|down``.

One TOML file (``docs/examples/store.toml``, ``docs/deploy.md``) names a store's
long-running processes — the verification service, the payment and coupon gateways,
the providers or their simulators, lane controllers, tills — each as the
``lanecore`` command line that runs it, with the processes it comes ``after``:

    [store]
    name = "high-street"
    dir = "."                   # the processes' working directory (relative: to this file)

    [process.serve]
    command = ["serve", "--bind", "ipc://run/service.ipc", "--data-dir", "store", "--curve"]

    [process.payments]
    command = ["gateway", "payments", "--bind", "ipc://run/payments.ipc", "--data-dir", "pay"]
    after = ["serve"]

:class:`Supervisor` starts them in dependency order and waits for each to be ready
(the JSON ready line that ``serve``, ``gateway payments|coupons`` print with
``--json`` — added for them — and ``sim provider`` always prints; or, for a process
without one, still running after ``alive_s``); restarts one that exits, after a
back-off that doubles from ``backoff_s`` to ``backoff_max_s`` and starts over once
the process has stayed up ``stable_s``, saying so each time; and stops them in reverse
order (SIGTERM, then SIGKILL after ``stop_timeout_s``). Each child gets SIGTERM from
the kernel if the supervisor itself dies (``PR_SET_PDEATHSIG``), so none is left
behind. A process's stderr (its log) goes to ``LOG_DIR/NAME.log``, its stdout (the
ready line, anything it prints) to ``LOG_DIR/NAME.out``. Its state — pids, states, restarts — is kept in ``RUN_DIR/state.json`` for
``store status``; a lock on ``RUN_DIR/lock`` says a supervisor is running (a second
``up`` is refused: ``STORE_RUNNING``) and ``store down`` signals that supervisor.

Why our own, small supervisor rather than a library: supervisord has no dependency
order and no readiness (only priorities and "running after N seconds"), is a daemon
with its own INI file and XML-RPC, and would be a second tool for operators to learn;
circus runs on an old pyzmq/tornado stack; honcho does not restart. What a store
needs — order, readiness from the ready lines, back-off, reverse stop — is the
couple of hundred lines below, tested by killing processes with -9
(``tests/gateway/test_supervisor.py``). On a store server, systemd runs
``lanecore store up`` (``docs/deploy.md``).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lanecore.core.config import private_dir
from lanecore.core.errors import LanecoreError

__all__ = ["ProcessSpec", "StoreFile", "load", "Supervisor", "status", "down",
           "READY_LINE_COMMANDS"]

#: Commands that print a JSON ready line (``{"ready": true, …}``) on stdout; the
#: first two take ``--json`` for it, which the supervisor adds.
READY_LINE_COMMANDS = {("serve",): True, ("gateway", "payments"): True,
                       ("gateway", "coupons"): True, ("sim", "provider"): False,
                       ("console",): True}
STORE_KEYS = {"name", "dir", "run_dir", "log_dir", "ready_timeout_s", "stop_timeout_s",
              "backoff_s", "backoff_max_s", "stable_s", "alive_s"}
PROCESS_KEYS = {"command", "after", "ready", "env", "restart", "ready_timeout_s",
                "stop_timeout_s", "enabled"}
RESTART = ("always", "on-failure", "never")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a store file."""
    name: str
    command: tuple[str, ...]               # lanecore's arguments (no "lanecore")
    after: tuple[str, ...] = ()
    ready: str = "alive"                   # "line": its JSON ready line; "alive"
    env: dict = field(default_factory=dict)
    restart: str = "always"
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0

    def argv(self) -> list[str]:
        """The child's command line: this Python running ``lanecore``, with ``--json``
        added where the ready line needs it."""
        args = list(self.command)
        if READY_LINE_COMMANDS.get(tuple(args[:2])) or READY_LINE_COMMANDS.get(
                tuple(args[:1])):
            if "--json" not in args:
                args.append("--json")
        return [sys.executable, "-m", "lanecore", *args]


@dataclass(frozen=True)
class StoreFile:
    """A parsed store file: its processes in start order, and where things go."""
    path: Path
    name: str
    dir: Path
    run_dir: Path
    log_dir: Path
    processes: tuple[ProcessSpec, ...]     # in start order
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_s: float = 30.0
    alive_s: float = 1.0


def _bad(path, message: str) -> LanecoreError:
    return LanecoreError(f"{path}: {message}", code="BAD_CONFIG")


def _number(path, where: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise _bad(path, f"{where} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _strings(path, where: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "\x00" not in v
                                              for v in value):
        raise _bad(path, f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def load(path, *, validate: Callable[[str, list[str]], None] | None = None) -> StoreFile:
    """Read and check a store file: LanecoreError ``STORE_FILE_NOT_FOUND``, or
    ``BAD_CONFIG`` naming the key or process that is wrong (an unknown key, a
    command ``validate(name, args)`` refuses, an ``after`` that names no process, a
    cycle)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LanecoreError(f"no store file {path}", code="STORE_FILE_NOT_FOUND") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LanecoreError(f"cannot read {path}: {exc}", code="CANNOT_READ") from None
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"not valid TOML: {exc}") from None
    unknown = set(doc) - {"store", "process"}
    if unknown:
        raise _bad(path, f"unknown section(s) {sorted(unknown)} (known: store, process)")
    store = doc.get("store", {})
    if not isinstance(store, dict):
        raise _bad(path, "[store] must be a table")
    unknown = set(store) - STORE_KEYS
    if unknown:
        raise _bad(path, f"unknown key(s) in [store]: {sorted(unknown)} "
                         f"(known: {sorted(STORE_KEYS)})")
    for key in ("name", "dir", "run_dir", "log_dir"):
        if key in store and not isinstance(store[key], str):
            raise _bad(path, f"[store] {key} must be a string, got {store[key]!r}")
    base = (path.parent / store.get("dir", ".")).resolve()
    timing = {k: _number(path, f"[store] {k}", store[k], 0.01, 3600.0)
              for k in ("backoff_s", "backoff_max_s", "stable_s", "alive_s") if k in store}
    defaults = {k: _number(path, f"[store] {k}", store[k], 0.1, 3600.0)
                for k in ("ready_timeout_s", "stop_timeout_s") if k in store}
    procs = doc.get("process", {})
    if not isinstance(procs, dict) or not procs:
        raise _bad(path, "no [process.NAME] tables: a store runs at least one process")
    specs: dict[str, ProcessSpec] = {}
    for name, p in procs.items():
        where = f"[process.{name}]"
        if not NAME.fullmatch(name):
            raise _bad(path, f"{where}: a process name is 1-40 letters, digits, '_', '.', '-'")
        if not isinstance(p, dict):
            raise _bad(path, f"{where} must be a table")
        unknown = set(p) - PROCESS_KEYS
        if unknown:
            raise _bad(path, f"unknown key(s) in {where}: {sorted(unknown)} "
                             f"(known: {sorted(PROCESS_KEYS)})")
        if "command" not in p:
            raise _bad(path, f"{where} has no command (lanecore's arguments, a list)")
        command = _strings(path, f"{where} command", p["command"])
        if not command:
            raise _bad(path, f"{where} command is empty")
        if validate is not None:
            validate(name, list(command))
        if p.get("enabled", True) is False:
            continue
        if not isinstance(p.get("enabled", True), bool):
            raise _bad(path, f"{where} enabled must be true or false")
        has_line = tuple(command[:2]) in READY_LINE_COMMANDS or \
            tuple(command[:1]) in READY_LINE_COMMANDS
        ready = p.get("ready", "line" if has_line else "alive")
        if ready not in ("line", "alive") or (ready == "line" and not has_line):
            raise _bad(path, f"{where} ready must be 'alive'" + (
                " or 'line'" if has_line else f" (`lanecore {command[0]}` prints no "
                                              f"ready line)") + f", got {ready!r}")
        restart = p.get("restart", "always")
        if restart not in RESTART:
            raise _bad(path, f"{where} restart must be one of {list(RESTART)}, got {restart!r}")
        env = p.get("env", {})
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise _bad(path, f"{where} env must be a table of strings")
        specs[name] = ProcessSpec(
            name, command, _strings(path, f"{where} after", p.get("after", [])), ready,
            dict(env), restart,
            _number(path, f"{where} ready_timeout_s", p["ready_timeout_s"], 0.1, 3600.0)
            if "ready_timeout_s" in p else defaults.get("ready_timeout_s", 60.0),
            _number(path, f"{where} stop_timeout_s", p["stop_timeout_s"], 0.1, 3600.0)
            if "stop_timeout_s" in p else defaults.get("stop_timeout_s", 10.0))
    if not specs:
        raise _bad(path, "every process is disabled")
    order = _start_order(path, specs)
    return StoreFile(path.resolve(), store.get("name", path.stem), base,
                     (base / store.get("run_dir", "run")).resolve(),
                     (base / store.get("log_dir", "logs")).resolve(), order, **timing)


def _start_order(path, specs: dict[str, ProcessSpec]) -> tuple[ProcessSpec, ...]:
    """Dependencies first (file order among equals); BAD_CONFIG for an unknown name
    or a cycle."""
    for s in specs.values():
        for dep in s.after:
            if dep not in specs:
                raise _bad(path, f"[process.{s.name}] after names {dep!r}, which is not an "
                                 f"enabled process (known: {sorted(specs)})")
    order: list[ProcessSpec] = []
    state: dict[str, int] = {}          # 1 visiting, 2 done

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise _bad(path, f"the processes' after form a cycle: "
                             f"{' -> '.join(chain + [name])}")
        state[name] = 1
        for dep in specs[name].after:
            visit(dep, chain + [name])
        state[name] = 2
        order.append(specs[name])
    for name in specs:
        visit(name, [])
    return tuple(order)


# ----------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------

try:                                    # looked up here, not in the forked child
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):       # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor's thread that started it
    exits (Linux; elsewhere nothing)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class _Child:
    """One supervised process: its current ``subprocess.Popen`` and its record."""

    def __init__(self, spec: ProcessSpec, backoff_s: float) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.state = "stopped"      # starting, ready, backoff, exited, stopped, failed
        self.restarts = 0
        self.delay = backoff_s
        self.next_start = 0.0
        self.started = 0.0          # monotonic, of the current run
        self.ready_at = 0.0
        self.ready_info: dict = {}
        self.ready_event = threading.Event()
        self.last_exit: int | None = None

    def record(self) -> dict:
        return {"pid": self.proc.pid if self.proc and self.proc.poll() is None else None,
                "state": self.state, "restarts": self.restarts, "last_exit": self.last_exit,
                "ready": self.ready_info}


class Supervisor:
    """Start, watch and stop a store file's processes. ``say(text)`` gets a line for
    the operator at every start, ready, exit, restart and stop.

    The thread that calls :meth:`start` and :meth:`watch` must live until
    :meth:`stop` (the children are tied to it by ``PR_SET_PDEATHSIG``)."""

    def __init__(self, store: StoreFile, *, say: Callable[[str], None] | None = None,
                 extra_env: dict | None = None) -> None:
        self.store = store
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.extra_env = dict(extra_env or {})
        self.children = {s.name: _Child(s, store.backoff_s) for s in store.processes}
        self._stopping = threading.Event()
        self._lock_fd: int | None = None
        self._state_lock = threading.Lock()

    # -- the lock and the state file -----------------------------------------------
    def _take_lock(self) -> None:
        private_dir(self.store.run_dir)
        private_dir(self.store.log_dir)
        fd = os.open(self.store.run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LanecoreError(f"store {self.store.name!r} is running already (the lock "
                                f"{self.store.run_dir / 'lock'} is held): `lanecore store "
                                f"status` says by whom", code="STORE_RUNNING") from None
        self._lock_fd = fd

    def _write_state(self) -> None:
        with self._state_lock:
            doc = {"store": self.store.name, "file": str(self.store.path),
                   "supervisor": os.getpid(), "running": not self._stopping.is_set(),
                   "updated": time.time(),
                   "processes": {n: c.record() for n, c in self.children.items()}}
            path = self.store.run_dir / "state.json"
            tmp = path.with_name(f".state.{os.getpid()}.json")
            tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
            os.replace(tmp, path)

    # -- one child ----------------------------------------------------------------
    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        log = open(self.store.log_dir / f"{spec.name}.log", "ab")
        env = {**os.environ, **self.extra_env, **spec.env, "PYTHONUNBUFFERED": "1"}
        try:
            child.proc = subprocess.Popen(
                spec.argv(), cwd=self.store.dir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log, preexec_fn=_die_with_parent)
        except (OSError, ValueError) as exc:
            log.close()
            raise LanecoreError(f"cannot start {spec.name}: {exc}",
                                code="STORE_START_FAILED") from exc
        child.state = "starting"
        child.started = time.monotonic()
        child.ready_event = threading.Event()
        child.ready_info = {}
        log.close()                  # the child has it; its stdout goes to NAME.out
        out = open(self.store.log_dir / f"{spec.name}.out", "ab")
        threading.Thread(target=self._read_stdout, args=(child, child.proc, out,
                                                         child.ready_event),
                         name=f"stdout-{spec.name}", daemon=True).start()
        self.say(f"store {self.store.name}: started {spec.name} (pid {child.proc.pid})")
        self._write_state()

    @staticmethod
    def _read_stdout(child: _Child, proc: subprocess.Popen, log, ready: threading.Event
                     ) -> None:
        """The child's stdout: its ready line sets ``ready``; every line goes to
        ``NAME.out`` (its stderr, the log, to ``NAME.log``)."""
        try:
            for line in proc.stdout:
                if not ready.is_set() and line.startswith(b"{"):
                    try:
                        info = json.loads(line)
                    except ValueError:
                        info = None
                    if isinstance(info, dict) and info.get("ready") is True:
                        child.ready_info = info
                        ready.set()
                log.write(line)
                log.flush()
        except (OSError, ValueError):
            pass
        finally:
            proc.stdout.close()
            log.close()

    def _is_ready(self, child: _Child) -> bool:
        if child.spec.ready == "line":
            return child.ready_event.is_set()
        return time.monotonic() - child.started >= self.store.alive_s

    def _terminate(self, child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(child.spec.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.say(f"store {self.store.name}: {child.spec.name} did not stop in "
                     f"{child.spec.stop_timeout_s:g} s: killed")
            proc.kill()
            proc.wait()

    # -- the store ----------------------------------------------------------------
    def start(self) -> None:
        """Take the store's lock, start every process in order and wait for each to be
        ready. LanecoreError ``STORE_START_FAILED`` (everything started is stopped
        again) if one exits or is not ready in its ``ready_timeout_s``."""
        self._take_lock()
        try:
            self._write_state()
            for child in self.children.values():
                if self._stopping.is_set():
                    raise LanecoreError("stopped while starting", code="STORE_START_FAILED")
                self._spawn(child)
                deadline = child.started + child.spec.ready_timeout_s
                while not self._is_ready(child):
                    if child.proc.poll() is not None:
                        raise LanecoreError(
                            f"{child.spec.name} exited with status {child.proc.returncode} "
                            f"before it was ready: see {self._log(child)}",
                            code="STORE_START_FAILED")
                    if time.monotonic() > deadline or self._stopping.is_set():
                        raise LanecoreError(
                            f"{child.spec.name} was not ready within "
                            f"{child.spec.ready_timeout_s:g} s: see {self._log(child)}",
                            code="STORE_START_FAILED")
                    child.ready_event.wait(0.05)
                self._now_ready(child)
        except BaseException:
            self.stop()
            raise

    def _log(self, child: _Child) -> Path:
        return self.store.log_dir / f"{child.spec.name}.log"

    def _now_ready(self, child: _Child) -> None:
        child.state = "ready"
        child.ready_at = time.monotonic()
        again = f" again (restart {child.restarts})" if child.restarts else ""
        self.say(f"store {self.store.name}: {child.spec.name} ready{again} in "
                 f"{child.ready_at - child.started:.1f} s")
        self._write_state()

    def poll(self) -> None:
        """One look at every process: note ready ones, restart exited ones after their
        back-off, start the ones whose back-off is over."""
        now = time.monotonic()
        for child in self.children.values():
            if self._stopping.is_set():
                return
            proc = child.proc
            if child.state == "backoff":
                if now >= child.next_start:
                    self._spawn(child)
                continue
            if child.state not in ("starting", "ready") or proc is None:
                continue
            code = proc.poll()
            if code is None:
                if child.state == "starting":
                    if self._is_ready(child):
                        self._now_ready(child)
                    elif now - child.started > child.spec.ready_timeout_s:
                        self.say(f"store {self.store.name}: {child.spec.name} was not ready "
                                 f"within {child.spec.ready_timeout_s:g} s: killed")
                        proc.kill()
                        proc.wait()
                        code = proc.returncode
                if code is None:
                    if child.state == "ready" and now - child.ready_at >= self.store.stable_s:
                        child.delay = self.store.backoff_s     # stable: back-off anew
                    continue
            child.last_exit = code
            how = f"signal {-code}" if code < 0 else f"status {code}"
            if child.spec.restart == "never" or (child.spec.restart == "on-failure"
                                                 and code == 0):
                child.state = "exited"
                self.say(f"store {self.store.name}: {child.spec.name} exited ({how}); "
                         f"restart = {child.spec.restart!r}: left down")
            else:
                child.state = "backoff"
                child.restarts += 1
                child.next_start = now + child.delay
                self.say(f"store {self.store.name}: {child.spec.name} exited ({how}); "
                         f"restarting in {child.delay:g} s (restart {child.restarts})")
                child.delay = min(child.delay * 2, self.store.backoff_max_s)
            self._write_state()

    def watch(self, interval_s: float = 0.1) -> None:
        """``poll`` until :meth:`request_stop`."""
        while not self._stopping.wait(interval_s):
            self.poll()

    def request_stop(self) -> None:
        """Ask :meth:`watch` to return (safe from a signal handler)."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop every process, the last started first; release the lock."""
        self._stopping.set()
        for child in reversed(list(self.children.values())):
            if child.proc is not None and child.proc.poll() is None:
                self.say(f"store {self.store.name}: stopping {child.spec.name}")
                self._terminate(child)
            if child.state != "stopped":
                child.state = "stopped"
        if self._lock_fd is not None:
            self._write_state()
            os.close(self._lock_fd)
            self._lock_fd = None
            self.say(f"store {self.store.name}: stopped")

    def run(self) -> None:
        """``lanecore store up``: start, watch until SIGTERM/SIGINT, stop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.request_stop())
        self.start()
        try:
            self.watch()
        finally:
            self.stop()


# ----------------------------------------------------------------------------------
# status and down: from another process
# ----------------------------------------------------------------------------------

def _held(run_dir: Path) -> bool:
    """Whether a supervisor holds the store's lock."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)          # closing releases a lock we took
    return False


def _ours(pid: int | None) -> bool:
    """Whether ``pid`` is a live lanecore process (not a reused pid)."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"lanecore" in cmd


def status(store: StoreFile) -> dict:
    """What ``state.json`` says, checked against the lock and the live processes:
    ``{"store", "running", "supervisor", "processes": {name: {pid, state, alive,
    restarts, last_exit}}}``."""
    try:
        doc = json.loads((store.run_dir / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {"processes": {}}
    running = _held(store.run_dir)
    procs = {}
    for spec in store.processes:
        rec = doc.get("processes", {}).get(spec.name, {})
        pid = rec.get("pid")
        alive = running and _ours(pid)
        procs[spec.name] = {"pid": pid if alive else None,
                            "state": rec.get("state", "stopped") if running else "stopped",
                            "alive": alive, "restarts": rec.get("restarts", 0),
                            "last_exit": rec.get("last_exit")}
    return {"store": store.name, "running": running,
            "supervisor": doc.get("supervisor") if running else None, "processes": procs}


def down(store: StoreFile, *, timeout_s: float = 60.0) -> dict:
    """Stop a running store: SIGTERM to its supervisor, which stops its processes;
    wait until the lock is free. A supervisor that does not finish in ``timeout_s`` is
    killed, and so is every process ``state.json`` names that is still a lanecore
    process. Returns ``{"was_running", "left"}`` (``left``: pids still alive — none)."""
    st = status(store)
    doc_pids = [p.get("pid") for p in _state_processes(store).values()]
    sup = st["supervisor"]
    if st["running"] and sup:
        try:
            os.kill(sup, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while _held(store.run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _held(store.run_dir) and _ours(sup):
            os.kill(sup, signal.SIGKILL)
    for pid in doc_pids:                  # left behind by a supervisor that was killed
        if _ours(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while any(_ours(p) and not _zombie(p) for p in doc_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"was_running": st["running"],
            "left": [p for p in doc_pids if _ours(p) and not _zombie(p)]}


def _state_processes(store: StoreFile) -> dict:
    try:
        doc = json.loads((store.run_dir / "state.json").read_text(encoding="utf-8"))
        return doc.get("processes", {})
    except (OSError, ValueError):
        return {}


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
