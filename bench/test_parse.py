"""Parse the same mixed scans with the compiled kernel, its twin and biip.

Target (issue 2): the compiled parse is at least 50x faster per scan than biip.
"""

from __future__ import annotations

import biip
import pytest
from biip import ParseConfig

from lanecore.core.scan.scanmix import mixed_scans
from lanecore.ext import _barcode, _barcode_py

GROUP = "parse: mixed scans"
REGION = "GB"

# Each timed loop handles one scan at a time and drops its result, as a lane
# controller does. (Keeping 100k results alive would mostly time the cyclic GC,
# which walks biip's dataclasses over and over; that would flatter lanecore.)


@pytest.fixture(scope="module")
def scans(sizes):
    return [s.code for s in mixed_scans(sizes.scans, seed=2026, region=REGION)]


def _rounds(sizes, real):
    return real if sizes.real else 1


def _one_by_one(parse, scans):
    """A timed loop: parse each scan, keep only the last result."""
    def run():
        r = None
        for c in scans:
            r = parse(c, REGION)
        return r
    return run


def test_parse_compiled(benchmark, record, scans, sizes):
    parse = _barcode.parse_scan
    benchmark.pedantic(_one_by_one(parse, scans), rounds=_rounds(sizes, 30),
                       warmup_rounds=1)
    record(benchmark, GROUP, "lanecore compiled", "candidate", len(scans), target=50)
    twin = [_barcode_py.parse_scan(c, REGION).to_dict() for c in scans[:2000]]
    assert [parse(c, REGION).to_dict() for c in scans[:2000]] == twin


def test_parse_compiled_to_dict(benchmark, record, scans, sizes):
    """The same, also building every result's JSON row (what the CLI prints)."""
    parse = _barcode.parse_scan

    def run():
        ok = 0
        for c in scans:
            ok += parse(c, REGION).to_dict()["ok"]
        return ok

    ok = benchmark.pedantic(run, rounds=_rounds(sizes, 15), warmup_rounds=1)
    record(benchmark, GROUP, "lanecore compiled+to_dict", "candidate", len(scans))
    assert ok > 0.9 * len(scans)


def test_parse_twin(benchmark, record, scans, sizes):
    benchmark.pedantic(_one_by_one(_barcode_py.parse_scan, scans), rounds=_rounds(sizes, 3),
                       warmup_rounds=0)
    record(benchmark, GROUP, "lanecore twin", "candidate", len(scans))


def test_parse_biip(benchmark, record, scans, sizes):
    config = ParseConfig(rcn_region=REGION.lower())
    parse = biip.parse

    def run():
        read = 0
        for c in scans:
            r = parse(c, config=config)
            read += r.gtin is not None or r.gs1_message is not None
        return read

    read = benchmark.pedantic(run, rounds=_rounds(sizes, 3), warmup_rounds=0)
    record(benchmark, GROUP, "biip", "baseline", len(scans))
    # the baseline did real work: it read most scans
    assert read > 0.8 * len(scans)
