"""``lanecore demo``: the scan path of a store floor, on a generated catalogue.

It generates a catalogue, imports it into a store database, loads the lookup table,
shows a shopper's basket as a handheld would, then pushes a day's mix of scans
(good codes, in-store labels, GS1 DataBar, unknown items, misreads) through parse
and lookup, checks every reading against what the generator intended, and prints
what it saw. It exits 1 if any reading was wrong.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

import lanecore
from lanecore.core.catalog import Catalog
from lanecore.core.scanmix import instore_code, mixed_scans
from lanecore.core.synth import write_catalog_csv
from lanecore.ext import barcode, lookup


def _money(minor) -> str:
    if minor is None:
        return "-"
    return f"{minor // 100:,}.{minor % 100:02d}"


def run_demo(data_dir: Path, *, rows: int, scans: int, seed: int, region: str,
             out) -> int:
    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    say(f"lanecore {lanecore.__version__} demo — kernels: barcode={barcode.IMPLEMENTATION}, "
        f"lookup={lookup.IMPLEMENTATION}; store data in {data_dir}/")
    say()

    # 1. Catalogue -----------------------------------------------------------------
    csv_path = data_dir / "catalog.csv"
    t0 = time.perf_counter()
    n = write_catalog_csv(csv_path, rows, seed=seed, region=region)
    say(f"1. Catalogue: generated {n:,} items for region {region} "
        f"in {time.perf_counter() - t0:.1f} s -> {csv_path}")
    with Catalog.open(data_dir) as cat:
        report = cat.import_csv(csv_path)
        say(f"   imported {report.rows_imported:,} rows ({report.rows_bad} bad) into "
            f"{data_dir / 'store.db'} in {report.seconds:.1f} s")
        t0 = time.perf_counter()
        table = cat.table()
        say(f"   lookup table: {len(table):,} SKUs loaded in {time.perf_counter() - t0:.2f} s, "
            f"{table.bytes_per_sku:.1f} bytes per SKU")
        say()
        gtins = [f"{g:014d}" for g in table.gtin.tolist()]

        # 2. A basket --------------------------------------------------------------
        rng = np.random.default_rng(seed)
        say("2. A shopper's handheld basket:")
        basket = _basket(rng, gtins, region)
        say(f"   {'scanned':<36} {'item':<34} {'weight':>9} {'price':>9}")
        total = 0
        for code in basket:
            res = cat.lookup_code(code, region)
            shown = code.replace("\x1d", "<GS>")
            if not res["found"]:
                say(f"   {shown:<36} {'! ' + res['error']['code']:<34}")
                continue
            item = res["item"]
            scan = res["scan"]
            price = item["line_price_minor"]   # None: a produce item still to be weighed
            total += price or 0
            weight = scan["weight_g"] or item.get("unit_weight_g")
            wtxt = f"{weight:,.0f} g" if weight else "-"
            say(f"   {shown:<36} {item['name'][:34]:<34} {wtxt:>9} {_money(price):>9}")
            extra = [item.get(k) for k in ("origin", "producer", "promotion") if item.get(k)]
            if extra:
                say(f"   {'':<36}   {' | '.join(extra)[:70]}")
        say(f"   {'':<36} {'total':<34} {'':>9} {_money(total):>9}")
        say()

        # 3. A day's scans ---------------------------------------------------------
        stream = mixed_scans(scans, seed=seed, region=region, gtins=gtins)
        codes = [s.code for s in stream]
        t0 = time.perf_counter()
        results = barcode.parse_many(codes, region)
        t_parse = time.perf_counter() - t0
        keys = np.fromiter((r.lookup_key if r.lookup_key is not None else 0 for r in results),
                           dtype=np.uint64, count=len(results))
        t0 = time.perf_counter()
        rows_found = table.lookup_many(keys)
        t_lookup = time.perf_counter() - t0
        kinds = Counter(r.kind for r in results if r.ok)
        errors = Counter(r.error_code for r in results if not r.ok)
        found = sum(1 for r, row in zip(results, rows_found) if r.ok and r.lookup_key is not None
                    and row >= 0)
        wrong = [(s, r) for s, r in zip(stream, results)
                 if (s.expect_kind is not None and (not r.ok or r.kind != s.expect_kind))
                 or (s.expect_error is not None and r.error_code != s.expect_error)]
        say(f"3. {len(codes):,} scans of a trading day through parse + lookup:")
        say(f"   parse {t_parse / len(codes) * 1e9:,.0f} ns/scan, batch lookup "
            f"{t_lookup / len(codes) * 1e9:,.0f} ns/key "
            f"({len(codes) / (t_parse + t_lookup):,.0f} scans/s on one core)")
        say("   read as: " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))
        say(f"   found in the catalogue: {found:,}; not listed: "
            f"{sum(kinds.values()) - found:,}; rejected: {sum(errors.values()):,}")
        say("   rejected because: " + ", ".join(f"{k} {v:,}" for k, v in errors.most_common()))
        say(f"   readings checked against the generator's intent: {len(codes) - len(wrong):,} "
            f"right, {len(wrong):,} wrong")
        say()

        # 4. Why some scans were refused -------------------------------------------
        say("4. Some refused scans and what the lane controller is told:")
        shown_codes = set()
        for r in results:
            if not r.ok and r.error_code not in shown_codes:
                shown_codes.add(r.error_code)
                text = (r.input or "")[:40].encode("unicode_escape").decode()
                say(f"   {text!s:<42} {r.error_code}: {r.error_message[:70]}")
        say()
        # 5. The exit lane's weigh-check ---------------------------------------------
        _exit_lane(say, np.random.default_rng(seed + 1), table, cat)
    for s, r in wrong[:10]:
        say(f"WRONG: {s} -> {r.to_dict()}")
    say("demo finished: " + ("every reading was right" if not wrong else
                             f"{len(wrong)} readings were wrong"))
    return 0 if not wrong else 1


def _exit_lane(say, rng, table, cat) -> None:
    """A paid order weighed on the exit conveyor: honest, short and over."""
    from lanecore.core.verify import verify
    from lanecore.core.weighing import LaneConfig, configure_lane
    from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate
    from lanecore.ext.loadcell import LaneBank, warm_up

    warm_up()
    ok = (np.isfinite(table.weight_mean_g) & np.isfinite(table.weight_sd_g)
          & (table.flags & (lookup.FLAG_WEIGHT_EXEMPT | lookup.FLAG_VARIABLE_MEASURE) == 0)
          & (table.weight_mean_g < 2500))
    rows = rng.choice(np.flatnonzero(ok), 7, replace=False)
    lines = [{"gtin": f"{int(table.gtin[r]):014d}", "qty": int(q)}
             for r, q in zip(rows[:6], rng.choice([1, 1, 1, 2], 6))]
    unscanned = rows[6]
    lane = LaneConfig(conveyor_hz=7.0)
    say("5. Exit lane A: the paid order weighed on the conveyor (synthetic load cell at "
        f"{lane.fs_hz:g} Hz, e = {lane.e_g:g} g, belt vibration at 7 Hz):")
    for ln in lines:
        item = cat.item(ln["gtin"])
        say(f"   {ln['qty']} x {item['name'][:40]:<40} {item['unit_weight_g']:>8,.0f} g each")

    def weigh(units):
        true_g = sum(float(rng.normal(table.weight_mean_g[r], table.weight_sd_g[r]))
                     for r in units)
        x, truth = generate(TraceSpec(seconds=2.5, placements=[Placement(0.3, true_g, 5.0, 0.3)],
                                      noise_g=1.0, conveyor_hz=7.0, conveyor_g=4.0,
                                      mains_g=1.0, seed=int(rng.integers(1 << 31))))
        bank = LaneBank(1)
        configure_lane(bank, 0, lane)
        for i in range(0, len(x), 50):
            for ev in bank.feed(0, x[i:i + 50]):
                if ev["event"] == "settled" and ev["t"] > 0.3:
                    return ev, true_g
        return None, true_g

    paid = [r for r, ln in zip(rows[:6], lines) for _ in range(ln["qty"])]
    left_behind = paid[int(rng.integers(len(paid)))]
    cases = [("honest shopper", paid),
             ("one paid item left behind", [r for r in paid if r is not left_behind]),
             ("one item not scanned", paid + [unscanned])]
    for label, units in cases:
        ev, true_g = weigh(units)
        if ev is None:
            say(f"   {label}: the scale never settled")
            continue
        v = verify({"lines": lines}, ev["weight_g"], table).to_dict()
        say(f"   {label}: settled {ev['weight_g']:,.1f} g (± {ev['sigma_g']:.1f}) "
            f"{ev['t'] - 0.3:.2f} s after the goods landed -> {v['verdict'].upper()} "
            f"(expected {v['expected_g']:,.0f} ± {v['band_g']:.0f} g, z = {v['z']})")
        for ex in v["explanations"][:2]:
            names = ", ".join(f"{ln['qty']} x {cat.item(ln['gtin'])['name'][:30]}"
                              for ln in ex["lines"])
            say(f"      {ex['kind']}: {names}  (p = {ex['score']:.2f})")
        if v["verdict"] != "ok":
            say("      spoken: \"Please check your bag: an item may be unscanned, "
                "wrongly scanned or unpaid.\"")
    say()


def _basket(rng, gtins: list[str], region: str) -> list[str]:
    """Eight scans a shopper makes: packaged goods, a deli label, a DataBar, a miss."""
    plain = [g for g in gtins if g[1:3] not in ("20", "23", "28")]
    picks = [plain[int(i)] for i in rng.choice(len(plain), 5, replace=False)]
    codes = [p.lstrip("0") if len(p.lstrip("0")) in (12, 13) else p for p in picks]
    codes[1] = "]E0" + picks[1][1:]
    instore = [g for g in gtins if g[1:3] in ("20", "23", "28")]
    if instore:
        g = instore[int(rng.integers(len(instore)))]
        p_len = {"GB": 7, "SE": 8, "DE": 6}[region]
        codes.append(instore_code(rng, region, g[3:1 + p_len])[0])
    codes.append("]e0" + "01" + picks[2] + "17" + "271231" + "10" + "L4711")
    codes.append("4006381333932")   # a misread: wrong check digit
    return codes
