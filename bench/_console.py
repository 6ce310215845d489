"""Helpers for the console benchmarks (``bench/test_console_bench.py``): the console
process, the 100-lane driver, a bare SUB on the events socket, the page's stamps and
the pairing of one event's three times.

Run as a script, this file is one of the processes the benchmarks start::

    python bench/_console.py drive --endpoint ADDR --lanes N --out F.json
    python bench/_console.py sub --events ADDR --out F.json

Both print ``READY`` once set up; the driver then waits for ``GO`` on stdin, and both
stop at ``STOP`` on stdin (or stdin closed) and write ``--out``.

Every time here is the wall clock (``time.time_ns()``, CLOCK_REALTIME) so the driver's,
the bare subscriber's and the page's stamps (``performance.timeOrigin +
performance.now()``, corrected by an offset measured against this process's clock)
can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import _service as S
import msgpack
import numpy as np
import zmq

HERE = Path(__file__).resolve()
#: The service's weighing events that go out on the ``fault`` topic (docs/protocol.md).
FAULT_EVENTS = ("fault", "overload", "under_zero")
PUBLISHED = ("settled", *FAULT_EVENTS)

# ----------------------------------------------------------------------------------
# The page's stamps: a MutationObserver installed from the test (no change to
# console.js): each change of a card's live weight is stamped when console.js set it
# (the observer runs in the same task, right after the DOM change) and at the next
# animation frame (the first frame that can show it).
# ----------------------------------------------------------------------------------

OBSERVER_JS = """() => {
  if (window.__lcBench) return window.__lcBench.rows.length;
  const rec = window.__lcBench = {rows: [], pending: [], raf: 0};
  const stamp = () => performance.timeOrigin + performance.now();
  const box = document.getElementById("lanes");
  const obs = new MutationObserver((muts) => {
    const t = stamp();
    for (const m of muts) {
      const el = m.target;
      if (!el.getAttribute || el.getAttribute("data-field") !== "weight") continue;
      const card = el.closest('[data-testid="lane-card"]');
      const text = m.addedNodes.length ? m.addedNodes[0].nodeValue : el.textContent;
      const row = [card ? card.getAttribute("data-lane") : null, text, t, 0];
      rec.rows.push(row);
      rec.pending.push(row);
    }
    if (rec.pending.length && !rec.raf) {
      rec.raf = requestAnimationFrame(() => {
        const f = stamp();
        for (const r of rec.pending) r[3] = f;
        rec.pending = [];
        rec.raf = 0;
      });
    }
  });
  obs.observe(box, {subtree: true, childList: true, characterData: true});
  return 0;
}"""


def page_clock_offset_ns(page, n: int = 25) -> tuple[float, float]:
    """(page clock − this clock in ns, the round trip it was read in): the reading
    with the shortest round trip, its midpoint taken as the page's instant."""
    best = None
    for _ in range(n):
        t0 = time.time_ns()
        p = page.evaluate("performance.timeOrigin + performance.now()")
        t1 = time.time_ns()
        off = p * 1e6 - (t0 + t1) / 2
        if best is None or t1 - t0 < best[1]:
            best = (off, t1 - t0)
    return best


def page_grams(text: str | None) -> float | None:
    """A card's ``lane-weight`` text (``1,250.3``; ``–`` for none) as a number."""
    if not text or text.strip() in ("\u2013", "-"):
        return None
    try:
        return float(text.replace(",", "").replace("\u2212", "-"))
    except ValueError:
        return None


# ----------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------

def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (the service, the driver,
    the console, Playwright's driver and every Chromium process, for this runner)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    parent[int(entry.name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, todo = {root}, [root]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in mine:
                mine.add(c)
                todo.append(c)
    return sum(S.cpu_seconds(p) for p in mine)


def _popen(cmd, log: Path, **kw) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen(cmd, stderr=err, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                **kw)


def _readline(proc: subprocess.Popen, timeout_s: float, what: str, log: Path) -> bytes:
    """One line of ``proc``'s stdout within ``timeout_s`` (else the process is stopped
    and the error carries its log)."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout_s)
    if not box or not box[0]:
        stop(proc)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{what} did not get ready: {tail}")
    return box[0]


def stop(proc: subprocess.Popen | None, *, stdin_stop: bool = False,
         timeout_s: float = 20.0) -> int | None:
    """Stop a process this module started: ``STOP`` on stdin when asked, else
    SIGTERM; SIGKILL if it lingers."""
    if proc is None:
        return None
    if proc.poll() is None:
        if stdin_stop and proc.stdin is not None:
            try:
                proc.stdin.write(b"STOP\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                proc.terminate()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            try:
                f.close()
            except (BrokenPipeError, OSError):
                pass
    return proc.returncode


@dataclass
class Console:
    """``lanecore console`` against the service, in a subprocess (``--json`` ready
    line); ``start()``/``stop()`` may be called again and again (same port, same
    data directory, so a browser's session cookie stays good)."""

    data_dir: Path
    service: str
    events: str
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = [sys.executable, "-m", "lanecore", "console", "--data-dir", str(self.data_dir),
               "--bind", f"127.0.0.1:{self.port}", "--service", self.service,
               "--events", self.events, "--json"]
        self.proc = _popen(cmd, self.log, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        ready = json.loads(_readline(self.proc, 60.0, "the console", self.log))
        assert ready.get("ready") and ready.get("process") == "console", ready
        self.starts += 1

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def add_user(data_dir: Path, name: str, password: str, role: str = "attendant") -> None:
    """A staff account with the real ``lanecore console user add``."""
    pw = data_dir.parent / f"{name}.pw"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    r = subprocess.run([sys.executable, "-m", "lanecore", "console", "user", "add", name,
                        "--role", role, "--password-file", str(pw), "--data-dir",
                        str(data_dir)], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr


def start_script(kind: str, args: list[str], log: Path) -> subprocess.Popen:
    """``python bench/_console.py KIND ARGS`` once it printed READY."""
    proc = _popen([sys.executable, str(HERE), kind, *args], log, stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE)
    line = _readline(proc, 120.0, kind, log)
    if not line.startswith(b"READY"):
        stop(proc)
        raise RuntimeError(f"{kind}: {line!r}")
    return proc


def go(proc: subprocess.Popen) -> None:
    proc.stdin.write(b"GO\n")
    proc.stdin.flush()


def finish(proc: subprocess.Popen, out: Path, timeout_s: float = 30.0) -> dict:
    """``STOP``, wait, and read what the process wrote."""
    rc = stop(proc, stdin_stop=True, timeout_s=timeout_s)
    assert rc == 0, f"exit {rc}"
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------------
# The driver: N lanes streaming weigh.frames (20 a second each)
# ----------------------------------------------------------------------------------

def _stop_on_stdin() -> threading.Event:
    ev = threading.Event()

    def watch():
        for line in sys.stdin:
            if line.startswith("STOP"):
                break
        ev.set()
    threading.Thread(target=watch, daemon=True).start()
    return ev


def drive_main(a) -> int:
    """Configure ``a.lanes`` lanes, print READY, wait for GO; then each lane sends a
    ``weigh.frame`` of 50 samples (1 kHz) every 50 ms from a synthetic load-cell trace
    until STOP (or ``a.max_seconds``). Each weighing event that comes back in a reply
    and goes out on the events socket (``settled``, ``fault``, ``overload``,
    ``under_zero``) is written with the wall-clock time its frame was sent."""
    import gc
    ctx = zmq.Context.instance()
    n_lanes, frame, fs = a.lanes, 50, 1000.0
    names = [f"{a.prefix}{i}" for i in range(n_lanes)]
    n_socks = max(1, min(8, n_lanes))
    socks = [S.dealer(a.endpoint, ctx=ctx) for _ in range(n_socks)]
    cfg = [msgpack.packb({"op": "weigh.config", "id": f"cfg-{uuid.uuid4().hex}",
                          "lane": name, "config": {"fs_hz": fs}}) for name in names]
    for k, s in enumerate(socks):
        for raw in S.pipelined(s, cfg[k::n_socks], 50):
            r = msgpack.unpackb(raw)
            if not r.get("ok"):
                raise SystemExit(f"weigh.config failed: {r}")
    traces, quiet = S.lane_traces(min(n_lanes, 20), seed=a.seed, fs_hz=fs, frame=frame)
    cycle = traces.shape[1] // frame
    frames_of = traces[:, :cycle * frame].reshape(len(traces), cycle, frame)
    rng = np.random.default_rng(a.seed + 1)
    offset = [int(rng.choice(quiet[i % len(quiet)])) for i in range(n_lanes)]
    print("READY", flush=True)
    if not sys.stdin.readline().startswith("GO"):
        return 1
    stop_ev = _stop_on_stdin()
    period_ns = int(frame / fs * 1e9) // n_lanes     # between two frames of the fleet
    sent: dict[int, int] = {}
    events: list[list] = []
    errors: dict[str, int] = {}
    packb, unpackb = msgpack.packb, msgpack.unpackb
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)

    def drain(ready):
        for s in ready:
            while True:
                try:
                    raw = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                r = unpackb(raw)
                t_sent = sent.pop(r["id"], 0)
                if not r["ok"]:
                    code = r["error"]["code"]
                    errors[code] = errors.get(code, 0) + 1
                    continue
                lane = names[r["id"] % n_lanes]
                for ev in r.get("events", ()):
                    if ev.get("event") in PUBLISHED:
                        events.append([lane, ev["event"], ev.get("sample"), t_sent])
    gc.disable()
    t0 = time.monotonic_ns()
    deadline = t0 + int(a.max_seconds * 1e9)
    k = 0
    while not stop_ev.is_set() and time.monotonic_ns() < deadline:
        due = t0 + k * period_ns
        while due <= time.monotonic_ns():
            i, q = k % n_lanes, k // n_lanes
            payload = packb({"op": "weigh.frame", "id": k, "lane": names[i], "seq": q,
                             "samples": frames_of[i % len(frames_of)][
                                 (offset[i] + q) % cycle].tobytes()})
            sent[k] = time.time_ns()
            socks[i % n_socks].send(payload, zmq.NOBLOCK)
            k += 1
            due = t0 + k * period_ns
        wait_ms = max(1, -(-(due - time.monotonic_ns()) // 1_000_000))
        drain([s for s, _ in poller.poll(wait_ms)])
    end = time.monotonic_ns() + 3_000_000_000
    while sent and time.monotonic_ns() < end:
        drain([s for s, _ in poller.poll(50)])
    Path(a.out).write_text(json.dumps({"events": events, "frames": k, "lost": len(sent),
                                       "errors": errors,
                                       "seconds": (time.monotonic_ns() - t0) / 1e9}))
    for s in socks:
        s.close(0)
    return 0


# ----------------------------------------------------------------------------------
# The bare subscriber: the events socket's delivery with nothing behind it
# ----------------------------------------------------------------------------------

def sub_main(a) -> int:
    """A plain SUB on ``settled`` and ``fault``; each event stamped (wall clock) as
    it is received, before it is unpacked."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    for topic in (b"settled", b"fault"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(a.events)
    time.sleep(0.3)      # PUB/SUB: let the subscription reach the publisher
    print("READY", flush=True)
    stop_ev = _stop_on_stdin()
    raw: list[tuple[int, bytes, bytes]] = []
    while not stop_ev.is_set():
        if not sub.poll(100):
            continue
        while True:
            try:
                topic, body = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            raw.append((time.time_ns(), topic, body))
    rows = []
    for t, topic, body in raw:
        ev = msgpack.unpackb(body)
        rows.append([topic.decode(), ev.get("lane"), ev.get("event"), ev.get("sample"),
                     ev.get("weight_g"), t])
    Path(a.out).write_text(json.dumps({"events": rows}))
    sub.close(0)
    return 0


# ----------------------------------------------------------------------------------
# Pairing: the same event's send, bare delivery and page update
# ----------------------------------------------------------------------------------

@dataclass
class Paired:
    bare_ns: np.ndarray        # frame sent → event received by the bare SUB
    set_ns: np.ndarray         # frame sent → console.js set the card's weight
    frame_ns: np.ndarray       # frame sent → the next animation frame after that
    bare_events: int
    page_updates: int
    text_mismatch: int
    unmatched: int


def pair(drive: dict, bare: dict, page_rows: list, offset_ns: float, prefix: str) -> Paired:
    """Per lane, the k-th event the bare SUB got is the k-th change of that lane's
    card in the page (the console folds every ``settled``/``fault`` event of a lane
    into its card, in the order the socket delivered them; the page and the bare SUB
    were both listening before the first frame). The card's text is checked against
    the event's weight; the event's frame send time comes from the driver."""
    sent = {(lane, ev, sample): t for lane, ev, sample, t in drive["events"]}
    by_lane: dict[str, list] = {}
    for topic, lane, ev, sample, weight, t in bare["events"]:
        if isinstance(lane, str) and lane.startswith(prefix):
            by_lane.setdefault(lane, []).append((ev, sample, weight, t))
    page_by_lane: dict[str, list] = {}
    for lane, text, t_set, t_frame in page_rows:
        if isinstance(lane, str) and lane.startswith(prefix):
            page_by_lane.setdefault(lane, []).append((text, t_set, t_frame))
    bare_l, set_l, frame_l = [], [], []
    mismatch = unmatched = 0
    for lane, evs in by_lane.items():
        rows = page_by_lane.get(lane, [])
        unmatched += abs(len(evs) - len(rows))
        for (ev, sample, weight, t_bare), (text, t_set, t_frame) in zip(evs, rows):
            shown = page_grams(text)
            if weight is not None and (shown is None or abs(shown - weight) > 0.051):
                mismatch += 1
                continue
            t0 = sent.get((lane, ev, sample))
            if not t0:
                continue
            bare_l.append(t_bare - t0)
            set_l.append(t_set * 1e6 - offset_ns - t0)
            frame_l.append((t_frame * 1e6 - offset_ns - t0) if t_frame else np.nan)
    return Paired(np.array(bare_l, dtype=np.float64), np.array(set_l, dtype=np.float64),
                  np.array(frame_l, dtype=np.float64),
                  sum(len(v) for v in by_lane.values()),
                  sum(len(v) for v in page_by_lane.values()), mismatch, unmatched)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="_console.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--lanes", type=int, default=100)
    d.add_argument("--prefix", default="console-bench-")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-seconds", type=float, default=600.0)
    d.add_argument("--out", required=True)
    s = sub.add_parser("sub")
    s.add_argument("--events", required=True)
    s.add_argument("--out", required=True)
    a = p.parse_args(argv)
    return drive_main(a) if a.cmd == "drive" else sub_main(a)


if __name__ == "__main__":
    raise SystemExit(main())
