"""Helpers for the service benchmarks (``bench/test_service.py``): starting processes,
a bare MessagePack echo server (the floor), round-trip loops, and the many-lanes load
generator.

Everything talks plain pyzmq + msgpack, like a lane controller written from
``docs/protocol.md`` would; nothing here uses the client library.

Run as a script, this file is one of the processes the benchmarks start::

    python bench/_service.py echo --bind ADDR
    python bench/_service.py lanes --endpoint ADDR --events ADDR --lanes N --out F.npz
    python bench/_service.py wrap [--gc-log F.json] [--profile F.prof] -- serve ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

# the echo unpacks with the service's own limits and caps messages the same way
from lanecore.gateway.net.protocol import MAX_MESSAGE_BYTES, UNPACK_LIMITS

HERE = Path(__file__).resolve()
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------
# Endpoints, stores, processes
# ----------------------------------------------------------------------------------

def free_tcp_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` on a port the kernel just said was free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_store(path: Path, items: int = 2000, *, seed: int = 11) -> list[dict]:
    """A data directory with a generated GB catalogue; returns the catalogue's rows of
    ordinary weighed items (no flags, a unit weight)."""
    import csv

    from lanecore.core.scan.catalog import import_csv
    from lanecore.core.scan.synth import write_catalog_csv
    path.mkdir(parents=True, exist_ok=True)
    write_catalog_csv(path / "catalog.csv", items, seed=seed, region="GB")
    import_csv(path, path / "catalog.csv")
    (path / "lanecore.toml").write_text('[store]\nregion = "GB"\n')
    with open(path / "catalog.csv", newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if not r["flags"] and r["unit_weight_g"]]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads, libzmq's I/O thread included),
    in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by thread name (``main`` for the main
    thread; libzmq's are ``ZMQbg/IO/0`` and ``ZMQbg/Reaper``)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace")
        fields = raw.rsplit(b")", 1)[1].split()
        if tid == str(pid):
            name = "main"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def system_busy_s() -> float:
    """CPU seconds all processors spent busy since boot (everything but idle and
    iowait, steal included: time this VM wanted and did not get)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    """Live children of ``pid`` (a broker's workers)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


@dataclass
class Proc:
    """A process the benchmark started, with where its output goes."""

    name: str
    popen: subprocess.Popen
    log: Path
    endpoint: str | None = None
    events: str | None = None
    pids: list[int] = field(default_factory=list)   # itself and, for a broker, workers

    def refresh_pids(self) -> None:
        self.pids = [self.popen.pid, *child_pids(self.popen.pid)]

    def cpu_s(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids or [self.popen.pid])

    def cpu_by_pid(self) -> dict[int, float]:
        return {p: cpu_seconds(p) for p in self.pids or [self.popen.pid]}

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                return self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                return self.popen.wait()
        return self.popen.returncode


def _popen(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:     # the child has its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _started(proc: Proc) -> Proc:
    """``proc`` once it answers ``hello``; stopped if it never does."""
    try:
        wait_ready(proc)
    except BaseException:
        proc.stop()
        raise
    return proc


def call(endpoint: str, req: dict, timeout_ms: int = 10_000) -> dict:
    """One request over a fresh DEALER."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send(msgpack.packb(req))
        if not s.poll(timeout_ms):
            raise TimeoutError(f"no reply to {req.get('op')} in {timeout_ms} ms")
        return msgpack.unpackb(s.recv())
    finally:
        s.close(0)


def wait_ready(proc: Proc, timeout_s: float = 90.0) -> None:
    """Until ``hello`` answers ok (a broker answers UNAVAILABLE until its workers are
    up). Every try uses a fresh socket, so no stale hello is left queued."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
        try:
            if call(proc.endpoint, {"op": "hello", "id": uuid.uuid4().hex},
                    timeout_ms=500).get("ok"):
                proc.refresh_pids()
                return
        except TimeoutError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready: {proc.tail()}")


def start_service(data_dir: Path, log_dir: Path, *, bind: str | None = None,
                  events: str | None = None, workers: int = 1, max_lanes: int = 4096,
                  gc_log: Path | None = None, profile: Path | None = None,
                  name: str = "service") -> Proc:
    """``lanecore serve`` in a subprocess; returns once ``hello`` answers. With
    ``gc_log`` and/or ``profile`` it runs under :func:`wrap_main` (the files are
    written when it stops; with a broker they cover the broker process only)."""
    bind = bind or free_tcp_endpoint()
    events = events or free_tcp_endpoint()
    args = ["serve", "--bind", bind, "--events", events, "--data-dir", str(data_dir),
            "--workers", str(workers), "--max-lanes", str(max_lanes)]
    if gc_log is not None or profile is not None:
        cmd = [sys.executable, str(HERE), "wrap"]
        cmd += ["--gc-log", str(gc_log)] if gc_log is not None else []
        cmd += ["--profile", str(profile)] if profile is not None else []
        cmd += ["--", *args]
    else:
        cmd = [sys.executable, "-m", "lanecore", *args]
    log = log_dir / f"{name}.log"
    return _started(Proc(name, _popen(cmd, log), log, bind, events))


def start_echo(log_dir: Path, *, bind: str | None = None, name: str = "echo") -> Proc:
    """The floor: ``python bench/_service.py echo`` in a subprocess."""
    bind = bind or free_tcp_endpoint()
    log = log_dir / f"{name}.log"
    return _started(Proc(name, _popen([sys.executable, str(HERE), "echo", "--bind", bind],
                                      log), log, bind))


# ----------------------------------------------------------------------------------
# The floor: a bare ROUTER/DEALER MessagePack echo
# ----------------------------------------------------------------------------------

def echo_main(bind: str) -> int:
    """recv → unpack (the service's limits) → pack ``{id, ok: true}`` → send, on a
    ROUTER set up like the service's, in the service's loop: poll, then drain up to
    1,000 messages without blocking. (A bare blocking recv/send loop measured the
    same within noise, 0.92–1.07×, so the poll loop is not what costs.)"""
    import signal
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(bind)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    unpackb, packb = msgpack.unpackb, msgpack.packb
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while running[0]:
        if not poller.poll(200):
            continue
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            req = unpackb(frames[-1], raw=False, strict_map_key=True, **UNPACK_LIMITS)
            frames[-1] = packb({"id": req.get("id"), "ok": True}, use_bin_type=True)
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
    sock.close(0)
    return 0


# ----------------------------------------------------------------------------------
# Clients: one round trip at a time, and a window of requests in flight
# ----------------------------------------------------------------------------------

def dealer(endpoint: str, *, ctx: zmq.Context | None = None) -> zmq.Socket:
    s = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 100_000)
    s.setsockopt(zmq.RCVHWM, 100_000)
    s.connect(endpoint)
    return s


class RoundTrips:
    """Sequential round trips on one DEALER (one request in flight): each call packs
    a fresh id into the request, times send → reply with ``perf_counter_ns`` and keeps
    the time and the reply."""

    def __init__(self, sock: zmq.Socket, make_request, timeout_ms: int = 10_000):
        self.sock = sock
        self.make = make_request          # (n) -> request map
        self.timeout_ms = timeout_ms
        self.ns: list[int] = []
        self.replies: list[bytes] = []
        self.ids: list = []
        self.n = 0

    def __call__(self) -> None:
        req = self.make(self.n)
        payload = msgpack.packb(req)
        self.ids.append(req["id"])
        self.n += 1
        sock = self.sock
        t0 = time.perf_counter_ns()
        sock.send(payload)
        if not sock.poll(self.timeout_ms):
            raise TimeoutError("no reply")
        reply = sock.recv()
        self.ns.append(time.perf_counter_ns() - t0)
        self.replies.append(reply)

    def check(self) -> list[dict]:
        """The replies, unpacked; raises if one is not ok or answers another id."""
        out = [msgpack.unpackb(r) for r in self.replies]
        bad = [r for r in out if not r.get("ok")]
        assert not bad, f"{len(bad)} of {len(out)} replies not ok: {bad[:2]}"
        assert [r["id"] for r in out] == self.ids[:len(out)], "a reply answers another id"
        return out


def pipelined(sock: zmq.Socket, payloads: list[bytes], window: int,
              timeout_ms: int = 10_000) -> list[bytes]:
    """Send ``payloads`` keeping ``window`` requests in flight on one DEALER; return
    the replies (in arrival order)."""
    out: list[bytes] = []
    send, recv, poll = sock.send, sock.recv, sock.poll
    n = len(payloads)
    sent = 0
    while sent < min(window, n):
        send(payloads[sent])
        sent += 1
    while len(out) < n:
        if not poll(timeout_ms):
            raise TimeoutError(f"{n - len(out)} replies missing")
        out.append(recv())
        if sent < n:
            send(payloads[sent])
            sent += 1
    return out


def percentiles_us(ns, qs=(50, 99, 99.9)) -> dict[str, float]:
    """p50/p99/p999 (µs) of nanosecond samples."""
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    if a.size == 0:
        return {f"p{str(q).replace('.', '')}": math.nan for q in qs}
    return {("p999" if q == 99.9 else f"p{q}"): float(np.percentile(a, q)) for q in qs}


def fmt_us(p: dict[str, float]) -> str:
    return " / ".join(f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" for v in p.values()) + " µs"


# ----------------------------------------------------------------------------------
# Load-cell traces for the lanes
# ----------------------------------------------------------------------------------

#: One lane's repeating cycle: put an item on, a second one, take both off.
CYCLE_S = 6.0


def lane_traces(n: int, *, seed: int = 0, fs_hz: float = 1000.0, frame: int = 50
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` cyclic float32 traces (grams) of ``CYCLE_S`` seconds from the synthetic
    load cell — two placements at random times, then a removal back to zero, so a
    trace can repeat and every cycle gives settled events — and, for each, the frames
    at which the scale is empty and still, where a lane may start. (Lifting items off
    makes the platform rebound below zero: the service reports some ``under_zero``.)"""
    from lanecore.drivers.loadcell_sim import Placement, TraceSpec, mechanical
    rng = np.random.default_rng(seed)
    out = np.empty((n, int(CYCLE_S * fs_hz)), dtype=np.float32)
    quiet = []
    for i in range(n):
        a, b = (float(v) for v in rng.uniform(80, 2500, 2))
        t1 = float(rng.uniform(0.3, 1.5))
        t2 = t1 + float(rng.uniform(1.0, 1.8))
        t3 = t2 + float(rng.uniform(1.0, 1.8))

        def p(t, d):
            return Placement(t, d, float(rng.uniform(4, 9)), float(rng.uniform(0.3, 0.7)))
        spec = TraceSpec(fs_hz=fs_hz, seconds=CYCLE_S,
                         placements=[p(t1, a), p(t2, b), p(t3, -(a + b))], noise_g=0.5)
        # the simulator's mechanics plus its white noise (``generate`` would also
        # work out the ground truth's settling times, which costs ~80 ms a trace)
        clean = mechanical(spec)
        out[i] = clean + rng.normal(0.0, spec.noise_g, clean.shape)
        still = np.abs(clean) < 0.5
        n_frames = len(still) // frame
        quiet.append(np.nonzero(still[:n_frames * frame].reshape(n_frames, frame)
                                .all(axis=1))[0])
    return out, quiet


# ----------------------------------------------------------------------------------
# The many-lanes load generator (a separate process)
# ----------------------------------------------------------------------------------

def lanes_main(a) -> int:
    """Configure ``a.lanes`` lanes, print READY, wait for ``GO <t0>`` on stdin
    (monotonic seconds, comparable across processes), then every lane sends a
    ``weigh.frame`` of ``a.frame`` samples every ``a.frame / a.fs`` seconds until
    ``t0 + a.seconds``; replies and the PUB socket's ``settled``/``fault`` events are
    timestamped as they arrive. Writes everything to ``a.out`` (npz)."""
    import gc
    ctx = zmq.Context.instance()
    n_lanes, frame, fs = a.lanes, a.frame, float(a.fs)
    period_s = frame / fs
    n_socks = max(1, min(a.sockets, n_lanes))
    socks = [dealer(a.endpoint, ctx=ctx) for _ in range(n_socks)]
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    for topic in (b"settled", b"fault"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(a.events)
    names = [f"{a.prefix}{i}" for i in range(n_lanes)]
    lane_of = {name: i for i, name in enumerate(names)}
    # the lanes' configuration, a window of 50 in flight per socket
    cfg = [msgpack.packb({"op": "weigh.config", "id": f"cfg-{uuid.uuid4().hex}",
                          "lane": name, "config": {"fs_hz": fs}}) for name in names]
    t_cfg = time.monotonic()
    by_id = {msgpack.unpackb(raw)["id"]: raw for raw in cfg}
    for k, s in enumerate(socks):
        todo, tries = cfg[k::n_socks], 0
        while todo:
            again = []
            for raw in pipelined(s, todo, 50):
                r = msgpack.unpackb(raw)
                if r.get("ok"):
                    continue
                # a worker behind a broker still starting: the same request again,
                # as docs/protocol.md tells clients (same id)
                if r["error"]["code"] != "UNAVAILABLE" or tries >= 100:
                    raise SystemExit(f"weigh.config failed: {r}")
                again.append(by_id[r["id"]])
            todo, tries = again, tries + 1
            if todo:
                time.sleep(0.1)
    t_cfg = time.monotonic() - t_cfg
    traces, quiet = lane_traces(min(n_lanes, a.traces), seed=a.seed, fs_hz=fs, frame=frame)
    cycle = traces.shape[1] // frame
    frames_of = traces[:, :cycle * frame].reshape(len(traces), cycle, frame)
    rng = np.random.default_rng(a.seed + 1)
    # lanes are not in step: each starts its trace at a random empty, still frame
    offset = np.array([rng.choice(quiet[i % len(quiet)]) for i in range(n_lanes)])
    total = int(round(a.seconds / period_s)) * n_lanes
    n_seq = total // n_lanes + 1
    sent = np.zeros((n_lanes, n_seq), dtype=np.int64)
    replied = np.zeros((n_lanes, n_seq), dtype=np.int64)
    evented = np.zeros((n_lanes, n_seq), dtype=np.int64)
    settled_in_reply = np.zeros((n_lanes, n_seq), dtype=bool)
    slip = np.zeros(total, dtype=np.int64)
    errors: dict[str, int] = {}
    faults: dict[str, int] = {}
    other_events = 0
    time.sleep(0.3)    # PUB/SUB: let the subscription reach the publisher
    print("READY", json.dumps({"config_s": t_cfg, "sockets": n_socks}), flush=True)
    line = sys.stdin.readline().split()
    t0 = float(line[1])
    t0_ns = int(t0 * 1e9)
    period_ns = period_s * 1e9 / n_lanes       # between two frames of the whole fleet
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    packb, unpackb, now_ns = msgpack.packb, msgpack.unpackb, time.monotonic_ns
    sock_of = [socks[i % n_socks] for i in range(n_lanes)]
    routes = [b"\x00lane:" + name.encode() for name in names] if a.route else None
    k = 0
    pending = 0
    gc.disable()    # a collection pause would look like the service's latency
    while now_ns() < t0_ns:
        time.sleep(0.0005)

    def drain(ready_socks):
        nonlocal pending, other_events
        for s in ready_socks:
            if s is sub:
                while True:
                    try:
                        topic, body = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = now_ns()
                    ev = unpackb(body)
                    i = lane_of.get(ev.get("lane"), -1)
                    if topic == b"settled" and i >= 0:
                        q = ev["sample"] // frame
                        if q < n_seq and not evented[i, q]:
                            evented[i, q] = t
                    elif topic == b"fault":
                        key = ev.get("reason") or ev.get("event")
                        faults[key] = faults.get(key, 0) + 1
                    else:
                        other_events += 1
                continue
            while True:
                try:
                    raw = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = now_ns()
                r = unpackb(raw)
                rid = r["id"]
                i, q = rid % n_lanes, rid // n_lanes
                replied[i, q] = t
                pending -= 1
                if not r["ok"]:
                    code = r["error"]["code"]
                    errors[code] = errors.get(code, 0) + 1
                    continue
                for ev in r.get("events", ()):    # the echo has none
                    if ev["event"] == "settled":
                        settled_in_reply[i, q] = True

    while k < total:
        t = now_ns()
        due = t0_ns + int(k * period_ns)
        while due <= t and k < total:
            i, q = k % n_lanes, k // n_lanes
            tr = frames_of[i % len(frames_of)]
            payload = packb({"op": "weigh.frame", "id": k, "lane": names[i], "seq": q,
                             "samples": tr[(offset[i] + q) % cycle].tobytes()})
            t = now_ns()
            if routes is not None:
                sock_of[i].send(routes[i], zmq.NOBLOCK | zmq.SNDMORE)
            sock_of[i].send(payload, zmq.NOBLOCK)
            sent[i, q] = t
            slip[k] = t - due
            pending += 1
            k += 1
            due = t0_ns + int(k * period_ns)
        # at least 1 ms: frames go out in bursts of ~1 ms' worth instead of the
        # generator spinning on poll(0) and taking the service's core
        wait_ms = max(1, -(-(due - now_ns()) // 1_000_000))
        drain([s for s, _ in poller.poll(wait_ms)])
    end_ns = now_ns()
    deadline = end_ns + int(a.drain_s * 1e9)
    while pending > 0 and now_ns() < deadline:
        drain([s for s, _ in poller.poll(50)])
    # late events for the last frames
    grace = now_ns() + 200_000_000
    while now_ns() < grace:
        ready = [s for s, _ in poller.poll(50)]
        if not ready:
            break
        drain(ready)
    np.savez(a.out, sent=sent, replied=replied, evented=evented,
             settled_in_reply=settled_in_reply, slip=slip[:k],
             meta=np.array(json.dumps({"errors": errors, "faults": faults,
                                       "other_events": other_events, "t0_ns": t0_ns,
                                       "end_ns": end_ns, "frames": k, "pending": pending,
                                       "config_s": t_cfg, "sockets": n_socks})))
    for s in (*socks, sub):
        s.close(0)
    print("DONE", flush=True)
    return 0


@dataclass
class LaneRun:
    """The merged result of one or more lane generators."""

    sent: np.ndarray
    replied: np.ndarray
    evented: np.ndarray
    settled_in_reply: np.ndarray
    slip: np.ndarray
    meta: list[dict]
    wall_s: float
    service_cpu_s: float
    generator_cpu_s: list[float]
    config_s: float
    system_busy_s: float = 0.0         # every processor, every process
    harness_cpu_s: float = 0.0         # the process that runs this
    service_threads_s: dict = field(default_factory=dict)   # the service's main process
    service_procs_s: list = field(default_factory=list)     # main process, then workers

    @property
    def others_cpu_s(self) -> float:
        """CPU the rest of the machine took during the window (other users' work)."""
        return self.system_busy_s - self.service_cpu_s - sum(self.generator_cpu_s) \
            - self.harness_cpu_s

    @property
    def frames(self) -> int:
        return int((self.sent > 0).sum())

    @property
    def lost(self) -> int:
        return int(((self.sent > 0) & (self.replied == 0)).sum())

    def reply_ns(self) -> np.ndarray:
        m = (self.sent > 0) & (self.replied > 0)
        return (self.replied - self.sent)[m]

    def event_ns(self) -> np.ndarray:
        m = (self.sent > 0) & (self.evented > 0)
        return (self.evented - self.sent)[m]

    def settled_reply_ns(self) -> np.ndarray:
        m = (self.sent > 0) & (self.replied > 0) & self.settled_in_reply
        return (self.replied - self.sent)[m]


def run_lanes(proc: Proc, out_dir: Path, *, lanes: int, seconds: float,
              generators: int = 1, lanes_per_socket: int = 10, traces: int = 32,
              seed: int = 0, log_dir: Path | None = None, route: bool = False) -> LaneRun:
    """``generators`` load-generator processes share ``lanes`` lanes against the
    service ``proc`` for ``seconds``; service and generator CPU are read from /proc
    at the start and the end of the streaming window."""
    log_dir = log_dir or out_dir
    gens = []
    per = [lanes // generators + (g < lanes % generators) for g in range(generators)]

    def failed(g: int, what: str) -> RuntimeError:
        log = (log_dir / f"lanes-{g}.log").read_text(errors="replace")[-2000:]
        return RuntimeError(f"load generator {g} {what}: {log}")
    try:
        for g, n in enumerate(per):
            out = out_dir / f"lanes-{g}.npz"
            cmd = [sys.executable, str(HERE), "lanes", "--endpoint", proc.endpoint,
                   "--events", proc.events, "--lanes", str(n), "--prefix",
                   f"bench-{uuid.uuid4().hex[:6]}-g{g}-",
                   "--sockets", str(max(1, n // lanes_per_socket)),
                   "--seconds", str(seconds), "--traces", str(traces),
                   "--seed", str(seed + g), "--out", str(out), *(["--route"] if route else [])]
            with open(log_dir / f"lanes-{g}.log", "wb") as err:
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=err, text=True)
            gens.append((p, out))
        config_s = 0.0
        for g, (p, _) in enumerate(gens):
            line = p.stdout.readline()
            if not line.startswith("READY"):
                raise failed(g, f"did not start ({line!r})")
            config_s = max(config_s, json.loads(line.split(" ", 1)[1])["config_s"])
        proc.refresh_pids()
        t0 = time.monotonic() + 0.3
        for p, _ in gens:
            p.stdin.write(f"GO {t0!r}\n")
            p.stdin.flush()
        while time.monotonic() < t0:
            time.sleep(0.001)
        by_pid0 = proc.cpu_by_pid()
        gen0 = [cpu_seconds(p.pid) for p, _ in gens]
        me0, sys0 = cpu_seconds(os.getpid()), system_busy_s()
        threads0 = thread_cpu_seconds(proc.popen.pid)
        w0 = time.monotonic()
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        by_pid1 = proc.cpu_by_pid()
        gen1 = [cpu_seconds(p.pid) for p, _ in gens]
        me1, sys1 = cpu_seconds(os.getpid()), system_busy_s()
        threads1 = thread_cpu_seconds(proc.popen.pid)
        wall = time.monotonic() - w0
        parts = []
        for g, (p, out) in enumerate(gens):
            if p.stdout.readline().strip() != "DONE" or p.wait(timeout=60) != 0:
                raise failed(g, "failed")
            parts.append(np.load(out))
    finally:
        for p, _ in gens:
            if p.poll() is None:
                p.kill()
                p.wait()
    svc0, svc1 = sum(by_pid0.values()), sum(by_pid1.values())
    return LaneRun(
        sent=np.concatenate([z["sent"] for z in parts]),
        replied=np.concatenate([z["replied"] for z in parts]),
        evented=np.concatenate([z["evented"] for z in parts]),
        settled_in_reply=np.concatenate([z["settled_in_reply"] for z in parts]),
        slip=np.concatenate([z["slip"] for z in parts]),
        meta=[json.loads(str(z["meta"])) for z in parts],
        wall_s=wall, service_cpu_s=svc1 - svc0,
        generator_cpu_s=[b - a for a, b in zip(gen0, gen1)], config_s=config_s,
        system_busy_s=sys1 - sys0, harness_cpu_s=me1 - me0,
        service_threads_s={k: v - threads0.get(k, 0.0) for k, v in threads1.items()},
        service_procs_s=[by_pid1[p] - by_pid0.get(p, 0.0) for p in by_pid1])


# ----------------------------------------------------------------------------------
# Where a weigh.frame's time goes, in a fresh process like the service's
# ----------------------------------------------------------------------------------

def anatomy_main(data_dir: str, n: int, lanes: int, *, fill: bool = True) -> dict:
    """Time the pieces of one ``weigh.frame`` inside ``Service.handle_bytes`` (no
    sockets), the batched kernel for comparison, and full garbage collections with
    the heap a fresh service has and with its replay memory full. A separate process,
    so the heap is the service's, not the benchmark runner's."""
    import csv
    import gc

    from lanecore.core.weigh.laneconfig import LaneConfig, configure_lane
    from lanecore.ext.loadcell import LaneBank
    from lanecore.gateway.net import protocol as P
    from lanecore.gateway.net import server as server_mod
    from lanecore.gateway.service import Service
    clock = time.perf_counter_ns
    with open(Path(data_dir) / "catalog.csv", newline="", encoding="utf-8") as f:
        codes = [r["gtin"] for r in csv.DictReader(f)
                 if not r["flags"] and r["unit_weight_g"]][:500]
    svc = Service(data_dir)
    out: dict = {}
    gc.collect()
    out["heap_objects_fresh"] = len(gc.get_objects())
    t = clock()
    gc.collect()
    out["gc_full_fresh_ms"] = (clock() - t) / 1e6
    gc.freeze()         # what gc.freeze() after start-up would leave to collect
    t = clock()
    gc.collect()
    out["gc_full_fresh_frozen_ms"] = (clock() - t) / 1e6
    gc.unfreeze()
    traces, _ = lane_traces(1, seed=5)
    frames = traces[0].reshape(-1, 50)
    svc.handle({"op": "weigh.config", "id": "cfg", "lane": "L"}, "anatomy")
    payloads = [msgpack.packb({"op": "weigh.frame", "id": k, "lane": "L", "seq": k,
                               "samples": frames[k % len(frames)].tobytes()})
                for k in range(n)]
    gc.disable()      # pieces without collections; collections are measured below

    def per_call(fn, items) -> float:
        t0 = clock()
        for it in items:
            fn(it)
        return (clock() - t0) / len(items) / 1e3
    handle_bytes = svc.handle_bytes
    out["handle_bytes_us"] = per_call(lambda p: handle_bytes(p, "anatomy"), payloads)
    replies = [msgpack.unpackb(handle_bytes(p, "again")) for p in payloads[:10]]
    assert all(r["ok"] for r in replies), replies[:1]
    reqs = [P.unpack(p) for p in payloads]
    out["unpack_us"] = per_call(P.unpack, payloads)
    schema = svc.ops["weigh.frame"][1]
    out["check_us"] = per_call(lambda r: P.check(r, schema), reqs)
    out["decode_us"] = per_call(
        lambda r: np.frombuffer(r["samples"], dtype="<f4").astype(np.float64), reqs)
    xs = [np.frombuffer(r["samples"], dtype="<f4").astype(np.float64) for r in reqs]
    idx = svc.lanes["L"]
    seq = [n]

    def feed(x):
        svc.bank.feed(idx, x, seq[0])
        seq[0] += 1
    out["feed_us"] = per_call(feed, xs)
    reply = P.ok(1, lane="L", events=[], stable=True, settled_g=1234.5)
    out["pack_us"] = per_call(P.pack, [reply] * len(payloads))
    # the same frames for many lanes in one call of the kernel
    bank = LaneBank(lanes)
    cfg = LaneConfig()
    for lane in range(lanes):
        configure_lane(bank, lane, cfg)
    block = np.ascontiguousarray(np.broadcast_to(frames[0].astype(np.float64), (lanes, 50)))
    nsamp = np.full(lanes, 50, dtype=np.int64)
    steps = max(20, n // lanes)
    t0 = clock()
    for k in range(steps):
        bank.step(block, nsamp, np.full(lanes, k, dtype=np.int64))
    out["step_per_lane_us"] = (clock() - t0) / steps / lanes / 1e3
    out["step_lanes"] = lanes
    gc.enable()
    out.update(_anatomy_scan_verify(svc, n, codes))
    out["replay_memory"] = server_mod.REPLAY_MEMORY
    if not fill:
        svc.close()
        return out
    # fill the replay memory the way a stream of frames does
    more = server_mod.REPLAY_MEMORY - n
    for k in range(max(0, more)):
        handle_bytes(msgpack.packb({"op": "weigh.frame", "id": n + k, "lane": "L",
                                    "seq": 2 * n + k,
                                    "samples": frames[k % len(frames)].tobytes()}), "fill")
    gc.collect()
    out["heap_objects_full"] = len(gc.get_objects())
    t = clock()
    gc.collect()
    out["gc_full_full_ms"] = (clock() - t) / 1e6
    svc.close()
    return out


def _anatomy_scan_verify(svc, n: int, codes: list[str]) -> dict:
    """The same for ``scan`` (the parse, the reply's scan object, packing) and for
    ``verify.order`` (the verdict alone; a bare commit with the store's pragmas).
    ``codes``: GTINs of plain weighed catalogue items."""
    import sqlite3

    from lanecore.core.weigh.verify import verify
    from lanecore.ext import barcode
    from lanecore.gateway.net import protocol as P
    clock = time.perf_counter_ns
    out: dict = {}
    payloads = [msgpack.packb({"op": "scan", "id": k, "lane": "L",
                               "code": codes[k % len(codes)]}) for k in range(n)]
    t0 = clock()
    for p in payloads:
        svc.handle_bytes(p, "anatomy-scan")
    out["scan_handle_bytes_us"] = (clock() - t0) / n / 1e3
    reply = msgpack.unpackb(svc.handle_bytes(payloads[0], "anatomy-scan-2"))
    assert reply["ok"], reply
    t0 = clock()
    for k in range(n):
        barcode.parse_scan(codes[k % len(codes)], svc.region)
    out["scan_parse_us"] = (clock() - t0) / n / 1e3
    r = barcode.parse_scan(codes[0], svc.region)
    t0 = clock()
    for _ in range(n):
        r.to_dict()
    out["scan_to_dict_us"] = (clock() - t0) / n / 1e3
    t0 = clock()
    for _ in range(n):
        P.pack(reply)
    out["scan_pack_us"] = (clock() - t0) / n / 1e3
    out["scan_reply_bytes"] = len(P.pack(reply))
    # verify.order: one submitted order of three items
    b = svc.handle({"op": "basket.open", "id": "an-o", "device": "anatomy"}, "an")
    bid = b["basket"]["basket_id"]
    svc.handle({"op": "basket.add", "id": "an-a", "basket": bid,
                "scans": [{"code": c, "qty": 1} for c in codes[:3]]}, "an")
    order_no = svc.handle({"op": "basket.submit", "id": "an-s", "basket": bid},
                          "an")["order_no"]
    m = max(20, n // 100)
    order = svc.baskets.order_lines_for_verify(order_no)
    first = svc.handle({"op": "verify.order", "id": "an-v", "gate": "an-gate",
                        "order_no": order_no, "measured_g": 1000.0}, "an")
    measured = first["expected_g"]       # an ok verdict, as the round trips send
    t0 = clock()
    for k in range(m):
        rep = svc.handle({"op": "verify.order", "id": f"an-v{k}", "gate": "an-gate",
                          "order_no": order_no, "measured_g": measured}, "an")
    out["verify_handle_us"] = (clock() - t0) / m / 1e3
    assert rep["ok"] and rep["verdict"] == "ok", rep
    t0 = clock()
    for _ in range(m):
        verify(order, measured, svc.table, svc.policy, region=svc.region)
    out["verify_kernel_us"] = (clock() - t0) / m / 1e3
    scratch = Path(svc.data_dir) / "anatomy-commit.sqlite"
    con = sqlite3.connect(scratch, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
    t0 = clock()
    for k in range(m):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t (v) VALUES (?)", (b"x" * 200,))
        con.execute("COMMIT")
    out["commit_us"] = (clock() - t0) / m / 1e3
    con.close()
    return out


# ----------------------------------------------------------------------------------
# A wrapper around the service: garbage-collector pauses, cProfile
# ----------------------------------------------------------------------------------

def wrap_main(argv: list[str], *, gc_log: str | None, profile: str | None) -> int:
    """``lanecore ARGV`` in this process, the same code path as ``python -m lanecore``,
    with every garbage collection timed (``gc_log``: JSON list of [generation,
    seconds, collected]) and/or under cProfile (``profile``: pstats file). Both are
    written when the service returns from its loop (it does on SIGTERM)."""
    import gc

    from lanecore.cli import main as lanecore_main
    pauses: list[list] = []
    started = [0.0]

    def on_gc(phase, info, _clock=time.monotonic):
        if phase == "start":
            started[0] = _clock()
        else:
            pauses.append([info["generation"], _clock() - started[0], info["collected"],
                           started[0]])
    if gc_log:
        gc.callbacks.append(on_gc)
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
    try:
        if prof is not None:
            return prof.runcall(lanecore_main, argv)
        return lanecore_main(argv)
    finally:
        if prof is not None:
            prof.dump_stats(profile)
        if gc_log:
            Path(gc_log).write_text(json.dumps(pauses))


def gc_summary(path: Path, window_ns: tuple[int, int] | None = None) -> dict:
    """Per generation: collections, total and longest pause (ms) from a wrap gc log,
    of the collections that started within ``window_ns`` (monotonic) if given."""
    try:
        pauses = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if window_ns is not None:
        pauses = [p for p in pauses if window_ns[0] <= p[3] * 1e9 <= window_ns[1]]
    out = {}
    for gen in (0, 1, 2):
        d = [p[1] for p in pauses if p[0] == gen]
        if d:
            out[gen] = {"n": len(d), "total_ms": 1e3 * sum(d), "max_ms": 1e3 * max(d)}
    return out


def gc_intervals_ns(path: Path, min_generation: int = 2) -> np.ndarray:
    """(start, end) monotonic ns of the collections of ``min_generation`` and up."""
    try:
        pauses = json.loads(path.read_text())
    except (OSError, ValueError):
        return np.zeros((0, 2), dtype=np.int64)
    rows = [(p[3], p[3] + p[1]) for p in pauses if p[0] >= min_generation]
    return (np.array(rows, dtype=np.float64).reshape(-1, 2) * 1e9).astype(np.int64)


def profile_top(path: Path, n: int = 12) -> list[str]:
    """The ``n`` functions with the most own time in a pstats file, one line each."""
    import pstats
    st = pstats.Stats(str(path))
    total = st.total_tt or 1.0
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (file, line, fn), (cc, nc, tt, ct, _) in rows:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        out.append(f"{100 * tt / total:5.1f} % own, {100 * ct / total:5.1f} % cum, "
                   f"{nc:>8} calls  {fn} ({where})")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wrap"]:
        p = argparse.ArgumentParser(prog="_service.py wrap")
        p.add_argument("--gc-log")
        p.add_argument("--profile")
        split = argv.index("--")
        a = p.parse_args(argv[1:split])
        return wrap_main(argv[split + 1:], gc_log=a.gc_log, profile=a.profile)
    p = argparse.ArgumentParser(prog="_service.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    an = sub.add_parser("anatomy")
    an.add_argument("--data-dir", required=True)
    an.add_argument("--frames", type=int, default=20_000)
    an.add_argument("--lanes", type=int, default=500)
    an.add_argument("--no-fill", action="store_true",
                    help="skip filling the replay memory (and its GC figure)")
    e = sub.add_parser("echo")
    e.add_argument("--bind", required=True)
    g = sub.add_parser("lanes")
    g.add_argument("--endpoint", required=True)
    g.add_argument("--events", required=True)
    g.add_argument("--lanes", type=int, required=True)
    g.add_argument("--prefix", default="bench-lane-")
    g.add_argument("--sockets", type=int, default=50)
    g.add_argument("--seconds", type=float, default=20.0)
    g.add_argument("--frame", type=int, default=50)
    g.add_argument("--fs", type=float, default=1000.0)
    g.add_argument("--traces", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--drain-s", type=float, default=3.0)
    g.add_argument("--route", action="store_true",
                   help="send each frame with its routing frame (docs/protocol.md)")
    g.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "echo":
        return echo_main(a.bind)
    if a.cmd == "anatomy":
        print(json.dumps(anatomy_main(a.data_dir, a.frames, a.lanes, fill=not a.no_fill)))
        return 0
    return lanes_main(a)


if __name__ == "__main__":
    raise SystemExit(main())
