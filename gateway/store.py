"""A whole simulated store: what ``lanecore demo`` runs.

Real processes on ipc sockets in the data directory — the verification service
(``lanecore serve``), wallet and bank provider simulators, the payment gateway with
its POS terminals, the coupon gateway — and N shoppers walking through the
journeys of the seeds at once, each through the client library as a handheld, a
kiosk, a till or a POS terminal would:

* ``handheld`` (seed 000): take a handheld, scan and bag, sometimes void a line,
  log in as a member, submit (order number and signed order QR), pay on the
  handheld with a wallet code, maybe an audit (k of n rescanned), exit lane A;
* ``kiosk`` (seed 000, lane B): the same basket left unpaid, paid at the kiosk
  with cash (change from the drawer) or a card with its PIN, a printed receipt, then
  exit lane A;
* ``coupons`` (seed 001): a till scans the goods and the shopper's one QR (payment
  token and coupons): coupons deducted, the rest charged;
* ``pos`` (seed 004): a multi-channel POS terminal lists the eligible channels for
  the amount, the shopper picks one, the terminal charges and prints the receipt;
* ``till`` (seed 002): a register sends the payment data to its customer QR display
  over a serial line (a pty, the display simulator on the other end), the display
  shows the EMV QR it built, the shopper's phone reads and pays it, the result
  comes back and the register records the sale in the store database;
* ``unattended`` (seed 003): the shopper's phone at the door registers and logs in
  (scrypt passwords, lockout), binds a card token and sets a transaction password,
  adds goods by code or by name and quantity, settles with the password (a
  simulated biometric check above the venue's limit), gets the itemised list, and
  that signed list opens the exit gate once — a second try with it is refused;
* ``abandon``: a handheld carried out of the shopping area unpaid: it says goodbye
  and its basket is wiped.

Exit lane A weighs the bag on the moving conveyor (a synthetic load-cell trace fed
to the service frame by frame), asks for the verdict on the order QR, deactivates
the paid tags and lets the shopper through the EAS gate. Some shoppers steal (an
unscanned item in the bag, sometimes a tagged one) or err (a paid item left
behind); the summary reports what the lanes saw against what was injected, and the
books: every payment of the ledger against every trade of the providers.

The store starts from an empty directory, and empties only a directory a demo made:
:func:`prepare_demo_dir` writes the marker file ``.lanecore-demo`` into a directory
it creates (or finds empty), and refuses (``DEMO_DIR_NOT_EMPTY``, nothing touched) a
non-empty directory without it, the filesystem root, the home directory and the
store's real data directory — whoever runs it, root included.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lanecore.core.config import default_data_dir, private_dir, write_private
from lanecore.core.errors import LanecoreError
from lanecore.core.pay.ledger import payment_mismatch
from lanecore.core.sqltxn import private_database

from lanecore.gateway.net.client import Client, CurveKeys, ServiceError, TerminalKey

#: The file that says "a demo made this directory, the next demo may empty it".
DEMO_MARKER = ".lanecore-demo"
_MARKER_TEXT = (b"lanecore demo: a demo made this directory; the next `lanecore demo` "
                b"with this --data-dir empties it.\n")


class DemoDirError(LanecoreError):
    """The demo's directory is not one the demo may empty: nothing was touched."""

    code = "DEMO_DIR_NOT_EMPTY"


def _never_demo_dirs() -> list[tuple[Path, str]]:
    """The filesystem root, the home directory and the real data directory: never
    the demo's, and never a directory that holds one of them."""
    out = [(Path("/"), "the filesystem root")]
    for p, what in ((os.environ.get("HOME"), "the home directory"),
                    ("~", "the home directory"),
                    (os.environ.get("LANECORE_DATA_DIR"), "the store's data directory "
                                                          "($LANECORE_DATA_DIR)"),
                    (default_data_dir(), "the store's default data directory")):
        if p:
            try:
                out.append((Path(p).expanduser().resolve(), what))
            except (OSError, RuntimeError):
                pass
    return out


def prepare_demo_dir(path) -> Path:
    """``path`` (resolved) as an empty directory holding only the demo marker.

    Missing: created (mode 0700) with the marker. Empty: the marker written. Holding
    the marker (a regular file): everything else in it removed — a subdirectory with
    its contents, a symbolic link itself and never what it points to. Anything else —
    a non-empty directory without the marker, a file, ``/``, the home directory, the
    real data directory or a directory holding one of those — raises DemoDirError
    (``DEMO_DIR_NOT_EMPTY``) before anything is touched, whoever the user is."""
    path = Path(path).expanduser().resolve()
    for never, what in _never_demo_dirs():
        if path == never or never.is_relative_to(path):
            is_ = f"is {what}" if path == never else f"holds {what} {never}"
            raise DemoDirError(f"{path} {is_}: the demo never uses or empties it; give "
                               "--data-dir a new directory of its own")
    if not os.path.lexists(path):
        private_dir(path)
        write_private(path / DEMO_MARKER, _MARKER_TEXT)
        return path
    if not path.is_dir():
        raise DemoDirError(f"{path} is not a directory; the demo needs one of its own")
    entries = list(os.scandir(path))
    if not entries:
        write_private(path / DEMO_MARKER, _MARKER_TEXT)
        return path
    try:
        marked = os.lstat(path / DEMO_MARKER)
    except FileNotFoundError:
        marked = None
    if marked is None or not stat.S_ISREG(marked.st_mode):
        raise DemoDirError(f"{path} is not empty and no demo made it (no {DEMO_MARKER} "
                           f"in it): nothing was touched; give --data-dir a new or "
                           f"empty directory")
    for entry in entries:
        if entry.name == DEMO_MARKER:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    return path


#: Who the payment gateway knows: terminal → (limits, key file name).
#: Each with the roles it needs and no more (docs/security.md).
TERMINALS = {
    "HANDHELDS": {"methods": ["auth_code"], "roles": "handheld"},
    "KIOSK-B1": {"methods": ["cash", "card", "auth_code"], "roles": "kiosk"},
    "KIOSK-B2": {"methods": ["cash", "card", "auth_code"], "roles": "kiosk"},
    "POS-1": {"methods": ["card", "auth_code"], "max_payment_minor": 500_000,
              "roles": "pos"},
    "VENUE-1": {"methods": ["card"], "roles": "kiosk"},
    "COUPONS": {"methods": ["auth_code"], "roles": "coupons"},
    "HQ": {"roles": "hq"},
}
JOURNEYS = {"handheld": 0.32, "kiosk": 0.20, "coupons": 0.09, "pos": 0.11, "till": 0.10,
            "unattended": 0.10, "abandon": 0.08}
HANDHELDS = 40
EXIT_LANES = ("EXIT-A1", "EXIT-A2")
#: Exit lanes that see the items one at a time (per-item mode: verify.step for each
#: settled step, verify.clear when the belt is clear); the others weigh the bag whole.
PER_ITEM_LANES = ("EXIT-A2",)
#: Per-item lanes: the smallest step that is an item (the pipeline's noise below it).
MIN_ITEM_STEP_G = 5.0
KIOSKS = ("KIOSK-B1", "KIOSK-B2")
SPOKEN = {
    "ok": "Thank you for shopping with us. Goodbye!",
    "over": "Please wait: the bag weighs more than the order. An attendant is coming to "
            "help you check for an unscanned item.",
    "short": "Please wait: the bag weighs less than the order. Did you leave a paid item "
             "behind? An attendant is coming to help.",
    "eas": "Please wait: a security tag was not removed. An attendant is coming.",
}


@dataclass(frozen=True)
class StoreSpec:
    shoppers: int = 60
    seed: int = 7
    concurrency: int = 6
    rows: int = 2000
    region: str = "GB"
    theft_rate: float = 0.15          # shoppers who put an unscanned item in the bag
    mistake_rate: float = 0.08        # honest shoppers who leave a paid item behind
    store_risk: str = "medium"        # the audit policy's store risk
    #: the catalogue's seed (None: ``seed``); a chain's stores share one catalogue
    catalog_seed: int | None = None
    #: the store's id in its receipts, coupons and a chain's events
    store_id: str = "DEMO-01"
    journeys: dict = field(default_factory=lambda: dict(JOURNEYS))


class Latency:
    """Round-trip times of the verification service's requests (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ms: list[float] = []

    def add(self, ms: float) -> None:
        with self.lock:
            self.ms.append(ms)

    def summary(self) -> dict:
        with self.lock:
            x = np.array(self.ms or [math.nan])
        return {"p50": round(float(np.percentile(x, 50)), 3),
                "p99": round(float(np.percentile(x, 99)), 3), "n": len(self.ms)}


class TimedClient(Client):
    """A service client that times every request (for the summary's latency)."""

    def __init__(self, endpoint: str, latency: Latency, **kw):
        super().__init__(endpoint, **kw)
        self.latency = latency

    def call_with_id(self, req_id, op, **fields):
        t0 = time.perf_counter()
        try:
            return super().call_with_id(req_id, op, **fields)
        finally:
            self.latency.add((time.perf_counter() - t0) * 1000.0)


class Tally:
    """What happened, counted from many shopper threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: Counter = Counter()
        self.by_channel: dict[str, dict[str, int]] = {}
        self.events: list[dict] = []

    def add(self, **counts) -> None:
        with self.lock:
            self.c.update(counts)

    def payment(self, channel: str, amount_minor: int) -> None:
        with self.lock:
            row = self.by_channel.setdefault(channel, {"count": 0, "amount_minor": 0})
            row["count"] += 1
            row["amount_minor"] += amount_minor

    def event(self, **ev) -> None:
        with self.lock:
            self.events.append(ev)


def _money(minor: int) -> str:
    return f"{minor / 100:,.2f}"


class Store:
    """The processes, the shoppers and the books of one simulated store."""

    def __init__(self, data_dir, spec: StoreSpec = StoreSpec(), *, out=None,
                 live: bool = False, console: str | None = None) -> None:
        self.dir = Path(data_dir).resolve()
        self.spec = spec
        #: ``--console``: HOST:PORT the store's web console binds (None: no console)
        self.console = console
        self.console_url: str | None = None
        self.out = out or sys.stdout
        self.live = live
        #: The store's processes, run by the supervisor of `lanecore store up`
        #: (gateway/supervisor.py) from the store file this demo writes.
        self.supervisor = None
        self._watcher: threading.Thread | None = None
        self._progress = None          # start-up progress (a terminal only)
        self._steps_done = 0
        self.latency = Latency()
        self.tally = Tally()
        self.rng = random.Random(spec.seed)
        self.keys: dict[str, TerminalKey] = {}
        self.lane_locks = {lane: threading.Lock() for lane in EXIT_LANES}
        self.lane_seq = dict.fromkeys(EXIT_LANES, 0)
        self.kiosk_locks = {k: threading.Lock() for k in KIOSKS}
        self.order_counter = 0
        self._counter_lock = threading.Lock()
        #: called once half of the shoppers are through (None: not)
        self.halfway = None

    # ------------------------------------------------------------------------------
    # Setting up
    # ------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def ep(self, name: str) -> str:
        return f"ipc://{self.dir}/{name}.ipc"

    #: The long-running processes the demo starts with JSON logs and metrics on.
    OBSERVED = ("serve", "payments", "coupons")

    @property
    def metrics_ports(self) -> dict[str, int]:
        """Process name -> the loopback port its /metrics is served on (from its ready
        line: a restarted process names its new one)."""
        out = {}
        for name, child in (self.supervisor.children.items() if self.supervisor else ()):
            bound = child.ready_info.get("metrics")
            if name in self.OBSERVED and isinstance(bound, str):
                out[name] = int(bound.rsplit(":", 1)[1])
        return out

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen]]:
        """(name, process) of every supervised process, in start order (a restarted
        one: its current process)."""
        if self.supervisor is None:
            return []
        return [(n, c.proc) for n, c in self.supervisor.children.items()
                if c.proc is not None]

    def _process(self, name: str, *args: str, after=()) -> str:
        """One ``[process.NAME]`` table of the demo's store file."""
        if name in self.OBSERVED:      # one JSON object a log line; /metrics on loopback,
            # on a port the process picks and names in its ready line (metrics_ports)
            args = (*args, "--log-format", "json", "--metrics", "127.0.0.1:0")
        return (f"[process.{name}]\ncommand = {json.dumps(list(args))}\n"
                f"after = {json.dumps(list(after))}\n")

    def _supervise(self, tables: list[str]) -> None:
        """Write ``store.toml`` (what `lanecore store up` reads) and run it with the same
        supervisor: started in order, each ready before the next, restarted if it dies."""
        from lanecore.gateway import supervisor
        path = self.dir / "store.toml"
        path.write_text(
            "# The demo store's processes (`lanecore store up` reads this file; the demo\n"
            "# runs it with the same supervisor). docs/deploy.md\n"
            '[store]\nname = "demo"\ndir = "."\nrun_dir = "run"\nlog_dir = "."\n'
            "backoff_s = 0.2\nbackoff_max_s = 5\n\n" + "\n".join(tables),
            encoding="utf-8")
        self.supervisor = supervisor.Supervisor(supervisor.load(path),
                                                say=self._supervisor_says)
        self.supervisor.start()
        self._watcher = threading.Thread(target=self.supervisor.watch, name="supervisor",
                                         daemon=True)
        self._watcher.start()

    def _supervisor_says(self, text: str) -> None:
        """The supervisor's exits, restarts and stops, not its routine start lines (the
        demo sums those up itself)."""
        if " ready in " in text:
            self._step()
        if not any(w in text for w in (" started ", " ready in ", " stopping ", " stopped")):
            self.say(f"  {text}")

    def _wait_hello(self, name: str, endpoint: str, timeout_s: float = 60.0,
                    curve=None) -> dict:
        deadline = time.monotonic() + timeout_s
        child = self.supervisor.children[name]
        with Client(endpoint, timeout_s=1.0, retries=0, curve=curve) as c:
            while True:
                try:
                    return c.call("hello")
                except ServiceError:
                    if child.state not in ("starting", "ready", "backoff") or \
                            time.monotonic() > deadline:
                        raise LanecoreError(f"{name} did not start: see "
                                            f"{self.dir / (name + '.log')}",
                                            code="DEMO_START") from None

    #: Steps of start-up the progress bar counts: the catalogue written and imported,
    #: the identities, each of the six processes ready, the floor, the lanes.
    START_STEPS = 11

    def _step(self, n: int = 1) -> None:
        self._steps_done += n
        if self._progress is not None:
            self._progress(self._steps_done, self._steps_done,
                           self.START_STEPS + (self.console is not None))

    def start(self) -> None:
        """Everything a store floor needs, from an empty directory (a progress bar
        of its steps when the demo writes to a terminal)."""
        from lanecore.gateway.tui import RowProgress, is_terminal
        self._steps_done = 0
        self._progress = RowProgress("starting the store", stream=self.out, unit="steps",
                                     terminal=True) if is_terminal(self.out) else None
        if self._progress is None:
            return self._start()
        with self._progress:
            self._start()
        self._progress = None

    def _start(self) -> None:
        from lanecore.core.scan.catalog import Catalog
        from lanecore.core.scan.synth import write_catalog_csv
        t0 = time.perf_counter()
        self.dir = prepare_demo_dir(self.dir)       # refuses a directory not a demo's
        for sub in ("store", "pay", "coupons", "wallet"):
            private_dir(self.dir / sub)
        store = self.dir / "store"
        write_catalog_csv(store / "catalog.csv", self.spec.rows,
                          seed=self.spec.seed if self.spec.catalog_seed is None
                          else self.spec.catalog_seed,
                          region=self.spec.region)
        self._step()
        with Catalog.open(store) as cat:
            cat.import_csv(store / "catalog.csv")
            self.table = cat.table()
        self._step()
        con = sqlite3.connect(store / "store.db")
        by_gtin = dict(con.execute("SELECT gtin, name FROM items"))
        con.close()
        self.names = {r: by_gtin.get(f"{int(g):014d}", f"item {int(g)}")
                      for r, g in enumerate(self.table.gtin.tolist())}
        self._pick_goods()
        self._identities(store)
        self._step()
        # the verification service first: it has the most to load
        tables = [self._process("serve", "serve", "--bind", self.ep("service"), "--events",
                                self.ep("events"), "--data-dir", str(store), "--region",
                                self.spec.region, "--store-risk", self.spec.store_risk,
                                "--curve")]
        providers = {}
        # the provider links are CurveZMQ: the gateway's client key, enrolled at each
        # provider; each provider's keypair made now, its public key in payments.toml
        import zmq.auth

        from lanecore.gateway.net.security import generate
        client_pub, _ = generate(self.dir / "pay" / "keys", "provider_client",
                                 {"name": "payments"})
        for kind in ("wechat", "alipay", "bank"):
            d = private_dir(self.dir / f"prov-{kind}")
            keys = private_dir(d / "keys")
            write_private(private_dir(keys / "clients") / "payments.key",
                          client_pub.read_bytes())
            server_pub, _ = generate(keys, "server", {"name": "provider"})
            providers[kind] = (self.ep(f"prov-{kind}"), zmq.auth.load_certificate(
                str(server_pub))[0].decode("ascii"))
            tables.append(self._process(
                f"prov-{kind}", "sim", "provider", "--kind", kind, "--bind",
                self.ep(f"prov-{kind}"), "--data-dir", str(d), "--fast", "--curve"))
        self.provider_dirs = {k: self.dir / f"prov-{k}" for k in providers}
        self._payments_config(providers)
        tables.append(self._process(
            "payments", "gateway", "payments", "--bind", self.ep("payments"), "--data-dir",
            str(self.dir / "pay"), after=[f"prov-{k}" for k in providers]))
        self._coupons_config()
        tables.append(self._process(
            "coupons", "gateway", "coupons", "--bind", self.ep("coupons"), "--data-dir",
            str(self.dir / "coupons"), "--curve", after=["payments"]))
        if self.console is not None:
            tables.append(self._console_process(store))
        tables += self._extra_processes()
        self._supervise(tables)
        hello = self._wait_hello("serve", self.ep("service"),
                                 curve=self.curve[("service", "attendant")])
        self._wait_hello("payments", self.ep("payments"))
        self._wait_hello("coupons", self.ep("coupons"),
                         curve=self.curve[("coupons", "manager")])
        self.currency = hello["store"].get("currency", "GBP") if isinstance(
            hello.get("store"), dict) else "GBP"
        self._stock_coupons()
        self._open_floor()
        self._step()
        for lane in EXIT_LANES:                  # each lane controller configures its own
            with self.service(f"lane-{lane}") as c:
                c.weigh_config(lane, fs_hz=1000, e_g=5, conveyor_hz=7.0)
        self._step()
        if self._progress is not None:
            self._progress.finish()          # the bar ends before the report begins
        self.say(f"store up in {time.perf_counter() - t0:.1f} s: {len(self.table):,} items; "
                 f"processes {', '.join(n for n, _ in self.procs)}; data in {self.dir}")
        self.say(f"processes supervised from {self.dir / 'store.toml'} (`lanecore store up` "
                 f"runs the same file): a process that dies is restarted")
        n_ids = len(self.curve)
        self.say(f"every caller authenticated: {n_ids} CurveZMQ identities with roles at the "
                 f"service and the coupon gateway (events over CURVE), {len(self.keys)} "
                 f"HMAC terminals at the payment gateway, providers over CURVE")
        if self.console is not None:
            info = self.supervisor.children["console"].ready_info
            self.console_url = info.get("url")
            self.say(f"console: {self.console_url} - log in as manager, password in "
                     f"{self.dir / 'console-manager.password'} (`lanecore console user add` "
                     f"makes more staff; docs/console.md)")

    def _extra_processes(self) -> list[str]:
        """More ``[process.NAME]`` tables (a chain's store adds its link to HQ)."""
        return []

    @property
    def order_prefix(self) -> str:
        """Before every order number and customer id the demo makes: empty for one
        store; a chain's store puts its id there (they share one coupon book)."""
        return ""

    def _console_process(self, store: Path) -> str:
        """``--console``: the store's web console as one more supervised process (its
        own CurveZMQ identity ``console``, roles attendant and manager, at the service
        and the coupon gateway), and a manager login with a generated password in
        ``console-manager.password`` (0600)."""
        from lanecore.gateway.console import auth
        home = private_dir(self.dir / "console")
        password = auth.generated_password()
        write_private(self.dir / "console-manager.password", (password + "\n").encode())
        db = auth.StaffDB(auth.database_path(home))
        try:
            db.add_user("manager", "manager", password)
        finally:
            db.close()
        ids = self.dir / "identities"
        return self._process(
            "console", "console", "--bind", self.console, "--service", self.ep("service"),
            "--events", self.ep("events"), "--service-key", str(store / "keys" / "server.key"),
            "--client-key", str(ids / "service" / "console.key_secret"),
            "--coupons", self.ep("coupons"),
            "--coupons-key", str(self.dir / "coupons" / "keys" / "server.key"),
            "--coupons-client-key", str(ids / "coupons" / "console.key_secret"),
            "--store-db", str(store / "store.db"),
            "--ledger-db", str(self.dir / "pay" / "payments.db"),
            "--coupons-db", str(self.dir / "coupons" / "coupons.db"),
            "--data-dir", str(home), after=["serve", "coupons"])

    #: Who talks to the verification service and the coupon gateway, with what roles
    #: (docs/security.md): every caller an enrolled CurveZMQ identity.
    SERVICE_IDENTITIES = {"handheld": "handheld", "kiosk": "kiosk", "till": "till",
                          "pos": "pos", "attendant": "attendant"}
    COUPON_IDENTITIES = {"till": "till", "manager": "manager", "wallet": "hq"}

    def _identities(self, store: Path) -> None:
        """Server keypairs for the service and the coupon gateway, an identity with its
        roles for each kind of caller (a lane controller per exit lane), enrolled as
        `lanecore keys gen --name N --role R --enrol` does; and the service's trust in
        the payment gateway's receipt key (an order is marked paid by its receipt)."""
        import zmq.auth

        from lanecore.core.store.orderqr import Signer
        from lanecore.gateway.net.security import generate
        mine = private_dir(self.dir / "identities")
        self.curve: dict[tuple[str, str], CurveKeys] = {}
        wanted = {"service": {**self.SERVICE_IDENTITIES,
                              **{f"lane-{lane}": "lane" for lane in EXIT_LANES}},
                  "coupons": dict(self.COUPON_IDENTITIES)}
        if self.console is not None:        # the web console: its own identity
            for server in wanted:
                wanted[server]["console"] = "attendant,manager"
        homes = {"service": store, "coupons": self.dir / "coupons"}
        for server, names in wanted.items():
            keys = private_dir(homes[server] / "keys")
            server_public, _ = generate(keys, "server")
            devices = private_dir(keys / "devices")
            for name, roles in names.items():
                public, secret = generate(private_dir(mine / server), name,
                                          {"name": name, "roles": roles})
                write_private(devices / public.name, public.read_bytes())
                self.curve[(server, name)] = CurveKeys(
                    zmq.auth.load_certificate(str(server_public))[0],
                    *zmq.auth.load_certificate(str(secret)))
        receipts = Signer.load_or_create(self.dir / "pay")     # the gateway's receipt key
        write_private(store / "lanecore.toml", (
            f'[store]\nregion = "{self.spec.region}"\n'
            f'[payments]\nreceipt_keys = ["{receipts.public_key_b64()}"]\n').encode("utf-8"))

    def _open_floor(self) -> None:
        """The floor's own records: the handheld fleet, in ``floor.db`` (the audits
        and the shoppers' trust are the verification service's: ``audit.decide``,
        ``audit.record``); the tills' QR displays on ptys."""
        from lanecore.core.store.handheld import Handhelds
        from lanecore.drivers.sim.qrdisplay import QrDisplaySim

        from lanecore.gateway.till import Register
        self.floor_lock = threading.RLock()   # is_paid runs inside handheld calls
        private_database(self.dir / "floor.db")
        self.floor = sqlite3.connect(self.dir / "floor.db", isolation_level=None,
                                     check_same_thread=False, timeout=10.0)
        self.floor.execute("PRAGMA journal_mode=WAL")
        orders = sqlite3.connect(f"file:{self.dir / 'store' / 'store.db'}?mode=ro",
                                 uri=True, check_same_thread=False, timeout=10.0)

        def is_paid(basket_id: str) -> bool:
            with self.floor_lock:
                row = orders.execute("SELECT status FROM orders WHERE basket_id = ?",
                                     (basket_id,)).fetchone()
            return row is not None and row[0] in ("paid", "exited")
        self._orders_ro = orders
        self.handhelds = Handhelds(self.floor, is_paid=is_paid)
        for n in range(1, HANDHELDS + 1):
            self.handhelds.register(f"HH-{n:02d}")
        self.display = QrDisplaySim(store_name="LANECORE DEMO", city="LONDON", country="GB",
                                    auto_pay_s=0.05).start()
        self.till_lock = threading.Lock()
        self._open_venue()
        self._open_devices()
        self.register = Register(self.display.path, store_db_path=self.dir / "store",
                                 register_no="01").start()

    def _open_devices(self) -> None:
        """The lanes' and kiosks' serial devices, each a simulator on a pty with its
        real driver: per exit lane an EAS deactivator and an EAS gate, per kiosk a
        receipt printer."""
        import queue

        from lanecore.drivers.eas import EasDeactivator, EasGate, GateAlarm
        from lanecore.drivers.printer import PrinterDriver
        from lanecore.drivers.sim.eas import DeactivatorSim, GateSim
        from lanecore.drivers.sim.printer import PrinterSim
        self.sims, self.drivers = [], []
        self.deact, self.gate, self.gate_alarms, self.printer = {}, {}, {}, {}
        for n, lane in enumerate(EXIT_LANES):
            d_sim = DeactivatorSim().start()
            g_sim = GateSim(gate=lane, alarm_s=0).start()
            alarms: queue.Queue = queue.Queue()
            drv_d = EasDeactivator(d_sim.path)
            drv_g = EasGate(g_sim.path, on_event=lambda ev, q=alarms: q.put(ev)
                            if isinstance(ev, GateAlarm) else None)
            self.sims += [d_sim, g_sim]
            self.drivers += [drv_d.start(), drv_g.start()]
            self.deact[lane] = (d_sim, drv_d)
            self.gate[lane] = (g_sim, drv_g)
            self.gate_alarms[lane] = alarms
        for kiosk in KIOSKS:
            p_sim = PrinterSim().start()
            drv_p = PrinterDriver(p_sim.path)
            self.sims.append(p_sim)
            self.drivers.append(drv_p.start())
            self.printer[kiosk] = (p_sim, drv_p)

    def _open_venue(self) -> None:
        """Seed 003's venue: accounts, carts, settlements and exit passes in
        ``venue.db``, its key in ``venue/``, the catalogue the phone shops from."""
        from lanecore.core.store.orderqr import Signer
        from lanecore.core.store.unattended import SimulatedBiometricVerifier, Venue
        private_dir(self.dir / "venue")
        self.venue_signer = Signer.load_or_create(self.dir / "venue")
        private_database(self.dir / "venue.db")
        con = sqlite3.connect(self.dir / "venue.db", isolation_level=None,
                              check_same_thread=False, timeout=10.0)
        con.execute("PRAGMA journal_mode=WAL")
        t = self.table
        catalog = {self.gtin(r): {"name": self.names[r], "price_minor": int(t.price_minor[r])}
                   for r in self.goods}
        self.venue_lock = threading.RLock()
        self.venue = Venue(con, signer=self.venue_signer, catalog=catalog,
                           venue_id="DEMO-01", currency="GBP",
                           extra_verification_over_minor=3_000)
        self.biometrics = SimulatedBiometricVerifier()

    def _venue(self, fn, *args, **kw):
        with self.venue_lock:
            return fn(*args, **kw)

    def _floor(self, fn, *args, **kw):
        with self.floor_lock:
            return fn(*args, **kw)

    def _pick_goods(self) -> None:
        from lanecore.ext import lookup
        t = self.table
        ok = (np.isfinite(t.weight_mean_g) & np.isfinite(t.weight_sd_g)
              & (t.flags & (lookup.FLAG_WEIGHT_EXEMPT | lookup.FLAG_VARIABLE_MEASURE) == 0)
              & (t.weight_mean_g > 20) & (t.weight_mean_g < 2000) & (t.price_minor > 0))
        # by GTIN: the shoppers' draws do not depend on the lookup table's row order
        self.goods = sorted(map(int, np.flatnonzero(ok)), key=lambda r: int(t.gtin[r]))
        self.tagged = {r for r in self.goods if int(t.flags[r]) & lookup.FLAG_EAS_TAGGED}
        if not self.tagged:     # the generator tags some; make sure the demo has a few
            self.tagged = set(self.goods[::25])

    def gtin(self, row: int) -> str:
        return f"{int(self.table.gtin[row]):014d}"

    def _payments_config(self, providers: dict) -> None:
        from lanecore.core.pay.cash import Drawer
        from lanecore.gateway.payments.terminals import Terminals, key_text
        cur = "GBP"
        chan = {
            "wechat": {"kind": "wechat", "priority": 1, "methods": ["auth_code"],
                       "currency": cur, "max_payment_minor": 30_000,
                       "endpoint": providers["wechat"][0],
                       "server_key": providers["wechat"][1]},
            "alipay": {"kind": "alipay", "priority": 2, "methods": ["auth_code"],
                       "currency": cur, "endpoint": providers["alipay"][0],
                       "server_key": providers["alipay"][1]},
            "card": {"kind": "card", "priority": 3, "methods": ["card"], "currency": cur,
                     "endpoint": providers["bank"][0], "server_key": providers["bank"][1],
                     "pin_entries": ["chip", "magstripe"],
                     "cvm_limit_minor": 10_000},
            "cash": {"kind": "cash", "priority": 9, "methods": ["cash"], "currency": cur},
        }
        lines = []
        for name, t in chan.items():
            lines.append(f"[channels.{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in t.items()]
        lines += ["[policy]", "poll_every_s = 0.5", "give_up_after_s = 30",
                  "reverse_not_before_s = 1",
                  "[pos]", 'auth = "hmac"',
                  "[receipt]", 'store_name = "Lanecore Demo Market"',
                  f'store_id = "{self.spec.store_id}"',
                  f'sms_sink = "file:{self.dir / "sms.jsonl"}"',
                  # the 40 handhelds share one terminal key: their receipts, one limit
                  "sms_per_terminal_hour = 100000",
                  "[qr]", 'merchant_name = "LANECORE DEMO"', 'city = "LONDON"',
                  'country = "GB"', 'gui = "com.lanecore.pay"', 'account = "DEMO-01"']
        pay = self.dir / "pay"
        (pay / "payments.toml").write_text("\n".join(lines) + "\n")
        private_database(pay / "payments.db")      # the terminals' keys: 0600, -wal too
        con = sqlite3.connect(pay / "payments.db", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        reg = Terminals(con)
        for tid, limits in TERMINALS.items():
            _, key = reg.register(tid, **limits)
            self.keys[tid] = TerminalKey(tid, key)
            self.key_texts = getattr(self, "key_texts", {})
            self.key_texts[tid] = key_text(key)
        for kiosk in KIOSKS:
            Drawer(con, drawer_id=kiosk, currency=cur).float_in(
                {1: 100, 2: 100, 5: 60, 10: 60, 20: 60, 50: 40, 100: 40, 200: 30,
                 500: 20, 1000: 10},
                ref="opening-float")
        con.close()

    def _coupons_config(self) -> None:
        from lanecore.core.store.orderqr import Signer
        self.wallet = Signer.load_or_create(self.dir / "wallet")
        write_private(self.dir / "coupons" / "coupons.toml", (   # holds a terminal key
            f'store_id = "{self.spec.store_id}"\ncurrency = "GBP"\n'
            f'[payments]\nendpoint = "{self.ep("payments")}"\nterminal = "COUPONS"\n'
            f'key = "{self.key_texts["COUPONS"]}"\ntimeout_s = 10\n'
            f'[wallet_keys]\nw1 = "{self.wallet.public_key_b64()}"\n'
            # the store's catalogue prices the till's lines (never the till)
            f'[store]\ndata_dir = {json.dumps(str(self.dir / "store"))}\n').encode("utf-8"))

    def _stock_coupons(self) -> None:
        """Two manufacturers' coupons for popular goods, issued to the customers who
        take the coupon journey."""
        rng = random.Random(self.spec.seed + 5)
        self.coupon_goods = rng.sample(self.goods, 6)
        with self.coupons("manager", timeout_s=5, retries=2) as c:
            for issuer in ("ACME", "GLOBEX"):
                c.call("issuer.add", issuer_id=issuer, name=f"{issuer.title()} Foods")
            for i, row in enumerate(self.coupon_goods):
                price = int(self.table.price_minor[row])
                c.call("coupon.define", definition=dict(
                    coupon_def_id=f"CPN-DEF-{i}", issuer_id=("ACME", "GLOBEX")[i % 2],
                    target_gtin=self.gtin(row),
                    amount_off_minor=max(1, min(price // 4, 200)), currency="GBP",
                    valid_from=0, valid_until=int(time.time()) + 86_400))

    def stop(self) -> None:
        for obj in getattr(self, "drivers", []) + getattr(self, "sims", []):
            try:
                obj.stop()
            except Exception:
                pass
        for thing in ("register", "display"):
            obj = getattr(self, thing, None)
            if obj is not None:
                try:
                    obj.stop() if thing == "display" else obj.close()
                except Exception:
                    pass
        if self.supervisor is not None:
            self.supervisor.stop()           # the last started first
            if self._watcher is not None:
                self._watcher.join(5)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------
    # Shoppers
    # ------------------------------------------------------------------------------
    def service(self, identity: str = "handheld") -> TimedClient:
        """A client of the verification service as one of the store's identities."""
        return TimedClient(self.ep("service"), self.latency, timeout_s=5.0, retries=3,
                           curve=self.curve[("service", identity)])

    def coupons(self, identity: str, **kw) -> Client:
        """A client of the coupon gateway as one of the store's identities."""
        return Client(self.ep("coupons"), curve=self.curve[("coupons", identity)], **kw)

    def payments(self, terminal: str) -> Client:
        return Client(self.ep("payments"), timeout_s=10.0, retries=2,
                      terminal_key=self.keys[terminal])

    def _plan(self, i: int) -> dict:
        """Shopper ``i``'s journey, basket and intent, drawn from the seed."""
        rng = random.Random(self.spec.seed * 1000 + i)
        names = list(self.spec.journeys)
        journey = rng.choices(names, weights=[self.spec.journeys[n] for n in names])[0]
        n = rng.randint(2, 9)
        rows = rng.sample(self.goods, n)
        qty = {r: (2 if rng.random() < 0.15 else 1) for r in rows}
        theft = journey in ("handheld", "kiosk") and rng.random() < self.spec.theft_rate
        mistake = journey in ("handheld", "kiosk") and not theft and \
            rng.random() < self.spec.mistake_rate
        stolen = None
        if theft:
            pool = [r for r in self.goods if r not in rows]
            tagged_pool = [r for r in pool if r in self.tagged]
            stolen = rng.choice(tagged_pool) if tagged_pool and rng.random() < 0.3 \
                else rng.choice(pool)
        return {"i": i, "journey": journey, "rows": rows, "qty": qty, "theft": theft,
                "stolen": stolen, "mistake": mistake, "rng": rng,
                "member": rng.random() < 0.4, "void": rng.random() < 0.3}

    def run(self) -> dict:
        t0 = time.perf_counter()
        plans = [self._plan(i) for i in range(self.spec.shoppers)]
        stop_live = threading.Event()
        planned = Counter(p["journey"] for p in plans)
        live = threading.Thread(target=self._live, args=(stop_live, t0, planned),
                                daemon=True) if self.live else None
        if live:
            live.start()
        # ``halfway`` (a chain's store: cut its link to HQ) runs between the first
        # half of the shoppers and the second
        batches = [plans] if self.halfway is None else \
            [plans[:len(plans) // 2], plans[len(plans) // 2:]]
        try:
            with ThreadPoolExecutor(self.spec.concurrency) as pool:
                for k, batch in enumerate(batches):
                    if k:
                        self.halfway()
                    futures = [pool.submit(self._shopper, p) for p in batch]
                    for f in futures:
                        f.result()
        finally:
            stop_live.set()
            if live:
                live.join()
        return self._summary(time.perf_counter() - t0)

    def _live(self, stop: threading.Event, t0: float, planned: Counter) -> None:
        """``--live``: the store as it runs, until ``stop`` (gateway/tui.py: a rich live
        view on a terminal, else a plain summary line every few seconds)."""
        from lanecore.gateway.tui import watch_store
        watch_store(lambda: self.snapshot(t0, planned), stop, stream=self.out)

    def snapshot(self, t0: float, planned: Counter | None = None) -> dict:
        """What the live view shows, as a plain dict (its keys: gateway/tui.py): the
        exit lanes' last verdicts and counts, shoppers by journey, payments per
        channel, alarms and audits, from the tally so far (``t0``: when the shoppers
        started, ``planned``: shoppers per journey)."""
        with self.tally.lock:
            c = Counter(self.tally.c)
            by_channel = {ch: dict(v) for ch, v in self.tally.by_channel.items()}
            exits = [e for e in self.tally.events if "lane" in e]
        lanes = {lane: {"exits": 0, "ok": 0, "over": 0, "short": 0, "eas": 0,
                        "last": None, "last_order": None} for lane in EXIT_LANES}
        recent = []
        for e in exits:
            row = lanes.setdefault(e["lane"], {"exits": 0, "ok": 0, "over": 0,
                                               "short": 0, "eas": 0})
            row["exits"] += 1
            row[e["verdict"]] = row.get(e["verdict"], 0) + 1
            row["eas"] += int(bool(e.get("eas")))
            row["last"] = "eas" if e.get("eas") else e["verdict"]
            row["last_order"] = e.get("order_no")
            if e["verdict"] != "ok" or e.get("eas"):
                recent.append(f"{e['lane']} {e.get('order_no')} {row['last']}")
        planned = planned or Counter()
        names = sorted(set(planned) | {k[len("journey_"):] for k in c
                                       if k.startswith("journey_") and k != "journey_errors"})
        return {
            "seconds": round(time.perf_counter() - t0, 1),
            "shoppers": {"done": c["done"], "total": self.spec.shoppers},
            "lanes": lanes,
            "journeys": {n: {"done": c[f"journey_{n}"], "planned": planned[n]}
                         for n in names},
            "payments": by_channel,
            "counts": {k: c[k] for k in ("orders", "paid", "exited", "held",
                                         "payments_failed", "journey_errors")},
            "alarms": {"total": c["alarms"], "weight_over": c["alarm_weight_over"],
                       "weight_short": c["alarm_weight_short"], "eas": c["alarm_eas"],
                       "audits": c["audits"], "audit_items": c["audit_items"]},
            "recent": recent[-5:],
        }

    def _shopper(self, plan: dict) -> None:
        try:
            getattr(self, f"_journey_{plan['journey']}")(plan)
        except Exception as exc:   # a journey that broke is counted, never hidden
            self.tally.add(journey_errors=1)
            self.tally.event(shopper=plan["i"], journey=plan["journey"],
                             error=f"{type(exc).__name__}: {exc}")
        finally:
            self.tally.add(done=1, **{f"journey_{plan['journey']}": 1})

    # -- the pieces every journey shares -----------------------------------------------
    def _shopper_id(self, plan: dict) -> str:
        return f"8888{plan['i']:06d}" if plan["member"] else f"anon-{plan['i']}"

    def _fill_basket(self, svc, plan: dict) -> tuple[str, str, list[int]]:
        """Take a handheld, open a basket on it, scan the plan's goods (seeing each
        item's details), maybe void a line; returns the handheld, the basket id and
        the units to pay."""
        member = f"8888{plan['i']:06d}" if plan["member"] else None
        device = self._floor(self.handhelds.take, None,
                             shopper=self._shopper_id(plan))["device_id"]
        self._floor(self.handhelds.report, device, 100.0, zone="shopping")
        bid = svc.basket_open(device, member=member)["basket"]["basket_id"]
        self._floor(self.handhelds.bind_basket, device, bid)
        for r in plan["rows"]:
            svc.scan(device, self.gtin(r))                       # the item's details
        svc.basket_add(bid, [{"code": self.gtin(r), "qty": plan["qty"][r]}
                             for r in plan["rows"]])
        if plan["void"]:                                         # scanned, then put back
            extra = plan["rng"].choice([r for r in self.goods if r not in plan["rows"]])
            svc.basket_add(bid, [self.gtin(extra)])
            # the service sees the line go, and counts it against the shopper's trust
            # when their audit is decided
            svc.basket_remove(bid, [self.gtin(extra)])
            self.tally.add(voids=1)
        units = [r for r in plan["rows"] for _ in range(plan["qty"][r])]
        return device, bid, units

    def _leave_with(self, device: str) -> None:
        """The handheld passes the exit (its basket paid: no goodbye) and is given back."""
        action = self._floor(self.handhelds.zone_event, device, "exit")
        if action.get("wipe"):
            self.tally.add(wiped_at_exit=1)
        self._floor(self.handhelds.give_back, device)

    def _wallet_code(self, rng) -> str:
        from lanecore.gateway.sim.wallet import make_token
        return make_token(rng.choice(["wechat", "alipay"]))

    def _paid(self, svc, order_no: str, pay: dict, receipt: dict) -> None:
        """The order marked paid at the service by its signed receipt (the proof only
        a payment gateway the store trusts can give)."""
        svc.call("order.status", order_no=order_no, status="paid", proof=receipt)
        self.tally.add(paid=1)
        self.tally.payment(pay["channel"], pay["amount_minor"])

    def _per_item_verdict(self, svc, lane: str, order: dict, steps: list) -> dict:
        """A per-item lane's verdict: each settled step to the service as it came
        (verify.step, numbered from 0), then the order's (verify.clear)."""
        for seq, (delta, sigma) in enumerate(steps):
            svc.call("verify.step", lane=lane, order_no=order["order_no"], seq=seq,
                     delta_g=float(delta), sigma_g=float(sigma))
        self.tally.add(item_steps=len(steps))
        return svc.call("verify.clear", lane=lane, order_no=order["order_no"])

    def _named_first(self, plan: dict, v: dict, left_behind, stolen_step) -> None:
        """Whether a per-item lane's first explanation names what was done: the paid
        unit left behind, or the step of the unpaid item."""
        first = v["explanations"][0] if v["explanations"] else None
        if plan["mistake"] and first is not None:
            self.tally.add(named_of=1, named_first=int(
                first["kind"] == "missing" and first["gtin"] == self.gtin(left_behind)))
        elif plan["theft"] and first is not None:
            self.tally.add(named_of=1, named_first=int(
                first["kind"] == "unscanned" and first["step"] == stolen_step))

    def _exit_lane(self, _svc, plan: dict, order: dict, units: list[int]) -> None:
        """Exit lane A: the bag weighed on the conveyor, the verdict, the deactivator,
        the EAS gate; the spoken message; the attendant when something is off. The
        lane's controller talks to the service as the lane's own identity."""
        lane = EXIT_LANES[plan["i"] % len(EXIT_LANES)]
        with self.service(f"lane-{lane}") as svc:
            self._exit_on(svc, lane, plan, order, units)

    def _exit_on(self, svc, lane: str, plan: dict, order: dict, units: list[int]) -> None:
        from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate
        rng = plan["rng"]
        t = self.table
        bag = list(units)
        left_behind = None
        if plan["mistake"]:
            left_behind = bag.pop(rng.randrange(len(bag)))
        if plan["theft"]:
            bag.append(plan["stolen"])
        per_item = lane in PER_ITEM_LANES
        with self.lane_locks[lane]:
            weights = [max(1.0, rng.gauss(float(t.weight_mean_g[r]), float(t.weight_sd_g[r])))
                       for r in bag]
            if per_item:
                # the items go onto the weigh belt one at a time, in the shopper's order
                order_of = list(range(len(bag)))
                rng.shuffle(order_of)
                places = [Placement(0.3 + 0.9 * k, weights[j], 5.0, 0.3)
                          for k, j in enumerate(order_of)]
                seconds = 0.3 + 0.9 * len(bag) + 0.8
            else:
                places = [Placement(0.3, sum(weights), 5.0, 0.3)]
                seconds = 1.6
            x, _ = generate(TraceSpec(seconds=seconds, initial_g=0.0, placements=places,
                                      noise_g=1.0, conveyor_hz=7.0, conveyor_g=4.0,
                                      mains_g=1.0, seed=rng.randrange(1 << 31)))
            steps = []                  # per item: (delta_g, sigma_g) of each settle
            last = (0.0, 0.5)
            for i in range(0, len(x), 50):
                reply = svc.weigh_frame(lane, self.lane_seq[lane], samples=x[i:i + 50])
                self.lane_seq[lane] += 1
                for ev in reply["events"] if per_item else ():
                    if ev["event"] != "settled":
                        continue
                    w, s = float(ev["weight_g"]), float(ev["sigma_g"])
                    if abs(w - last[0]) >= MIN_ITEM_STEP_G:
                        steps.append((w - last[0], math.hypot(s, last[1])))
                        last = (w, s)
            if per_item:
                v = self._per_item_verdict(svc, lane, order, steps)
                stolen_step = (order_of.index(len(bag) - 1) if plan["theft"] else None)
                self._named_first(plan, v, left_behind, stolen_step)
            else:
                v = svc.verify_order(lane, order_qr=order["qr"])
            belt = np.random.default_rng(self.lane_seq[lane]).normal(0, 1.0, 300)
            for i in range(0, 300, 50):                     # the bag leaves the belt
                svc.weigh_frame(lane, self.lane_seq[lane], samples=belt[i:i + 50])
                self.lane_seq[lane] += 1
            # the deactivator takes the paid tags off, each confirmed over its line;
            # an unpaid tag still live sets off the gate, which says so over its own
            d_sim, d_drv = self.deact[lane]
            for r in units:
                if r in self.tagged:
                    d_sim.do("tag")
                    res = d_drv.deactivate(timeout_s=3.0)
                    self.tally.add(tags_deactivated=int(res.ok),
                                   tags_not_deactivated=int(not res.ok))
            eas = False
            if plan["theft"] and plan["stolen"] in self.tagged:
                g_sim, _ = self.gate[lane]
                g_sim.do("alarm")
                try:
                    alarm = self.gate_alarms[lane].get(timeout=3.0)
                    eas = True
                    svc.device_event(lane, "eas_gate", "alarm", code="TAG_ACTIVE",
                                     message=f"order {order['order_no']} aisle "
                                             f"{getattr(alarm, 'aisle', '?')}")
                    g_sim.do("clear")
                except Exception:
                    self.tally.add(gate_silent=1)
        causes = []
        if v["verdict"] != "ok":
            causes.append(f"weight_{v['verdict']}")
        if eas:
            causes.append("eas")
        for c in causes:
            self.tally.add(**{f"alarm_{c}": 1})
        if causes:
            self.tally.add(alarms=1)
        spoken = SPOKEN["eas" if eas else v["verdict"]]
        # could the lane physically see what was done? a weight well outside the band
        # (per item: a step the pipeline tells from its noise), or a tag
        band = float(v["band_g"]) if v.get("band_g") is not None else 4 * MIN_ITEM_STEP_G
        if plan["theft"]:
            visible = eas or float(t.weight_mean_g[plan["stolen"]]) > 2 * band
            self.tally.add(thefts=1, thefts_visible=int(visible),
                           thefts_alarmed=int(bool(causes)),
                           thefts_visible_alarmed=int(visible and bool(causes)))
        elif plan["mistake"]:
            visible = float(t.weight_mean_g[left_behind]) > 2 * band
            self.tally.add(mistakes=1, mistakes_visible=int(visible),
                           mistakes_alarmed=int(bool(causes)))
        else:
            self.tally.add(honest_exits=1, honest_alarmed=int(bool(causes)))
        self.tally.event(shopper=plan["i"], order_no=order["order_no"], lane=lane,
                         verdict=v["verdict"], eas=eas, spoken=spoken,
                         theft=plan["theft"], mistake=plan["mistake"])
        if plan["theft"] and causes:
            self.tally.add(held=1)                           # the attendant keeps them
            return
        svc.call("order.status", order_no=order["order_no"], status="exited")
        self.tally.add(exited=1)

    # -- the journeys --------------------------------------------------------------------
    def _journey_handheld(self, plan: dict) -> None:
        with self.service() as svc, self.payments("HANDHELDS") as pay:
            device, bid, units = self._fill_basket(svc, plan)
            order = svc.basket_submit(bid)
            self.tally.add(orders=1)
            r = pay.call("pay.charge", order_no=order["order_no"],
                         amount_minor=order["total_minor"], currency=order["currency"],
                         method="auth_code", auth_code=self._wallet_code(plan["rng"]))
            # paid, and for this order and amount: a cheaper payment is no payment
            if r["status"] != "paid" or payment_mismatch(
                    r, order["order_no"], order["total_minor"], order["currency"]):
                self.tally.add(payments_failed=1)
                return
            # the receipt is on the handheld; it is the proof that marks the order paid
            rec = pay.call("pay.receipt", order_no=order["order_no"])
            self._paid(svc, order["order_no"], r, rec["receipt"])
            if self._audit(svc, plan, order):
                self._exit_lane(svc, plan, order, units)
            self._leave_with(device)

    def _audit(self, svc, plan: dict, order: dict) -> bool:
        """Some paid handheld orders are chosen for a check (REFERENCE §5): a visual
        look into a small bag, or a rescan of k of the n lines. The handheld asks the
        service (``audit.decide``: decided there, once, against the shopper's trust);
        a chosen order waits for the attendant, who finds an unscanned item with the
        share of the bag looked through and records it (``audit.record`` as the
        attendant's identity); the handheld then learns it may go (``audit.get``). A
        thief found is held (False: no exit)."""
        rng = plan["rng"]
        decision = svc.call("audit.decide", order_no=order["order_no"],
                            shopper=self._shopper_id(plan))["audit"]
        if not decision["audit"]:
            return True
        lines = max(1, len(order["lines"]))
        share = 0.5 if decision["kind"] == "visual" else len(decision["items"]) / lines
        caught = plan["theft"] and rng.random() < share
        terms = {"outcome": "discrepancy", "finding": "theft",
                 "found": [{"gtin": self.gtin(plan["stolen"]), "qty": 1}]} if caught \
            else {"outcome": "clean"}
        with self.service("attendant") as attendant:
            attendant.call("audit.record", order_no=order["order_no"], staff="attendant",
                           **terms)
        done = svc.call("audit.get", order_no=order["order_no"])["audit"]
        if done["state"] != "done":
            raise LanecoreError(f"audit of {order['order_no']} recorded but {done['state']}",
                                code="DEMO_AUDIT")
        self.tally.add(audits=1, audit_items=len(decision["items"]),
                       audit_discrepancies=int(caught))
        if caught:
            self.tally.add(thefts=1, thefts_caught_by_audit=1, held=1)
            return False
        return True

    def _journey_kiosk(self, plan: dict) -> None:
        kiosk = KIOSKS[plan["i"] % len(KIOSKS)]
        rng = plan["rng"]
        with self.service() as svc, self.payments(kiosk) as pay, \
                self.service("kiosk") as at_kiosk:
            device, bid, units = self._fill_basket(svc, plan)
            order = svc.basket_submit(bid)
            self.tally.add(orders=1)
            with self.kiosk_locks[kiosk]:
                # the kiosk reads the order QR: the order as the service holds it
                seen = at_kiosk.call("order.get", order_no=order["order_no"])["order"]
                self._bagging(at_kiosk, kiosk, plan, order["order_no"], units)
                total = seen["total_minor"]
                # what was sold goes with the charge: the receipt prints the ledger's
                lines = [{"name": ln["name"][:64], "qty": ln["qty"],
                          "unit_minor": ln["unit_price_minor"],
                          "amount_minor": ln["line_price_minor"]} for ln in seen["lines"]]
                if rng.random() < 0.5:
                    r = pay.call("pay.charge", order_no=seen["order_no"], amount_minor=total,
                                 currency=seen["currency"], method="cash", lines=lines,
                                 cash={"tendered": {str(k): v for k, v in
                                                    _tender(total).items()}})
                else:
                    from lanecore.gateway.sim.provider import pin_block
                    pan = "4111111111111111"
                    r = pay.call("pay.charge", order_no=seen["order_no"], amount_minor=total,
                                 currency=seen["currency"], method="card", lines=lines,
                                 card={"entry": "chip", "pan": pan,
                                       "pin_block": pin_block("1234", pan)})
                if r["status"] != "paid" or payment_mismatch(r, seen["order_no"], total,
                                                             seen["currency"]):
                    self.tally.add(payments_failed=1)
                    return
                rec = pay.call("pay.receipt", order_no=seen["order_no"])
                self._paid(at_kiosk, seen["order_no"], r, rec["receipt"])
                printed = self.printer[kiosk][1].print_receipt(rec["escpos"], timeout_s=3.0)
                self.tally.add(receipts_printed=int(printed.ok),
                               receipts_not_printed=int(not printed.ok))
            self._exit_lane(svc, plan, order, units)
            self._leave_with(device)

    def _bagging(self, svc, kiosk: str, plan: dict, session: str, units: list[int]) -> None:
        """The kiosk's bagging-scale check (bag.event): each unit scanned again at the
        kiosk and put in the bagging area (its true weight, a settled delta a moment
        later); a thief's extra item goes in unscanned, after the scan of a random
        unit. An alarm is the attendant's (bag.override)."""
        rng = plan["rng"]
        t = self.table
        events = []
        thief_at = rng.randrange(len(units)) if plan["theft"] else None
        clock = 0.0
        for k, r in enumerate(units):
            events.append(("scan", clock, {"gtin": self.gtin(r)}))
            clock += rng.uniform(1.0, 3.0)
            w = max(1.0, rng.gauss(float(t.weight_mean_g[r]), float(t.weight_sd_g[r])))
            events.append(("delta", clock, {"delta_g": w, "sigma_g": 0.8}))
            if k == thief_at:
                clock += rng.uniform(1.0, 3.0)
                s = plan["stolen"]
                w = max(1.0, rng.gauss(float(t.weight_mean_g[s]), float(t.weight_sd_g[s])))
                events.append(("delta", clock, {"delta_g": w, "sigma_g": 0.8}))
            clock += rng.uniform(0.5, 2.0)
        events.append(("finish", clock, {}))
        alarms = []
        for seq, (kind, at, extra) in enumerate(events):
            r = svc.call("bag.event", kiosk=kiosk, session=session, seq=seq, kind=kind,
                         t_s=at, **extra)
            alarms += r["alarms"]
        self.tally.add(bagged_items=len(units), bagging_alarms=len(alarms))
        if plan["theft"]:
            stolen_step = thief_at + 1          # the deltas: one per unit, then the extra
            first = alarms[0] if alarms else None
            self.tally.add(bagging_thefts=1, bagging_thefts_alarmed=int(bool(alarms)),
                           bagging_named_first=int(
                               first is not None and first["kind"] == "unexpected"
                               and first["step"] == stolen_step))
        else:
            self.tally.add(bagging_honest=1, bagging_honest_alarmed=int(bool(alarms)))
        with self.service("attendant") as att:
            for a in alarms:
                att.call("bag.override", kiosk=kiosk, session=session, alarm=a["no"],
                         staff="demo-attendant")

    def _journey_coupons(self, plan: dict) -> None:
        from lanecore.core.promo.mqr import make_mqr
        rng = plan["rng"]
        customer = f"{self.order_prefix}CUST-{plan['i']:04d}"
        couponed = rng.sample(self.coupon_goods, 2)
        rows = list(dict.fromkeys(plan["rows"][:4] + couponed))
        with self.service("till") as svc, \
                self.coupons("till", timeout_s=15, retries=1) as cpn, \
                self.coupons("wallet", timeout_s=15, retries=1) as provider:
            for row in couponed:                     # the wallet downloaded these
                d = f"CPN-DEF-{self.coupon_goods.index(row)}"
                provider.call("coupon.issue", coupon_def_id=d, customer_id=customer)
            lines = []
            for row in rows:                         # the cashier scans the goods
                svc.scan("TILL-1", self.gtin(row))
                # codes and quantities: the coupon gateway prices them from the
                # store's catalogue
                lines.append({"code": self.gtin(row), "qty": 1})
            wallet = cpn.call("wallet.coupons", customer_id=customer)["coupons"]
            text = make_mqr(self.wallet, key_id="w1", issuer="demo-wallet",
                            customer=customer, token=self._wallet_code(rng),
                            currency="GBP", coupons=[(c["coupon_id"], c["gtin"],
                                                      c["amount_minor"]) for c in wallet])
            order_no = f"{self.order_prefix}TILL1-{plan['i']:05d}"
            self.tally.add(orders=1)
            r = cpn.call("checkout.mqr", order_no=order_no, till="TILL-1", mqr=text,
                         lines=lines)
            if r["status"] != "paid" or r["order_no"] != order_no or (
                    r["total_minor"] and payment_mismatch(r["payment"], order_no,
                                                          r["total_minor"], "GBP")):
                self.tally.add(payments_failed=1)
                return
            self.tally.add(paid=1, exited=1, coupons_redeemed=len(r["coupons_applied"]),
                           coupon_savings_minor=sum(a["amount_minor"] for a in
                                                    r["coupons_applied"].values()))
            self.tally.payment(r["payment"]["channel"], r["payment"]["amount_minor"])

    def _journey_pos(self, plan: dict) -> None:
        from lanecore.gateway.sim.provider import pin_block
        rng = plan["rng"]
        with self.service("pos") as svc, self.payments("POS-1") as pay:
            total = 0
            for r in plan["rows"]:                   # the cashier scans the goods
                item = svc.scan("POS-1", self.gtin(r))["item"]
                total += item["price_minor"] * plan["qty"][r]
            order_no = f"{self.order_prefix}POS1-{plan['i']:05d}"
            method = rng.choice(["card", "auth_code"])
            code = self._wallet_code(rng)
            quote = pay.call("pay.quote", amount_minor=total, currency="GBP", method=method,
                             **({"auth_code": code} if method == "auth_code" else {}))
            eligible = [c["channel"] for c in quote["channels"] if c["eligible"]]
            self.tally.add(orders=1, pos_quotes=1)
            if not eligible:
                self.tally.add(payments_failed=1)
                return
            if method == "card":
                pan = "5555555555554444"
                means = {"card": {"entry": "nfc", "pan": pan,
                                  **({"pin_block": pin_block("1234", pan)}
                                     if total > 10_000 else {})}}
            else:
                means = {"auth_code": code}
            r = pay.call("pay.charge", order_no=order_no, amount_minor=total, currency="GBP",
                         method=method, **means)
            if r["status"] != "paid" or payment_mismatch(r, order_no, total, "GBP"):
                self.tally.add(payments_failed=1)
                return
            # the cashier types the shopper's number: a receipt by SMS (a till's or a
            # POS terminal's role may text one; a handheld or kiosk may not)
            rec = pay.call("pay.receipt", order_no=order_no,
                           sms_to=f"+4477009{plan['i']:05d}")
            self.tally.add(paid=1, exited=1, receipts_printed=1,
                           sms_receipts=int(rec["sms_queued"] is not None))
            self.tally.payment(r["channel"], r["amount_minor"])

    def _journey_unattended(self, plan: dict) -> None:
        """Seed 003, on the shopper's phone and the venue's terminal."""
        rng = plan["rng"]
        v = self.venue
        login, password = f"shopper{plan['i']:04d}", f"pw-{plan['i']:04d}-secret"
        self._venue(v.register, login, password, name=f"Shopper {plan['i']}")
        phone = f"phone:{plan['i']:04d}"       # where the attempts come from (throttle)
        session = self._venue(v.login, login, password, source=phone)
        token = f"tok_{plan['i']:08d}demo"
        self._venue(v.bind_payment, session, "card", token)
        self._venue(v.set_transaction_password, session, "246810", source=phone)
        self.biometrics.enrol(session.account_id, b"finger-%d" % plan["i"])
        cart = self._venue(v.open_cart, session)
        for k, r in enumerate(plan["rows"]):         # by code, or by name (typed/spoken)
            what = self.gtin(r) if k % 2 == 0 else self.names[r]
            try:
                self._venue(v.add, cart.cart_id, what, plan["qty"][r])
            except LanecoreError as exc:
                if exc.code != "AMBIGUOUS_NAME":
                    raise
                self._venue(v.add, cart.cart_id, self.gtin(r), plan["qty"][r])
        total = self._venue(v.quote, cart.cart_id)
        self.tally.add(orders=1)

        def pay(order_no, amount_minor, payment_token):
            with self.payments("VENUE-1") as p:
                return p.call("pay.charge", order_no=order_no, amount_minor=amount_minor,
                              currency="GBP", method="card",
                              card={"entry": "nfc", "token": payment_token})
        verification = (self.biometrics, b"finger-%d" % plan["i"]) \
            if total > 3_000 else None
        st = self._venue(v.settle, cart.cart_id, transaction_password="246810",
                         confirm_total_minor=total, pay=pay, verification=verification,
                         source=phone)
        if st.status != "paid":
            self.tally.add(payments_failed=1)
            return
        self.tally.add(paid=1, venue_extra_checks=int(verification is not None))
        self.tally.payment("card", st.total_minor)
        # the itemised list on the phone is the exit pass: once
        self._venue(v.check_exit_pass, st.exit_pass, self.venue_signer.verifier())
        self.tally.add(exited=1, exit_passes=1)
        if rng.random() < 0.5:                          # a friend tries the same pass
            try:
                self._venue(v.check_exit_pass, st.exit_pass, self.venue_signer.verifier())
                self.tally.add(exit_pass_reused=1)
            except LanecoreError as exc:
                self.tally.add(exit_pass_refused=int(exc.code == "PASS_USED"))

    def _journey_abandon(self, plan: dict) -> None:
        with self.service() as svc:
            device, bid, _ = self._fill_basket(svc, plan)
            # the handheld crosses the geofence unpaid: goodbye, and the basket wiped
            action = self._floor(self.handhelds.zone_event, device, "outside")
            if action.get("wipe") == bid:
                basket = svc.basket_get(bid)["basket"]
                svc.basket_remove(bid, [ln["line_no"] for ln in basket["lines"]])
                self.tally.add(abandoned=1, goodbyes=int(bool(action.get("say"))))
            self._floor(self.handhelds.give_back, device)

    def _journey_till(self, plan: dict) -> None:
        """Seed 002: the register, its QR display on a serial line, the shopper's
        phone. (The display's payment is the wallet acquirer's, not the payment
        gateway's: it is counted under ``display_qr`` and outside the gateway's books.)"""
        from lanecore.core.pay.emvqr import decode_mpm
        with self.service("till") as svc:
            lines, total = [], 0
            for r in plan["rows"]:                       # the cashier scans the goods
                item = svc.scan("TILL-Q1", self.gtin(r))["item"]
                q = plan["qty"][r]
                lines.append({"name": item["name"][:32], "qty": q,
                              "amount_minor": item["price_minor"] * q})
                total += item["price_minor"] * q
        order_no = f"{self.order_prefix}TQ1-{plan['i']:05d}"
        self.tally.add(orders=1)
        with self.till_lock:                             # one customer at the register
            reg = self.register
            reg.sell(order_no, lines, total_minor=total, currency="GBP")
            shown = reg.qr_pay()
            qr = decode_mpm(shown.payload)               # the shopper's phone reads it
            if not (qr["ok"] and qr["amount_minor"] == total):
                self.tally.add(payments_failed=1)
                return
            sale = reg.wait_result(timeout_s=10)
        if sale.status != "paid" or sale.amount_minor != total:
            self.tally.add(payments_failed=1)
            return
        self.tally.add(paid=1, exited=1, till_sales=1)
        self.tally.payment("display_qr", sale.amount_minor)

    # ------------------------------------------------------------------------------
    # The books and the summary
    # ------------------------------------------------------------------------------
    def _books(self) -> dict:
        """Every payment of the ledger against every provider's trades: the
        gateway's own reconciliation of today, and the sums side by side."""
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        with self.payments("HQ") as hq:
            for _ in range(50):                     # anything still open, final first
                states = hq.call("stats")["charges"]
                if not any(states.get(s) for s in ("created", "sent", "unknown", "queried")):
                    break
                time.sleep(0.2)
            rep = hq.call("recon.run", date=day)
        con = sqlite3.connect(f"file:{self.dir / 'pay' / 'payments.db'}?mode=ro", uri=True)
        for _ in range(50):                         # the SMS receipts handed to the sink
            if not con.execute("SELECT COUNT(*) FROM sms_outbox WHERE state IN "
                               "('pending', 'sending')").fetchone()[0]:
                break
            time.sleep(0.1)
        ledger = dict(con.execute("SELECT channel, SUM(amount_minor) FROM charges WHERE "
                                  "state = 'paid' GROUP BY channel").fetchall())
        con.close()
        held = {}
        for kind, channel in (("wechat", "wechat"), ("alipay", "alipay"), ("bank", "card")):
            con = sqlite3.connect(self.provider_dirs[kind] / f"{kind}.sqlite")
            held[channel] = con.execute("SELECT COALESCE(SUM(amount_minor), 0) FROM trades "
                                        "WHERE status = 'paid'").fetchone()[0]
            con.close()
        sums_agree = all(ledger.get(ch, 0) == held[ch] for ch in held)
        return {"recon_clean": rep["clean"], "recon_counts": rep["counts"],
                "ledger_paid_minor": ledger, "provider_paid_minor": held,
                "balanced": bool(rep["clean"] and sums_agree)}

    def _summary(self, seconds: float) -> dict:
        c = self.tally.c
        books = self._books()
        p_fa = math.erfc(3.29 / math.sqrt(2))           # the policy's two-sided k = 3.29
        honest = c["honest_exits"]
        expected = honest * p_fa
        bound = _poisson_upper(expected, 0.001)
        return {
            "shoppers": self.spec.shoppers, "seed": self.spec.seed,
            "seconds": round(seconds, 1),
            "journeys": {k[len("journey_"):]: v for k, v in sorted(c.items())
                         if k.startswith("journey_") and k != "journey_errors"},
            "journey_errors": c["journey_errors"],
            "orders": c["orders"], "paid": c["paid"], "exited": c["exited"],
            "inside": c["held"], "abandoned": c["abandoned"],
            "payments_by_channel": self.tally.by_channel,
            "payments_failed": c["payments_failed"],
            "alarms": {"weight_over": c["alarm_weight_over"],
                       "weight_short": c["alarm_weight_short"], "eas": c["alarm_eas"]},
            "injected_thefts": c["thefts"], "thefts_visible": c["thefts_visible"],
            "thefts_alarmed": c["thefts_alarmed"],
            "thefts_visible_alarmed": c["thefts_visible_alarmed"],
            "mistakes": c["mistakes"], "mistakes_alarmed": c["mistakes_alarmed"],
            # the per-item exit lanes (PER_ITEM_LANES): of their thefts and mistakes
            # alarmed, those whose first explanation named the item (or its step)
            "per_item": {"lanes": list(PER_ITEM_LANES), "steps": c["item_steps"],
                         "alarmed": c["named_of"], "named_first": c["named_first"]},
            # the kiosks' bagging-scale check (bag.event)
            "bagging": {"items": c["bagged_items"], "alarms": c["bagging_alarms"],
                        "honest": c["bagging_honest"],
                        "honest_alarmed": c["bagging_honest_alarmed"],
                        "thefts": c["bagging_thefts"],
                        "thefts_alarmed": c["bagging_thefts_alarmed"],
                        "named_first": c["bagging_named_first"]},
            "honest_exits": honest, "honest_alarmed": c["honest_alarmed"],
            "honest_alarms_expected": round(expected, 4),
            "honest_alarms_bound": bound,
            "audits": c["audits"], "audit_items": c["audit_items"],
            "audit_discrepancies": c["audit_discrepancies"],
            "thefts_caught_by_audit": c["thefts_caught_by_audit"],
            "goodbyes": c["goodbyes"], "till_sales": c["till_sales"],
            "exit_passes": c["exit_passes"], "exit_pass_reuse_refused": c["exit_pass_refused"],
            "exit_pass_reused": c["exit_pass_reused"],
            "venue_extra_checks": c["venue_extra_checks"],
            "voids": c["voids"], "sms_receipts": c["sms_receipts"],
            "receipts_printed": c["receipts_printed"],
            "coupons_redeemed": c["coupons_redeemed"],
            "coupon_savings_minor": c["coupon_savings_minor"],
            "tags_deactivated": c["tags_deactivated"],
            "tags_not_deactivated": c["tags_not_deactivated"],
            "receipts_not_printed": c["receipts_not_printed"],
            "gate_silent": c["gate_silent"],
            "ledger_balanced": books["balanced"], "books": books,
            "latency_ms": self.latency.summary(),
            "errors": [e for e in self.tally.events if "error" in e][:10],
        }


def _tender(total: int) -> dict[int, int]:
    """Notes a shopper hands over: the fewest 50/20/10/5-pound notes covering it."""
    out: dict[int, int] = {}
    left = total
    for note in (5000, 2000, 1000, 500):
        while left >= note:
            out[note] = out.get(note, 0) + 1
            left -= note
    if left > 0:
        out[500] = out.get(500, 0) + 1
    return out


def _poisson_upper(mean: float, alpha: float) -> int:
    """The smallest k with P(X > k) < alpha for X ~ Poisson(mean)."""
    k, p, cdf = 0, math.exp(-mean), 0.0
    while True:
        cdf += p
        if 1.0 - cdf < alpha:
            return k
        k += 1
        p *= mean / k


def checks(summary: dict) -> list[str]:
    """What a store owner must be able to trust, each as a failed check's text."""
    s = summary
    bad = []
    if s["paid"] != s["exited"] + s["inside"]:
        bad.append(f"paid {s['paid']} != exited {s['exited']} + inside {s['inside']}")
    if s["thefts_visible_alarmed"] != s["thefts_visible"]:
        bad.append(f"{s['thefts_visible'] - s['thefts_visible_alarmed']} visible thefts "
                   "raised no alarm")
    if s["honest_alarmed"] > s["honest_alarms_bound"]:
        bad.append(f"{s['honest_alarmed']} honest shoppers alarmed; the false-alarm rate "
                   f"allows {s['honest_alarms_bound']}")
    if not s["ledger_balanced"]:
        bad.append("the ledger does not balance against the providers")
    if s["journey_errors"]:
        bad.append(f"{s['journey_errors']} journeys failed: {s['errors'][:3]}")
    if s["tags_not_deactivated"] or s["gate_silent"] or s["receipts_not_printed"]:
        bad.append(f"devices: {s['tags_not_deactivated']} tags not deactivated, "
                   f"{s['gate_silent']} live tags the gate did not report, "
                   f"{s['receipts_not_printed']} receipts not printed")
    if s["exit_pass_reused"]:
        bad.append(f"an exit pass opened the gate twice ({s['exit_pass_reused']}×)")
    return bad
