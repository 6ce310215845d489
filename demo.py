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
        say("2. What the scanners read: packaged goods, a deli label, a DataBar, a misread:")
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
        # 5. The same store behind the service ----------------------------------------
        exit_rng = np.random.default_rng(seed + 1)
        plain = np.flatnonzero(np.isfinite(table.weight_mean_g) & np.isfinite(table.weight_sd_g)
                               & (table.flags & (lookup.FLAG_WEIGHT_EXEMPT
                                                 | lookup.FLAG_VARIABLE_MEASURE) == 0)
                               & (table.weight_mean_g < 2500))
    wrong_service = _service_journey(say, data_dir, region, exit_rng, table, plain)
    for s, r in wrong[:10]:
        say(f"WRONG: {s} -> {r.to_dict()}")
    say("demo finished: " + ("every reading was right" if not wrong else
                             f"{len(wrong)} readings were wrong")
        + ("; every verdict was the expected one" if not wrong_service else
           f"; {wrong_service} verdicts were not the expected ones"))
    return 0 if not wrong and not wrong_service else 1


def _service_journey(say, data_dir: Path, region: str, rng, table, plain) -> int:
    """Start ``lanecore serve`` and run a handheld and an exit lane through the client
    library. Returns how many verdicts were not the expected ones."""
    import subprocess
    import sys

    import zmq

    from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate
    from lanecore.gateway.client import Client, ServiceError
    from lanecore.gateway.protocol import unpack

    data_dir = Path(data_dir).resolve()
    endpoint = f"ipc://{data_dir}/lanecore.ipc"
    events = f"ipc://{data_dir}/events.ipc"
    log = open(data_dir / "serve.log", "wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "serve", "--bind", endpoint,
                             "--events", events, "--data-dir", str(data_dir),
                             "--region", region], stdout=log, stderr=subprocess.STDOUT)
    wrong = 0
    try:
        client = Client(endpoint, client_id="demo-lane-controller", timeout_s=2.0, retries=15)
        hello = client.hello()
        say(f"5. The service: `lanecore serve` (pid {proc.pid}) answered hello in "
            f"{time.perf_counter() - t0:.1f} s on {endpoint}: {hello['server']}, protocol "
            f"{hello['protocol']}, {hello['store']['items']:,} items")
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"alarm")
        sub.connect(events)
        say()

        def code_of(row):
            g = f"{int(table.gtin[row]):014d}"
            return g[1:] if g[0] == "0" else g

        # --- a handheld basket ----------------------------------------------------
        rows = [int(r) for r in rng.choice(plain, 7, replace=False)]
        say("   Handheld HH-07 (scan as you shop):")
        basket = client.basket_open("HH-07")["basket"]
        bid = basket["basket_id"]
        for r in rows[:4]:
            item = client.scan("HH-07", code_of(r))["item"]
            extra = " | ".join(x for x in (item["origin"], item["promotion"]) if x)
            say(f"     scan {code_of(r):<14} {item['name'][:36]:<36} {_money(item['price_minor']):>7}"
                f"  {item['unit_weight_g']:>6,.0f} g  {extra[:40]}")
        client.basket_add(bid, [code_of(r) for r in rows[:4]])
        client.basket_add(bid, [{"code": code_of(rows[4]), "qty": 2}])
        say(f"     batch add: 2 x {code_of(rows[4])}; then a mis-scan is refused:")
        try:
            client.basket_add(bid, [code_of(rows[5]), code_of(rows[5])[:-1] + "0"])
        except ServiceError as exc:
            say(f"       {exc.code}: {exc.message}")
        basket = client.basket_remove(bid, [{"line_no": 2}])["basket"]
        say(f"     removed line 2; basket holds {basket['n_items']} items, "
            f"{_money(basket['total_minor'])} {basket['currency']}")
        order = client.basket_submit(bid)
        say(f"     submitted: order {order['order_no']}, {order['n_items']} items, "
            f"{_money(order['total_minor'])}; order QR ({len(order['qr'])} characters, signed "
            f"Ed25519): {order['qr'][:40]}...")
        paid = [r for line in order["lines"] for r in
                [next(x for x in rows if f"{int(table.gtin[x]):014d}" == line["gtin"])]
                * line["qty"]]
        say()

        # --- exit lane A: weigh-check on the conveyor --------------------------------
        lane = "EXIT-A"
        cfg = client.weigh_config(lane, fs_hz=1000, e_g=5, conveyor_hz=7.0)
        say(f"   Exit lane A: weigh-check at 1 kHz, e = 5 g, window "
            f"{cfg['window_samples']} samples, conveyor notch 7 Hz")
        seq = 0
        extra_row = int(rng.choice([x for x in plain if x not in rows]))
        cases = [("honest shopper", paid, "ok"),
                 ("an item left unscanned in the bag", paid + [extra_row], "over"),
                 ("a paid item left behind", paid[1:], "short")]
        for label, units, want in cases:
            true_g = sum(float(rng.normal(table.weight_mean_g[r], table.weight_sd_g[r]))
                         for r in units)
            x, _ = generate(TraceSpec(seconds=1.6, initial_g=0.0,
                                      placements=[Placement(0.3, true_g, 5.0, 0.3)],
                                      noise_g=1.0, conveyor_hz=7.0, conveyor_g=4.0,
                                      mains_g=1.0, seed=int(rng.integers(1 << 31))))
            settled = None
            t_frames = time.perf_counter()
            for i in range(0, len(x), 50):
                reply = client.weigh_frame(lane, seq, samples=x[i:i + 50])
                seq += 1
                for ev in reply["events"]:
                    if ev["event"] == "settled":
                        settled = ev        # the last one: the goods on the belt
            spent = time.perf_counter() - t_frames
            v = client.verify_order(lane, order_qr=order["qr"])
            say(f"   {label}: {len(x) // 50} frames in {spent:.2f} s; settled "
                f"{settled['weight_g']:,.1f} g (± {settled['sigma_g']:.1f}) -> "
                f"{v['verdict'].upper()} (expected {v['expected_g']:,.0f} ± {v['band_g']:.0f} g, "
                f"z = {v['z']})")
            for ex in v["explanations"][:2]:
                names = ", ".join(f"{ln['qty']} x {client.scan(lane, ln['gtin'])['item']['name']}"
                                  for ln in ex["lines"])
                say(f"      {ex['kind']}: {names}  (p = {ex['score']:.2f})")
            if v["verdict"] != "ok":
                say('      spoken: "Please check your bag: an item may be unscanned, wrongly '
                    'scanned or unpaid."')
                if sub.poll(1000):
                    topic, body = sub.recv_multipart()
                    ev = unpack(body)
                    say(f"      the attendants' screen got '{topic.decode()}' for order "
                        f"{ev['order_no']} at {ev['gate']}")
            if v["verdict"] != want:
                wrong += 1
            # the goods leave the belt before the next shopper's
            x0 = np.full(300, 0.0) + np.random.default_rng(seq).normal(0, 1.0, 300)
            for i in range(0, 300, 50):
                client.weigh_frame(lane, seq, samples=x0[i:i + 50])
                seq += 1
        stats = client.stats()
        say(f"   service: {sum(stats['requests'].values()):,} requests, "
            f"replays {stats['replays']}, errors {dict(stats['errors'])}")
        say()
        sub.close(0)
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return wrong


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
