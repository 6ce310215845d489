"""A lane controller: one lane's devices wired to the verification service.

``lanecore lane run LANE.toml`` reads a lane configuration naming the lane's scanner,
scale or load-cell bridge, EAS deactivator and gate, and receipt printer (each a port
URL and its options), opens every device with its driver, and connects them to the
service through :class:`lanecore.gateway.net.client.Client`:

* scanner → ``scan`` (an order QR, ``LCO1.…``, scanned at an exit lane → ``verify.order``
  with the weight on the lane: a fresh stable reading of the scale, or the bridge
  lane's settled weight);
* load-cell bridge → ``weigh.config`` once, then ``weigh.frame`` (raw counts);
* an EAS-tagged item scanned at a till → the deactivator;
* EAS gate alarms → ``device.event`` (``alarm``), published to attendants;
* any device fault → ``device.event`` (``fault``) once per outage, and
  ``recovered`` when the device works again;
* a verdict that is not ``ok`` → a slip on the printer for the attendant.

Every driver delivers its events to one queue; one thread takes them in order and
talks to the service, so a slow service never stalls a device's port loop, and the
client is used from one thread. What happens is reported as records (dicts) to
``on_record`` (the CLI prints them as JSON lines). Configuration errors raise
:class:`LaneConfigError` (``BAD_LANE_CONFIG``) naming the key.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lanecore.core.errors import LanecoreError
from lanecore.drivers import bridge as bridge_mod
from lanecore.drivers import eas as eas_mod
from lanecore.drivers import printer as printer_mod
from lanecore.drivers import scales as scales_mod
from lanecore.drivers import scanner as scanner_mod
from lanecore.drivers.link import DeviceFault

from lanecore.gateway.net.client import Client, CurveKeys, ServiceError

log = logging.getLogger("lanecore.lane")

ORDER_QR_PREFIX = "LCO1."
ROLES = ("exit", "till")
DEVICES = ("scanner", "scale", "bridge", "eas_gate", "eas_deactivator", "printer")

# What each device section may hold besides `port` (and its type).
_OPTIONS: dict[str, dict[str, type | tuple]] = {
    "scanner": {"suffix": str},
    "scale": {"protocol": str, "unit": str, "timeout_s": (int, float),
              "interval_s": (int, float)},
    "bridge": {"fs_hz": int, "samples_per_frame": int, "counts_per_g": (int, float),
               "zero_counts": (int, float), "frame_s": (int, float), "e_g": (int, float),
               "max_g": (int, float), "conveyor_hz": (int, float)},
    "eas_gate": {"heartbeat_timeout_s": (int, float)},
    "eas_deactivator": {"timeout_s": (int, float)},
    "printer": {"width": int},
}


class LaneConfigError(LanecoreError):
    code = "BAD_LANE_CONFIG"

    def __init__(self, message: str):
        super().__init__(message, code=self.code)


@dataclass
class LaneSetup:
    """One lane: its name, role, the service it talks to and its devices."""

    name: str
    role: str = "exit"
    service: str = "tcp://127.0.0.1:5555"
    region: str | None = None
    server_key: str | None = None        # CurveZMQ: the service's public key file
    client_secret: str | None = None     # … and this lane's secret key file
    devices: dict[str, dict] = field(default_factory=dict)   # name → {port, options…}

    @classmethod
    def from_dict(cls, d: dict) -> "LaneSetup":
        if not isinstance(d, dict) or not isinstance(d.get("lane"), dict):
            raise LaneConfigError("a lane configuration has a [lane] table")
        lane = dict(d["lane"])
        unknown = set(d) - {"lane", *DEVICES}
        if unknown:
            raise LaneConfigError(f"unknown section(s) {sorted(unknown)}; devices are "
                                  f"{', '.join(DEVICES)}")
        name = lane.pop("name", None)
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise LaneConfigError("lane.name must be a name of 1..64 characters")
        setup = cls(name=name)
        for key, kind in (("role", str), ("service", str), ("region", str),
                          ("server_key", str), ("client_secret", str)):
            if key in lane:
                value = lane.pop(key)
                if not isinstance(value, kind):
                    raise LaneConfigError(f"lane.{key} must be a string")
                setattr(setup, key, value)
        if lane:
            raise LaneConfigError(f"unknown lane key(s) {sorted(lane)}")
        if setup.role not in ROLES:
            raise LaneConfigError(f"lane.role must be one of {', '.join(ROLES)}")
        if (setup.server_key is None) != (setup.client_secret is None):
            raise LaneConfigError("give both lane.server_key and lane.client_secret, "
                                  "or neither")
        for dev in DEVICES:
            if dev not in d:
                continue
            sec = d[dev]
            if not isinstance(sec, dict) or not isinstance(sec.get("port"), str) \
                    or not sec["port"]:
                raise LaneConfigError(f"[{dev}] needs port = \"…\" (a device path or URL)")
            for key, value in sec.items():
                if key == "port":
                    continue
                kind = _OPTIONS[dev].get(key)
                if kind is None:
                    raise LaneConfigError(f"[{dev}] has no option {key!r}; it takes "
                                          f"{', '.join(['port', *_OPTIONS[dev]])}")
                if isinstance(value, bool) or not isinstance(value, kind):
                    raise LaneConfigError(f"[{dev}] {key} has the wrong type")
            setup.devices[dev] = dict(sec)
        if "scale" in setup.devices and "bridge" in setup.devices:
            raise LaneConfigError("a lane weighs with a scale or a load-cell bridge, "
                                  "not both")
        return setup

    @classmethod
    def load(cls, path: str | Path) -> "LaneSetup":
        try:
            with open(path, "rb") as f:
                return cls.from_dict(tomllib.load(f))
        except OSError as exc:
            raise LaneConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise LaneConfigError(f"{path}: {exc}") from None


class _ServiceSink:
    """What :class:`~lanecore.drivers.bridge.WeighFeeder` sends through."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def weigh_frame(self, lane, seq, counts=None):
        return self.client.weigh_frame(lane, seq, counts=counts)


class LaneController:
    """Runs one lane (see the module docstring). ``on_record`` gets a dict for each
    thing that happened, with ``record`` naming its kind: ``scan``, ``scan_error``,
    ``verdict``, ``verify_error``, ``deactivated``, ``weigh``, ``device_event``,
    ``printed``, ``service_error``."""

    def __init__(self, setup: LaneSetup, *, client: Client | None = None,
                 on_record: Callable[[dict], None] | None = None) -> None:
        self.setup = setup
        curve = None
        if setup.server_key:
            curve = CurveKeys.from_files(setup.server_key, setup.client_secret)
        # a lane controller may start before the service: it waits for it (no
        # UNREACHABLE), retrying as it does after a lost connection
        self.client = client or Client(setup.service, client_id=f"lane-{setup.name}",
                                       curve=curve, connect_timeout_s=None)
        self.on_record = on_record or (lambda r: None)
        self.records: list[dict] = []
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._faulted: dict[str, str] = {}     # device → fault code, while it is down
        self.drivers: dict[str, object] = {}
        self.feeder: bridge_mod.WeighFeeder | None = None
        self._make_drivers()

    # --------------------------------------------------------------------------
    def _tagged(self, device: str):
        return lambda event: self._events.put((device, event))

    def _make_drivers(self) -> None:
        d = self.setup.devices
        if "scanner" in d:
            self.drivers["scanner"] = scanner_mod.ScannerDriver(
                d["scanner"]["port"], suffix=d["scanner"].get("suffix", "CR"),
                on_event=self._tagged("scanner"))
        if "scale" in d:
            s = d["scale"]
            self.drivers["scale"] = scales_mod.ScaleDriver(
                s["port"], s.get("protocol", "toledo"), unit=s.get("unit"),
                timeout_s=float(s.get("timeout_s", 0.5)), on_event=self._tagged("scale"))
        if "bridge" in d:
            # the driver sets the rate and starts the stream on every (re)open
            b = d["bridge"]
            self.drivers["bridge"] = bridge_mod.BridgeDriver(
                b["port"], on_event=self._tagged("bridge"), fs_hz=int(b.get("fs_hz", 1000)),
                samples_per_frame=int(b.get("samples_per_frame", 20)))
        if "eas_gate" in d:
            g = d["eas_gate"]
            self.drivers["eas_gate"] = eas_mod.EasGate(
                g["port"], heartbeat_timeout_s=float(g.get("heartbeat_timeout_s", 2.5)),
                on_event=self._tagged("eas_gate"))
        if "eas_deactivator" in d:
            self.drivers["eas_deactivator"] = eas_mod.EasDeactivator(
                d["eas_deactivator"]["port"], on_event=self._tagged("eas_deactivator"))
        if "printer" in d:
            self.drivers["printer"] = printer_mod.PrinterDriver(
                d["printer"]["port"], on_event=self._tagged("printer"))

    # --------------------------------------------------------------------------
    def start(self) -> "LaneController":
        """Configure the service side, open every device, start the lane's thread."""
        self.client.hello()
        if "bridge" in self.setup.devices:
            b = self.setup.devices["bridge"]
            fs = float(b.get("fs_hz", 1000))
            config = {"fs_hz": fs, "counts_per_g": float(b.get("counts_per_g", 1.0)),
                      "zero_counts": float(b.get("zero_counts", 0.0))}
            for key in ("e_g", "max_g", "conveyor_hz"):
                if key in b:
                    config[key] = float(b[key])
            self.client.weigh_config(self.setup.name, **config)
            self.feeder = bridge_mod.WeighFeeder(
                _ServiceSink(self.client), self.setup.name, fs_hz=fs,
                frame_s=float(b.get("frame_s", 0.05)))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.setup.name}",
                                        daemon=True)
        self._thread.start()
        for name, drv in self.drivers.items():
            if name == "scale":
                drv.start(self.setup.devices["scale"].get("interval_s", 1.0))
            else:
                drv.start()
        return self

    def stop(self) -> None:
        for drv in self.drivers.values():
            drv.stop()
        self._stop.set()
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.feeder is not None:
            try:
                self.feeder.flush()
            except Exception:      # noqa: BLE001 - shutting down; the service may be gone
                pass
        self.client.close()

    def __enter__(self) -> "LaneController":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --------------------------------------------------------------------------
    def _record(self, record: dict) -> None:
        record = {"lane": self.setup.name, **record}
        self.records.append(record)
        del self.records[:-10_000]
        self.on_record(record)

    def _run(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                if self._stop.is_set():
                    return
                continue
            device, event = item
            try:
                self.handle(device, event)
            except ServiceError as exc:
                self._record({"record": "service_error", "device": device,
                              "code": exc.code, "message": exc.message})
            except LanecoreError as exc:
                self._record({"record": "lane_error", "device": device,
                              "code": exc.code, "message": exc.message})
            except Exception as exc:  # one event must never stop the lane
                log.exception("lane %s: %s event failed", self.setup.name, device)
                self._record({"record": "lane_error", "device": device, "code": "INTERNAL",
                              "message": f"{type(exc).__name__} while handling this event"})

    def handle(self, device: str, event) -> None:
        """One device event (called on the lane's thread)."""
        if isinstance(event, DeviceFault):
            self._fault(device, event)
            return
        if device in self._faulted:
            self._recovered(device)
        if device == "scanner" or isinstance(event, scales_mod.ScanReading):
            self._scan(event.code)
        elif device == "bridge":
            self._feed(event)
        elif device == "eas_gate" and isinstance(event, eas_mod.GateAlarm):
            r = self.client.device_event(self.setup.name, "eas_gate", "alarm",
                                         code="LIVE_TAG",
                                         message=f"gate {event.gate}, {event.aisle}")
            self._record({"record": "device_event", **r["event"]})

    def _feed(self, event) -> None:
        """A bridge frame or loss to the service; its weighing events recorded."""
        if self.feeder is None:
            return
        for reply in self.feeder.feed(event):
            for ev in reply.get("events", ()):
                if ev["event"] in ("settled", "fault", "overload", "under_zero"):
                    self._record({"record": "weigh", **ev})

    def _fault(self, device: str, fault: DeviceFault) -> None:
        if device == "bridge":
            self._feed(fault)            # a reported gap becomes a service gap too
            if fault.code == "SEQUENCE_GAP":
                return                   # a gap is data loss, not a device outage
        if self._faulted.get(device) == fault.code:
            return                       # the same outage: said once
        self._faulted[device] = fault.code
        r = self.client.device_event(self.setup.name, device, "fault", code=fault.code,
                                     message=fault.message[:256])
        self._record({"record": "device_event", **r["event"]})

    def _recovered(self, device: str) -> None:
        del self._faulted[device]
        r = self.client.device_event(self.setup.name, device, "recovered")
        self._record({"record": "device_event", **r["event"]})

    # --------------------------------------------------------------------------
    def _scan(self, code: str) -> None:
        if code.startswith(ORDER_QR_PREFIX) and self.setup.role == "exit":
            self._exit(code)
            return
        try:
            r = self.client.scan(self.setup.name, code, region=self.setup.region)
        except ServiceError as exc:
            self._record({"record": "scan_error", "code_scanned": code, "code": exc.code,
                          "message": exc.message})
            return
        item = r["item"]
        self._record({"record": "scan", "code_scanned": code, "gtin": item["gtin"],
                      "name": item["name"], "line_price_minor": item["line_price_minor"],
                      "flags": item["flags"]})
        if self.setup.role == "till" and "eas_tagged" in item["flags"] \
                and "eas_deactivator" in self.drivers:
            timeout = float(self.setup.devices["eas_deactivator"].get("timeout_s", 3.0))
            res = self.drivers["eas_deactivator"].deactivate(timeout)
            self._record({"record": "deactivated", "gtin": item["gtin"], "ok": res.ok,
                          "outcome": res.outcome, "reason": res.reason})

    def _measured_g(self) -> tuple[float | None, str | None]:
        """A fresh, stable reading of the lane's scale (never an old one), or None
        (the service then takes the bridge lane's settled weight)."""
        scale = self.drivers.get("scale")
        if scale is None:
            return None, None
        end = time.monotonic() + 3.0
        last = None
        while time.monotonic() < end:
            r = scale.read()
            if isinstance(r, scales_mod.ScaleReading) and r.stable and r.weight_g is not None:
                return r.weight_g, None
            last = r
            time.sleep(0.1)
        if isinstance(last, DeviceFault):
            return None, last.code
        return None, "NO_STABLE_WEIGHT"

    def _exit(self, order_qr: str) -> None:
        measured, problem = self._measured_g()
        if problem is not None:
            self._record({"record": "verify_error", "code": problem,
                          "message": "the scale gave no stable weight in 3 s"})
            return
        try:
            v = self.client.verify_order(self.setup.name, order_qr=order_qr,
                                         measured_g=measured)
        except ServiceError as exc:
            self._record({"record": "verify_error", "code": exc.code,
                          "message": exc.message})
            return
        self._record({"record": "verdict", "order_no": v["order_no"],
                      "order_status": v["order_status"], "verdict": v["verdict"],
                      "expected_g": v["expected_g"], "measured_g": v["measured_g"],
                      "band_g": v["band_g"], "z": v["z"],
                      "explanations": v["explanations"]})
        if v["verdict"] != "ok" and "printer" in self.drivers:
            self._print_slip(v)

    def _print_slip(self, v: dict) -> None:
        width = int(self.setup.devices["printer"].get("width", 42))
        slip = printer_mod.Receipt(width=width)
        slip.header(f"WEIGHT CHECK: {v['verdict'].upper()}")
        slip.line(f"lane {self.setup.name}  order {v['order_no']}")
        slip.line(f"expected {v['expected_g']:.0f} g  measured {v['measured_g']:.0f} g")
        for e in v["explanations"][:3]:
            lines = ", ".join(f"{x['qty']} x {x['gtin']}" for x in e["lines"])
            slip.line(f"{e['kind']}: {lines} (p={e['score']:.2f})")
        result = self.drivers["printer"].print_receipt(slip)
        self._record({"record": "printed", "order_no": v["order_no"], **result.to_dict()})
