"""A serial link that survives replugs: the thin port layer under every driver.

Every port is opened with :func:`serial.serial_for_url`, so a device path
(``/dev/ttyUSB0``), a pty (``/dev/pts/7`` or a stable symlink to one), ``loop://``
or ``socket://host:port`` work alike. The protocol classes never see a port: they
take bytes and return typed readings. A driver's port loop uses a :class:`Link` to
read and write; the link turns every way a port can fail into a :class:`DeviceFault`
with a stable code, closes the port, and reopens it with exponential backoff.

Fault codes (``DeviceFault.code``):

==================  ==============================================================
``PORT_OPEN_FAILED``  the port could not be opened (missing device, permissions)
``PORT_LOST``         the port failed while open (unplugged, hung up, I/O error)
``NO_ANSWER``         a device that answers requests did not answer in time
``GARBAGE``           bytes that are not the protocol's were skipped
``BAD_FRAME``         a frame of the protocol that fails its own checks (CRC, length)
``UNKNOWN_STATUS``    a status the protocol's table does not have
``SEQUENCE_GAP``      frames were lost (a numbered stream skipped ahead)
==================  ==============================================================

Times are monotonic seconds.
"""

from __future__ import annotations

import logging
import queue
import termios
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import serial

log = logging.getLogger(__name__)

PORT_OPEN_FAILED = "PORT_OPEN_FAILED"
PORT_LOST = "PORT_LOST"
NO_ANSWER = "NO_ANSWER"
GARBAGE = "GARBAGE"
BAD_FRAME = "BAD_FRAME"
UNKNOWN_STATUS = "UNKNOWN_STATUS"
SEQUENCE_GAP = "SEQUENCE_GAP"

FAULT_CODES = (PORT_OPEN_FAILED, PORT_LOST, NO_ANSWER, GARBAGE, BAD_FRAME,
               UNKNOWN_STATUS, SEQUENCE_GAP)


@dataclass(frozen=True)
class DeviceFault:
    """Something went wrong between us and a device. ``at``: monotonic seconds."""

    code: str
    message: str
    at: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict:
        return {"fault": self.code, "message": self.message}


@dataclass(frozen=True)
class LineSettings:
    """A serial line: ``9600 7E1`` is ``LineSettings(9600, 7, "E", 1)``."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1

    @classmethod
    def parse(cls, text: str) -> "LineSettings":
        """From ``"9600 7E1"`` (baud, data bits, parity N/E/O/M/S, stop bits)."""
        try:
            baud, frame = text.split()
            bits, parity, stop = int(frame[0]), frame[1].upper(), float(frame[2:])
        except (ValueError, IndexError):
            raise ValueError(f"line settings look like '9600 7E1', got {text!r}") from None
        if parity not in "NEOMS" or bits not in (5, 6, 7, 8) or stop not in (1, 1.5, 2):
            raise ValueError(f"unsupported line settings {text!r}")
        return cls(int(baud), bits, parity, int(stop) if stop in (1, 2) else stop)

    def kwargs(self) -> dict:
        return {"baudrate": self.baudrate, "bytesize": self.bytesize,
                "parity": self.parity, "stopbits": self.stopbits}


class LinkDown(Exception):
    """The port is closed (and will be reopened after the backoff)."""


class Link:
    """One serial port, reopened with backoff whenever it fails.

    ``read``/``write`` raise :class:`LinkDown` while the port is down; every failure
    is reported once through ``on_fault`` (and kept in ``faults``, the last 100).
    Backoff starts at ``backoff_min_s`` and doubles to ``backoff_max_s``; a
    successful open resets it. Nothing here blocks longer than the read timeout.
    """

    def __init__(self, url: str, line: LineSettings | None = None, *,
                 read_timeout_s: float = 0.05, backoff_min_s: float = 0.05,
                 backoff_max_s: float = 1.0,
                 on_fault: Callable[[DeviceFault], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.line = line or LineSettings()
        self.read_timeout_s = read_timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.on_fault = on_fault
        self.clock = clock
        self.port: serial.SerialBase | None = None
        self.faults: list[DeviceFault] = []
        self.opens = 0                    # successful opens (1 + reconnects)
        self._backoff = backoff_min_s
        self._next_try = 0.0
        self._down_reported = False

    # --------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.port is not None

    def fault(self, code: str, message: str) -> DeviceFault:
        f = DeviceFault(code, message, self.clock())
        self.faults.append(f)
        del self.faults[:-100]
        if self.on_fault is not None:
            self.on_fault(f)
        return f

    def open(self) -> bool:
        """Open the port if it is closed and the backoff has passed; True when open."""
        if self.port is not None:
            return True
        now = self.clock()
        if now < self._next_try:
            return False
        try:
            port = serial.serial_for_url(self.url, timeout=self.read_timeout_s,
                                         write_timeout=1.0, **self.line.kwargs())
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            # termios.error: a tty that refuses the line settings (not an OSError)
            self._schedule_retry(now)
            if not self._down_reported:
                self._down_reported = True
                self.fault(PORT_OPEN_FAILED, f"{self.url}: {exc}")
            return False
        try:
            port.reset_input_buffer()     # what was queued before we came is stale
        except (serial.SerialException, OSError, NotImplementedError):
            pass
        self.port = port
        self.opens += 1
        self._backoff = self.backoff_min_s
        self._down_reported = False
        return True

    def wait_open(self, timeout_s: float) -> bool:
        """Try to open until ``timeout_s`` has passed (sleeping out the backoff)."""
        end = self.clock() + timeout_s
        while not self.open():
            left = end - self.clock()
            if left <= 0:
                return False
            time.sleep(max(0.0, min(left, self._next_try - self.clock(), 0.05)))
        return True

    def _schedule_retry(self, now: float) -> None:
        self._next_try = now + self._backoff
        self._backoff = min(self.backoff_max_s, self._backoff * 2)

    def drop(self, code: str = PORT_LOST, message: str = "") -> None:
        """Close the port after a failure; it is reopened after the backoff."""
        if self.port is not None:
            try:
                self.port.close()
            except (serial.SerialException, OSError):
                pass
            self.port = None
            self._schedule_retry(self.clock())
            self._down_reported = True
            self.fault(code, message or f"{self.url}: the port failed")

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            finally:
                self.port = None

    # --------------------------------------------------------------------------
    def read(self, size: int = 4096) -> bytes:
        """What has arrived (waiting at most the read timeout for the first byte)."""
        if not self.open():
            raise LinkDown(self.url)
        try:
            waiting = self.port.in_waiting
            if waiting:
                return self.port.read(min(size, waiting))
            data = self.port.read(1)            # waits up to the read timeout
            if data and size > 1:
                more = self.port.in_waiting
                if more:
                    data += self.port.read(min(size - 1, more))
            return data
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial's own state after the fd vanished
            self.drop(PORT_LOST, f"{self.url}: {exc}")
            raise LinkDown(self.url) from exc

    def write(self, data: bytes) -> None:
        if not self.open():
            raise LinkDown(self.url)
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            self.drop(PORT_LOST, f"{self.url}: {exc}")
            raise LinkDown(self.url) from exc

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PortLoop:
    """The thread of a driver that reads a byte stream (scanner, EAS, printer).

    All port I/O happens on one daemon thread: it writes what :meth:`send` queued,
    reads what arrived, and hands it to :meth:`on_data`. Every reading and every
    :class:`DeviceFault` goes to ``on_event``. When the link reopens after a fault,
    :meth:`on_connect` runs before any byte of the new connection is handled, so a
    subclass drops partial input and pending requests from before.
    """

    name = "port"
    idle_s = 0.02          # sleep while the port is down (the Link paces the retries)

    def __init__(self, url: str, line: LineSettings | None = None, *,
                 on_event: Callable[[object], None] | None = None,
                 read_timeout_s: float = 0.05, backoff_min_s: float = 0.05,
                 backoff_max_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_event = on_event
        self.clock = clock
        self.link = Link(url, line, read_timeout_s=read_timeout_s,
                         backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s,
                         on_fault=self.emit, clock=clock)
        self._outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opens_seen = 0
        self._drop_request: tuple[str, str] | None = None
        self.connected = threading.Event()

    @property
    def url(self) -> str:
        return self.link.url

    def emit(self, event) -> None:
        """Deliver one reading or fault; a failing callback never stops the loop."""
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:            # noqa: BLE001 - the lane's callback is not ours
            log.exception("%s: on_event failed for %r", self.name, event)

    def send(self, data: bytes) -> None:
        """Queue bytes for the port (written by the loop thread, in order)."""
        self._outbox.put(bytes(data))

    def start(self):
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"drv-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.link.close()
        self.connected.clear()
        self.on_down(self.clock())      # a request still waiting fails now, not later

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once the port is open (within ``timeout_s`` seconds)."""
        return self.connected.wait(timeout_s)

    def request_drop(self, code: str, message: str) -> None:
        """Have the loop close the port (reporting ``code``) and reopen it after
        the backoff; safe from any thread. :attr:`connected` clears at once."""
        self._drop_request = (code, message)
        self.connected.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            drop, self._drop_request = self._drop_request, None
            if drop is not None:
                self.link.drop(*drop)
            try:
                if not self.link.open():
                    raise LinkDown(self.url)
                self._check_reconnect()
                self._flush_outbox()
                data = self.link.read()
            except LinkDown:
                self.connected.clear()
                self.on_down(self.clock())
                self._stop.wait(self.idle_s)
                continue
            self._check_reconnect()
            self.on_data(data, self.clock())

    def _check_reconnect(self) -> None:
        if self.link.opens != self._opens_seen:
            self._opens_seen = self.link.opens
            self.on_connect(self.clock())
            self.connected.set()

    def _flush_outbox(self) -> None:
        while True:
            try:
                data = self._outbox.get_nowait()
            except queue.Empty:
                return
            self.link.write(data)

    def discard_outbox(self) -> None:
        """Drop queued bytes (they belonged to a connection that failed)."""
        while True:
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                return

    # Subclasses ------------------------------------------------------------------
    def on_connect(self, now: float) -> None:
        """The port has just been (re)opened."""

    def on_down(self, now: float) -> None:
        """The port is down (called about every ``idle_s`` while it is)."""

    def on_data(self, data: bytes, now: float) -> None:
        """Bytes read (possibly none: called after every read timeout too)."""
