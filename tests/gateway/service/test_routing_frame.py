"""The optional routing frame (docs/protocol.md, "Routing frame"): a single service
ignores it; behind a broker, requests that carry it are routed, without the request
being unpacked, to the worker their pin names, those without it as before, and the
replies are the same."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from lanecore.gateway.net.server import route_frame


def _dealer(endpoint):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 20_000)
    s.connect(endpoint)
    return s


def _ask(sock, req: dict, routed: bool) -> dict:
    """One request; UNAVAILABLE (a worker still starting) is retried with the same
    id, as docs/protocol.md tells clients to."""
    payload = msgpack.packb(req)
    for _ in range(100):
        if routed:
            sock.send_multipart([route_frame("lane", req["lane"]), payload])
        else:
            sock.send(payload)
        frames = sock.recv_multipart()
        assert len(frames) == 1
        reply = msgpack.unpackb(frames[0])
        if reply.get("ok") or reply["error"]["code"] != "UNAVAILABLE":
            return reply
        time.sleep(0.1)
    raise AssertionError(f"still UNAVAILABLE after 10 s: {reply}")


@pytest.mark.parametrize("workers", [1, 3])
def test_routed_and_plain_frames_meet_the_same_lane(serve, workers):
    served = serve("--workers", str(workers))
    sock = _dealer(served.endpoint)
    try:
        x = np.full(50, 120.0, dtype="<f4").tobytes()
        for k in range(6):
            lane = f"route-{k}"
            # configured without a routing frame, weighed with one and without
            r = _ask(sock, {"op": "weigh.config", "id": f"c{k}", "lane": lane}, routed=k % 2)
            assert r["ok"], r
            for seq in range(4):
                req = {"op": "weigh.frame", "id": f"f{k}-{seq}", "lane": lane, "seq": seq,
                       "samples": x}
                r = _ask(sock, req, routed=seq % 2 == 0)
                assert r["ok"], r
                assert r["lane"] == lane and set(r) == {"id", "ok", "lane", "events",
                                                        "stable", "settled_g"}
                # no sequence fault: every frame reached the lane's one worker
                assert not [e for e in r["events"] if e.get("reason") in
                            ("sequence_gap", "out_of_order")], r
            # a retry with the routing frame meets the reply given without it
            again = _ask(sock, {"op": "weigh.frame", "id": f"f{k}-1", "lane": lane, "seq": 1,
                                "samples": x}, routed=True)
            assert again["id"] == f"f{k}-1" and again["ok"]
        hello = _ask(sock, {"op": "hello", "id": "h", "lane": "route-0"}, routed=True)
        assert hello["ok"]
    finally:
        sock.close(0)
