"""An acquirer host simulator speaking ISO 8583: ``lanecore sim provider --kind
acquirer --bind tcp://127.0.0.1:PORT --data-dir D [knobs]``.

A TCP server (one thread per connection, 2-byte big-endian length framing,
``gateway/payments/iso8583.py``'s messages) that answers 0200/0201 financial
requests, 0420/0421 reversal advices, 0500 totals and 0800 echoes the way an acquirer's host
does:

* the key of a financial request is terminal id (41) + STAN (11) + transmission time
  (7); the same key again (a duplicate transmission, 0200 or 0201) is answered with
  the first response, byte for byte, and charges nothing more;
* approvals and declines by rules: Luhn-invalid card → 14, wrong PIN in the PIN
  block (ISO 9564 format 0 under the sim's test PIN, ``--pin``) → 55, over
  ``--max-amount-minor`` → 61, the test cards of :data:`TEST_CARDS` (05, 51, 54),
  then ``--next`` scripted outcomes and the random knobs;
* a reversal advice undoes the original charge once (a repeated advice is
  acknowledged again, nothing more happens); an advice that arrives before its
  original makes that original a reversed one when it comes;
* faults: ``--no-answer-rate`` (charged, never answered), ``--late-rate`` (charged,
  answered after ``--late-s``), ``--drop-rate`` (charged, the connection closed
  before the answer: the terminal repeats it as 0201), ``--decline-rate`` (``--decline-codes``),
  ``--drop-reversal N`` (the first N advices get no answer).

Every trade is kept in ``D/acquirer.sqlite`` (WAL, ``synchronous=FULL``), written
before its answer leaves; a PAN only masked, a PIN block never. The ready line
(one JSON line on stdout) gives the endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
import time
from pathlib import Path

from lanecore.core.sqltxn import private_database
from lanecore.gateway.payments import iso8583 as M
from lanecore.gateway.payments.httpapi import parse_bind
from lanecore.gateway.payments.providers import ProviderError, luhn_ok, mask_pan
from lanecore.gateway.sim.provider import pin_from_block

#: Test cards (Luhn-valid): PAN → the response code the host gives them.
TEST_CARDS = {"4000000000000002": "05", "4000000000009995": "51",
              "4000000000000069": "54"}
#: Outcomes a ``--next`` script may hold: response codes, or a fault.
FAULTS = ("noanswer", "late", "drop")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trades (
        key TEXT PRIMARY KEY, rrn TEXT NOT NULL UNIQUE, terminal_id TEXT NOT NULL,
        merchant_id TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL,
        amount_minor INTEGER NOT NULL, currency TEXT NOT NULL, card TEXT NOT NULL,
        status TEXT NOT NULL, code TEXT NOT NULL, auth_code TEXT, response BLOB,
        requests INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL,
        reversed_at REAL)""",
    """CREATE TABLE IF NOT EXISTS reversals (
        key TEXT PRIMARY KEY, advices INTEGER NOT NULL, dropped INTEGER NOT NULL
        DEFAULT 0, found INTEGER NOT NULL, at REAL NOT NULL)""",
)


def trade_key(terminal_id: str, stan: str, tx_time: str) -> str:
    return f"{terminal_id.strip()}|{stan}|{tx_time}"


class Acquirer:
    """The host's rules and records, without the socket."""

    def __init__(self, data_dir, *, no_answer_rate=0.0, late_rate=0.0, late_s=3.0,
                 drop_rate=0.0,
                 decline_rate=0.0, decline_codes=("51", "05"), drop_reversal=0,
                 pin="1234", max_amount_minor=0, next_outcomes=(), seed=None) -> None:
        for name, p in (("no_answer_rate", no_answer_rate), ("late_rate", late_rate),
                        ("decline_rate", decline_rate), ("drop_rate", drop_rate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        for o in next_outcomes:
            if o not in FAULTS and not (len(o) == 2 and o.isdigit()):
                raise ValueError(f"--next outcome {o!r}: a 2-digit code or one of {FAULTS}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.no_answer_rate, self.late_rate, self.late_s = no_answer_rate, late_rate, late_s
        self.drop_rate = drop_rate
        self.decline_rate, self.decline_codes = decline_rate, list(decline_codes)
        self.drop_left = int(drop_reversal)
        self.pin, self.max_amount_minor = pin, max_amount_minor
        self.next = list(next_outcomes)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        path = self.data_dir / "acquirer.sqlite"
        private_database(path)
        self.con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        for stmt in _SCHEMA:
            self.con.execute(stmt)
        (n,) = self.con.execute("SELECT COUNT(*) FROM trades").fetchone()
        self._rrn = n

    def close(self) -> None:
        self.con.close()

    # -- rules -----------------------------------------------------------------------
    def _outcome(self, doc: dict) -> str:
        pan = doc["2"]
        amount = int(doc["4"])
        if not luhn_ok(pan):
            return "14"
        if "52" in doc and pin_from_block(doc["52"], pan) != self.pin:
            return "55"
        if self.max_amount_minor and amount > self.max_amount_minor:
            return "61"
        if pan in TEST_CARDS:
            return TEST_CARDS[pan]
        if self.next:
            return self.next.pop(0)
        if self.rng.random() < self.decline_rate:
            return self.rng.choice(self.decline_codes)
        if self.rng.random() < self.no_answer_rate:
            return "noanswer"
        if self.rng.random() < self.late_rate:
            return "late"
        if self.rng.random() < self.drop_rate:
            return "drop"
        return "00"

    def financial(self, doc: dict) -> tuple[bytes | None, str]:
        """(the raw 0210, what to do with it: ``answer``, ``late``, ``noanswer``)."""
        key = trade_key(doc["41"], doc["11"], doc["7"])
        with self.lock:
            row = self.con.execute("SELECT response, status FROM trades WHERE key = ?",
                                   (key,)).fetchone()
            if row is not None:          # a duplicate transmission: its first answer
                self.con.execute("UPDATE trades SET requests = requests + 1 WHERE key = ?",
                                 (key,))
                return row[0], "answer"
            outcome = self._outcome(doc)
            action = outcome if outcome in FAULTS else "answer"
            code = "00" if outcome in FAULTS else outcome
            # 96: processed, then the switch failed (the charge stands until reversed)
            status = "paid" if code in ("00", "96") else "failed"
            reversed_first = self.con.execute(
                "SELECT 1 FROM reversals WHERE key = ? AND advices > 0", (key,)).fetchone() is not None
            if reversed_first and status == "paid":
                status = "reversed"
            self._rrn += 1
            rrn = f"{self._rrn:012d}"
            auth = f"{self.rng.randrange(10 ** 6):06d}" if code == "00" else None
            resp = {"t": "0210", "3": doc["3"], "4": doc["4"], "7": doc["7"],
                    "11": doc["11"], "37": rrn, "39": code, "41": doc["41"]}
            if auth:
                resp["38"] = auth
            for f in ("12", "13", "42", "49"):
                if f in doc:
                    resp[f] = doc[f]
            raw = M.encode(resp)
            self.con.execute(
                "INSERT INTO trades (key, rrn, terminal_id, merchant_id, stan, tx_time, "
                "amount_minor, currency, card, status, code, auth_code, response, "
                "created_at, reversed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (key, rrn, doc["41"].strip(), doc["42"].strip(), doc["11"], doc["7"],
                 int(doc["4"]), doc["49"], mask_pan(doc["2"]), status, code, auth, raw,
                 time.time(), time.time() if status == "reversed" else None))
        return raw, action

    def advice(self, doc: dict) -> bytes | None:
        """The 0430 of a reversal advice (None: dropped, ``--drop-reversal``)."""
        orig = doc["90"]
        key = trade_key(doc["41"], orig[4:10], orig[10:20])
        with self.lock:
            if self.drop_left > 0:
                self.drop_left -= 1
                self.con.execute(
                    "INSERT INTO reversals (key, advices, dropped, found, at) "
                    "VALUES (?, 0, 1, 0, ?) ON CONFLICT (key) DO UPDATE SET "
                    "dropped = dropped + 1", (key, time.time()))
                return None
            row = self.con.execute("SELECT status FROM trades WHERE key = ?",
                                   (key,)).fetchone()
            if row is not None and row[0] == "paid":
                self.con.execute("UPDATE trades SET status = 'reversed', reversed_at = ? "
                                 "WHERE key = ?", (time.time(), key))
            self.con.execute(
                "INSERT INTO reversals (key, advices, found, at) VALUES (?, 1, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET advices = advices + 1, found = "
                "excluded.found", (key, int(row is not None), time.time()))
        return M.encode({"t": "0430", "7": doc["7"], "11": doc["11"], "39": "00",
                         "41": doc["41"], "90": doc["90"]})

    def totals(self, doc: dict) -> bytes:
        """The 0510 of a day's totals (0500): 00 when the terminal's purchases that
        stand (count and amount, by field 7's date) are the host's, else 95 — with
        the host's own in 76/88 either way."""
        with self.lock:
            n, amount = self.con.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount_minor), 0) FROM trades WHERE "
                "terminal_id = ? AND substr(tx_time, 1, 4) = ? AND status = 'paid'",
                (doc["41"].strip(), doc["15"])).fetchone()
        agreed = (n, amount) == (int(doc["76"]), int(doc["88"]))
        return M.encode({"t": "0510", "7": doc["7"], "11": doc["11"], "15": doc["15"],
                         "39": "00" if agreed else "95", "41": doc["41"],
                         "76": f"{n:010d}", "88": f"{amount:016d}"})

    def echo(self, doc: dict) -> bytes:
        return M.encode({"t": "0810", "7": doc["7"], "11": doc["11"], "39": "00",
                         "41": doc["41"]})


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        host: Acquirer = self.server.acquirer
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                doc = M.decode(M.read_frame(sock))
            except (ConnectionError, OSError):
                return
            except M.MessageError:
                return          # a malformed frame: the connection is dropped, nothing done
            mti = doc["t"]
            if mti in ("0200", "0201"):
                raw, action = host.financial(doc)
                if action == "noanswer":
                    continue
                if action == "drop":
                    return      # charged, then the connection is lost before the answer
                if action == "late":
                    time.sleep(host.late_s)
            elif mti in ("0420", "0421"):
                raw = host.advice(doc)
                if raw is None:
                    continue
            elif mti == "0500":
                raw = host.totals(doc)
            elif mti == "0800":
                raw = host.echo(doc)
            else:
                return          # a response type sent to the host: not a request
            try:
                sock.sendall(M.frame(raw))
            except OSError:
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lanecore sim provider --kind acquirer",
        description="An acquirer host simulator over ISO 8583 (TCP, 2-byte length "
                    "framing; docs/pay/providers.md). Prints one JSON line with its "
                    "endpoint when ready.")
    p.add_argument("--kind", required=True, choices=["acquirer"])
    p.add_argument("--bind", default="tcp://127.0.0.1:*",
                   help="tcp://HOST:PORT (PORT * or 0: a free port)")
    p.add_argument("--data-dir", required=True, metavar="D", help="where acquirer.sqlite lives")
    p.add_argument("--fast", action="store_true", help="accepted for symmetry (no delays "
                   "unless a knob asks)")
    p.add_argument("--no-answer-rate", type=float, default=0.0, metavar="P",
                   help="a financial request is charged and never answered")
    p.add_argument("--late-rate", type=float, default=0.0, metavar="P",
                   help="a financial request is charged and answered after --late-s")
    p.add_argument("--late-s", type=float, default=3.0, metavar="S",
                   help="how late a late answer is (default 3)")
    p.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                   help="a financial request is charged and its connection closed "
                        "before the answer")
    p.add_argument("--decline-rate", type=float, default=0.0, metavar="P",
                   help="a financial request is declined with one of --decline-codes")
    p.add_argument("--decline-codes", default="51,05", metavar="C,C",
                   help="codes a random decline picks from (default 51,05)")
    p.add_argument("--drop-reversal", type=int, default=0, metavar="N",
                   help="ignore the first N reversal advices (no 0430)")
    p.add_argument("--next", default="", metavar="O,O",
                   help="scripted outcomes of the next financial requests: response "
                        "codes (00, 05, 51, 91, 96, …) or noanswer, late, drop")
    p.add_argument("--pin", default="1234", help="the PIN of every test card (default 1234)")
    p.add_argument("--max-amount-minor", type=int, default=0, metavar="N",
                   help="larger amounts are declined 61 (0: no limit)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the knobs")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        host = Acquirer(opts.data_dir, no_answer_rate=opts.no_answer_rate,
                        late_rate=opts.late_rate, late_s=opts.late_s,
                        drop_rate=opts.drop_rate,
                        decline_rate=opts.decline_rate,
                        decline_codes=[c for c in opts.decline_codes.split(",") if c],
                        drop_reversal=opts.drop_reversal, pin=opts.pin,
                        max_amount_minor=opts.max_amount_minor,
                        next_outcomes=[c for c in opts.next.split(",") if c],
                        seed=opts.seed)
        addr = parse_bind(opts.bind)
    except ValueError as exc:
        print(f"lanecore: BAD_FIELD: {exc}", file=sys.stderr)
        return 2
    except ProviderError as exc:
        print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    server = _Server(addr, _Handler)
    server.acquirer = host
    h, port = server.server_address[:2]
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True)
    t.start()
    print(json.dumps({"ready": True, "process": "provider-acquirer", "bind": opts.bind,
                      "provider": "acquirer", "endpoint": f"tcp://{h}:{port}",
                      "pid": os.getpid(), "data_dir": str(host.data_dir)}), flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.shutdown()
        server.server_close()
        host.close()
    return 0
