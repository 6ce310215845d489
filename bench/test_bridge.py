"""The raw load-cell bridge at 2 kHz over a pty: nothing lost without a report, and
what the driver costs.

Real runs (``make bench``) stream for 60 s; CI (``--benchmark-disable``) for 3 s.
The driver's cost is its loop thread's CPU time, compared in the same run with a
bare pyserial read loop reading an identical stream from a second simulated bridge
over the same kind of pty: the difference is what decoding and delivering cost,
reported as a fraction of one core per lane. Same-run ratios, because the machine is
shared. The assertion that matters is exact: samples received + samples reported
lost == samples the simulator numbered.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import serial

from lanecore.drivers import bridge as B
from lanecore.drivers.bridge import BridgeDecoder, BridgeDriver, BridgeFrame
from lanecore.drivers.link import BAD_FRAME, GARBAGE, SEQUENCE_GAP, DeviceFault
from lanecore.drivers.sim.loadcell import BridgeSim

from _paired import LoadProbe  # bench/ is on sys.path (pyproject: pythonpath)

FS_HZ = 2000
SPF = 20


class Counter:
    """``on_event`` for the driver: counts, and checks seq order as it goes."""

    def __init__(self):
        self.frames = 0
        self.samples = 0
        self.faults: dict[str, int] = {}
        self.lost = 0
        self.last_seq = None
        self.disorder = 0

    def __call__(self, ev):
        if type(ev) is BridgeFrame:
            self.frames += 1
            self.samples += len(ev.samples)
            if self.last_seq is not None and ev.seq != (self.last_seq + 1) % B.SEQ_MOD \
                    and not ev.stream_start:
                self.disorder += 1
            self.last_seq = ev.seq
        elif isinstance(ev, DeviceFault):
            self.faults[ev.code] = self.faults.get(ev.code, 0) + 1
            if ev.code == SEQUENCE_GAP:
                self.lost += ev.samples_lost or 0


def bare_reader(path: str, stop: threading.Event, out: dict) -> None:
    """The floor: read a bridge's byte stream the way Link does, decode nothing."""
    cpu0 = time.thread_time()
    port = serial.serial_for_url(path, timeout=0.02)
    chunks = []
    n = 0
    try:
        while not stop.is_set():
            waiting = port.in_waiting
            data = port.read(waiting) if waiting else port.read(1)
            if data:
                more = port.in_waiting
                if more:
                    data += port.read(more)
                n += len(data)
                chunks.append(data)
    finally:
        port.close()
        out["cpu_s"] = time.thread_time() - cpu0
        out["bytes"] = n
        out["chunks"] = chunks


def test_bridge_2khz_nothing_lost_silently_and_its_cpu(sizes, note, benchmark, record,
                                                      figures):
    seconds = 60.0 if sizes.real else 3.0
    # The driver's own START begins the stream: frames numbered before the driver
    # had the port open would be flushed by the open and count as lost otherwise.
    with BridgeSim(fs_hz=FS_HZ, samples_per_frame=SPF, seed=1, streaming=False) as sim, \
            BridgeSim(fs_hz=FS_HZ, samples_per_frame=SPF, seed=2) as floor_sim:
        got = Counter()
        stop = threading.Event()
        floor: dict = {}
        reader = threading.Thread(target=bare_reader, args=(floor_sim.path, stop, floor),
                                  daemon=True)
        wall0, proc0 = time.monotonic(), time.process_time()
        probe = LoadProbe().__enter__()     # both loops run in this process, together
        reader.start()
        drv = BridgeDriver(sim.path, on_event=got).start()
        try:
            time.sleep(seconds)
            info = drv.stop_streaming(timeout_s=5)
        finally:
            drv.stop()
            stop.set()
            reader.join(5)
            probe.__exit__(None, None, None)
        wall = time.monotonic() - wall0
        proc = time.process_time() - proc0
        d = drv.decoder
        # the exact account: every numbered sample arrived or was reported lost
        assert info.next_seq == sim.seq
        assert d.samples + d.samples_lost == sim.samples_numbered
        assert got.samples + got.lost == sim.samples_numbered
        # every jump in the delivered seqs was reported as a gap
        assert got.disorder <= got.faults.get(SEQUENCE_GAP, 0)
        assert sim.samples_numbered >= 0.5 * seconds * FS_HZ
        floor_frames = floor["bytes"] / (B.OVERHEAD + 4 * SPF)

    signal_s = d.samples / FS_HZ
    cost_core = (drv.cpu_s - floor["cpu_s"]) / max(signal_s, 1e-9)
    us_per_frame = drv.cpu_s / max(d.frames, 1) * 1e6
    floor_us_per_frame = floor["cpu_s"] / max(floor_frames, 1) * 1e6

    # the decoder alone on the floor's captured stream, chunked as it was read
    chunks = floor["chunks"]

    def decode():
        dec = BridgeDecoder()
        for c in chunks:
            dec.feed(c)
        return dec

    dec = benchmark.pedantic(decode, rounds=5 if sizes.real else 1, iterations=1)
    assert dec.frames >= 0.9 * floor_frames
    record(benchmark, "bridge decode, 2 kHz stream", "BridgeDecoder.feed", "candidate",
           dec.frames, seconds=round(signal_s, 1))
    # the driver and the bare read loop ran side by side over the same window: paired
    figures.add("bridge 2 kHz over a pty: driver thread CPU / bare pyserial read loop",
                drv.cpu_s / max(floor["cpu_s"], 1e-9), "x time", rounds=1, paired=True,
                load=probe.load, seconds=round(seconds, 1))
    note(f"bridge 2 kHz × {seconds:.0f} s over a pty: {d.frames} frames, {d.samples} samples "
         f"received + {d.samples_lost} reported lost == {sim.samples_numbered} sent "
         f"(faults {got.faults or 'none'}; {sim.frames_send_failed} frames the pty "
         f"refused)")
    note(f"bridge driver thread: {drv.cpu_s / wall * 100:.2f} % of a core "
         f"({us_per_frame:.1f} µs/frame); bare pyserial read loop on the same stream: "
         f"{floor['cpu_s'] / wall * 100:.2f} % ({floor_us_per_frame:.1f} µs/frame); "
         f"decoding + delivery cost {cost_core * 100:.2f} % of a core per lane "
         f"({drv.cpu_s / max(floor['cpu_s'], 1e-9):.2f}× the floor); whole process incl. "
         f"two simulators {proc / wall * 100:.1f} %")


def test_bridge_garbage_and_corruption_lose_exactly_what_is_reported(sizes, note):
    seconds = 20.0 if sizes.real else 2.0
    rng = np.random.default_rng(7)
    injected = {"garbage_bytes": 0, "drops": 0, "corrupt": 0}
    with BridgeSim(fs_hz=FS_HZ, samples_per_frame=SPF, seed=3) as sim:
        got = Counter()
        with BridgeDriver(sim.path, on_event=got) as drv:
            end = time.monotonic() + seconds
            time.sleep(0.1)
            while time.monotonic() < end:
                kind = rng.integers(3)
                if kind == 0:
                    junk = rng.integers(0, 256, int(rng.integers(1, 60)), dtype=np.uint8)
                    junk = bytes(junk)
                    if rng.random() < 0.5:                 # with false syncs in it
                        junk = junk[:len(junk) // 2] + B.SYNC + junk[len(junk) // 2:]
                    sim.do("garbage", junk.hex())
                    injected["garbage_bytes"] += len(junk)
                elif kind == 1:
                    k = int(rng.integers(1, 4))
                    sim.do("drop", str(k))
                    injected["drops"] += k
                else:
                    sim.do("corrupt")
                    injected["corrupt"] += 1
                time.sleep(float(rng.uniform(0.02, 0.08)))
            time.sleep(0.05)
            drv.stop_streaming(timeout_s=5)
        d = drv.decoder
        # lost: the dropped, the corrupted and whatever the pty could not take
        expected_lost = sim.samples_unsent + sim.frames_corrupted * SPF
        assert d.samples_lost == expected_lost
        assert d.samples + d.samples_lost == sim.samples_numbered
        assert sim.frames_corrupted == injected["corrupt"]
        assert got.faults.get(BAD_FRAME, 0) >= injected["corrupt"]
        # every garbage byte is reported, and nothing else is; the exception is a
        # false header that passes its CRC-16 (odds 1 in 65,536 per false sync): it
        # is a BAD_FRAME, and garbage inside its claimed extent is not counted twice
        # A frame the pty refused may have gone out in part (a UART overrun looks
        # the same): those bytes are garbage too.
        partial = sim.frames_send_failed * (B.OVERHEAD + 4 * SPF)
        if got.faults.get(BAD_FRAME, 0) == injected["corrupt"]:
            assert injected["garbage_bytes"] <= d.garbage_bytes <= \
                injected["garbage_bytes"] + partial
        else:
            assert d.garbage_bytes <= injected["garbage_bytes"] + partial
    note(f"bridge with faults, {seconds:.0f} s: {injected} → {d.samples_lost} samples "
         f"reported lost == {expected_lost} really lost; {got.faults.get(GARBAGE, 0)} "
         f"garbage reports ({d.garbage_bytes} bytes), {got.faults.get(BAD_FRAME, 0)} bad "
         f"frames, {got.faults.get(SEQUENCE_GAP, 0)} gaps; "
         f"{sim.frames_send_failed} frames the pty refused")
