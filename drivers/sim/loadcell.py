"""A raw load-cell bridge on a pty: ``lanecore sim loadcell``.

It streams samples frames (docs/drivers/loadcell-bridge.md) at the real rate,
paced by the monotonic clock: frame k of a streaming run is due at
``epoch + (k + 1) * samples_per_frame / fs_hz``, so a late tick sends the frames it
owes in one burst and the rate never drifts. The signal is the physics of
``drivers/loadcell_sim.py`` (each placement a second-order step, plus white noise)
turned into raw counts with ``counts_per_g``/``zero_counts`` and saturated at the
converter's range. It answers HELLO, START, STOP and SET_RATE like a bridge.

Script actions (besides unplug/replug/garbage/mute/unmute/slow): ``place G``,
``remove G``, ``noise G`` (white noise standard deviation, grams), ``drop N`` (skip
N frames' sequence numbers: a gap), ``corrupt`` (the next frame goes out with a bad
CRC-32), ``reboot`` (sequence numbers restart at 0; streaming as at power-up),
``start``, ``stop``, ``rate FS SPF``. While muted the bridge keeps numbering frames
but sends none (a broken transmit line), so the driver sees the gap afterwards.
"""

from __future__ import annotations

import struct
import sys
import time

import numpy as np

from lanecore.drivers import bridge as B
from lanecore.drivers.loadcell_sim import step_response, to_counts
from lanecore.drivers.sim import ScriptedDevice, ScriptError, float_arg

HELP = "raw load-cell bridge (HX711/ADS1232/ADS1256 front end) streaming framed counts"
ADC_CODES = {"unknown": 0, "HX711": 1, "ADS1232": 2, "ADS1256": 3}
FOLD_AFTER_S = 30.0      # a placement this old has settled: fold it into the base load


class BridgeSim(ScriptedDevice):
    """A streaming bridge. Counters for tests: ``frames_numbered``/
    ``samples_numbered`` (every sequence number used, sent or not),
    ``frames_unsent``/``samples_unsent`` (numbered but not delivered: unplugged,
    muted, dropped, or the pty full), ``frames_send_failed`` (of those, the ones a
    full or vanished pty refused, perhaps after taking part of them),
    ``frames_corrupted``."""

    name = "loadcell"

    def __init__(self, link_path=None, *, fs_hz: int = 2000, samples_per_frame: int = 20,
                 counts_per_g: float = 100.0, zero_counts: float = 50_000.0,
                 noise_g: float = 0.5, initial_g: float = 0.0, bits: int = 24,
                 wn_hz: float = 6.0, zeta: float = 0.35, seed: int = 0,
                 streaming: bool = True, first_seq: int = 0, adc: str = "HX711",
                 tick_s: float = 0.005) -> None:
        if not B.rate_ok(fs_hz, samples_per_frame):
            raise ValueError(f"a bridge does not stream {fs_hz} Hz in frames of "
                             f"{samples_per_frame}")
        if adc not in ADC_CODES:
            raise ValueError(f"adc is one of {', '.join(ADC_CODES)}")
        super().__init__(link_path, tick_s=tick_s)
        self.fs_hz = int(fs_hz)
        self.samples_per_frame = int(samples_per_frame)
        self.counts_per_g = float(counts_per_g)
        self.zero_counts = float(zero_counts)
        self.noise_g = float(noise_g)
        self.bits = int(bits)
        self.wn_hz = float(wn_hz)
        self.zeta = float(zeta)
        self.adc = adc
        self.autostart = bool(streaming)
        self.rng = np.random.default_rng(seed)
        self.base_g = float(initial_g)
        self.placements: list[tuple[float, float]] = []   # (signal time s, delta g)
        self.signal_t = 0.0           # seconds of signal produced
        self.seq = int(first_seq) % B.SEQ_MOD
        self.streaming = False
        self.frames_numbered = 0
        self.samples_numbered = 0
        self.frames_unsent = 0
        self.samples_unsent = 0
        self.frames_corrupted = 0
        self.frames_send_failed = 0
        self._corrupt_next = 0
        self._commands = B.PacketReader()
        if self.autostart:
            self._begin(time.monotonic())

    # --------------------------------------------------------------------------
    def _begin(self, now: float) -> None:
        self.streaming = True
        self._epoch = now
        self._sent_in_epoch = 0
        self._flag_start = True

    def _frame_counts(self) -> np.ndarray:
        n, fs = self.samples_per_frame, self.fs_hz
        t = self.signal_t + np.arange(n) / fs
        x = np.full(n, self.base_g)
        for tp, delta in self.placements:
            x += delta * step_response(t - tp, self.wn_hz, self.zeta)
        if self.noise_g:
            x += self.rng.normal(0.0, self.noise_g, n)
        self.signal_t += n / fs
        if self.placements and self.signal_t - self.placements[0][0] > FOLD_AFTER_S:
            self.base_g += self.placements.pop(0)[1]
        return to_counts(x, counts_per_g=self.counts_per_g, zero_counts=self.zero_counts,
                         bits=self.bits).astype(np.int32)

    def _next_frame(self) -> None:
        counts = self._frame_counts()
        full = 2 ** (self.bits - 1) - 1
        flags = B.F_SATURATED if int(np.abs(counts).max()) >= full else 0
        if self._flag_start:
            flags |= B.F_STREAM_START
        packet = B.encode_frame(self.seq, counts, flags)
        if self._corrupt_next:
            self._corrupt_next -= 1
            self.frames_corrupted += 1
            # flip a bit in the CRC: the header stays good, the frame fails its check
            packet = packet[:-1] + bytes([packet[-1] ^ 0x01])
        self.seq = (self.seq + 1) % B.SEQ_MOD
        self.frames_numbered += 1
        self.samples_numbered += len(counts)
        self._sent_in_epoch += 1
        if self.muted or not self.send(packet):
            if not self.muted:
                # the pty was full or gone; part of the frame may have gone out,
                # which the host sees as garbage
                self.frames_send_failed += 1
            self.frames_unsent += 1
            self.samples_unsent += len(counts)
            return
        self._flag_start = False

    def tick(self, now: float) -> None:
        with self._lock:
            if not self.streaming:
                return
            due = int((now - self._epoch) * self.fs_hz / self.samples_per_frame)
            while self._sent_in_epoch < due:
                self._next_frame()

    # --------------------------------------------------------------------------
    def _info(self, seq: int) -> bytes:
        return B.encode_info(seq, fs_hz=self.fs_hz, samples_per_frame=self.samples_per_frame,
                             streaming=self.streaming, next_seq=self.seq,
                             adc=ADC_CODES[self.adc], bits=self.bits, name="lanecore-sim")

    def on_bytes(self, data: bytes) -> None:
        with self._lock:
            now = time.monotonic()
            for item in self._commands.packets(data, now):
                if type(item) is not tuple:
                    continue               # line noise from the host: ignored
                ctype, _flags, seq, payload = item
                self.send(self._answer(ctype, seq, payload, now))

    def _answer(self, ctype: int, seq: int, payload: bytes, now: float) -> bytes:
        if ctype not in B.COMMANDS:
            return B.encode_nak(seq, B.NAK_UNKNOWN_COMMAND, ctype)
        if ctype == B.C_SET_RATE:
            if len(payload) != 8:
                return B.encode_nak(seq, B.NAK_BAD_ARGUMENT, ctype)
            fs, spf = struct.unpack("<II", payload)
            if not B.rate_ok(fs, spf):
                return B.encode_nak(seq, B.NAK_BAD_RATE, ctype)
            self.tick(now)                 # frames owed at the old rate go first
            self.fs_hz, self.samples_per_frame = fs, spf
            if self.streaming:
                self._begin(now)
            return self._info(seq)
        if payload:
            return B.encode_nak(seq, B.NAK_BAD_ARGUMENT, ctype)
        if ctype == B.C_START and not self.streaming:
            self._begin(now)
        elif ctype == B.C_STOP and self.streaming:
            self.tick(now)
            self.streaming = False
        return self._info(seq)

    # --------------------------------------------------------------------------
    def do(self, action: str, *args: str) -> None:
        with self._lock:
            if action in ("place", "remove"):
                g = abs(float_arg(action, args, 0))
                self.placements.append((self.signal_t, g if action == "place" else -g))
            elif action == "noise":
                self.noise_g = abs(float_arg(action, args, 0))
            elif action == "drop":
                n = int(float_arg(action, args, 0)) if args else 1
                if n < 0:
                    raise ScriptError("drop needs a count >= 0")
                self.seq = (self.seq + n) % B.SEQ_MOD
                self.frames_numbered += n
                self.samples_numbered += n * self.samples_per_frame
                self.frames_unsent += n
                self.samples_unsent += n * self.samples_per_frame
                self.signal_t += n * self.samples_per_frame / self.fs_hz
            elif action == "corrupt":
                self._corrupt_next += 1
            elif action == "reboot":
                self.seq = 0
                self.streaming = False
                if self.autostart:
                    self._begin(time.monotonic())
            elif action == "start":
                if not self.streaming:
                    self._begin(time.monotonic())
            elif action == "stop":
                self.tick(time.monotonic())
                self.streaming = False
            elif action == "rate":
                fs, spf = int(float_arg(action, args, 0)), int(float_arg(action, args, 1))
                if not B.rate_ok(fs, spf):
                    raise ScriptError(f"no bridge streams {fs} Hz in frames of {spf}")
                self.tick(time.monotonic())
                self.fs_hz, self.samples_per_frame = fs, spf
                if self.streaming:
                    self._begin(time.monotonic())
            else:
                super().do(action, *args)


def add_arguments(parser) -> None:
    parser.add_argument("--fs-hz", type=int, default=2000, help="samples per second (2000)")
    parser.add_argument("--samples-per-frame", type=int, default=20,
                        help="samples in each frame (20: 100 frames/s at 2 kHz)")
    parser.add_argument("--counts-per-g", type=float, default=100.0,
                        help="raw counts per gram (100)")
    parser.add_argument("--zero-counts", type=float, default=50_000.0,
                        help="raw reading with nothing on the scale (50000)")
    parser.add_argument("--noise-g", type=float, default=0.5,
                        help="white noise standard deviation, grams (0.5)")
    parser.add_argument("--initial-g", type=float, default=0.0,
                        help="load on the scale at start, grams (0)")
    parser.add_argument("--bits", type=int, default=24, help="converter resolution (24)")
    parser.add_argument("--adc", choices=sorted(ADC_CODES), default="HX711",
                        help="converter model named in INFO (HX711)")
    parser.add_argument("--first-seq", type=int, default=0,
                        help="sequence number of the first frame (0)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    parser.add_argument("--idle", action="store_true",
                        help="do not stream until the host sends START")


def build(args, link_path) -> BridgeSim:
    try:
        return BridgeSim(link_path, fs_hz=args.fs_hz,
                         samples_per_frame=args.samples_per_frame,
                         counts_per_g=args.counts_per_g, zero_counts=args.zero_counts,
                         noise_g=args.noise_g, initial_g=args.initial_g, bits=args.bits,
                         adc=args.adc, first_seq=args.first_seq, seed=args.seed,
                         streaming=not args.idle)
    except ValueError as exc:
        # the command line's way of refusing (docs/protocol.md: USAGE, exit 2)
        print(f"lanecore: USAGE: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
