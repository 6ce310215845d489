"""A simulated serial device on a pseudo-terminal pair: the base of every simulator.

The simulator holds the pty's master side and answers like the device would; a
driver opens the slave side as if it were ``/dev/ttyUSB0``. The path handed out is a
stable symbolic link (``link_path``) to the slave, so :meth:`PtyDevice.unplug` and
:meth:`PtyDevice.replug` behave like a USB adapter pulled and put back: the old
port fails with an I/O error, the link vanishes, and after the replug the same path
names a fresh pty.

Subclasses implement :meth:`on_bytes` (bytes from the host) and call :meth:`send`;
:meth:`tick` runs every ``tick_s`` for devices that talk on their own (streams,
scanners, gate alarms). Faults to script: ``unplug``/``replug``, ``mute`` (stop
answering), ``slow_s`` (answer late), ``inject_garbage``.

The link replaces and removes only symbolic links: a file or directory already at
``link_path`` (or at its ``.new`` staging name) is refused with ``BAD_ARGUMENT``,
never overwritten.
"""

from __future__ import annotations

import os
import select
import tempfile
import termios
import threading
import time
import tty
from pathlib import Path

from lanecore.core.errors import LanecoreError


class PtyDevice:
    """One simulated device on a pty pair, served by a background thread."""

    name = "device"

    def __init__(self, link_path: str | os.PathLike | None = None, *,
                 tick_s: float = 0.01) -> None:
        if link_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="lanecore-sim-")
            link_path = Path(self._tmpdir) / self.name
        else:
            self._tmpdir = None
        self.link_path = Path(link_path)
        self.tick_s = tick_s
        self.muted = False           # True: read the host's bytes, answer nothing
        self.slow_s = 0.0            # answers wait this long
        self.received = bytearray()  # everything the host sent (for tests)
        self._lock = threading.RLock()
        self._master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._plug()

    # --------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The port a driver opens (a stable link to the current pty)."""
        return str(self.link_path)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)   # no echo, no line discipline
        os.set_blocking(master, False)
        tmp = self.link_path.with_name(self.link_path.name + ".new")
        try:
            for p in (self.link_path, tmp):  # only a (stale) link is ours to replace
                if os.path.lexists(p) and not p.is_symlink():
                    raise LanecoreError(f"{p} exists and is not a symbolic link: the "
                                        "simulator's port path must be free or a "
                                        "link it made", code="BAD_ARGUMENT")
            if tmp.is_symlink():
                tmp.unlink()
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link_path)      # atomic: a reader never sees no link
        # Keeping the slave open here means the master never sees a hang-up while
        # no driver has the port open (between reconnects).
        self._master, self._slave = master, slave

    def unplug(self) -> None:
        """Pull the cable: the port fails under the driver, the path disappears."""
        with self._lock:
            if self._master is None:
                return
            for fd in (self._master, self._slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._master = self._slave = None
            try:
                if self.link_path.is_symlink():      # ours; anything else is not
                    self.link_path.unlink()
            except FileNotFoundError:
                pass

    def replug(self) -> None:
        """Put it back: the same path, a fresh pty."""
        with self._lock:
            if self._master is None:
                self._plug()

    # --------------------------------------------------------------------------
    def start(self) -> "PtyDevice":
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.unplug()
        if self._tmpdir is not None:
            try:
                os.rmdir(self._tmpdir)
            except OSError:
                pass

    def __enter__(self) -> "PtyDevice":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            master = self._master
            if master is None:
                time.sleep(self.tick_s)
                continue
            wait = max(0.0, next_tick - time.monotonic())
            try:
                ready, _, _ = select.select([master], [], [], wait)
            except (OSError, ValueError):     # closed under us by unplug()
                continue
            if ready:
                try:
                    data = os.read(master, 4096)
                except (BlockingIOError, InterruptedError):
                    data = b""
                except OSError:               # unplugged, or no slave: nothing to read
                    data = b""
                if data:
                    with self._lock:
                        self.received += data
                    if not self.muted:
                        if self.slow_s:
                            time.sleep(self.slow_s)
                        self.on_bytes(data)
            now = time.monotonic()
            if now >= next_tick:
                self.tick(now)
                next_tick = now + self.tick_s

    # --------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Bytes to the host; False when unplugged (they are lost, as on a cable)."""
        with self._lock:
            master = self._master
            if master is None:
                return False
            view = memoryview(data)
            deadline = time.monotonic() + 0.2
            while view:
                try:
                    n = os.write(master, view)
                except BlockingIOError:
                    # nobody is reading and the pty's buffer is full: a real UART
                    # would overrun; the bytes are lost the same way
                    if time.monotonic() > deadline:
                        return False
                    select.select([], [master], [], 0.05)
                    continue
                except OSError:
                    return False
                view = view[n:]
            return True

    def inject_garbage(self, data: bytes = b"\x00\xff#noise\x7f") -> None:
        """Line noise: bytes that are not the protocol's."""
        self.send(data)

    # Subclasses ------------------------------------------------------------------
    def on_bytes(self, data: bytes) -> None:
        """Bytes from the host."""

    def tick(self, now: float) -> None:
        """Called every ``tick_s`` (monotonic ``now``)."""
