"""How a lane weighs: its scale, its filters, its stability rule — validated, and
compiled into what the load-cell kernel (``lanecore.ext.loadcell``) runs.

Defaults suit a retail scale sampled at 1 kHz (e = 5 g, Max = 30 kg): a 20 Hz
second-order Butterworth low-pass (group delay ≈ 11 ms), a notch at the mains
frequency (only where the sample rate can see it), a Hampel spike filter at 20 e, a
stability rule of "within 1 e for 0.25 s", zero tracking within ½ e of zero at
≤ ½ e/s, never beyond 4 % of Max (OIML R76 zero-setting range).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from lanecore.core.errors import LanecoreError
from lanecore.ext import filters, loadcell

#: Sample rates the signal path is designed for (HX711 10 Hz … ADS1256 2 kHz), with
#: room either side.
MIN_FS_HZ = 1.0
MAX_FS_HZ = 10_000.0


class WeighConfigError(LanecoreError):
    """A lane configuration that cannot work."""

    code = "BAD_WEIGH_CONFIG"


@dataclass
class LaneConfig:
    """One lane's scale and signal path. Weights in grams, times in seconds."""

    fs_hz: float = 1000.0
    e_g: float = 5.0                   # verification scale interval
    max_g: float = 30_000.0            # capacity (Max)
    counts_per_g: float = 1.0          # raw units per gram (1: the input is grams)
    zero_counts: float = 0.0           # raw reading with nothing on the scale
    tare_g: float = 0.0                # container or belt weight taken off
    adc_bits: int = 0                  # > 0: raw counts saturate at ±(2**(bits-1) - 1)
    lowpass_hz: float | None = None    # None: min(20 Hz, fs/5); 0: no low-pass
    lowpass_order: int = 2
    mains_hz: float = 50.0             # 0: no mains notch
    mains_q: float = 10.0
    conveyor_hz: float = 0.0           # a conveyor's vibration tone; 0: none
    conveyor_q: float = 2.0
    spike_e: float = 20.0              # Hampel threshold in e; 0: off
    stable_band_e: float = 1.0         # stable: every sample within this band ...
    stable_window_s: float = 0.25      # ... for this long
    zero_tracking: bool = True
    zero_track_rate_e_s: float = 0.5   # at most ½ e per second
    zero_track_band_e: float = 0.5     # only within ½ e of zero
    zero_track_limit: float = 0.04     # of Max, in total
    overload_g: float | None = None    # None: Max + 9 e
    under_zero_e: float = 20.0         # under_zero below −20 e
    placed_e: float = 2.0              # placed/removed for changes of 2 e or more
    stuck_s: float = 0.5               # the same raw value this long: stuck ADC; 0: off

    @classmethod
    def from_dict(cls, d: dict) -> "LaneConfig":
        """From a JSON-like dict; unknown keys are an error naming them."""
        if not isinstance(d, dict):
            raise WeighConfigError("a lane configuration is an object of fields")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise WeighConfigError(f"unknown lane configuration field(s): {sorted(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def effective_lowpass_hz(self) -> float:
        """The low-pass corner in use: ``lowpass_hz``, or min(20 Hz, fs/5) when unset."""
        return min(20.0, self.fs_hz / 5) if self.lowpass_hz is None else self.lowpass_hz

    def effective_overload_g(self) -> float:
        """The overload threshold in use: ``overload_g``, or Max + 9 e when unset."""
        return self.max_g + 9 * self.e_g if self.overload_g is None else self.overload_g

    def resolved_dict(self) -> dict:
        """Every field with the computed defaults filled in (what the lane runs)."""
        d = asdict(self)
        d["lowpass_hz"] = self.effective_lowpass_hz()
        d["overload_g"] = self.effective_overload_g()
        return d

    # ------------------------------------------------------------------------------
    def _num(self, name: str, lo: float, hi: float, *, code: str = "BAD_WEIGH_CONFIG",
             lo_open: bool = False) -> float:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise WeighConfigError(f"{name} must be a finite number, got {v!r}", code=code)
        if v < lo or v > hi or (lo_open and v == lo):
            raise WeighConfigError(f"{name} = {v} is outside {lo}..{hi}", code=code)
        return float(v)

    def validate(self) -> None:
        """Raise WeighConfigError (stable codes) for anything that cannot work."""
        fs = self._num("fs_hz", MIN_FS_HZ, MAX_FS_HZ, code="BAD_SAMPLE_RATE")
        self._num("e_g", 0.0, 1e4, code="BAD_SCALE_INTERVAL", lo_open=True)
        self._num("max_g", self.e_g, 1e8)
        self._num("counts_per_g", -1e12, 1e12)
        if self.counts_per_g == 0:
            raise WeighConfigError("counts_per_g cannot be 0")
        self._num("zero_counts", -1e15, 1e15)
        self._num("tare_g", -1e8, 1e8)
        if not isinstance(self.adc_bits, int) or not 0 <= self.adc_bits <= 32:
            raise WeighConfigError("adc_bits must be an integer 0..32")
        nyq = fs / 2
        if self.lowpass_hz is not None:
            self._num("lowpass_hz", 0.0, nyq * 0.9, code="BAD_FILTER")
        if self.lowpass_order not in filters.BUTTERWORTH_Q:
            raise WeighConfigError(f"lowpass_order must be one of {sorted(filters.BUTTERWORTH_Q)}",
                                   code="BAD_FILTER")
        for name, q in (("mains_hz", "mains_q"), ("conveyor_hz", "conveyor_q")):
            self._num(name, 0.0, 1e4, code="BAD_FILTER")
            self._num(q, 0.1, 1000.0, code="BAD_FILTER")
            if name == "conveyor_hz" and self.conveyor_hz >= 0.45 * fs:
                raise WeighConfigError(f"conveyor_hz {self.conveyor_hz} is beyond what "
                                       f"{fs} Hz sampling can see", code="BAD_FILTER")
        self._num("spike_e", 0.0, 1e6)
        self._num("stable_band_e", 0.0, 1e3, lo_open=True)
        w = self._num("stable_window_s", 0.0, 60.0, lo_open=True)
        if self.window_samples() > loadcell.MAX_WINDOW:
            raise WeighConfigError(
                f"stable_window_s {w} s at {fs} Hz is more than {loadcell.MAX_WINDOW} "
                "samples")
        self._num("zero_track_rate_e_s", 0.0, 100.0)
        self._num("zero_track_band_e", 0.0, 100.0)
        self._num("zero_track_limit", 0.0, 1.0)
        if self.overload_g is not None:
            self._num("overload_g", 0.0, 1e9, lo_open=True)
        self._num("under_zero_e", 0.0, 1e6)
        self._num("placed_e", 0.0, 1e6)
        self._num("stuck_s", 0.0, 3600.0)

    def window_samples(self) -> int:
        """The stability window in samples: never fewer than 3 (slow ADCs)."""
        return max(3, round(self.stable_window_s * self.fs_hz))

    # ------------------------------------------------------------------------------
    def sos(self) -> np.ndarray:
        """The filter cascade as SOS rows (low-pass, then the notches)."""
        fs = self.fs_hz
        rows = []
        lp = self.effective_lowpass_hz()
        if lp > 0:
            rows.append(filters.butterworth(lp, fs, self.lowpass_order))
        # A tone at or beyond 0.45 fs is aliased or out of reach: no notch for it.
        if 0 < self.mains_hz < 0.45 * fs:
            rows.append(filters.notch(self.mains_hz, fs, self.mains_q)[None, :])
        if 0 < self.conveyor_hz < 0.45 * fs:
            rows.append(filters.notch(self.conveyor_hz, fs, self.conveyor_q)[None, :])
        return np.vstack(rows) if rows else np.zeros((0, 6))

    def compile(self) -> tuple[dict, np.ndarray]:
        """(kernel parameters, SOS rows) for ``LaneBank.configure``."""
        self.validate()
        e = self.e_g
        fs = self.fs_hz
        sos = self.sos()
        params = {
            "fs": fs,
            "counts_per_g": self.counts_per_g,
            "zero_counts": self.zero_counts,
            "tare_g": self.tare_g,
            "spike_g": self.spike_e * e,
            "band_g": self.stable_band_e * e,
            "win": self.window_samples(),
            "zt_rate": (self.zero_track_rate_e_s * e / fs) if self.zero_tracking else 0.0,
            "zt_band": self.zero_track_band_e * e,
            "zt_limit": self.zero_track_limit * self.max_g,
            "over_g": self.effective_overload_g(),
            "under_g": -self.under_zero_e * e,
            "hyst_g": e,
            "placed_g": self.placed_e * e,
            "sat": float(2 ** (self.adc_bits - 1) - 1) if self.adc_bits else 0.0,
            "stuck_n": round(self.stuck_s * fs),
            "g2": filters.noise_gain(sos, fs),
            "warm": filters.warm_up_samples(sos, fs),
        }
        return params, sos


def configure_lane(bank: loadcell.LaneBank, lane: int, config: LaneConfig) -> None:
    """Set ``lane`` of ``bank`` up from ``config`` (which is validated first)."""
    params, sos = config.compile()
    bank.configure(lane, params, sos)
