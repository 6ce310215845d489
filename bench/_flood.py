"""The flooding client of ``bench/test_flood.py``, in its own process (its CPU is not
the victim's, and no GIL is shared with the timed loop)::

    python bench/_flood.py ENDPOINT

One DEALER. Commands on stdin, one per line, each answered on stdout:

* ``on``: flood, as fast as the service's socket takes it, bursts of one message of
  just under 1 MiB holding 1,040,000 empty maps and 64 small ``hello`` requests;
  replies are read as they come. Answers ``saturated`` once the first ``BUSY`` came
  back (the service's per-peer bounds are reached), or after 5 s.
* ``off``: stop sending; read replies until every request sent has had its one (or
  30 s). Answers a JSON line ``{"sent", "replies", "codes": {code: n}}`` (``ok`` for
  successes), counted since the previous ``off``.
* ``quit`` (or end of input): exit.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import msgpack
import zmq

SMALL_PER_BIG = 64


def empty_maps_request(rid) -> bytes:
    """A ``hello`` of just under 1 MiB carrying 1,040,000 empty maps."""
    junk = msgpack.packb([[{}] * 10_000] * 104)
    return msgpack.packb({"op": "hello", "id": rid, "junk": None})[:-1] + junk


def main(endpoint: str) -> int:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 16)           # the flood waits in the service, not here
    s.setsockopt(zmq.RCVHWM, 1_000_000)
    s.connect(endpoint)
    # one burst: the big message, then the small ones (their ids repeat: no matter)
    burst = [empty_maps_request("flood")] + [msgpack.packb({"op": "hello", "id": i})
                                               for i in range(SMALL_PER_BIG)]
    poller_out = zmq.Poller()
    poller_out.register(s, zmq.POLLOUT)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    sent = replies = 0
    codes: Counter = Counter()
    flooding = False
    told = True
    since = 0.0
    k = 0

    def read_replies() -> None:
        nonlocal replies
        while True:
            try:
                r = msgpack.unpackb(s.recv(zmq.NOBLOCK), raw=False)
            except zmq.Again:
                return
            replies += 1
            codes["ok" if r.get("ok") else r["error"]["code"]] += 1

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    while True:
        ready = dict(poller.poll(0 if flooding else 100))
        if ready.get(sys.stdin.fileno()) or ready.get(sys.stdin):
            cmd = sys.stdin.readline().strip()
            if cmd in ("", "quit"):
                return 0
            if cmd == "on":
                flooding, told, since = True, False, time.monotonic()
            elif cmd == "off":
                flooding = False
                deadline = time.monotonic() + 30
                while replies < sent and time.monotonic() < deadline:
                    if s.poll(100):
                        read_replies()
                say(json.dumps({"sent": sent, "replies": replies, "codes": dict(codes)}))
                sent = replies = 0
                codes.clear()
        read_replies()
        if flooding:
            # the next frame of the bursts; when the service takes no more, wait
            # until it does (no spinning: this process's CPU is not the point)
            try:
                s.send(burst[k % len(burst)], zmq.NOBLOCK, copy=False)
                sent += 1
                k += 1
            except zmq.Again:
                poller_out.poll(10)
            if not told and (codes["BUSY"] or time.monotonic() - since > 5):
                told = True
                say("saturated")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
