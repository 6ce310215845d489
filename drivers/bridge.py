"""The raw load-cell bridge: a microcontroller in front of an HX711 / ADS1232 /
ADS1256 that streams raw ADC counts over a serial line.

Three layers, each usable alone:

* the framing codec — :class:`BridgeDecoder` (bytes in, :class:`BridgeFrame`,
  :class:`BridgeInfo`, :class:`BridgeNak` and :class:`BridgeFault` out) and the
  encoders :func:`encode_frame`, :func:`encode_info`, :func:`encode_nak`,
  :func:`encode_command` (plus :func:`hello`, :func:`start`, :func:`stop`,
  :func:`set_rate`); no I/O, no threads, no clocks;
* the port loop — :class:`BridgeDriver`, a daemon thread on a :class:`Link`
  that delivers every frame and every fault to ``on_event``;
* :class:`WeighFeeder` — bridge frames in, the verification service's
  ``weigh.frame`` requests out, with the service's ``seq`` advanced over every loss.

Every byte of the protocol is in ``docs/drivers/loadcell-bridge.md``. In short: a
packet is ``A5 5A | type | flags | seq u32 | n u16 | CRC-16 of the header |
n 32-bit words | CRC-32``, all little-endian; samples frames carry ``n`` int32
counts. Units: counts are raw ADC codes, rates in hertz, times monotonic seconds.
"""

from __future__ import annotations

import binascii
import logging
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lanecore.drivers.link import (BAD_FRAME, GARBAGE, NO_ANSWER, SEQUENCE_GAP,
                                   UNKNOWN_STATUS, DeviceFault, LineSettings, Link,
                                   LinkDown)

log = logging.getLogger(__name__)

SYNC = b"\xa5\x5a"
HEADER = struct.Struct("<2sBBIH")     # sync, type, flags, seq, n (words)
HEADER_LEN = HEADER.size + 2          # + CRC-16 of bytes 2..9
TRAILER_LEN = 4                       # CRC-32 of bytes 2..end of payload
OVERHEAD = HEADER_LEN + TRAILER_LEN   # 16 bytes around the payload
MAX_WORDS = 1024                      # longest payload: 4 KiB
SEQ_MOD = 1 << 32

# Packet types (byte 2). Bridge -> host:
T_SAMPLES = 0x01
T_INFO = 0x02
T_NAK = 0x03
# Host -> bridge:
C_HELLO = 0x10
C_START = 0x11
C_STOP = 0x12
C_SET_RATE = 0x13
COMMANDS = {C_HELLO: "HELLO", C_START: "START", C_STOP: "STOP", C_SET_RATE: "SET_RATE"}

# Flags of a samples frame (byte 3).
F_SATURATED = 0x01      # a sample sits at the converter's full-scale limit
F_ADC_TIMEOUT = 0x02    # the converter did not deliver; samples repeat the last good one
F_STREAM_START = 0x04   # first frame since power-up, START or SET_RATE: no loss before it
KNOWN_FLAGS = F_SATURATED | F_ADC_TIMEOUT | F_STREAM_START

# NAK reasons (word 0 of a NAK payload).
NAK_UNKNOWN_COMMAND = 1
NAK_BAD_RATE = 2
NAK_BAD_ARGUMENT = 3
NAK_REASONS = {NAK_UNKNOWN_COMMAND: "UNKNOWN_COMMAND", NAK_BAD_RATE: "BAD_RATE",
               NAK_BAD_ARGUMENT: "BAD_ARGUMENT"}

# ADC models in an INFO packet (word 5).
ADC_MODELS = {0: "unknown", 1: "HX711", 2: "ADS1232", 3: "ADS1256"}
INFO_WORDS = 11
NAME_LEN = 16

# Limits a bridge enforces on SET_RATE (the simulator does the same).
MAX_FS_HZ = 30_000
MAX_FRAMES_PER_S = 1000


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final xor."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes) -> int:
    """CRC-32 (ISO-HDLC, as zlib/Ethernet): poly 0x04C11DB7 reflected, init and
    final xor 0xFFFFFFFF."""
    return zlib.crc32(data)


# ------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------
def encode_packet(ptype: int, flags: int, seq: int, payload: bytes = b"") -> bytes:
    """One packet of any type; ``payload`` is a whole number of 32-bit words."""
    if len(payload) % 4 or len(payload) > 4 * MAX_WORDS:
        raise ValueError(f"a payload is 0..{MAX_WORDS} 32-bit words, got {len(payload)} bytes")
    head = HEADER.pack(SYNC, ptype & 0xFF, flags & 0xFF, seq % SEQ_MOD, len(payload) // 4)
    head += crc16(head[2:]).to_bytes(2, "little")
    body = head + payload
    return body + crc32(body[2:]).to_bytes(4, "little")


def encode_frame(seq: int, samples, flags: int = 0) -> bytes:
    """A samples frame: ``samples`` are raw counts (anything numpy makes int32 of),
    1..1024 of them; ``seq`` is taken modulo 2**32."""
    counts = np.asarray(samples)
    if counts.ndim != 1 or not 1 <= len(counts) <= MAX_WORDS:
        raise ValueError(f"a frame carries 1..{MAX_WORDS} samples")
    return encode_packet(T_SAMPLES, flags, seq, counts.astype("<i4").tobytes())


def encode_info(seq: int, *, fs_hz: int, samples_per_frame: int, streaming: bool,
                next_seq: int, adc: int = 0, bits: int = 24, name: str = "",
                version: int = 1) -> bytes:
    """An INFO packet (the bridge's answer to every accepted command); ``seq`` echoes
    the command's."""
    raw = name.encode("ascii")[:NAME_LEN].ljust(NAME_LEN, b"\0")
    payload = struct.pack("<7I", version, fs_hz, samples_per_frame, int(bool(streaming)),
                          next_seq % SEQ_MOD, adc, bits) + raw
    return encode_packet(T_INFO, 0, seq, payload)


def encode_nak(seq: int, reason: int, command: int) -> bytes:
    """A NAK packet: the command (type byte) refused and why (``NAK_*``)."""
    return encode_packet(T_NAK, 0, seq, struct.pack("<II", reason, command))


def encode_command(command: int, seq: int, payload: bytes = b"") -> bytes:
    """A host -> bridge command packet; ``seq`` is the host's command number, echoed
    in the answer."""
    return encode_packet(command, 0, seq, payload)


def hello(seq: int) -> bytes:
    """HELLO: ask who the bridge is (answered by INFO)."""
    return encode_command(C_HELLO, seq)


def start(seq: int) -> bytes:
    """START streaming (a no-op answered by INFO when already streaming)."""
    return encode_command(C_START, seq)


def stop(seq: int) -> bytes:
    """STOP streaming; the INFO answer follows the last samples frame."""
    return encode_command(C_STOP, seq)


def set_rate(seq: int, fs_hz: int, samples_per_frame: int) -> bytes:
    """SET_RATE: ``fs_hz`` samples per second, ``samples_per_frame`` per frame."""
    return encode_command(C_SET_RATE, seq, struct.pack("<II", fs_hz, samples_per_frame))


def rate_ok(fs_hz: int, samples_per_frame: int) -> bool:
    """Whether a bridge accepts this rate (1..30,000 Hz, 1..1,024 samples a frame,
    at most 1,000 frames a second)."""
    return (1 <= fs_hz <= MAX_FS_HZ and 1 <= samples_per_frame <= MAX_WORDS
            and fs_hz <= MAX_FRAMES_PER_S * samples_per_frame)


# ------------------------------------------------------------------------------
# Readings
# ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BridgeFrame:
    """One samples frame: ``samples`` raw int32 counts (a read-only numpy array),
    ``at`` the monotonic second its last byte was read."""

    seq: int
    flags: int
    samples: np.ndarray
    at: float = 0.0

    @property
    def saturated(self) -> bool:
        return bool(self.flags & F_SATURATED)

    @property
    def adc_timeout(self) -> bool:
        return bool(self.flags & F_ADC_TIMEOUT)

    @property
    def stream_start(self) -> bool:
        return bool(self.flags & F_STREAM_START)

    def to_dict(self) -> dict:
        return {"reading": "frame", "seq": self.seq, "flags": self.flags,
                "n": int(len(self.samples)), "samples": self.samples.tolist(),
                "saturated": self.saturated, "adc_timeout": self.adc_timeout,
                "stream_start": self.stream_start, "at": self.at}


@dataclass(frozen=True)
class BridgeInfo:
    """The bridge's identity and state (answer to every accepted command).

    ``seq`` echoes the command; ``next_seq`` is the sequence number of the next
    samples frame; ``fs_hz`` samples per second."""

    seq: int
    version: int
    fs_hz: int
    samples_per_frame: int
    streaming: bool
    next_seq: int
    adc: str
    bits: int
    name: str
    at: float = 0.0

    def to_dict(self) -> dict:
        return {"reading": "info", "seq": self.seq, "version": self.version,
                "fs_hz": self.fs_hz, "samples_per_frame": self.samples_per_frame,
                "streaming": self.streaming, "next_seq": self.next_seq, "adc": self.adc,
                "bits": self.bits, "name": self.name, "at": self.at}


@dataclass(frozen=True)
class BridgeNak:
    """A refused command: ``reason`` (``UNKNOWN_COMMAND``, ``BAD_RATE``,
    ``BAD_ARGUMENT`` or ``NAK_<n>``) and the refused ``command`` type byte."""

    seq: int
    reason: str
    command: int
    at: float = 0.0

    def to_dict(self) -> dict:
        return {"reading": "nak", "seq": self.seq, "reason": self.reason,
                "command": self.command, "at": self.at}


@dataclass(frozen=True)
class BridgeFault(DeviceFault):
    """A :class:`DeviceFault` with the loss it stands for.

    ``frames_lost``/``samples_lost``: what a ``SEQUENCE_GAP`` (or a dropped
    ``UNKNOWN_STATUS`` frame) cost; ``None`` when the amount cannot be known (the
    bridge restarted). ``seq``: the frame concerned, when there is one.
    ``bytes_skipped``: for ``GARBAGE``."""

    frames_lost: int | None = 0
    samples_lost: int | None = 0
    seq: int | None = None
    bytes_skipped: int = 0

    def to_dict(self) -> dict:
        return {**super().to_dict(), "frames_lost": self.frames_lost,
                "samples_lost": self.samples_lost, "seq": self.seq,
                "bytes_skipped": self.bytes_skipped}


# ------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------
class PacketReader:
    """Splits a byte stream into checked packets ``(type, flags, seq, payload)``.

    Resynchronises after garbage: it searches the next sync, checks the header's
    CRC-16 before trusting the length in it (a corrupted length is skipped like any
    garbage, it never swallows the frames after it), and checks the CRC-32 before
    trusting the payload. Partial packets wait for more bytes.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._quiet_until = 0     # bytes of a reported bad frame: not garbage again
        self._fresh = False       # a new port: before the first packet, a cut-off tail
        self._fresh_left = 0
        self.bytes_in = 0
        self.garbage_bytes = 0
        self.resync_bytes = 0
        self.bad_frames = 0

    def clear(self) -> None:
        """Forget buffered bytes (after a reconnect they belong to the old port).

        Opening a port flushes its input, which can cut a packet in two; until the
        first good packet, skipped bytes are that tail, counted in ``resync_bytes``
        and not reported as GARBAGE."""
        self._buf.clear()
        self._quiet_until = 0
        self._fresh = True
        self._fresh_left = OVERHEAD + 4 * MAX_WORDS

    def packets(self, data: bytes, now: float) -> list:
        """Packets and faults (:class:`BridgeFault` GARBAGE / BAD_FRAME) in order."""
        buf = self._buf
        buf += data
        self.bytes_in += len(data)
        out: list = []
        pos = 0
        skipped = 0
        n = len(buf)
        while True:
            i = buf.find(SYNC, pos)
            if i < 0:
                # keep a last byte that may be the first half of a sync
                keep = n - 1 if n > pos and buf[-1] == SYNC[0] else n
                skipped += self._skip(pos, keep)
                pos = keep
                break
            if i > pos:
                skipped += self._skip(pos, i)
                pos = i
            if n - i < HEADER_LEN:
                break
            _, ptype, flags, seq, words = HEADER.unpack_from(buf, i)
            hcrc = buf[i + 10] | (buf[i + 11] << 8)
            if words > MAX_WORDS or binascii.crc_hqx(buf[i + 2:i + 10], 0xFFFF) != hcrc:
                skipped += self._skip(i, i + 1)
                pos = i + 1
                continue
            end = i + HEADER_LEN + 4 * words + TRAILER_LEN
            if end > n:
                break
            want = int.from_bytes(buf[end - 4:end], "little")
            if zlib.crc32(memoryview(buf)[i + 2:end - 4]) != want:
                if skipped:
                    self._garbage(out, skipped, now)
                    skipped = 0
                self._fresh = False
                self.bad_frames += 1
                out.append(BridgeFault(BAD_FRAME, f"bad CRC-32 on a packet of type "
                                                  f"0x{ptype:02x}, seq {seq}, {words} words",
                                       now, seq=seq))
                self._quiet_until = max(self._quiet_until, end)
                pos = i + 1
                continue
            if skipped:
                self._garbage(out, skipped, now)
                skipped = 0
            self._fresh = False
            out.append((ptype, flags, seq, bytes(buf[i + HEADER_LEN:end - 4])))
            pos = end
        if skipped:
            self._garbage(out, skipped, now)
        if pos:
            del buf[:pos]
            self._quiet_until = max(0, self._quiet_until - pos)
        return out

    def _skip(self, a: int, b: int) -> int:
        """Bytes a..b are dropped; how many of them count as garbage."""
        if b <= a:
            return 0
        quiet = max(0, min(b, self._quiet_until) - a)
        return (b - a) - quiet

    def _garbage(self, out: list, count: int, now: float) -> None:
        if self._fresh:
            take = min(count, self._fresh_left)
            self.resync_bytes += take
            self._fresh_left -= take
            count -= take
            if not self._fresh_left:
                self._fresh = False    # more than a packet's worth: real garbage
            if not count:
                return
        self.garbage_bytes += count
        out.append(BridgeFault(GARBAGE, f"skipped {count} bytes that are not bridge packets",
                               now, bytes_skipped=count))


class BridgeDecoder(PacketReader):
    """Bytes from a bridge in, readings and faults out (host side).

    ``feed(data, now)`` returns, in stream order, :class:`BridgeFrame`,
    :class:`BridgeInfo`, :class:`BridgeNak` and :class:`BridgeFault` objects.
    Sequence numbers are u32 and wrap: a frame whose ``seq`` is ``d`` ahead of the
    expected one modulo 2**32 with ``0 < d < 2**31`` follows a gap of ``d`` frames
    (``SEQUENCE_GAP``, frames and samples lost); one behind (``d >= 2**31``) is a
    duplicate or late frame, reported as ``BAD_FRAME`` and dropped (its samples were
    delivered or already reported lost). A frame flagged ``STREAM_START`` begins a
    new count. An INFO's ``next_seq`` is checked the same way, so frames lost at
    the tail of a stream are reported when the bridge is asked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.expected: int | None = None    # seq of the next samples frame
        self.last_n: int | None = None      # samples per frame, from the last frame
        self.frames = 0
        self.samples = 0
        self.frames_lost = 0
        self.samples_lost = 0
        self.unknown_loss = 0               # gaps of unknown size (bridge restarts)

    def forget_sequence(self) -> None:
        """Accept the next frame's seq without a gap check."""
        self.expected = None

    def feed(self, data: bytes, now: float = 0.0) -> list:
        """Readings and faults found in ``data`` (plus bytes kept from before);
        ``now`` (monotonic seconds) stamps them."""
        out: list = []
        for item in self.packets(data, now):
            if type(item) is not tuple:
                out.append(item)
                continue
            ptype, flags, seq, payload = item
            if ptype == T_SAMPLES:
                self._samples(flags, seq, payload, now, out)
            elif ptype == T_INFO and len(payload) == 4 * INFO_WORDS:
                info = self._info(seq, payload, now)
                self._check_next(info.next_seq, now, out, f"INFO (answer {seq})")
                out.append(info)
            elif ptype == T_NAK and len(payload) == 8:
                reason, command = struct.unpack("<II", payload)
                out.append(BridgeNak(seq, NAK_REASONS.get(reason, f"NAK_{reason}"),
                                     command, now))
            else:
                out.append(BridgeFault(UNKNOWN_STATUS, f"unknown packet type 0x{ptype:02x} "
                                       f"with {len(payload) // 4} words", now, seq=seq))
        return out

    def _samples(self, flags, seq, payload, now, out) -> None:
        words = len(payload) // 4
        if not words:
            out.append(BridgeFault(BAD_FRAME, f"samples frame {seq} has no samples", now,
                                   seq=seq))
            return
        if flags & F_STREAM_START:
            self.expected = None
        exp = self.expected
        if exp is not None and seq != exp:
            d = (seq - exp) % SEQ_MOD
            if d >= SEQ_MOD // 2:
                behind = SEQ_MOD - d
                what = "a duplicate of the last frame" if behind == 1 else \
                    f"{behind - 1} frames before the last one (late)"
                out.append(BridgeFault(BAD_FRAME, f"frame {seq} is {what}; dropped", now,
                                       seq=seq))
                return
            self._gap(d, now, out, f"frames {exp}..{(seq - 1) % SEQ_MOD} missing")
        self.expected = (seq + 1) % SEQ_MOD
        if flags & ~KNOWN_FLAGS & 0xFF:
            # a status this driver does not know may mean the samples are not weights
            self.frames_lost += 1
            self.samples_lost += words
            out.append(BridgeFault(UNKNOWN_STATUS, f"frame {seq} has unknown flags "
                                   f"0x{flags:02x}; its {words} samples dropped", now,
                                   frames_lost=1, samples_lost=words, seq=seq))
            return
        self.last_n = words
        self.frames += 1
        self.samples += words
        samples = np.frombuffer(payload, dtype="<i4")
        out.append(BridgeFrame(seq, flags, samples, now))

    def _gap(self, frames: int, now: float, out: list, why: str) -> None:
        n = self.last_n
        samples = None if n is None else frames * n
        self.frames_lost += frames
        if samples is not None:
            self.samples_lost += samples
        out.append(BridgeFault(SEQUENCE_GAP, f"{why}: {frames} frames"
                               + (f", {samples} samples lost" if samples is not None else " lost"),
                               now, frames_lost=frames, samples_lost=samples,
                               seq=self.expected))

    def _check_next(self, next_seq: int, now: float, out: list, what: str) -> None:
        exp = self.expected
        if exp is None or next_seq == exp:
            # a count to check the first frame against (a loss between this answer
            # and the first frame is a gap too)
            self.expected = next_seq
            return
        d = (next_seq - exp) % SEQ_MOD
        if d < SEQ_MOD // 2:
            self._gap(d, now, out, f"{what} says the next frame is {next_seq}, "
                                   f"expected {exp}")
        else:
            # the bridge counts from behind us: it restarted, and what it streamed
            # before the restart but we never saw cannot be counted
            self.unknown_loss += 1
            out.append(BridgeFault(SEQUENCE_GAP, f"{what} says the next frame is "
                                   f"{next_seq}, behind {exp}: the bridge restarted; "
                                   "loss unknown", now, frames_lost=None,
                                   samples_lost=None, seq=exp))
        self.expected = next_seq

    @staticmethod
    def _info(seq: int, payload: bytes, now: float) -> BridgeInfo:
        version, fs, spf, streaming, next_seq, adc, bits = struct.unpack_from("<7I", payload)
        name = payload[28:28 + NAME_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
        return BridgeInfo(seq, version, fs, spf, bool(streaming), next_seq,
                          ADC_MODELS.get(adc, f"adc{adc}"), bits, name, now)


# ------------------------------------------------------------------------------
# The port loop
# ------------------------------------------------------------------------------
class BridgeError(Exception):
    """A command the bridge refused (``code`` its NAK reason) or did not answer
    (``NO_ANSWER``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BridgeDriver:
    """Streams a bridge on ``url`` and hands every reading and fault to ``on_event``.

    On every (re)open it sends HELLO and, when ``streaming`` is wanted, START (and
    SET_RATE first when ``fs_hz``/``samples_per_frame`` are given). A reconnect
    drops the bytes of the old port, keeps the sequence count, and so reports the
    frames missed while the port was down as a ``SEQUENCE_GAP`` (from the next
    frame's seq or the INFO answer's ``next_seq``) instead of stitching the stream.
    A bridge that goes quiet for ``stall_s`` while streaming is reported once as
    ``NO_ANSWER`` and nudged with START every ``stall_s`` after that.

    ``on_event`` runs on the driver's thread; an exception from it is logged and
    the loop goes on. Counters: ``decoder.frames``/``samples``/``frames_lost``/
    ``samples_lost``; ``cpu_s`` is the loop thread's CPU seconds once stopped.
    """

    def __init__(self, url: str, *, on_event: Callable[[object], None],
                 line: LineSettings | None = None, streaming: bool = True,
                 fs_hz: int | None = None, samples_per_frame: int | None = None,
                 read_timeout_s: float = 0.02, stall_s: float = 1.0,
                 backoff_min_s: float = 0.05, backoff_max_s: float = 1.0) -> None:
        if (fs_hz is None) != (samples_per_frame is None):
            raise ValueError("give both fs_hz and samples_per_frame, or neither")
        if fs_hz is not None and not rate_ok(fs_hz, samples_per_frame):
            raise ValueError(f"no bridge streams {fs_hz} Hz in frames of "
                             f"{samples_per_frame}")
        self.url = url
        self.on_event = on_event
        self.want_streaming = streaming
        self.rate = None if fs_hz is None else (int(fs_hz), int(samples_per_frame))
        self.stall_s = stall_s
        self.decoder = BridgeDecoder()
        self.link = Link(url, line or LineSettings(460800, 8, "N", 1),
                         read_timeout_s=read_timeout_s, backoff_min_s=backoff_min_s,
                         backoff_max_s=backoff_max_s, on_fault=self._emit)
        self.info: BridgeInfo | None = None
        self.cpu_s = 0.0
        self._cmd_seq = 0
        self._outbox: list[bytes] = []
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opens_seen = 0

    # --------------------------------------------------------------------------
    def start(self) -> "BridgeDriver":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"bridge {self.url}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "BridgeDriver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --------------------------------------------------------------------------
    def command(self, ctype: int, payload: bytes = b"", timeout_s: float = 1.0) -> BridgeInfo:
        """Send one command and wait for its INFO; raises :class:`BridgeError` on a
        NAK or when no answer comes within ``timeout_s`` (``NO_ANSWER``)."""
        done = threading.Event()
        box: list = []
        with self._lock:
            self._cmd_seq = (self._cmd_seq + 1) % SEQ_MOD
            seq = self._cmd_seq
            self._waiting[seq] = (done, box)
            self._outbox.append(encode_command(ctype, seq, payload))
        try:
            if not done.wait(timeout_s):
                raise BridgeError(NO_ANSWER, f"{COMMANDS.get(ctype, hex(ctype))}: no answer "
                                             f"in {timeout_s} s")
        finally:
            with self._lock:
                self._waiting.pop(seq, None)
        answer = box[0]
        if isinstance(answer, BridgeNak):
            raise BridgeError(answer.reason, f"{COMMANDS.get(ctype, hex(ctype))} refused: "
                                             f"{answer.reason}")
        return answer

    def hello(self, timeout_s: float = 1.0) -> BridgeInfo:
        """The bridge's INFO (identity, rate, next frame's seq)."""
        return self.command(C_HELLO, timeout_s=timeout_s)

    def start_streaming(self, timeout_s: float = 1.0) -> BridgeInfo:
        """Start (and keep starting after reconnects); the bridge's INFO."""
        self.want_streaming = True
        return self.command(C_START, timeout_s=timeout_s)

    def stop_streaming(self, timeout_s: float = 1.0) -> BridgeInfo:
        """Stop; the INFO answer comes after the last frame, so any frames lost at
        the tail have been reported (SEQUENCE_GAP) by the time this returns."""
        self.want_streaming = False
        return self.command(C_STOP, timeout_s=timeout_s)

    def set_rate(self, fs_hz: int, samples_per_frame: int, timeout_s: float = 1.0) -> BridgeInfo:
        """Change the sample rate (Hz) and frame length; kept for reconnects."""
        info = self.command(C_SET_RATE, struct.pack("<II", fs_hz, samples_per_frame),
                            timeout_s=timeout_s)
        self.rate = (int(fs_hz), int(samples_per_frame))
        return info

    # --------------------------------------------------------------------------
    def _emit(self, event) -> None:
        try:
            self.on_event(event)
        except Exception:  # a consumer's bug must not stop the lane's scale
            log.exception("bridge on_event failed for %r", event)

    def _queue_internal(self, ctype: int, payload: bytes = b"") -> None:
        with self._lock:
            self._cmd_seq = (self._cmd_seq + 1) % SEQ_MOD
            self._outbox.append(encode_command(ctype, self._cmd_seq, payload))

    def _on_open(self) -> None:
        self.decoder.clear()
        with self._lock:
            # commands written to the old port will never be answered: send again
            pending = list(self._outbox)
            self._outbox.clear()
        self._queue_internal(C_HELLO)
        if self.rate is not None:
            self._queue_internal(C_SET_RATE, struct.pack("<II", *self.rate))
        if self.want_streaming:
            self._queue_internal(C_START)
        with self._lock:
            self._outbox.extend(pending)

    def _run(self) -> None:
        cpu0 = time.thread_time()
        link = self.link
        last_data = time.monotonic()
        stalled = False
        try:
            while not self._stop.is_set():
                try:
                    link.open()
                    if link.opens != self._opens_seen and link.is_open:
                        self._opens_seen = link.opens
                        self._on_open()
                        last_data = time.monotonic()
                        stalled = False
                    while self._outbox and link.is_open:
                        with self._lock:
                            packet = self._outbox[0]
                        link.write(packet)      # LinkDown: it stays queued
                        with self._lock:
                            self._outbox.pop(0)
                    data = link.read(65536)
                except LinkDown:
                    self._stop.wait(0.01)
                    continue
                now = time.monotonic()
                if not data:
                    if self.want_streaming and now - last_data > self.stall_s:
                        if not stalled:
                            stalled = True
                            self._emit(BridgeFault(NO_ANSWER, f"{self.url}: no bytes for "
                                                   f"{self.stall_s} s while streaming", now))
                        last_data = now
                        self._queue_internal(C_START)
                    continue
                last_data = now
                stalled = False
                for ev in self.decoder.feed(data, now):
                    t = type(ev)
                    if t is BridgeInfo or t is BridgeNak:
                        if t is BridgeInfo:
                            self.info = ev
                        with self._lock:
                            w = self._waiting.get(ev.seq)
                        if w is not None:
                            w[1].append(ev)
                            w[0].set()
                    self._emit(ev)
        finally:
            link.close()
            self.cpu_s = time.thread_time() - cpu0


# ------------------------------------------------------------------------------
# Into the verification service
# ------------------------------------------------------------------------------
class WeighFeeder:
    """Bridge frames in, ``weigh.frame`` requests out (``counts``: int32 raw counts).

    ``sink`` is anything with ``weigh_frame(lane, seq, counts=...)`` returning the
    reply's result map — a :class:`lanecore.gateway.net.client.Client` (used from one
    thread only: call :meth:`feed` from the driver's ``on_event``, or from one thread
    draining a queue it fills). The lane must have been set up with ``weigh.config``
    (``counts_per_g``, ``zero_counts``, ``fs_hz`` equal to the bridge's rate).

    Samples are sent in service frames of ``round(frame_s * fs_hz)`` samples (1 to
    4,096), with consecutive ``seq`` numbers from ``first_seq``. A loss — a
    ``SEQUENCE_GAP`` of L samples, a dropped ``UNKNOWN_STATUS`` frame, or a frame
    flagged ``ADC_TIMEOUT`` (its samples repeat an old code: not a measurement) —
    first sends what is pending as a short frame; losses in a row add up, and before
    the next real samples the service ``seq`` skips ``max(1, round(L_total /
    frame_len))`` numbers (an unknown loss counts as at least one), so the service
    reports a ``sequence_gap`` too. Service errors (``ServiceError``) are kept in
    ``errors`` and the stream goes on: the seq they used stays used, so the service
    sees that frame as lost as well.
    """

    def __init__(self, sink, lane: str, *, fs_hz: float, frame_s: float = 0.05,
                 first_seq: int = 0, on_reply: Callable[[dict], None] | None = None) -> None:
        self.sink = sink
        self.lane = lane
        self.frame_len = int(round(frame_s * fs_hz))
        if not 1 <= self.frame_len <= 4096:
            raise ValueError(f"a service frame holds 1..4,096 samples; {frame_s} s at "
                             f"{fs_hz} Hz is {self.frame_len}")
        self.seq = int(first_seq)
        self.on_reply = on_reply
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._loss_open = False
        self._lost = 0
        self.sent_frames = 0
        self.sent_samples = 0
        self.lost_samples = 0                # known bridge samples that never reached it
        self.skipped_seqs = 0
        self.events: list[dict] = []         # every weighing event the service returned
        self.errors: list[Exception] = []

    def feed(self, event) -> list[dict]:
        """Take one driver event; the service replies it caused (usually 0 or 1)."""
        if isinstance(event, BridgeFrame):
            if event.flags & F_ADC_TIMEOUT:
                return self.gap(len(event.samples))
            return self._add(event.samples)
        if isinstance(event, BridgeFault) and event.code in (SEQUENCE_GAP, UNKNOWN_STATUS) \
                and event.frames_lost != 0:
            return self.gap(event.samples_lost)
        return []

    def gap(self, samples_lost: int | None) -> list[dict]:
        """``samples_lost`` samples (None: unknown) never arrived: send what is
        pending; the service seq skips over them before the next samples."""
        replies = self.flush()
        self._loss_open = True
        if samples_lost:
            self._lost += samples_lost
            self.lost_samples += samples_lost
        return replies

    def flush(self) -> list[dict]:
        """Send what is pending, even if short of a whole frame."""
        if not self._pending_n:
            return []
        counts = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_n = [], 0
        r = self._send(counts)
        return [] if r is None else [r]

    def _add(self, samples: np.ndarray) -> list[dict]:
        if self._loss_open:
            skip = max(1, int(round(self._lost / self.frame_len)))
            self.seq += skip
            self.skipped_seqs += skip
            self._loss_open, self._lost = False, 0
        replies = []
        F = self.frame_len
        while len(samples):
            take = min(F - self._pending_n, len(samples))
            self._pending.append(samples[:take])
            self._pending_n += take
            samples = samples[take:]
            if self._pending_n == F:
                replies += self.flush()
        return replies

    def _send(self, counts: np.ndarray) -> dict | None:
        seq = self.seq
        self.seq += 1
        try:
            reply = self.sink.weigh_frame(self.lane, seq, counts=counts)
        except Exception as exc:     # ServiceError, or a sink's own failure
            if len(self.errors) < 1000:
                self.errors.append(exc)
            log.warning("weigh.frame %s/%d failed: %s", self.lane, seq, exc)
            return None
        self.sent_frames += 1
        self.sent_samples += len(counts)
        self.events.extend(reply.get("events") or ())
        if self.on_reply is not None:
            self.on_reply(reply)
        return reply
