"""The floor as the verification service's events socket tells it, kept for the
console's pages and pushed to every open page (server-sent events).

:class:`Floor` is pure state: ``apply(topic, event)`` folds one event (``settled``,
``fault``, ``verdict``, ``alarm``, ``device``, ``order``, ``audit``: ``docs/protocol.md``,
"Events") into the lanes, the alarms, the devices and the audits, and returns what
changed; ``seed_alarms`` and ``seed_audits`` fold in the service's history
(``alarm.list``, ``audit.list``) so the pages show what happened before the console
started. :class:`Hub` reads the events socket (a zmq.asyncio SUB, with the console's
CurveZMQ keys when the service runs ``--curve``), applies each event and hands one
message per event to every subscriber's queue; when it starts and every time the
socket (re)connects it asks the service for that history again, since events
published while the console was away are lost to a SUB. A subscriber that falls more than
``QUEUE_MAX`` messages behind loses them and gets a ``resync`` (its page reloads the
snapshot) — a slow browser never holds the hub up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

log = logging.getLogger("lanecore.console")

TOPICS = ("settled", "fault", "verdict", "alarm", "device", "order", "audit")
QUEUE_MAX = 1000
#: Alarms and device events kept in memory (the newest).
MAX_ALARMS = 500
MAX_FAULTS = 5
#: Audits kept in memory (the newest, pending or recorded).
MAX_AUDITS = 500
#: Recorded audits a snapshot carries (all pending ones go).
SNAPSHOT_DONE = 100
#: What of an ``alarm_actions`` record an alarm keeps (``alarm.resolve``, ``alarm.list``).
ACTION_FIELDS = ("action_id", "action", "staff", "reason", "finding", "at", "principal")


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
        self.audits: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.counts: collections.Counter = collections.Counter()

    def snapshot(self) -> dict:
        return {"lanes": sorted(self.lanes.values(), key=lambda c: c["lane"]),
                "alarms": list(reversed(self.alarms.values())),
                "devices": sorted(self.devices.values(),
                                  key=lambda d: (d["lane"], d["device"])),
                "audits": self._audits_shown()}

    def _audits_shown(self, done_max: int = SNAPSHOT_DONE) -> list[dict]:
        """Newest first: every pending audit, and the newest ``done_max`` recorded
        (a page needs the queue; the recorded list it reads from the service)."""
        out, done = [], 0
        for a in reversed(self.audits.values()):
            if a.get("state") == "done":
                done += 1
                if done > done_max:
                    continue
            out.append(a)
        return out

    def _add_action(self, alarm: dict, rec: dict) -> bool:
        """Append one ``alarm_actions`` record unless the alarm has it already (the
        console's own copy, then the event; or a history read twice)."""
        if any(a.get("action_id") == rec.get("action_id") for a in alarm["actions"]):
            return False
        alarm["actions"].append({k: rec.get(k) for k in ACTION_FIELDS})
        alarm["actions"].sort(key=lambda a: (a.get("at") or 0, a.get("action_id") or 0))
        alarm["status"] = alarm["actions"][-1].get("action") or alarm["status"]
        return True

    def _audit(self, rec: dict) -> dict:
        """Keep one AUDIT (``audit.list`` / ``audit`` events), newest last."""
        order_no = rec["order_no"]
        have = self.audits.pop(order_no, None)
        if have is not None and have.get("state") == "done" and rec.get("state") != "done":
            rec = have                  # a late "requested" never undoes a result
        self.audits[order_no] = dict(rec)
        while len(self.audits) > MAX_AUDITS:
            self.audits.popitem(last=False)
        return self.audits[order_no]

    def seed_alarms(self, reply: dict) -> list[dict]:
        """Fold in the service's alarm history (an ``alarm.list`` reply): weight
        alarms with every action staff took, and the lanes' device alarms. Alarms
        the floor already has gain the actions they miss; the rest are added at
        their own time. Returns the alarms added or changed."""
        changed: dict[str, dict] = {}
        for v in reply.get("alarms") or []:
            if not isinstance(v, dict) or not isinstance(v.get("lane"), str):
                continue
            key = f"{v['lane']}:{v.get('order_no')}"
            alarm = self.alarms.get(key)
            if alarm is None:
                alarm = self.alarms[key] = {
                    "id": key, "status": "open", "actions": [], "lane": v["lane"],
                    "order_no": v.get("order_no") or "",
                    "cause": _cause(v.get("verdict")), "at": v.get("at"),
                    "measured_g": v.get("measured_g"), "expected_g": v.get("expected_g"),
                    "band_g": v.get("band_g"), "z": v.get("z"),
                    "explanations": list(v.get("explanations") or [])[:5],
                    "verdict_id": v.get("verdict_id")}
                changed[key] = alarm
            for rec in v.get("actions") or []:
                if isinstance(rec, dict) and self._add_action(alarm, rec):
                    changed[key] = alarm
        for d in reply.get("device_alarms") or []:
            if not isinstance(d, dict) or not isinstance(d.get("lane"), str):
                continue
            tail = f":{d.get('device')}:{d.get('event_id')}"
            if any(k.startswith(f"{d['lane']}:") and k.endswith(tail) for k in self.alarms):
                continue
            key = f"{d['lane']}:-{tail}"
            changed[key] = self.alarms[key] = {
                "id": key, "status": "open", "actions": [], "lane": d["lane"],
                "order_no": "-", "cause": "eas" if d.get("device") == "eas_gate" else "device",
                "at": d.get("at"), "measured_g": None, "expected_g": None, "band_g": None,
                "z": None, "explanations": [], "message": d.get("message")}
        if changed:      # oldest first, as events add them; then keep the newest
            ordered = sorted(self.alarms.items(), key=lambda kv: kv[1].get("at") or 0)
            self.alarms = collections.OrderedDict(ordered[-MAX_ALARMS:])
        return [a for k, a in changed.items() if k in self.alarms]

    def seed_audits(self, reply: dict) -> list[dict]:
        """Fold in an ``audit.list`` reply (newest first). Returns the audits kept."""
        recs = [a for a in reply.get("audits") or []
                if isinstance(a, dict) and isinstance(a.get("order_no"), str)]
        return [self._audit(a) for a in reversed(recs)]

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
            if alarm is not None:
                self._add_action(alarm, rec)
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
        elif topic == "audit":
            rec = ev.get("recorded") or ev.get("requested")
            if isinstance(rec, dict) and isinstance(rec.get("order_no"), str):
                out["audit"] = self._audit(rec)
        return out

    def alarm(self, lane: str, order_no: str) -> dict | None:
        return self.alarms.get(f"{lane}:{order_no}")


class Hub:
    """The events socket → :class:`Floor` → every subscriber.

    ``history``: ``async history(op, **fields) -> reply``, the console's service
    client (``alarm.list``, ``audit.list``); None: no history, only events."""

    #: Seconds between tries to read the history while the service does not answer.
    HISTORY_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, endpoint: str | None, *, curve=None, floor: Floor | None = None,
                 ctx=None, history=None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.floor = floor or Floor()
        self.ctx = ctx
        self.history = history
        self.subscribers: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None
        self.seeding: asyncio.Task | None = None
        self.connected = False
        self.received = 0
        self.seeded = 0            # how many times the history was read in full

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

    async def seed(self) -> bool:
        """Read the service's alarm and audit history into the floor once and push
        what changed to the pages (one ``history`` message). True when both were
        read; an op the service lacks or refuses is logged and skipped."""
        if self.history is None:
            return True
        from lanecore.core.errors import LanecoreError
        complete, alarms, audits = True, [], []
        for op, fields, fold in (
                ("alarm.list", {"limit": MAX_ALARMS}, self.floor.seed_alarms),
                ("audit.list", {"state": "all", "limit": MAX_AUDITS},
                 self.floor.seed_audits)):
            try:
                reply = await self.history(op, **fields)
            except LanecoreError as exc:
                log.warning("%s: %s (%s)", op, exc.code, exc)
                complete = complete and exc.code not in (
                    "TIMEOUT", "UNREACHABLE", "CLOSED", "UNAVAILABLE")
                continue
            (alarms if op == "alarm.list" else audits).extend(fold(reply))
        if alarms or audits:
            self.publish({"topic": "history", "alarms": alarms, "audits": audits})
        if complete:
            self.seeded += 1
        return complete

    def reseed(self) -> None:
        """(Re)start reading the history, retrying while the service is away."""
        if self.history is None:
            return
        if self.seeding is not None and not self.seeding.done():
            self.seeding.cancel()

        async def loop():
            for wait_s in (*self.HISTORY_RETRY_S, None):
                try:
                    if await self.seed():
                        return
                except Exception:       # history is a comfort: never stop the hub
                    log.exception("the alarm and audit history could not be read")
                if wait_s is None:
                    return
                await asyncio.sleep(wait_s)
        self.seeding = asyncio.get_running_loop().create_task(loop())

    async def start(self) -> None:
        self.reseed()
        if self.endpoint and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.seeding is not None:
            self.seeding.cancel()
            try:
                await self.seeding
            except (asyncio.CancelledError, Exception):
                pass
            self.seeding = None
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
        # every (re)connection after the first means events were missed: read the
        # history again (the first is read by start())
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED) \
            if self.history is not None else None
        watch = None if monitor is None else \
            asyncio.get_running_loop().create_task(self._watch(monitor))
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
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch
                with contextlib.suppress(Exception):
                    sock.disable_monitor()
                monitor.close(0)
            sock.close(0)

    async def _watch(self, monitor) -> None:
        from zmq.utils.monitor import parse_monitor_message
        first = True
        while True:
            frames = await monitor.recv_multipart()
            try:
                parse_monitor_message(frames)
            except Exception:
                continue
            if first:
                first = False
                continue
            log.info("events socket reconnected: reading the history again")
            self.reseed()
