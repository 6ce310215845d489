"""The floor as the verification service's events socket tells it, kept for the
console's pages and pushed to every open page (server-sent events).

:class:`Floor` is pure state: ``apply(topic, event)`` folds one event (``settled``,
``fault``, ``verdict``, ``alarm``, ``device``, ``order``: ``docs/protocol.md``,
"Events") into the lanes, the alarms and the devices, and returns what changed.
:class:`Hub` reads the events socket (a zmq.asyncio SUB, with the console's CurveZMQ
keys when the service runs ``--curve``), applies each event and hands one message
per event to every subscriber's queue. A subscriber that falls more than
``QUEUE_MAX`` messages behind loses them and gets a ``resync`` (its page reloads the
snapshot) — a slow browser never holds the hub up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

log = logging.getLogger("lanecore.console")

TOPICS = ("settled", "fault", "verdict", "alarm", "device", "order")
QUEUE_MAX = 1000
#: Alarms and device events kept in memory (the newest).
MAX_ALARMS = 500
MAX_FAULTS = 5


def _lane(lanes: dict, name: str) -> dict:
    card = lanes.get(name)
    if card is None:
        card = lanes[name] = {
            "lane": name, "state": "idle", "weight_g": None, "settled_g": None,
            "sigma_g": None, "order_no": None, "order_status": None, "verdict": None,
            "z": None, "expected_g": None, "band_g": None, "explanations": [],
            "eas": None, "faults": [], "updated_at": None}
    return card


def _cause(verdict: str) -> str:
    return {"short": "weight_short", "over": "weight_over"}.get(verdict, verdict)


class Floor:
    """Lanes, alarms and devices, from events."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self.lanes: dict[str, dict] = {}
        self.alarms: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.devices: dict[str, dict] = {}
        self.orders: dict[str, str] = {}
        self.counts: collections.Counter = collections.Counter()

    def snapshot(self) -> dict:
        return {"lanes": sorted(self.lanes.values(), key=lambda c: c["lane"]),
                "alarms": list(reversed(self.alarms.values())),
                "devices": sorted(self.devices.values(),
                                  key=lambda d: (d["lane"], d["device"]))}

    def _alarm(self, key: str, **fields) -> dict:
        alarm = self.alarms.get(key)
        if alarm is None:
            alarm = self.alarms[key] = {"id": key, "status": "open", "actions": [],
                                        **fields}
            while len(self.alarms) > MAX_ALARMS:
                self.alarms.popitem(last=False)
        return alarm

    def apply(self, topic: str, ev: dict) -> dict:
        """Fold one event in; the message for the pages: ``{topic, event, lane?,
        alarm?, device?}`` (the lane card, alarm or device as they are now)."""
        self.counts[topic] += 1
        now = self.clock()
        out: dict = {"topic": topic, "event": ev}
        if topic in ("settled", "fault") and isinstance(ev.get("lane"), str):
            card = _lane(self.lanes, ev["lane"])
            if topic == "settled":
                card.update(state="settled", weight_g=ev.get("weight_g"),
                            settled_g=ev.get("weight_g"), sigma_g=ev.get("sigma_g"))
            else:
                if ev.get("weight_g") is not None:
                    card["weight_g"] = ev["weight_g"]
                card["state"] = "fault"
                card["faults"] = (card["faults"] + [
                    {"at": now, "device": "scale", "code": ev.get("event"),
                     "message": ev.get("reason")}])[-MAX_FAULTS:]
            card["updated_at"] = now
            out["lane"] = card
        elif topic in ("verdict", "alarm") and "resolved" in ev:
            rec = ev["resolved"] or {}
            key = f"{rec.get('lane')}:{rec.get('order_no')}"
            alarm = self.alarms.get(key)
            seen = alarm is not None and any(
                a.get("action_id") == rec.get("action_id") for a in alarm["actions"])
            if alarm is not None and not seen:   # the console's own copy, then the event
                alarm["status"] = rec.get("action")
                alarm["actions"].append({k: rec.get(k) for k in (
                    "action_id", "action", "staff", "reason", "at", "principal")})
            if alarm is not None:
                out["alarm"] = alarm
        elif topic in ("verdict", "alarm") and isinstance(ev.get("gate"), str):
            card = _lane(self.lanes, ev["gate"])
            card.update(order_no=ev.get("order_no"), verdict=ev.get("verdict"),
                        z=ev.get("z"), expected_g=ev.get("expected_g"),
                        band_g=ev.get("band_g"),
                        explanations=list(ev.get("explanations") or [])[:5],
                        state="ok" if ev.get("verdict") == "ok" else "alarm",
                        order_status=self.orders.get(ev.get("order_no")),
                        updated_at=now)
            if ev.get("measured_g") is not None:
                card["weight_g"] = ev["measured_g"]
            out["lane"] = card
            if ev.get("verdict") not in (None, "ok"):
                key = f"{ev['gate']}:{ev.get('order_no')}"
                out["alarm"] = self._alarm(
                    key, lane=ev["gate"], order_no=ev.get("order_no") or "",
                    cause=_cause(ev["verdict"]), at=now,
                    measured_g=ev.get("measured_g"), expected_g=ev.get("expected_g"),
                    band_g=ev.get("band_g"), z=ev.get("z"),
                    explanations=list(ev.get("explanations") or [])[:5])
        elif topic == "device" and isinstance(ev.get("lane"), str):
            dev = {"lane": ev["lane"], "device": ev.get("device"), "kind": ev.get("kind"),
                   "code": ev.get("code"), "message": ev.get("message"),
                   "at": ev.get("at") or now, "event_id": ev.get("event_id")}
            self.devices[f"{ev['lane']}/{ev.get('device')}"] = dev
            out["device"] = dev
            card = _lane(self.lanes, ev["lane"])
            if ev.get("device") == "eas_gate":
                card["eas"] = "alarm" if ev.get("kind") == "alarm" else "clear"
            if ev.get("kind") == "fault":
                card["faults"] = (card["faults"] + [
                    {"at": dev["at"], "device": dev["device"], "code": dev["code"],
                     "message": dev["message"]}])[-MAX_FAULTS:]
            elif ev.get("kind") == "recovered":
                card["faults"] = [f for f in card["faults"]
                                  if f["device"] != dev["device"]]
            card["updated_at"] = now
            out["lane"] = card
            if ev.get("kind") == "alarm":
                order_no = card.get("order_no") or "-"
                out["alarm"] = self._alarm(
                    f"{ev['lane']}:{order_no}:{ev.get('device')}:{ev.get('event_id')}",
                    lane=ev["lane"], order_no=order_no,
                    cause="eas" if ev.get("device") == "eas_gate" else "device",
                    at=now, measured_g=None, expected_g=None, band_g=None, z=None,
                    explanations=[], message=ev.get("message"))
        elif topic == "order" and isinstance(ev.get("order_no"), str):
            self.orders[ev["order_no"]] = ev.get("status")
            if len(self.orders) > 10_000:
                self.orders.pop(next(iter(self.orders)))
            for card in self.lanes.values():
                if card["order_no"] == ev["order_no"]:
                    card["order_status"] = ev.get("status")
                    out["lane"] = card
        return out

    def alarm(self, lane: str, order_no: str) -> dict | None:
        return self.alarms.get(f"{lane}:{order_no}")


class Hub:
    """The events socket → :class:`Floor` → every subscriber."""

    def __init__(self, endpoint: str | None, *, curve=None, floor: Floor | None = None,
                 ctx=None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.floor = floor or Floor()
        self.ctx = ctx
        self.subscribers: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None
        self.connected = False
        self.received = 0

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def publish(self, message: dict) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait({"topic": "resync"})

    def feed(self, topic: str, event: dict) -> dict:
        """One event in (the socket's, or a test's): applied and published."""
        message = self.floor.apply(topic, event)
        self.publish(message)
        return message

    async def start(self) -> None:
        if self.endpoint and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
            self.task = None

    async def _run(self) -> None:
        import msgpack
        import zmq
        import zmq.asyncio
        ctx = self.ctx or zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        if self.curve is not None:
            self.curve.apply(sock)
        for topic in TOPICS:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        sock.connect(self.endpoint)
        self.connected = True
        try:
            while True:
                frames = await sock.recv_multipart()
                if len(frames) != 2:
                    continue
                try:
                    topic = frames[0].decode("ascii")
                    event = msgpack.unpackb(frames[1], raw=False)
                except (UnicodeDecodeError, ValueError, msgpack.ExtraData,
                        msgpack.FormatError, msgpack.StackError):
                    log.warning("an event that does not parse was dropped")
                    continue
                if topic not in TOPICS or not isinstance(event, dict):
                    continue
                self.received += 1
                try:
                    self.feed(topic, event)
                except Exception:      # one odd event never stops the floor
                    log.exception("event %s could not be applied", topic)
        finally:
            self.connected = False
            sock.close(0)
