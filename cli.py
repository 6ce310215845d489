"""The ``lanecore`` command.

Exit codes: 0 success; 1 the command ran but some input was bad (a scan that did not
parse, a CSV row that was skipped, a code not in the catalogue); 2 usage or
configuration error. Errors go to stderr as ``lanecore: CODE: message``.

Every lanecore process starts here, and the first thing :func:`main` does is set the
umask to 077: whatever a process creates (databases and their -wal/-shm, keys, logs,
directories) is its owner's alone (``docs/security.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import lanecore
from lanecore.core.errors import LanecoreError

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE = 0, 1, 2

#: What ``lanecore --help`` says first.
DESCRIPTION = """\
lanecore is the verification and settlement core of a supermarket checkout floor:
it parses barcode scans, keeps the store catalogue, weighs bags against what was
paid, and runs the store's processes - the verification service, the payment and
coupon gateways, lane controllers, tills - or a whole simulated store (demo)."""

#: What ``lanecore --help`` says last: examples, exit codes, environment variables.
EPILOG = """\
examples:
  lanecore demo --live                      a whole simulated store, watched live
  lanecore catalog gen --rows 100000 --out cat.csv
                                            a synthetic catalogue to try things on
  lanecore catalog import cat.csv           the catalogue into the store database
  lanecore scan parse --region GB 5901234123457
                                            parse a scan
  lanecore serve                            the verification service on port 5555
  lanecore COMMAND --help                   a command's own options and defaults

exit codes:
  0    success
  1    the command ran but some input was bad (a scan that did not parse, a CSV
       row skipped, a code not in the catalogue) or a check failed (demo, recon)
  2    usage or configuration error; stderr says "lanecore: CODE: message"
  130  interrupted (Ctrl-C)

environment:
  LANECORE_DATA_DIR        the store's data directory when --data-dir is not given
                           (else $XDG_DATA_HOME/lanecore, ~/.local/share/lanecore);
                           never used by demo
  LANECORE_PURE=1          run the pure-Python twins of the Cython kernels
  NUMBA_DISABLE_JIT=1      run the Numba kernels as plain Python (their twins)
  LANECORE_PAY_CRASH       tests only: crash the payment gateway at named points
  LANECORE_PAY_CRASH_SEED  tests only: the seed of those crashes
  LANECORE_COUPONS_CRASH   tests only: crash the coupon gateway at a named point
  LANECORE_HQ_CRASH        tests only: crash HQ (lanecore hq) at named points
  LANECORE_HQ_CRASH_SEED   tests only: the seed of those crashes
  LANECORE_LINK_CRASH      tests only: crash a store's link at named points
  LANECORE_LINK_CRASH_SEED  tests only: the seed of those crashes
  LANECORE_FRAME_COALESCE_US  serve: after a drain of 4 or more weigh.frame
                           requests, wait this long (default 500 µs) before the next,
                           so many lanes' frames run in larger batches; 0: never
  LANECORE_BENCH_JSON      make bench: where the benchmark figures are saved
  LANECORE_BENCH_PROFILE   make bench: also profile the 500-lane service
  LANECORE_CHROMIUM        tests only: the Chromium the browser tests drive
                           (default /usr/bin/chromium)
  LANECORE_SCREENSHOT_DIR  tests only: where the browser tests save screenshots
                           (make screenshots: docs/console/)
  TERM=dumb                plain progress lines instead of a progress bar

docs: README.md and docs/ in the source tree."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the default is None or
    False (nothing to show) or the help already says it ("default 26")."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS
                or "%(default)" in text
                or re.search(r"\bdefault:?\s+" + re.escape(str(default)), text)
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _TopHelpFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    """``lanecore --help``: the description and epilog as written (their lines and
    indentation are the layout), the options as every parser shows them."""


class _SubParsers(argparse._SubParsersAction):
    """A command's help line is also the description of its own ``--help``."""

    def add_parser(self, name, **kwargs):
        if isinstance(kwargs.get("help"), str) and kwargs["help"] != argparse.SUPPRESS:
            kwargs.setdefault("description", kwargs["help"])
        return super().add_parser(name, **kwargs)


class _Parser(argparse.ArgumentParser):
    """The parser of ``lanecore`` and of each of its commands: defaults shown in every
    help (:class:`_HelpFormatter`); sub-commands made with :class:`_SubParsers`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)


def _die(code: str, message: str) -> int:
    print(f"lanecore: {code}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _in_range(option: str, value, lo, hi, unit: str = "", *,
              code: str = "BAD_ARGUMENT") -> None:
    """``value`` of ``option`` within ``lo``–``hi`` (NaN is not), else ``code``
    (``BAD_ARGUMENT``) naming the option and the allowed range."""
    if value is None:
        return
    if not (lo <= value <= hi):
        raise LanecoreError(f"{option} must be {lo:,g}–{hi:,g}{unit}, got {value:g}",
                            code=code)


def _region_arg(value: str) -> str:
    if not (len(value) == 2 and value.isascii() and value.isalpha()):
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 3166 alpha-2 code")
    return value.upper()


def _store(args, *, create: bool = False):
    """Data directory and store configuration; registers store-defined regions."""
    from lanecore.core.config import load_config, resolve_data_dir
    data_dir = resolve_data_dir(getattr(args, "data_dir", None), create=create)
    config = load_config(data_dir)
    config.apply()
    return data_dir, config


def _region(args, config) -> str | None:
    """The region a command works in (``--region``, else the store's), checked once
    for every command: one whose in-store code rules the barcode parser knows (built
    in, or a table in ``lanecore.toml``), else ``UNKNOWN_REGION`` — as `catalog gen`."""
    region = getattr(args, "region", None) or config.region
    if region is not None:
        from lanecore.ext import barcode
        known = sorted(barcode.regions())
        if region.upper() not in known:
            raise LanecoreError(f"region {region!r} has no in-store code rules; "
                                f"known: {', '.join(known)}", code="UNKNOWN_REGION")
    return region


# ----------------------------------------------------------------------------------
# scan parse
# ----------------------------------------------------------------------------------

def _file_lines(path: str):
    """Lines of a file split on newlines only (GS and CR stay inside a code)."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        pending = None
        for raw in stream:
            if pending is not None:
                yield pending
            pending = raw[:-1] if raw.endswith(b"\n") else raw
            pending = pending.decode("utf-8", "surrogateescape")
        if pending is not None and pending != "":
            yield pending
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _human(row: dict) -> str:
    if not row["ok"]:
        e = row["error"]
        return f"ERR  {row['input']!r}: {e['code']}: {e['message']}"
    parts = [f"OK   {row['kind']:<5}"]
    if row["gtin"]:
        parts.append(f"gtin {row['gtin']}")
    if row["lookup_gtin"] and row["lookup_gtin"] != row["gtin"]:
        parts.append(f"lookup {row['lookup_gtin']}")
    for key in ("price_minor", "weight_g", "count"):
        if row[key] is not None:
            parts.append(f"{key} {row[key]}")
    if row["ais"]:
        parts.append(" ".join(f"({k}){v}" for k, v in row["ais"].items()))
    if row["kind"] == "text":
        parts.append(repr(row["input"]))
    return "  ".join(parts)


def cmd_scan_parse(args) -> int:
    _data_dir, config = _store(args)
    region = _region(args, config)
    inputs = list(args.codes)
    sources = [iter(inputs)]
    if args.file:
        sources.append(_file_lines(args.file))
    if not args.codes and not args.file:
        return _die("USAGE", "give codes as arguments or --file F (- for stdin)")
    all_ok = True
    out = sys.stdout
    parse = lanecore.parse_scan
    try:
        for source in sources:
            for code in source:
                row = parse(code, region).to_dict()
                all_ok &= row["ok"]
                out.write((json.dumps(row) if args.json else _human(row)) + "\n")
    except BrokenPipeError:
        raise
    except OSError as exc:
        return _die("CANNOT_READ", f"{args.file}: {exc.strerror}")
    return EXIT_OK if all_ok else EXIT_BAD_INPUT


# ----------------------------------------------------------------------------------
# catalog gen / import / lookup
# ----------------------------------------------------------------------------------

def cmd_catalog_gen(args) -> int:
    from lanecore.core.scan.synth import write_catalog_csv
    from lanecore.gateway.tui import RowProgress
    if args.rows < 1:
        return _die("USAGE", "--rows must be at least 1")
    t0 = time.monotonic()
    with RowProgress(f"writing {args.out}") as progress:      # on stderr
        n = write_catalog_csv(args.out, args.rows, seed=args.seed, region=args.region,
                              progress=lambda done, total: progress(done, done, total))
    print(f"wrote {n:,} items to {args.out} in {time.monotonic() - t0:.1f} s",
          file=sys.stderr)
    return EXIT_OK


def cmd_catalog_import(args) -> int:
    from lanecore.core.scan.catalog import Catalog
    from lanecore.gateway.tui import RowProgress
    data_dir, _config = _store(args, create=True)
    with Catalog.open(data_dir) as cat:
        with RowProgress(f"importing {args.file}") as progress:    # on stderr
            report = cat.import_csv(args.file, progress=progress)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for line, code, message in report.errors:
            print(f"{args.file}:{line}: {code}: {message}", file=sys.stderr)
        if report.rows_bad > len(report.errors):
            print(f"... and {report.rows_bad - len(report.errors):,} more bad rows",
                  file=sys.stderr)
        summary = {
            "data_dir": str(data_dir),
            "rows_read": report.rows_read,
            "rows_imported": report.rows_imported,
            "rows_bad": report.rows_bad,
            "seconds": round(report.seconds, 2),
            "items_in_catalog": cat.count(),
        }
    print(json.dumps(summary) if args.json else
          f"imported {report.rows_imported:,} of {report.rows_read:,} rows "
          f"({report.rows_bad:,} bad) in {report.seconds:.1f} s; "
          f"the catalogue in {data_dir} now holds {summary['items_in_catalog']:,} items")
    return EXIT_OK if report.rows_bad == 0 else EXIT_BAD_INPUT


def cmd_catalog_lookup(args) -> int:
    from lanecore.core.scan.catalog import Catalog
    data_dir, config = _store(args)
    region = _region(args, config)
    all_found = True
    with Catalog.open(data_dir) as cat:
        for code in args.codes:
            res = cat.lookup_code(code, region)
            all_found &= res["found"]
            if args.json:
                print(json.dumps(res))
            elif res["found"]:
                item = res["item"]
                print(f"{code}: {item['gtin']} {item['name']} "
                      f"{_money(item['line_price_minor'])}")
            else:
                e = res["error"]
                print(f"{code}: {e['code']}: {e['message']}")
    return EXIT_OK if all_found else EXIT_BAD_INPUT


def _money(minor: int | None) -> str:
    if minor is None:
        return "-"
    return f"{minor // 100}.{minor % 100:02d}"


# ----------------------------------------------------------------------------------
# weigh replay / gen
# ----------------------------------------------------------------------------------

def _read_trace(path: str):
    """Samples from a trace file: one per line (the last field of a comma-separated
    line); a first line that is not a number is a header. 'nan'/'inf' are samples
    (the pipeline reports them as faults)."""
    import numpy as np

    from lanecore.core.errors import LanecoreError as Err
    values = []
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Err(f"{path}: {exc.strerror}", code="CANNOT_READ") from exc
    with stream:
        for lineno, line in enumerate(stream, 1):
            text = line.strip()
            if not text:
                continue
            field = text.rsplit(",", 1)[-1].strip()
            try:
                values.append(float(field))
            except ValueError:
                if lineno == 1:
                    continue   # a header
                raise Err(f"{path}:{lineno}: {field[:40]!r} is not a sample",
                          code="BAD_TRACE") from None
    if not values:
        raise Err(f"{path}: no samples", code="BAD_TRACE")
    return np.array(values)


def _lane_config(args):
    from lanecore.core.weigh.laneconfig import LaneConfig
    base = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                base = json.load(f)
        except (OSError, ValueError) as exc:
            raise LanecoreError(f"{args.config}: {exc}", code="BAD_WEIGH_CONFIG") from exc
        if not isinstance(base, dict):
            raise LanecoreError(f"{args.config}: not a JSON object", code="BAD_WEIGH_CONFIG")
    base["fs_hz"] = args.fs
    for name, value in (("e_g", args.e), ("counts_per_g", args.counts_per_g),
                        ("zero_counts", args.zero), ("max_g", args.max_g)):
        if value is not None:
            base[name] = value
    return LaneConfig.from_dict(base)


def cmd_weigh_replay(args) -> int:
    from lanecore.core.weigh.laneconfig import configure_lane
    from lanecore.ext.loadcell import LaneBank, warm_up
    config = _lane_config(args)
    samples = _read_trace(args.trace)
    warm_up()
    bank = LaneBank(1)
    configure_lane(bank, 0, config)
    frame = max(1, int(round(config.fs_hz / 20)))   # 50 ms frames, as a bridge sends
    faults = 0
    for i in range(0, len(samples), frame):
        for ev in bank.feed(0, samples[i:i + frame]):
            faults += ev["event"] == "fault"
            row = {"t": round(ev["t"], 6), "event": ev["event"],
                   "weight_g": ev.get("weight_g"), "sigma_g": ev.get("sigma_g"),
                   **{k: v for k, v in ev.items()
                      if k not in ("t", "event", "weight_g", "sigma_g")}}
            if args.json:
                print(json.dumps(row))
            else:
                rest = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in row.items()
                                 if k not in ("t", "event") and v is not None)
                print(f"{row['t']:10.3f} s  {row['event']:<11} {rest}")
    return EXIT_OK if faults == 0 else EXIT_BAD_INPUT


def cmd_weigh_gen(args) -> int:
    import numpy as np

    from lanecore.drivers import loadcell_sim as sim
    _in_range("--items", args.items, 0, 1000)
    _in_range("--fs", args.fs, 1, 10_000, " Hz")
    _in_range("--seconds", args.seconds, 0.1, 3600, " s")
    _in_range("--e", args.e, 0.001, 1000, " g")
    for option, value in (("--noise-g", args.noise_g), ("--mains-g", args.mains_g),
                          ("--conveyor-g", args.conveyor_g), ("--spike-g", args.spike_g)):
        _in_range(option, value, 0, 100_000, " g")
    _in_range("--conveyor-hz", args.conveyor_hz, 0, args.fs / 2, " Hz")
    _in_range("--spikes-per-s", args.spikes_per_s, 0, args.fs)
    _in_range("--drift-g-per-s", args.drift_g_per_s, -1000, 1000, " g/s")
    _in_range("--counts-per-g", args.counts_per_g, 1e-6, 1e9)
    _in_range("--bits", args.bits, 8, 32)
    rng = np.random.default_rng(args.seed)
    spec = sim.random_spec(rng, fs_hz=args.fs, seconds=args.seconds, items=args.items,
                           noise_g=args.noise_g, settle_band_g=args.e)
    spec.mains_g = args.mains_g
    spec.conveyor_hz = args.conveyor_hz
    spec.conveyor_g = args.conveyor_g
    spec.spikes_per_s = args.spikes_per_s
    spec.spike_g = args.spike_g
    spec.drift_g_per_s = args.drift_g_per_s
    x, truth = sim.generate(spec)
    column = "weight_g"
    if args.counts_per_g is not None:
        x = sim.to_counts(x, counts_per_g=args.counts_per_g, zero_counts=args.zero or 0.0,
                          bits=args.bits)
        column = "counts"
        truth["counts"] = {"counts_per_g": args.counts_per_g, "zero_counts": args.zero or 0.0,
                           "bits": args.bits}
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(column + "\n")
            f.write("\n".join(f"{v:.6f}" if column == "weight_g" else f"{v:.0f}" for v in x))
            f.write("\n")
        truth_path = args.truth or str(Path(args.out).with_suffix(".truth.json"))
        with open(truth_path, "w", encoding="utf-8") as f:
            json.dump(truth, f, indent=2)
    except OSError as exc:
        return _die("CANNOT_WRITE", f"{exc.filename}: {exc.strerror}")
    print(f"wrote {len(x):,} samples ({spec.seconds:.1f} s at {spec.fs_hz:g} Hz, "
          f"{len(spec.placements)} placements) to {args.out}; ground truth in {truth_path}",
          file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------

def cmd_verify(args) -> int:
    from lanecore.core.weigh.verify import VerifyPolicy, load_order, verify
    data_dir, config = _store(args)
    order = load_order(args.order)
    fields = {name: value for name, value in (
        ("k", args.k), ("e_g", args.e), ("mpe_table", args.mpe),
        ("scale_sd_g", args.scale_sd_g), ("floor_g", args.floor_g)) if value is not None}
    policy = VerifyPolicy(**fields)
    from lanecore.core.weigh.verify import CAPACITY_E
    _in_range("--measured-g", args.measured_g, -10 * policy.e_g, CAPACITY_E * policy.e_g,
              f" g (-10 e to the scale's capacity, 10000 e at e = {policy.e_g:g} g)",
              code="BAD_MEASUREMENT")
    table = None
    from lanecore.core.scan.catalog import database_path
    if database_path(data_dir).exists():
        from lanecore.core.scan.catalog import Catalog
        with Catalog.open(data_dir) as cat:
            table = cat.table()
    verdict = verify(order, args.measured_g, table, policy, region=_region(args, config))
    out = verdict.to_dict()
    if args.json:
        print(json.dumps(out))
        return EXIT_OK
    print(f"{out['verdict'].upper()}: measured {out['measured_g']} g, expected "
          f"{out['expected_g']} g ± {out['band_g']} g (z = {out['z']})")
    for ex in out["explanations"]:
        items = ", ".join(f"{line['qty']} x {line['gtin']}" for line in ex["lines"])
        print(f"  {ex['kind']:<8} {items}   p = {ex['score']}")
    return EXIT_OK


# ----------------------------------------------------------------------------------
# serve, worker, keys
# ----------------------------------------------------------------------------------

def cmd_serve(args) -> int:
    import zmq

    from lanecore.gateway.net import security as sec
    metrics_addr = _observability(args, "serve")
    if args.workers < 1:
        return _die("USAGE", f"--workers must be at least 1, got {args.workers}")
    for ep in (args.bind, args.events):
        if ep:
            sec.check_endpoint(ep)       # BAD_ADDRESS: before "not loopback"
    data_dir, config = _store(args, create=True)
    _region(args, config)            # UNKNOWN_REGION before anything is bound
    ctx = zmq.Context.instance()
    guard = None
    if args.curve:
        guard = sec.ServerSecurity(data_dir, ctx)
    else:
        sec.check_plain([args.bind, args.events], args.allow_plain)

    from lanecore.gateway.net.metrics import ready as announce_ready

    def ready():
        mode = "curve" if guard else "plain"
        announce_ready(f"lanecore serving on {args.bind} ({mode}), events on "
                       f"{args.events or '-'}, {args.workers} worker(s), data in {data_dir}",
                       process="serve", bind=args.bind, events=args.events or None,
                       mode=mode, workers=args.workers, data_dir=str(data_dir))
    try:
        if args.workers > 1:
            from lanecore.gateway.net.broker import Broker
            Broker(data_dir, workers=args.workers, region=args.region,
                   max_lanes=args.max_lanes, store_risk=args.store_risk).serve(
                args.bind, events=args.events, security=guard, ready=ready, ctx=ctx)
        else:
            from lanecore.gateway.service import Service
            svc = Service(data_dir, region=args.region, max_lanes=args.max_lanes,
                          store_risk=args.store_risk)
            try:
                if metrics_addr:
                    from lanecore.gateway.net import metrics
                    metrics.serve(svc, metrics_addr, process="serve")
                svc.serve(args.bind, events=args.events, security=guard, ready=ready, ctx=ctx)
            finally:
                svc.close()
    except zmq.ZMQError as exc:     # the binds themselves name their address
        return _die("CANNOT_BIND", f"{args.bind} or {args.events or '-'}: {exc}")
    finally:
        if guard is not None:
            guard.stop()
    return EXIT_OK


def cmd_worker(args) -> int:
    import logging

    from lanecore.gateway.service import Service
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    svc = Service(args.data_dir, region=args.region, max_lanes=args.max_lanes,
                  store_risk=args.store_risk)
    try:
        svc.serve_worker(args.connect, args.slot, events_connect=args.events_connect)
    finally:
        svc.close()
    return EXIT_OK


def cmd_keys_gen(args) -> int:
    from lanecore.gateway.net import security as sec
    from lanecore.core.config import resolve_data_dir
    from lanecore.gateway.net.identity import parse_roles
    metadata = None
    if args.server:
        from lanecore.core.config import writable_dir
        directory = writable_dir(sec.keys_dir(resolve_data_dir(args.data_dir)),
                                 what="key directory")
        name = sec.SERVER_NAME
    else:
        if not args.name:
            return _die("USAGE", "give --name NAME for a device key (or --server)")
        if not args.role:
            return _die("USAGE", "give --role ROLE[,ROLE] for a device key: every identity "
                                 "says what it may do (docs/security.md)")
        held = parse_roles(args.role)
        metadata = {"name": args.name, "roles": ",".join(sorted(held))}
        directory = Path(args.dir) if args.dir else Path(".")
        name = args.name
    public, secret = sec.generate(directory, name, metadata)
    out = {"public": str(public), "secret": str(secret)}
    if args.enrol and not args.server:
        devices = sec.keys_dir(resolve_data_dir(args.data_dir)) / "devices"
        from lanecore.core.config import write_private, writable_dir
        writable_dir(devices, what="key directory")
        if (devices / public.name).exists():
            return _die("KEY_EXISTS", f"{devices / public.name} is enrolled already: "
                                      "remove it first to replace it")
        write_private(devices / public.name, public.read_bytes())
        out["enrolled"] = str(devices / public.name)
    if metadata:
        out["roles"] = metadata["roles"].split(",")
    print(json.dumps(out))
    return EXIT_OK


def cmd_keys_list(args) -> int:
    """The identities a server's data directory enrols, with their roles."""
    from lanecore.core.config import resolve_data_dir
    from lanecore.gateway.net import security as sec
    from lanecore.gateway.net.keyring import KeyRing
    ring = KeyRing(sec.keys_dir(resolve_data_dir(args.data_dir)) / "devices")
    for principal in ring.principals():
        print(json.dumps({"id": principal.id, "roles": sorted(principal.roles)}))
    return EXIT_OK


# ----------------------------------------------------------------------------------
# info and demo
# ----------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from lanecore.ext import barcode, lookup
    data_dir, config = _store(args)
    info = {
        "version": lanecore.__version__,
        "kernels": {"barcode": barcode.IMPLEMENTATION, "lookup": lookup.IMPLEMENTATION},
        "data_dir": str(data_dir),
        "config": str(config.source) if config.source else None,
        "region": config.region,
        "regions": sorted(barcode.regions()),
    }
    print(json.dumps(info, indent=2))
    return EXIT_OK


def cmd_sim(args) -> int:
    """Run one simulated device on a pty until interrupted (or its script ends)."""
    import signal
    import threading

    if args.device == "provider":
        from lanecore.gateway.sim import provider as provider_sim
        return provider_sim.main(args.args)
    if args.device == "wallet":
        from lanecore.gateway.sim import wallet as wallet_sim
        return wallet_sim.main(args.args)
    from lanecore.drivers import sim

    mod = sim.module(args.device)
    sp = _Parser(prog=f"lanecore sim {args.device}", description=mod.HELP)
    sp.add_argument("--link", metavar="PATH",
                    help="the port's path: a symbolic link to the pty, kept across "
                         "unplug/replug (default: a new temporary path)")
    sp.add_argument("--script", metavar="STEPS",
                    help='timed actions, e.g. "0.5 weight 1500; 2 unplug; 3 replug", '
                         "or @FILE")
    sp.add_argument("--duration", type=float, metavar="S",
                    help="stop after S seconds (default: run until interrupted)")
    mod.add_arguments(sp)
    opts = sp.parse_args(args.args)
    steps = []
    if opts.script:
        text = opts.script
        if text.startswith("@"):
            text = Path(text[1:]).read_text(encoding="utf-8")
        try:
            steps = sim.parse_script(text)
        except sim.ScriptError as exc:
            return _die(exc.code, str(exc))
    device = mod.build(opts, opts.link)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    with device:
        print(json.dumps({"device": args.device, "path": device.path}), flush=True)
        runner = threading.Thread(target=sim.run_script, args=(device, steps),
                                  kwargs={"stop": stop}, daemon=True)
        runner.start()
        stop.wait(opts.duration)
    return EXIT_OK


def cmd_hq(args) -> int:
    """HQ of a chain: ingest into PostgreSQL, prices and promotions to the stores."""
    if getattr(args, "hq_command", None) == "books":
        return cmd_hq_books(args)
    from lanecore.gateway.chain import hq
    if not args.db or not args.nats:
        return _die("USAGE", "lanecore hq needs --db URL and --nats URL (or: lanecore hq "
                    "books --db URL)")
    _observability(args, "hq")
    if not args.db.startswith(("postgresql://", "postgres://")):
        return _die("BAD_DB_URL", f"--db is a postgresql://… URL, got {args.db[:40]!r}")
    if args.bind:
        refused = _open_or_curve(args, "HQ's ops authenticate", "HQ",
                                 "enrolled keys with the hq role")
        if refused is not None:
            return refused
    return hq.serve(args.db, args.nats, args.bind, args.data_dir, curve=args.curve)


def cmd_hq_books(args) -> int:
    """HQ's books: per store HQ's net and events, one day's reconciliation of every
    store's ledger against its providers' bills, clearing per manufacturer."""
    import datetime as dt

    from lanecore.gateway.chain import books, hq
    from lanecore.gateway.db.pg import redact
    if not args.db.startswith(("postgresql://", "postgres://")):
        return _die("BAD_DB_URL", f"--db is a postgresql://… URL, got {redact(args.db)[:60]!r}")
    day = args.date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    books.day_bounds(day)
    con = hq.connect(args.db)
    try:
        b = books.books(con, day)
    finally:
        con.close()
    if args.json:
        print(json.dumps(b, sort_keys=True))
    else:
        print(f"HQ database {redact(args.db)}")
        print(books.render(b))
    return EXIT_OK


def cmd_link(args) -> int:
    """A store's link to HQ over NATS JetStream."""
    from lanecore.core.config import load_config, resolve_data_dir
    from lanecore.gateway.chain import link
    _observability(args, "link")
    data_dir = resolve_data_dir(args.data_dir)
    chain = load_config(data_dir).chain          # [chain] in lanecore.toml
    store_id = args.store_id or chain.get("store_id")
    nats_url = args.nats or chain.get("nats")
    if not store_id or not nats_url:
        return _die("USAGE", "give the store's id and HQ's NATS server: --store-id and "
                    "--nats, or [chain] store_id and nats in lanecore.toml")
    from lanecore.gateway.payments.terminals import open_registry
    curve = _console_keys(args.coupons_key, args.coupons_client_key)
    # HQ's terminal changes go to the payment gateway's registry, opened as the
    # `lanecore terminal` commands open it (chain does not import the gateway)
    return link.main(store_id, data_dir, nats_url,
                     payments_dir=args.payments_dir or chain.get("payments_dir"),
                     coupons=args.coupons or chain.get("coupons"), coupons_curve=curve,
                     terminals=open_registry)


def cmd_till(args) -> int:
    """A till register on a customer QR display (seed 002); JSON commands on stdin."""
    from lanecore.gateway import till
    return till.main(args.till_args)


def cmd_gateway_coupons(args) -> int:
    """The coupon gateway until SIGTERM/SIGINT."""
    from lanecore.gateway import coupons
    metrics_addr = _observability(args, "coupons")
    refused = _open_or_curve(args, "the coupon gateway authenticates", "coupon gateway",
                             "enrolled keys with roles")
    if refused is not None:
        return refused
    return coupons.serve(args.data_dir, args.bind, curve=args.curve, metrics=metrics_addr,
                         db_url=args.db)


def cmd_gateway_payments(args) -> int:
    """The payment gateway until SIGTERM/SIGINT."""
    from lanecore.gateway.payments import gateway as payments
    from lanecore.gateway.net import security as sec
    metrics_addr = _observability(args, "payments")
    sec.check_endpoint(args.bind)        # BAD_ADDRESS: before "not loopback"
    if not args.curve:
        sec.check_plain([args.bind], args.allow_plain)
    if args.dev_open:
        if not sec.is_loopback(args.bind):
            return _die("PLAIN_NOT_ALLOWED", f"{args.bind} is not loopback: --dev-open "
                        "serves this machine only")
    return payments.serve(args.data_dir, args.bind, curve=args.curve, dev_open=args.dev_open,
                          metrics=metrics_addr)


def observability_opts(sp) -> None:
    """``--metrics ADDR``, ``--log-format`` and ``--json`` (gateway/net/metrics.py)."""
    sp.add_argument("--metrics", metavar="ADDR", default=None,
                    help="serve Prometheus metrics on HOST:PORT, loopback only (off by "
                         "default; docs/deploy.md lists them)")
    log_opts(sp)


def log_opts(sp) -> None:
    """``--log-format`` and ``--json`` (the ready line) of a long-running process."""
    sp.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="log lines as text or as one JSON object a line")
    sp.add_argument("--json", action="store_true",
                    help='when serving, also print one JSON line on stdout: {"ready": true, '
                         '"process": ..., "bind": ..., "pid": ...}')


def _observability(args, process: str):
    """Set up the logs (before anything logs) and check --metrics; the metrics address
    (or None) for the process to serve once its server exists."""
    from lanecore.gateway.net import metrics
    metrics.setup_logging(args.log_format, process)
    metrics.want_ready_json(getattr(args, "json", False))
    if args.metrics:
        metrics.check_address(args.metrics)      # PLAIN_NOT_ALLOWED before starting
    return args.metrics


def _open_or_curve(args, who: str, what: str, keys: str) -> int | None:
    """A server's ``--bind`` checked (BAD_ADDRESS before "not loopback") and its
    callers authenticated: ``--curve``, or ``--dev-open`` on loopback or ipc with a
    warning; else the exit status of AUTH_REQUIRED / PLAIN_NOT_ALLOWED."""
    from lanecore.gateway.net import security as sec
    sec.check_endpoint(args.bind)
    if args.curve:
        return None
    if not args.dev_open:
        return _die("AUTH_REQUIRED", f"{who} its callers: start it with --curve ({keys}, "
                    "docs/security.md), or with --dev-open on loopback or ipc for "
                    "development")
    if not sec.is_loopback(args.bind):
        return _die("PLAIN_NOT_ALLOWED", f"{args.bind} is not loopback: --dev-open serves "
                    "this machine only")
    _warn_dev_open(what)
    return None


def _warn_dev_open(what: str) -> None:
    from lanecore.gateway.net.metrics import announce
    announce(f"lanecore: WARNING: the {what} runs with --dev-open: every caller on this "
             "machine is the development principal, with every role (docs/security.md)",
             level="WARNING")


def _terminals(args):
    """The payment gateway's terminal registry (in its ledger database)."""
    from lanecore.core.config import resolve_data_dir, writable_dir
    from lanecore.gateway.payments.gateway import LEDGER_FILE
    from lanecore.gateway.payments.terminals import open_registry
    data_dir = writable_dir(resolve_data_dir(args.data_dir, create=True))
    # private (0600, -wal and -shm too: it holds the terminals' keys), WAL; the
    # console's /terminals page writes through the same function (docs/console.md)
    return open_registry(data_dir / LEDGER_FILE)


def cmd_terminal_add(args) -> int:
    """Register a POS terminal (or give it a new key) and print its key once."""
    from lanecore.gateway.payments.terminals import key_text
    con, reg = _terminals(args)
    try:
        methods = args.methods.split(",") if args.methods else None
        terminal, key = reg.register(args.id, admin=args.admin,
                                     max_payment_minor=args.max_payment_minor,
                                     max_day_minor=args.max_day_minor, methods=methods,
                                     rotate=args.rotate, roles=args.role)
    finally:
        con.close()
    return _print_key({**terminal.to_dict(), "key": key_text(key)}, args.key_file)


def cmd_terminal_list(args) -> int:
    con, reg = _terminals(args)
    try:
        for t in reg.list():
            print(json.dumps(t.to_dict()))
    finally:
        con.close()
    return EXIT_OK


def _print_key(out: dict, key_file: str | None) -> int:
    """Print a terminal with its key (once); with ``key_file`` also write the key
    there, 0600 under an O_EXCL temporary name renamed into place."""
    if key_file:
        from lanecore.core.config import write_private
        try:
            write_private(key_file, (out["key"] + "\n").encode("ascii"))
        except OSError as exc:
            return _die("BAD_KEY_FILE", f"cannot write {key_file}: {exc.strerror} "
                        "(the key is registered: give it a new one with "
                        "`lanecore terminal rotate`)")
        out["key_file"] = key_file
    print(json.dumps(out))
    return EXIT_OK


def cmd_terminal_rotate(args) -> int:
    """Give a terminal a new key (roles, limits and state kept); print it once."""
    from lanecore.gateway.payments.terminals import key_text
    con, reg = _terminals(args)
    try:
        terminal, key = reg.rotate_key(args.id)
    finally:
        con.close()
    return _print_key({**terminal.to_dict(), "key": key_text(key)}, args.key_file)


def cmd_terminal_limits(args) -> int:
    """Replace a terminal's limits (an option left out: no such limit)."""
    con, reg = _terminals(args)
    try:
        methods = args.methods.split(",") if args.methods else None
        print(json.dumps(reg.set_limits(args.id, max_payment_minor=args.max_payment_minor,
                                        max_day_minor=args.max_day_minor,
                                        methods=methods).to_dict()))
    finally:
        con.close()
    return EXIT_OK


def _terminal_state(args, enable: bool) -> int:
    """Disable (or enable again) a terminal and print it."""
    con, reg = _terminals(args)
    try:
        t = reg.enable(args.id) if enable else reg.disable(args.id)
        print(json.dumps(t.to_dict()))
    finally:
        con.close()
    return EXIT_OK


def cmd_terminal_disable(args) -> int:
    return _terminal_state(args, enable=False)


def cmd_terminal_enable(args) -> int:
    return _terminal_state(args, enable=True)


def cmd_recon(args) -> int:
    """Reconcile the ledger's charges of one day against the providers' bill files.
    Bills map to the ledger's channels by name, else by the provider their kind calls
    (``payments.toml`` beside the ledger: a ``bank-DATE.csv`` is the card channel's);
    a cash or stored-value channel's "bill" is the gateway's own record of the day in
    the ledger database (the drawer's, the member accounts')."""
    import csv
    import sqlite3

    from lanecore.core.pay import recon
    from lanecore.core.pay.ledger import day_rows
    from lanecore.gateway.payments.gateway import (bill_utc_offset, load_payments_config,
                                                   local_bill)
    date = recon.check_date(args.date)
    ledger_path = Path(args.ledger)
    if not ledger_path.is_file():
        return _die("NO_LEDGER", f"no ledger database at {args.ledger}")
    raw = load_payments_config(ledger_path.parent).get("channels", {})
    kinds = {name: t.get("kind") for name, t in raw.items()
             if isinstance(t, dict)} if isinstance(raw, dict) else {}
    bills, channels, files = [], [], []
    owner: dict[str, Path] = {}
    for folder in args.bills:
        if not Path(folder).is_dir():
            return _die("NO_BILL", f"no bill folder {folder}")
        for path in sorted(Path(folder).glob(f"*-{date}.csv")):
            channel = recon.bill_channel(path.name[:-len(f"-{date}.csv")], kinds)
            if channel in owner:
                return _die("DUPLICATE_BILL", f"two bills for channel {channel}: "
                            f"{owner[channel]} and {path}: give one")
            owner[channel] = path
            files.append(path)
            channels.append(channel)
            try:
                with open(path, newline="", encoding="utf-8") as fh:
                    bills.extend(recon.parse_bill(csv.DictReader(fh), channel))
            except OSError as exc:
                return _die("CANNOT_READ", f"{path}: {exc.strerror}")
    local = [name for name, kind in kinds.items()
             if kind in recon.LOCAL_KINDS and name not in owner]
    if not files and not local:
        return _die("NO_BILL", f"no bill file *-{date}.csv in {', '.join(args.bills)}")
    con = sqlite3.connect(f"file:{ledger_path.resolve()}?mode=ro", uri=True)
    try:
        ledger = day_rows(con, date)
        # a wallet over its own API bills China Standard Time days: its rows are those
        offsets = {name: bill_utc_offset(raw[name].get("protocol")) for name in channels
                   if name in raw and isinstance(raw[name], dict)}
        for off in set(offsets.values()) - {0}:
            ledger = [r for r in ledger if offsets.get(r["channel"], 0) != off] + [
                r for r in day_rows(con, date, off) if offsets.get(r["channel"], 0) == off]
        for name in local:          # the drawer's record is the cash channel's bill
            channels.append(name)
            url = raw[name].get("db") if kinds[name] == "stored_value" else None
            if url is None:
                bills.extend(local_bill(ledger, kinds[name], name, con))
                continue
            # the member accounts live in the chain's database (docs/pay/payments.md)
            from lanecore.gateway.db.pg import DbUnavailable, connect
            from lanecore.gateway.payments.gateway import CHAIN_LOCK
            try:
                chain = connect(url, lock_key=CHAIN_LOCK)
            except DbUnavailable as exc:
                return _die("DB_UNAVAILABLE", exc.message)
            try:
                bills.extend(local_bill(ledger, kinds[name], name, chain))
            finally:
                chain.close()
    except sqlite3.Error as exc:
        return _die("DB_ERROR", f"cannot read charges from {args.ledger}: {exc}")
    finally:
        con.close()
    report = recon.reconcile(ledger, bills, channels=channels)
    if args.out:
        try:
            with open(args.out, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=list(recon.Finding.__dataclass_fields__))
                w.writeheader()
                w.writerows(report.rows())
        except OSError as exc:
            return _die("CANNOT_WRITE", f"{args.out}: {exc.strerror}")
    sources = [p.name for p in files] + [f"{name} ({kinds[name]} records)" for name in local]
    if args.json:
        print(json.dumps({"date": date, "bills": [str(p) for p in files],
                          "local": local, **report.to_dict()}, indent=2))
    else:
        print(f"{date}: {len(ledger)} ledger charges, {len(bills)} bill lines from "
              f"{', '.join(sources)}")
        print(report.summary())
    return EXIT_OK if report.clean else EXIT_BAD_INPUT


def _port_exists(port: str) -> None:
    """A port given as a path (not ``loop://``, ``socket://``…) must exist: else
    ``PORT_NOT_FOUND`` naming it, not a scale that did not answer."""
    if "://" not in port and not os.path.exists(port):
        raise LanecoreError(f"no such port {port}", code="PORT_NOT_FOUND")


def cmd_device_probe(args) -> int:
    """Which scale protocol answers on a port."""
    from lanecore.drivers.scales import NO_SCALE, probe
    _port_exists(args.port)
    found = probe(args.port, timeout_s=args.timeout)
    if args.json:
        row = {"port": args.port, "protocol": found}
        if found is None:
            row["fault"] = NO_SCALE
        print(json.dumps(row))
    elif found is not None:
        print(found)
    if found is None:
        print(f"lanecore: {NO_SCALE}: no scale protocol answered on {args.port}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _device_row(event) -> dict:
    from lanecore.drivers.scales import ScaleReading, ScanReading
    if isinstance(event, ScaleReading):
        return {"weight_g": event.weight_g, "stable": event.stable,
                "status": list(event.status)}
    if isinstance(event, ScanReading):
        return {"scan": event.code, "symbology": event.symbology}
    return {"fault": event.code, "message": event.message}


def _device_human(row: dict) -> str:
    if "fault" in row:
        return f"FAULT {row['fault']}: {row['message']}"
    if "scan" in row:
        return f"SCAN  {row['scan']} ({row['symbology']})"
    weight = "-" if row["weight_g"] is None else f"{row['weight_g']:.1f} g"
    return f"{weight:>12}  {'stable' if row['stable'] else 'unstable':<8} " \
           f"{' '.join(row['status'])}".rstrip()


def cmd_device_read(args) -> int:
    """Poll a scale and print one row per reading, scan or fault."""
    import queue

    from lanecore.drivers.scales import ScaleDriver, ScaleReading
    if args.interval <= 0:
        return _die("USAGE", "--interval must be positive")
    if args.count is not None and args.count < 1:
        return _die("USAGE", "--count must be at least 1")
    events: queue.Queue = queue.Queue()
    driver = ScaleDriver(args.port, args.protocol, on_event=events.put,
                         timeout_s=args.timeout, unit=args.unit)
    rows = readings = 0

    def emit(event) -> bool:
        nonlocal rows, readings
        row = _device_row(event)
        print(json.dumps(row) if args.json else _device_human(row), flush=True)
        rows += 1
        readings += isinstance(event, ScaleReading)
        return args.count is not None and rows >= args.count

    try:
        next_at = time.monotonic()
        while True:
            answer = driver.read()
            fresh = []
            while True:
                try:
                    fresh.append(events.get_nowait())
                except queue.Empty:
                    break
            # a port that stays down answers every poll with the fault it reported
            # once: print it each time, so --count ends even on a dead port
            if not any(ev is answer for ev in fresh):
                fresh.append(answer)
            if any(emit(ev) for ev in fresh):
                break
            next_at = max(next_at + args.interval, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        driver.stop()
    return EXIT_OK if readings else EXIT_BAD_INPUT


def cmd_qr_mpm(args) -> int:
    """An EMVCo merchant-presented QR: the payload, and its symbol as PNG, SVG or
    terminal art (docs/pay/qr.md)."""
    from lanecore.core.pay import emvqr
    if not (args.gui or args.account or args.no_account):
        return _die("NO_ACCOUNT", "a payment QR without a merchant account pays nobody "
                    "(a wallet pays only a code with one): give --gui G --account A, or "
                    "--no-account for a sample")
    amount = None if args.amount_minor is None else emvqr.parse_minor_units(args.amount_minor)
    if amount is not None and amount < 1:
        return _die("EMV_AMOUNT", f"amount {amount} must be at least 1 minor unit")
    payload = emvqr.build_mpm(
        amount_minor=amount,
        currency=args.currency, country=args.country, merchant_name=args.merchant_name,
        city=args.city, bill=args.bill or "", terminal=args.terminal or "",
        gui=args.gui or "", account=args.account or "", account_tag=args.account_tag,
        mcc=args.mcc, name_local=args.name_local or "", city_local=args.city_local or "",
        language=args.language)
    out = {"payload": payload}
    target, image = None, None
    if args.png:
        target, image = args.png, emvqr.qr_png(payload, scale=args.scale)
        out["png"] = args.png
    elif args.svg:
        target, image = args.svg, emvqr.qr_svg(payload).encode("utf-8")
        out["svg"] = args.svg
    if target is not None:
        try:
            Path(target).write_bytes(image)
        except OSError as exc:
            return _die("CANNOT_WRITE", f"{target}: {exc.strerror}")
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    elif target is None:
        sys.stdout.write(emvqr.qr_text(payload, invert=args.invert))
        print(payload)
    else:
        print(payload)
    return EXIT_OK


def cmd_qr_decode_mpm(args) -> int:
    """Read an EMVCo merchant-presented payload: its objects, templates opened, and
    whether its CRC holds. Exit 1 when the payload is not good."""
    from lanecore.core.pay.emvqr import decode_mpm, field_lines
    text = args.payload
    if text == "-":
        text = sys.stdin.readline().rstrip("\r\n")
    report = decode_mpm(text)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        if "fields" in report:
            print("\n".join(field_lines(report["fields"])))
        if report["ok"]:
            amount = report["amount_minor"]
            print(f"CRC ok; currency {report['currency'] or '-'}; amount_minor "
                  f"{'-' if amount is None else amount}")
        else:
            err = report["error"]
            print(f"lanecore: {err['code']}: {err['message']}", file=sys.stderr)
    return EXIT_OK if report["ok"] else EXIT_BAD_INPUT


def cmd_lane_run(args) -> int:
    """Run one lane controller until interrupted (or --duration); one JSON line per
    record (docs/store/lanes.md)."""
    import signal
    import threading

    from lanecore.gateway.lane import LaneController, LaneSetup
    setup = LaneSetup.load(args.config)
    if args.service:
        setup.service = args.service
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    out_lock = threading.Lock()

    def emit(record: dict) -> None:
        with out_lock:
            print(json.dumps(record, ensure_ascii=False), flush=True)

    with LaneController(setup, on_record=emit) as lane:
        emit({"record": "started", "lane": setup.name, "role": setup.role,
              "service": setup.service,
              "devices": {name: setup.devices[name]["port"] for name in lane.drivers}})
        stop.wait(args.duration)
    return EXIT_OK


# ----------------------------------------------------------------------------------
# store: a store's processes, supervised (gateway/supervisor.py, docs/deploy.md)
# ----------------------------------------------------------------------------------

def _validate_command(name: str, command: list[str]) -> None:
    """A store file's process command must be one lanecore itself accepts: parsed by
    this very parser (nothing run), its addresses well-formed."""
    import contextlib
    import io

    from lanecore.gateway.net.security import check_endpoint
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = build_parser().parse_args(command)
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise LanecoreError(f"[process.{name}] command {command}: "
                            f"{msg[-1] if msg else 'not a lanecore command'}",
                            code="BAD_CONFIG") from None
    if getattr(parsed, "func", None) in (cmd_store_up, cmd_store_down, cmd_demo):
        raise LanecoreError(f"[process.{name}] command {command[0]!r} does not run under "
                            f"a store's supervisor", code="BAD_CONFIG")
    if getattr(parsed, "func", None) is cmd_console:
        try:
            _http_bind(parsed.http_bind)
        except LanecoreError as exc:
            raise LanecoreError(f"[process.{name}] {exc.message}", code="BAD_CONFIG") from None
    for opt in ("bind", "events"):
        value = getattr(parsed, opt, None)
        if value:
            try:
                check_endpoint(value)
            except LanecoreError as exc:
                raise LanecoreError(f"[process.{name}] --{opt}: {exc.message}",
                                    code="BAD_CONFIG") from None


def _store_file(args):
    from lanecore.gateway import supervisor
    store = supervisor.load(args.store_file, validate=_validate_command)
    binds: dict[str, str] = {}
    for spec in store.processes:            # two processes may not bind one address
        for flag in ("--bind", "--events"):
            if flag in spec.command:
                i = spec.command.index(flag) + 1
                addr = spec.command[i] if i < len(spec.command) else ""
                if spec.command[:1] == ["console"] and flag == "--events":
                    continue     # the console connects to the service's events
                if addr and addr in binds:
                    raise LanecoreError(f"{store.path}: {spec.name} and {binds[addr]} both "
                                        f"bind {addr}", code="BAD_CONFIG")
                binds[addr] = spec.name
    return store


def cmd_store_check(args) -> int:
    store = _store_file(args)
    order = " -> ".join(s.name for s in store.processes)
    if args.json:
        print(json.dumps({"ok": True, "store": store.name, "order": [
            s.name for s in store.processes], "dir": str(store.dir),
            "run_dir": str(store.run_dir), "log_dir": str(store.log_dir)}))
    else:
        print(f"{store.path}: ok: store {store.name!r}, {len(store.processes)} processes, "
              f"started in the order {order}; logs in {store.log_dir}")
    return EXIT_OK


def cmd_store_up(args) -> int:
    from lanecore.gateway import supervisor
    store = _store_file(args)
    sup = supervisor.Supervisor(store)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.request_stop())
    try:
        sup.start()
        pids = {n: c.proc.pid for n, c in sup.children.items()}
        print(f"store {store.name}: up: {', '.join(pids)} ready; `lanecore store down "
              f"{args.store_file}` stops it", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"ready": True, "store": store.name, "pid": os.getpid(),
                              "processes": pids}), flush=True)
        sup.watch()
    finally:
        sup.stop()
    return EXIT_OK


def cmd_store_status(args) -> int:
    from lanecore.gateway import supervisor
    st = supervisor.status(_store_file(args))
    if args.json:
        print(json.dumps(st))
    else:
        head = f"store {st['store']}: " + (f"running (supervisor pid {st['supervisor']})"
                                            if st["running"] else "not running")
        print(head)
        for name, p in st["processes"].items():
            print(f"  {name:<16} {p['state']:<9} pid {p['pid'] or '-':<8} restarts "
                  f"{p['restarts']}" + (f", last exit {p['last_exit']}"
                                        if p["last_exit"] is not None else ""))
    if not st["running"]:
        return 3
    return EXIT_OK if all(p["state"] == "ready" and p["alive"]
                          for p in st["processes"].values()) else EXIT_BAD_INPUT


def cmd_store_down(args) -> int:
    from lanecore.gateway import supervisor
    store = _store_file(args)
    out = supervisor.down(store, timeout_s=args.timeout)
    if out["left"]:
        return _die("STORE_NOT_STOPPED", f"processes {out['left']} are still running")
    print(f"store {store.name}: " + ("stopped" if out["was_running"] else "was not running"),
          file=sys.stderr)
    return EXIT_OK


def _console_keys(server_key, client_key):
    """CurveKeys from a server's public key file and the console's secret key file
    (both or neither)."""
    if not server_key and not client_key:
        return None
    if not (server_key and client_key):
        raise LanecoreError("give both the server's public key and the console's "
                            "secret key file", code="USAGE")
    from lanecore.gateway.net.client import CurveKeys
    for path in (server_key, client_key):
        if not Path(path).is_file():
            raise LanecoreError(f"{path}: no such key file", code="BAD_KEY")
    return CurveKeys.from_files(server_key, client_key)


def _http_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` of the console's HTTP socket (loopback unless --allow-remote)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LanecoreError(f"--bind is HOST:PORT, got {value!r}", code="BAD_ADDRESS")
    return host, int(port)


def _console_terminals(ledger_db):
    """The console's /terminals: the payment gateway's registry in ``--ledger-db``
    (gateway/payments/terminals.py's ``open_registry``, as ``lanecore terminal``)."""
    if not ledger_db:
        return None
    import functools

    from lanecore.gateway.payments.terminals import open_registry
    return functools.partial(open_registry, ledger_db)


def cmd_console(args) -> int:
    if getattr(args, "console_command", None) == "user":
        return cmd_console_user_add(args)
    from lanecore.core.config import resolve_data_dir
    from lanecore.gateway.net import metrics
    from lanecore.gateway.net.security import check_endpoint, is_loopback
    metrics.setup_logging(args.log_format, "console")
    metrics.want_ready_json(args.json)
    host, port = _http_bind(args.http_bind)
    if not args.allow_remote and not is_loopback(f"tcp://{host}:{port or 1}"):
        raise LanecoreError(f"{args.http_bind} is not loopback: the console serves plain "
                            "HTTP; put it behind a TLS proxy and give --allow-remote",
                            code="PLAIN_NOT_ALLOWED")
    for ep in (args.service, args.events, args.coupons):
        if ep:
            check_endpoint(ep)
    server_key, client_key = args.service_key, args.client_key
    if args.keys:
        server_key = server_key or str(Path(args.keys) / "server.key")
        client_key = client_key or str(Path(args.keys) / "console.key_secret")
    curve = _console_keys(server_key, client_key)
    coupons_curve = _console_keys(args.coupons_key, args.coupons_client_key)
    data_dir = resolve_data_dir(args.data_dir)
    hq_views = None
    if args.hq:
        from lanecore.gateway.db.pg import redact
        if not args.hq.startswith(("postgresql://", "postgres://")):
            return _die("BAD_DB_URL", f"--hq is HQ's postgresql://… URL, got "
                        f"{redact(args.hq)[:60]!r}")
        from lanecore.gateway.console.hqviews import HQAnalytics
        hq_views = HQAnalytics(args.hq)
    from lanecore.gateway.console.app import create_app, serve
    bound: dict = {}

    def on_bound(h, p):
        bound.update(host=h, port=p)

    def ready():
        where = f"{bound['host']}:{bound['port']}"
        url = f"http://{where}/"
        metrics.ready(f"lanecore console serving on {url} (service {args.service or '-'}, "
                      f"events {args.events or '-'}), data in {data_dir}",
                      process="console", bind=where, url=url, data_dir=str(data_dir))
    app = create_app(data_dir, service=args.service, events=args.events, curve=curve,
                     coupons=args.coupons, coupons_curve=coupons_curve,
                     store_db=args.store_db,
                     ledger_db=args.ledger_db, coupons_db=args.coupons_db,
                     terminals=_console_terminals(args.ledger_db),
                     secure_cookies=args.secure_cookies, ready=ready, hq=hq_views)
    try:
        serve(app, host, port, on_bound=on_bound)
    except OSError as exc:
        return _die("CANNOT_BIND", f"{args.http_bind}: {exc.strerror or exc}")
    return EXIT_OK


def cmd_console_user_add(args) -> int:
    from lanecore.core.config import resolve_data_dir
    from lanecore.gateway.console import auth
    auth.check_name(args.name)
    auth.check_role(args.role)
    password = auth.read_password_file(args.password_file)
    db = auth.StaffDB(auth.database_path(resolve_data_dir(args.data_dir)))
    try:
        user = db.add_user(args.name, args.role, password)
        db.record("-", "cli", "staff.add", target=args.name, detail=args.role)
    finally:
        db.close()
    if args.json:
        print(json.dumps({"ok": True, **user}))
    else:
        print(f"console user {user['name']} added with role {user['role']}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    from lanecore.demo import run_demo
    # Never $LANECORE_DATA_DIR: the demo empties its directory, and that one is the
    # real store's (docs/store/demo.md, "Its directory").
    data_dir = Path(args.data_dir) if args.data_dir else Path(".demo")
    _in_range("--shoppers", args.shoppers, 1, 100_000)
    _in_range("--concurrency", args.concurrency, 1, 256)
    _in_range("--rows", args.rows, 500, 1_000_000)
    if args.stores is not None:
        from lanecore.demo import run_chain_demo
        _in_range("--stores", args.stores, 1, 20)
        _in_range("--cut-s", args.cut_s, 0.0, 3600.0)
        if args.console or args.live:
            return _die("BAD_ARGUMENT", "--stores runs without --console and --live")
        return run_chain_demo(data_dir, stores=args.stores, shoppers=args.shoppers,
                              seed=args.seed, rows=args.rows, concurrency=args.concurrency,
                              cut_s=args.cut_s, as_json=args.json)
    return run_demo(data_dir, shoppers=args.shoppers, seed=args.seed, rows=args.rows,
                    concurrency=args.concurrency, live=args.live, as_json=args.json,
                    console=args.console_bind if args.console else None)


# ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lanecore", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=_TopHelpFormatter)
    p.add_argument("--version", action="version", version=f"lanecore {lanecore.__version__}")
    # metavar: the usage line names no command, so the hidden `worker` stays hidden
    sub = p.add_subparsers(dest="command", required=True, title="commands",
                           metavar="COMMAND")

    def data_dir_opt(sp):
        sp.add_argument("--data-dir", metavar="D",
                        help="store data directory (default: $LANECORE_DATA_DIR, "
                             "else ~/.local/share/lanecore)")

    scan = sub.add_parser("scan", help="barcode scans").add_subparsers(
        dest="scan_command", required=True)
    sp = scan.add_parser("parse", help="parse scans: one result per input line")
    sp.add_argument("codes", nargs="*", metavar="CODE",
                    help="scans as read: digits, GS1 element strings, AIM prefixes")
    sp.add_argument("--file", metavar="F", help="read scans from F, one per line (- = stdin)")
    sp.add_argument("--region", type=_region_arg, metavar="CC",
                    help="ISO 3166 alpha-2 code whose in-store code rules apply")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_scan_parse)

    cat = sub.add_parser("catalog", help="the store catalogue").add_subparsers(
        dest="catalog_command", required=True)
    sp = cat.add_parser("gen", help="write a realistic synthetic catalogue CSV")
    sp.add_argument("--rows", type=int, required=True, metavar="N", help="items to write")
    sp.add_argument("--out", required=True, metavar="FILE.csv", help="the CSV file to write")
    sp.add_argument("--seed", type=int, default=0,
                    help="random seed: the same seed, the same catalogue")
    sp.add_argument("--region", type=_region_arg, default="GB", metavar="CC",
                    help="whose in-store codes the variable-measure items use (GB, SE, DE)")
    sp.set_defaults(func=cmd_catalog_gen)
    sp = cat.add_parser("import", help="import a catalogue CSV into the store database")
    sp.add_argument("file", metavar="FILE",
                    help="the catalogue CSV (columns in docs/scan/catalog.md)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_catalog_import)
    sp = cat.add_parser("lookup", help="look codes up in the catalogue")
    sp.add_argument("codes", nargs="+", metavar="CODE", help="scans or GTINs to look up")
    sp.add_argument("--region", type=_region_arg, metavar="CC",
                    help="ISO 3166 alpha-2 code whose in-store code rules apply "
                         "(default: the store's, lanecore.toml)")
    sp.add_argument("--json", action="store_true", help="one JSON object per code")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_catalog_lookup)

    weigh = sub.add_parser("weigh", help="load-cell traces").add_subparsers(
        dest="weigh_command", required=True)
    sp = weigh.add_parser("replay", help="run a trace through a lane's signal path; "
                                        "one event per line")
    sp.add_argument("trace", metavar="TRACE.csv", help="one sample per line (- = stdin)")
    sp.add_argument("--fs", type=float, required=True, metavar="HZ", help="sample rate")
    sp.add_argument("--e", type=float, metavar="GRAMS", help="scale interval (default 5)")
    sp.add_argument("--max-g", type=float, metavar="GRAMS", help="capacity (default 30000)")
    sp.add_argument("--counts-per-g", type=float, metavar="C",
                    help="the trace holds raw ADC counts, C per gram")
    sp.add_argument("--zero", type=float, metavar="Z", help="raw counts at zero load")
    sp.add_argument("--config", metavar="LANE.json",
                    help="any other lane settings (fields of docs/weigh/weighing.md)")
    sp.add_argument("--json", action="store_true", help="one JSON object per event")
    sp.set_defaults(func=cmd_weigh_replay)
    sp = weigh.add_parser("gen", help="write a synthetic load-cell trace and its ground truth")
    sp.add_argument("--out", required=True, metavar="TRACE.csv",
                    help="the trace to write, one sample per line")
    sp.add_argument("--truth", metavar="TRUTH.json",
                    help="default: TRACE.truth.json next to the trace")
    sp.add_argument("--fs", type=float, default=1000.0, metavar="HZ", help="sample rate")
    sp.add_argument("--seconds", type=float, default=6.0, help="length of the trace")
    sp.add_argument("--items", type=int, default=3, help="placements")
    sp.add_argument("--e", type=float, default=5.0, metavar="GRAMS",
                    help="scale interval: the truth's settling band is 1 e")
    sp.add_argument("--noise-g", type=float, default=0.5,
                    help="white noise, standard deviation in grams")
    sp.add_argument("--mains-g", type=float, default=0.0,
                    help="50 Hz mains hum, amplitude in grams")
    sp.add_argument("--conveyor-hz", type=float, default=0.0,
                    help="conveyor vibration frequency (0: no conveyor)")
    sp.add_argument("--conveyor-g", type=float, default=0.0,
                    help="conveyor vibration, amplitude in grams")
    sp.add_argument("--spikes-per-s", type=float, default=0.0,
                    help="single-sample spikes (a knock, ESD) per second")
    sp.add_argument("--spike-g", type=float, default=0.0,
                    help="size of each spike in grams (random sign)")
    sp.add_argument("--drift-g-per-s", type=float, default=0.0,
                    help="slow zero drift (temperature), grams per second")
    sp.add_argument("--counts-per-g", type=float, metavar="C",
                    help="write raw ADC counts (C per gram) instead of grams")
    sp.add_argument("--zero", type=float, metavar="Z", help="raw counts at zero load")
    sp.add_argument("--bits", type=int, default=24, help="ADC resolution for counts")
    sp.add_argument("--seed", type=int, default=0,
                    help="random seed: the same seed, the same trace")
    sp.set_defaults(func=cmd_weigh_gen)

    sp = sub.add_parser("verify", help="judge a paid order against a measured weight")
    sp.add_argument("--order", required=True, metavar="ORDER.json",
                    help='{"lines": [{"gtin", "qty", "unit_weight_g"?, "weight_sd_g"?}], '
                         '"tare_g"?}; weights from the catalogue when omitted')
    sp.add_argument("--measured-g", type=float, required=True, metavar="W",
                    help="the settled weight of the bag, grams")
    sp.add_argument("--k", type=float, help="band width in standard deviations (3.29)")
    sp.add_argument("--e", type=float, metavar="GRAMS", help="scale interval (5)")
    sp.add_argument("--mpe", choices=["r51", "r76"], help="max permissible error table")
    sp.add_argument("--scale-sd-g", type=float, metavar="G", help="scale noise (½ e)")
    sp.add_argument("--floor-g", type=float, metavar="G", help="smallest band (2 e)")
    sp.add_argument("--region", type=_region_arg, metavar="CC",
                    help="ISO 3166 alpha-2 code whose in-store code rules apply "
                         "(default: the store's, lanecore.toml)")
    sp.add_argument("--json", action="store_true",
                    help="the verdict as one JSON object")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("serve", help="the verification service (ZeroMQ + MessagePack)")
    sp.add_argument("--bind", default="tcp://127.0.0.1:5555", metavar="ADDR",
                    help="ROUTER endpoint (tcp:// or ipc://)")
    sp.add_argument("--events", default="tcp://127.0.0.1:5556", metavar="ADDR",
                    help="PUB endpoint for settled/verdict/alarm/fault events ('' for none)")
    sp.add_argument("--workers", type=int, default=1, metavar="N",
                    help="worker processes behind a broker (1: one process)")
    sp.add_argument("--region", type=_region_arg, metavar="CC",
                    help="ISO 3166 alpha-2 code whose in-store code rules apply "
                         "(default: the store's, lanecore.toml)")
    sp.add_argument("--max-lanes", type=int, default=4096, metavar="N",
                    help="lanes the service keeps load-cell state for")
    sp.add_argument("--store-risk", choices=("low", "medium", "high"), default="medium",
                    help="the store's risk level for handheld audits: a trusted "
                         "shopper's order is checked 5 / 10 / 15%% of the time "
                         "(audit.decide, docs/store/handheld.md)")
    sp.add_argument("--curve", action="store_true",
                    help="CurveZMQ: server key and allowed devices from DATA_DIR/keys")
    sp.add_argument("--allow-plain", action="store_true",
                    help="allow plain TCP beyond loopback (not recommended)")
    observability_opts(sp)
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_serve)
    # Started by `serve --workers N`, not by people: no help= keeps it out of the
    # command list (help=SUPPRESS would list it as "==SUPPRESS==").
    sp = sub.add_parser("worker", description="one worker process behind the broker of "
                                              "`serve --workers N` (started by serve)")
    sp.add_argument("--connect", required=True, metavar="ADDR",
                    help="the broker's endpoint for workers")
    sp.add_argument("--slot", type=int, required=True, metavar="N",
                    help="this worker's number among the broker's workers")
    sp.add_argument("--events-connect", metavar="ADDR",
                    help="where to publish events (the broker's event proxy)")
    sp.add_argument("--region", type=_region_arg, metavar="CC",
                    help="ISO 3166 alpha-2 code whose in-store code rules apply")
    sp.add_argument("--max-lanes", type=int, default=4096, metavar="N",
                    help="lanes the worker keeps load-cell state for")
    sp.add_argument("--store-risk", choices=("low", "medium", "high"), default="medium",
                    help="the store's risk level for handheld audits")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_worker)
    keys = sub.add_parser("keys", help="CurveZMQ keys").add_subparsers(
        dest="keys_command", required=True)
    sp = keys.add_parser("gen", help="make a keypair: the service's (--server) or a device's")
    sp.add_argument("--server", action="store_true",
                    help="the service's keypair, into DATA_DIR/keys/")
    sp.add_argument("--name", help="a device's name (NAME.key, NAME.key_secret)")
    sp.add_argument("--dir", help="where a device keypair goes (default .)")
    sp.add_argument("--role", metavar="ROLE[,ROLE]",
                    help="what the device may do (handheld, lane, kiosk, till, pos, attendant, "
                         "manager, payments, coupons, hq, admin; docs/security.md)")
    sp.add_argument("--enrol", action="store_true",
                    help="also enrol its public key in DATA_DIR/keys/devices/")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_keys_gen)
    sp = keys.add_parser("list", help="the enrolled device keys and their roles (JSON lines)")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_keys_list)

    sp = sub.add_parser("info", help="version, kernels in use, data directory, regions")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("sim", help="a simulated lane device on a pty (prints its path)",
                        description="Simulated devices speaking their real protocols on a "
                                    "pseudo-terminal. `lanecore sim DEVICE --help` for "
                                    "each device's options.")
    from lanecore.drivers.sim import SIMULATORS
    sp.add_argument("device", choices=[*SIMULATORS, "provider", "wallet"],
                    help="the device to simulate")
    sp.add_argument("args", nargs=argparse.REMAINDER, help="the device's own options")
    sp.set_defaults(func=cmd_sim)

    gw = sub.add_parser("gateway", help="the payment and coupon gateway processes").add_subparsers(
        dest="gateway_command", required=True)
    sp = gw.add_parser("payments", help="the payment gateway: ZeroMQ ROUTER, ledger, "
                                        "channels (docs/pay/payments.md)")
    sp.add_argument("--bind", default="tcp://127.0.0.1:5560", metavar="ADDR",
                    help="ROUTER endpoint (default tcp://127.0.0.1:5560)")
    sp.add_argument("--curve", action="store_true",
                    help="CurveZMQ: encrypt and authenticate the transport (keys in the "
                         "data directory, as for serve)")
    sp.add_argument("--allow-plain", action="store_true",
                    help="allow plain TCP beyond loopback (not recommended: card data)")
    sp.add_argument("--dev-open", action="store_true",
                    help="development only, loopback or ipc: accept unauthenticated callers "
                         "(every one the development principal) when payments.toml's [pos] "
                         "auth is off")
    observability_opts(sp)
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_gateway_payments)

    sp = gw.add_parser("coupons", help="the coupon gateway: coupons, wallets, members, "
                                       "pricing, one-scan checkout (docs/promo/coupons-gateway.md)")
    sp.add_argument("--bind", default="tcp://127.0.0.1:5570", metavar="ADDR",
                    help="ROUTER endpoint (default tcp://127.0.0.1:5570)")
    sp.add_argument("--curve", action="store_true",
                    help="CurveZMQ: callers are enrolled keys with roles (keys in the data "
                         "directory, as for serve)")
    sp.add_argument("--dev-open", action="store_true",
                    help="development only, loopback or ipc: no authentication, every caller "
                         "the development principal")
    sp.add_argument("--allow-plain", action="store_true", help=argparse.SUPPRESS)
    sp.add_argument("--db", metavar="URL",
                    help="the chain's shared PostgreSQL database (postgresql://…; default "
                         "[db] url in coupons.toml, else the data directory's coupons.db; "
                         "docs/chain.md)")
    observability_opts(sp)
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_gateway_coupons)

    sp = sub.add_parser("hq", help="a chain's HQ: store events in, prices out (docs/chain.md)")
    sp.add_argument("--db", metavar="URL",
                    help="HQ's PostgreSQL database, postgresql://USER:PASS@HOST:PORT/DB "
                         "(required)")
    sp.add_argument("--nats", metavar="URL",
                    help="the NATS server with JetStream, nats://HOST:PORT (required)")
    sp.add_argument("--bind", metavar="ADDR", default=None,
                    help="ROUTER endpoint of HQ's ops (price.set, promotion.set, …); "
                         "none: ingest only")
    sp.add_argument("--curve", action="store_true",
                    help="CurveZMQ: callers are enrolled keys with roles (keys in the data "
                         "directory, as for serve)")
    sp.add_argument("--dev-open", action="store_true",
                    help="development only, loopback or ipc: no authentication, every caller "
                         "the development principal")
    log_opts(sp)
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_hq, metrics=None)
    hsub = sp.add_subparsers(dest="hq_command", required=False, metavar="books")
    bp = hsub.add_parser(
        "books", help="HQ's books: every store's net, one day's reconciliation, clearing",
        description="HQ's books from its PostgreSQL database: per store HQ's net and event "
                    "counts, one UTC day's reconciliation of every store's ledger against "
                    "the bills its payment gateway fetched (per store and channel), and "
                    "clearing per manufacturer across stores (docs/chain.md)")
    bp.add_argument("--db", required=True, metavar="URL",
                    help="HQ's PostgreSQL database, postgresql://USER:PASS@HOST:PORT/DB")
    bp.add_argument("--date", metavar="YYYY-MM-DD",
                    help="the UTC day to reconcile (default: today, UTC)")
    bp.add_argument("--json", action="store_true",
                    help="print the books as one JSON object")
    bp.set_defaults(func=cmd_hq)

    sp = sub.add_parser("link", help="a store's link to HQ over NATS (docs/chain.md)")
    sp.add_argument("--store-id", metavar="ID",
                    help="this store's id in the chain (1-32 of A-Z a-z 0-9 _ -; default: "
                         "[chain] store_id in lanecore.toml)")
    sp.add_argument("--nats", metavar="URL",
                    help="HQ's NATS server with JetStream, nats://HOST:PORT (default: "
                         "[chain] nats)")
    sp.add_argument("--payments-dir", metavar="D",
                    help="the payment gateway's data directory (payments.db), when it is "
                         "not the store's (default: [chain] payments_dir)")
    sp.add_argument("--coupons", metavar="ADDR",
                    help="the store's coupon gateway, to apply HQ's promotions (default: "
                         "[chain] coupons)")
    sp.add_argument("--coupons-key", metavar="F", help="the coupon gateway's public key file")
    sp.add_argument("--coupons-client-key", metavar="F",
                    help="the link's secret key file, enrolled at the coupon gateway with "
                         "the manager role")
    log_opts(sp)
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_link, metrics=None)

    sp = sub.add_parser("till", help="a till register on a customer QR display",
                        description="a till register on a customer QR display (seed 002): "
                                    "JSON commands on stdin (docs/store/till.md)",
                        add_help=False)
    sp.add_argument("till_args", nargs=argparse.REMAINDER,
                    help="--display PORT --store-db PATH --register NO [--payments ADDR]")
    sp.set_defaults(func=cmd_till)

    term = sub.add_parser("terminal", help="POS terminals of the payment gateway",
                          description="POS terminals of the payment gateway: keys and "
                                      "limits (docs/pay/payments.md)"
                          ).add_subparsers(dest="terminal_command", required=True)
    sp = term.add_parser("add", help="register a terminal and print its key (once)")
    sp.add_argument("id", help="the terminal id (1-32 letters, digits, . _ -)")
    sp.add_argument("--role", metavar="ROLE[,ROLE]",
                    help="what it may do: handheld, kiosk, till, pos (default), coupons, "
                         "attendant, manager, hq, admin (docs/security.md)")
    sp.add_argument("--admin", action="store_true",
                    help="shorthand for --role admin: every op, every terminal's charges")
    sp.add_argument("--max-payment-minor", type=int, metavar="N",
                    help="largest single payment, minor units")
    sp.add_argument("--max-day-minor", type=int, metavar="N",
                    help="most the terminal takes in a UTC day, minor units")
    sp.add_argument("--methods", metavar="M,M",
                    help="payment methods it may take (auth_code,card,cash,qr,stored_value)")
    sp.add_argument("--rotate", action="store_true",
                    help="the terminal exists: give it a new key and these limits")
    sp.add_argument("--key-file", metavar="PATH", help="also write the key here (mode 0600)")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_terminal_add)
    sp = term.add_parser("list", help="the registered terminals (JSON lines, no keys)")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_terminal_list)
    sp = term.add_parser("disable", help="refuse every request of a terminal from now on")
    sp.add_argument("id", help="the terminal id")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_terminal_disable)
    sp = term.add_parser("enable", help="accept a disabled terminal's requests again")
    sp.add_argument("id", help="the terminal id")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_terminal_enable)
    sp = term.add_parser("rotate", help="give a terminal a new key and print it (once); "
                                        "roles, limits and state are kept")
    sp.add_argument("id", help="the terminal id")
    sp.add_argument("--key-file", metavar="PATH", help="also write the key here (mode 0600)")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_terminal_rotate)
    sp = term.add_parser("limits", help="replace a terminal's limits (an option left out: "
                                        "no such limit)")
    sp.add_argument("id", help="the terminal id")
    sp.add_argument("--max-payment-minor", type=int, metavar="N",
                    help="largest single payment, minor units")
    sp.add_argument("--max-day-minor", type=int, metavar="N",
                    help="most the terminal takes in a UTC day, minor units")
    sp.add_argument("--methods", metavar="M,M",
                    help="payment methods it may take (auth_code,card,cash,qr,stored_value)")
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_terminal_limits)

    sp = sub.add_parser("recon", help="reconcile a day's ledger against the bill files",
                        description="reconcile a day's ledger against the providers' "
                                    "bill files (docs/pay/providers.md)")
    sp.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the day (UTC)")
    sp.add_argument("--ledger", required=True, metavar="PATH", help="the ledger database")
    sp.add_argument("--bills", required=True, metavar="DIR", action="append",
                    help="folder of bill files CHANNEL-YYYY-MM-DD.csv or "
                         "PROVIDER-YYYY-MM-DD.csv (bank: the card channel's); repeat "
                         "for several folders. Cash and stored value need none: their "
                         "record is in the ledger database")
    sp.add_argument("--out", metavar="CSV", help="write every finding to this CSV")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.set_defaults(func=cmd_recon)

    dev = sub.add_parser("device", help="real (or simulated) lane devices on serial ports"
                         ).add_subparsers(dest="device_command", required=True)
    from lanecore.drivers.scales import PROTOCOLS
    sp = dev.add_parser("probe", help="which scale protocol answers on PORT")
    sp.add_argument("port", metavar="PORT", help="device path, pty, loop:// or socket://")
    sp.add_argument("--timeout", type=float, default=0.3, metavar="S",
                    help="seconds to wait for each protocol's answer")
    sp.add_argument("--json", action="store_true", help="the answer as a JSON object")
    sp.set_defaults(func=cmd_device_probe)
    sp = dev.add_parser("read", help="poll a scale: one row per reading, scan or fault")
    sp.add_argument("port", metavar="PORT", help="device path, pty, loop:// or socket://")
    sp.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS),
                    help="the scale's protocol (device probe finds it)")
    sp.add_argument("--interval", type=float, default=0.2, metavar="S",
                    help="seconds between weight requests")
    sp.add_argument("--count", type=int, metavar="N",
                    help="stop after N rows (default: until interrupted)")
    sp.add_argument("--timeout", type=float, default=0.5, metavar="S",
                    help="seconds to wait for each answer")
    sp.add_argument("--unit", choices=["kg", "g", "lb"],
                    help="unit of the weights the scale sends (Toledo, SASI; default kg)")
    sp.add_argument("--json", action="store_true", help="one JSON object per row")
    sp.set_defaults(func=cmd_device_read)

    qr = sub.add_parser("qr", help="EMVCo merchant-presented payment QR codes (docs/pay/qr.md)"
                        ).add_subparsers(dest="qr_command", required=True)
    sp = qr.add_parser("mpm", help="make a merchant-presented QR: dynamic with an amount, "
                                   "static without")
    sp.add_argument("--amount-minor", metavar="N",
                    help="amount in minor units (fen, cents); omit for a static QR")
    sp.add_argument("--currency", required=True, metavar="NNN",
                    help="ISO 4217 numeric (156, 826, 978, 840, 764, 392, 752, ...) "
                         "or alphabetic code")
    sp.add_argument("--country", required=True, metavar="CC", help="ISO 3166 alpha-2")
    sp.add_argument("--merchant-name", required=True, metavar="X",
                    help="up to 25 printable ASCII characters")
    sp.add_argument("--city", required=True, metavar="Y",
                    help="up to 15 printable ASCII characters")
    sp.add_argument("--bill", metavar="B", help="bill number (tag 62 sub-tag 01)")
    sp.add_argument("--terminal", metavar="T", help="terminal label (tag 62 sub-tag 07)")
    sp.add_argument("--gui", metavar="G", help="merchant account: globally unique id "
                                               "(reverse domain name or AID)")
    sp.add_argument("--account", metavar="A", help="merchant account under --gui")
    sp.add_argument("--no-account", action="store_true",
                    help="no merchant account template: a sample no wallet pays "
                         "(else NO_ACCOUNT)")
    sp.add_argument("--account-tag", default="26", metavar="NN",
                    help="tag of the merchant account template, 26-51 (default 26)")
    sp.add_argument("--mcc", default="5411", metavar="NNNN",
                    help="merchant category code (default 5411, grocery)")
    sp.add_argument("--name-local", metavar="X",
                    help="merchant name in the local script (template 64)")
    sp.add_argument("--city-local", metavar="Y", help="city in the local script (template 64)")
    sp.add_argument("--language", default="ZH", metavar="LL",
                    help="ISO 639-1 language of template 64 (default ZH)")
    image = sp.add_mutually_exclusive_group()
    image.add_argument("--png", metavar="F", help="write the QR as a PNG file")
    image.add_argument("--svg", metavar="F", help="write the QR as an SVG file")
    sp.add_argument("--scale", type=int, default=8, metavar="PX",
                    help="PNG pixels per module (default 8)")
    sp.add_argument("--invert", action="store_true",
                    help="terminal art for a dark background")
    sp.add_argument("--json", action="store_true", help='print {"payload": ...} only')
    sp.set_defaults(func=cmd_qr_mpm)
    sp = qr.add_parser("decode-mpm", help="read a merchant-presented payload: fields, "
                                          "templates, CRC")
    sp.add_argument("payload", metavar="PAYLOAD", help="the payload text (- for stdin)")
    sp.add_argument("--json", action="store_true", help="the fields as one JSON object")
    sp.set_defaults(func=cmd_qr_decode_mpm)

    lane = sub.add_parser("lane", help="lane controllers: devices wired to the service") \
        .add_subparsers(dest="lane_command", required=True)
    sp = lane.add_parser("run", help="run a lane from its configuration (TOML); "
                                     "prints a JSON line per scan, verdict and device event")
    sp.add_argument("config", help="the lane's configuration file (docs/store/lanes.md)")
    sp.add_argument("--service", metavar="ADDR", help="the service's address "
                                                      "(overrides lane.service)")
    sp.add_argument("--duration", type=float, metavar="S",
                    help="stop after S seconds (default: run until interrupted)")
    sp.set_defaults(func=cmd_lane_run)

    store = sub.add_parser(
        "store", help="run a store's processes supervised (docs/deploy.md)",
        description="A store file (TOML) names the store's processes; `up` starts them in "
                    "order, waits for each to be ready, restarts any that exits (with "
                    "back-off) and stops them in reverse order on SIGTERM.").add_subparsers(
        dest="store_command", required=True)
    for name, func, text in (
            ("up", cmd_store_up, "start the store and supervise it until SIGTERM/SIGINT"),
            ("check", cmd_store_check, "check a store file without starting anything"),
            ("status", cmd_store_status, "the running store's processes (exit 0: all "
                                         "ready, 1: some not, 3: not running)"),
            ("down", cmd_store_down, "stop a store started by `store up`")):
        sp = store.add_parser(name, help=text, description=text)
        sp.add_argument("store_file", metavar="STORE.toml",
                        help="the store file (docs/examples/store.toml)")
        if name != "down":
            sp.add_argument("--json", action="store_true",
                            help="print JSON on stdout (for `up`: one ready line)")
        else:
            sp.add_argument("--timeout", type=float, default=60.0, metavar="S",
                            help="seconds to wait for the supervisor before killing "
                                 "(default: %(default)s)")
        sp.set_defaults(func=func)
    sp = sub.add_parser("console", help="the store's web console (docs/console.md)")
    sp.add_argument("--bind", dest="http_bind", default="127.0.0.1:8080", metavar="HOST:PORT",
                    help="where the console serves HTTP (port 0: a free one)")
    sp.add_argument("--service", metavar="ADDR",
                    help="the verification service's ROUTER endpoint (ops)")
    sp.add_argument("--events", metavar="ADDR",
                    help="the verification service's PUB endpoint (live lanes and alarms)")
    sp.add_argument("--keys", metavar="DIR",
                    help="CurveZMQ keys for the service: DIR/server.key and "
                         "DIR/console.key_secret")
    sp.add_argument("--service-key", metavar="F", help="the service's public key file")
    sp.add_argument("--client-key", metavar="F",
                    help="the console's secret key file (enrolled at the service)")
    sp.add_argument("--coupons", metavar="ADDR", help="the coupon gateway (members)")
    sp.add_argument("--coupons-key", metavar="F", help="the coupon gateway's public key file")
    sp.add_argument("--coupons-client-key", metavar="F",
                    help="the console's secret key file at the coupon gateway")
    sp.add_argument("--store-db", metavar="F", help="store.db, for analytics (read only)")
    sp.add_argument("--ledger-db", metavar="F",
                    help="payments.db: analytics (read only) and /terminals (the POS "
                         "terminal registry: its add, disable and limits write there)")
    sp.add_argument("--coupons-db", metavar="F", help="coupons.db, for analytics (read only)")
    sp.add_argument("--hq", metavar="URL",
                    help="HQ's PostgreSQL database (postgresql://…): the chain's analytics "
                         "across stores on /hq; without any store option the console shows "
                         "only /hq and /staff (docs/console.md)")
    sp.add_argument("--secure-cookies", action="store_true",
                    help="mark cookies Secure (behind an HTTPS proxy)")
    sp.add_argument("--allow-remote", action="store_true",
                    help="bind beyond loopback (only behind a TLS proxy)")
    log_opts(sp)
    data_dir_opt(sp)
    sp.set_defaults(func=cmd_console)
    csub = sp.add_subparsers(dest="console_command", required=False, metavar="user add")
    users = csub.add_parser("user", help="staff accounts").add_subparsers(
        dest="user_command", required=True)
    up = users.add_parser("add", help="add a staff account (attendant, manager or admin)")
    up.add_argument("name", metavar="NAME", help="the staff member's login name")
    up.add_argument("--role", required=True, metavar="ROLE",
                    help="attendant, manager or admin")
    up.add_argument("--password-file", required=True, metavar="F",
                    help="a file (mode 0600) whose first line is the password")
    up.add_argument("--json", action="store_true", help="print the account as JSON")
    data_dir_opt(up)
    up.set_defaults(func=cmd_console)
    sp = sub.add_parser("demo", help="a whole simulated store (lanecore's main job)",
                        description="a whole simulated store: lanecore's main job on "
                                    "embedded defaults (docs/store/demo.md)")
    sp.add_argument("--shoppers", type=int, default=60, help="shoppers (default 60)")
    sp.add_argument("--seed", type=int, default=7, help="the simulation's seed (default 7)")
    sp.add_argument("--live", action="store_true",
                    help="a live view while it runs: lanes, shoppers by journey, "
                         "payments, alarms (off a terminal: a summary line every 2 s)")
    sp.add_argument("--json", action="store_true",
                    help="the summary as one JSON object on stdout (the rest on stderr)")
    sp.add_argument("--rows", type=int, default=2000, help="catalogue size (default 2000)")
    sp.add_argument("--console", action="store_true",
                    help="also start the store's web console and print its URL and a "
                         "generated manager login (docs/console.md)")
    sp.add_argument("--console-bind", default="127.0.0.1:0", metavar="HOST:PORT",
                    help="where the demo's console serves HTTP (port 0: a free one)")
    sp.add_argument("--concurrency", type=int, default=6,
                    help="shoppers in the store at once (default 6)")
    sp.add_argument("--stores", type=int, default=None, metavar="N",
                    help="a chain: HQ (PostgreSQL, NATS JetStream, lanecore hq) and N "
                         "stores, one cut off from HQ and reconnected halfway; --shoppers "
                         "is per store (docs/chain.md)")
    sp.add_argument("--cut-s", type=float, default=10.0, metavar="S",
                    help="with --stores: how long the first store is cut off (default 10)")
    sp.add_argument("--data-dir", metavar="D",
                    help="where the demo store lives (default ./.demo, never "
                         "$LANECORE_DATA_DIR); emptied first only if a demo made it "
                         "(else DEMO_DIR_NOT_EMPTY, exit 2)")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``lanecore`` command: every lanecore process runs under umask 077 from its
    first line (restored on return, for callers that run it in-process)."""
    from lanecore.core.config import set_process_umask
    old_umask = set_process_umask()     # before anything is created: files 0600, dirs 0700
    try:
        return _main(argv)
    finally:
        os.umask(old_umask)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["till"]:            # its own options, --help included
        from lanecore.gateway import till
        return till.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LanecoreError as exc:
        return _die(exc.code, exc.message)
    except KeyboardInterrupt:
        print("lanecore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly. Point stdout at devnull
        # so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
