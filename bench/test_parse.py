"""Parse the same mixed scans with the compiled kernel, its twin and biip, interleaved.

Target (issue 2): the compiled parse is at least 50x faster per scan than biip — timed
paired (issue 19): every round parses the same block of scans with every side, in an
order that alternates round by round (``bench/_paired.py``), and the ratio is judged on
the medians and on the per-round ratios.
"""

from __future__ import annotations

import biip
import pytest
from biip import ParseConfig

from lanecore.core.scan.scanmix import mixed_scans
from lanecore.ext import _barcode, _barcode_py

from _paired import paired  # bench/ is on sys.path (pyproject: pythonpath)

GROUP = "parse: mixed scans"
REGION = "GB"
TARGET = 50
BLOCK = 10_000            # scans per round and side; rounds walk through the scans

# Each timed loop handles one scan at a time and drops its result, as a lane
# controller does. (Keeping 100k results alive would mostly time the cyclic GC,
# which walks biip's dataclasses over and over; that would flatter lanecore.)


@pytest.fixture(scope="module")
def scans(sizes):
    return [s.code for s in mixed_scans(sizes.scans, seed=2026, region=REGION)]


def _compiled(block):
    parse = _barcode.parse_scan
    r = None
    for c in block:
        r = parse(c, REGION)
    return r


def _compiled_to_dict(block):
    """The same, also building every result's JSON row (what the CLI prints)."""
    parse = _barcode.parse_scan
    ok = 0
    for c in block:
        ok += parse(c, REGION).to_dict()["ok"]
    return ok


def _twin(block):
    parse = _barcode_py.parse_scan
    r = None
    for c in block:
        r = parse(c, REGION)
    return r


_BIIP_CONFIG = ParseConfig(rcn_region=REGION.lower())


def _biip(block):
    parse, config = biip.parse, _BIIP_CONFIG
    read = 0
    for c in block:
        r = parse(c, config=config)
        read += r.gtin is not None or r.gs1_message is not None
    return read


def test_parse_paired(scans, sizes, record, figures, note):
    blocks = [scans[i:i + BLOCK] for i in range(0, len(scans), BLOCK)]
    # real: two passes over all the scans; CI: one round over the (small) set
    rounds = 2 * len(blocks) if sizes.real else 1

    def block_of(r, side):
        return (blocks[r % len(blocks)],)

    def check(out):
        # the baseline did real work: it read most scans; the compiled results agree
        assert out["biip"] > 0.8 * min(BLOCK, len(scans))
        assert out["compiled+to_dict"] > 0.9 * min(BLOCK, len(scans))

    res = paired({"compiled": _compiled, "compiled+to_dict": _compiled_to_dict,
                  "twin": _twin, "biip": _biip},
                 rounds=rounds, warmup=int(sizes.real), setup=block_of, check=check)
    twin = [_barcode_py.parse_scan(c, REGION).to_dict() for c in scans[:2000]]
    assert [_barcode.parse_scan(c, REGION).to_dict() for c in scans[:2000]] == twin
    if not sizes.real:
        return
    n = len(blocks[0])
    record(res.side("biip"), GROUP, "biip", "baseline", n)
    record(res.side("compiled"), GROUP, "lanecore compiled", "candidate", n, target=TARGET)
    record(res.side("compiled+to_dict"), GROUP, "lanecore compiled+to_dict", "candidate", n)
    record(res.side("twin"), GROUP, "lanecore twin", "candidate", n)
    fig = figures.speedup(f"{GROUP}: lanecore compiled vs biip", res, "compiled", "biip",
                          scans_per_round=n)
    figures.speedup(f"{GROUP}: lanecore compiled+to_dict vs biip", res, "compiled+to_dict",
                    "biip")
    figures.speedup(f"{GROUP}: lanecore twin vs biip", res, "twin", "biip")
    note(f"parse, {res.rounds} interleaved rounds of {n:,} mixed scans each: "
         f"{res.summary(n)}; compiled {fig['value']:.1f}× biip (per-round pairs "
         f"{fig['min']:.1f} / {fig['median']:.1f} / {fig['max']:.1f}); {res.load}; "
         f"target ≥ {TARGET}×: "
         f"{'met' if min(fig['value'], fig['median']) >= TARGET else 'NOT MET'}")
