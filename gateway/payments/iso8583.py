"""Cards over ISO 8583 (1987, ASCII): the message layer over ``pyiso8583`` and the
card connector that speaks it to an acquirer's host (or its simulator, ``lanecore
sim provider --kind acquirer``). ``docs/pay/providers.md`` "Cards over ISO 8583".

Messages: 0200/0210 financial request/response (a single-message purchase: the
amount is taken when approved, no separate completion), 0420/0430 reversal advice
and its acknowledgement (0421: the advice repeated), 0500/0510 the day's totals,
0800/0810 network echo. The
fields used are :data:`FIELDS`. Each message travels over TCP behind a 2-byte
big-endian length prefix (:func:`frame`, :func:`read_frame`).

The key of an attempt is terminal id (41) + STAN (11) + transmission time (7): the
host answers the same key again with its first response, never charging twice.
STANs are kept per terminal id in the connector's state database
(``DATA_DIR/iso8583.sqlite``), so a restart never reuses one.

Unknown outcomes (no answer in time, 91/96, a gateway killed between ``sent`` and
the answer) are never asked about — ISO 8583 has no query — and never sent again:
they are undone by a reversal advice (0420), repeated with back-off until the host
acknowledges it (0430); the charge then ends ``reversed``. A full PAN is never
logged or stored (:func:`~lanecore.gateway.payments.providers.mask_pan`); PINs
travel only as the terminal's ISO 9564 PIN block in field 52.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import iso8583
import zmq
from iso8583.specs import default_ascii

from lanecore.core.sqltxn import private_database
from lanecore.gateway.payments.httpapi import ThreadedConnector
from lanecore.gateway.payments.providers import (DECLINES, Card,
                                                 ProviderError, ProviderResult,
                                                 _check_money, _check_ref, mask_pan)

__all__ = ["SPEC", "FIELDS", "MTI", "RESPONSES", "CURRENCY_NUMERIC", "ENTRY_MODE",
           "MessageError", "encode", "decode", "frame", "read_frame", "send_message",
           "transmission_time", "original_data", "parse_endpoint", "Iso8583Connector"]

log = logging.getLogger("lanecore.iso8583")

#: The field layout: pyiso8583's ISO 8583:1987 ASCII specification.
SPEC = default_ascii
#: The fields this link uses and what they carry.
FIELDS = {
    "2": "PAN (12–19 digits; 0200 only)", "3": "processing code (000000: purchase)",
    "4": "amount, minor units, 12 digits", "7": "transmission date and time MMDDhhmmss UTC",
    "11": "STAN, 6 digits, per terminal", "12": "local time hhmmss",
    "13": "local date MMDD", "22": "POS entry mode (PAN entry + PIN capability)",
    "37": "RRN (the host's reference)", "38": "authorisation code",
    "39": "response code", "41": "terminal id (8)", "42": "merchant id (15)",
    "49": "currency, ISO 4217 numeric", "52": "PIN block, ISO 9564 (16 hex)",
    "90": "original data elements (reversals): MTI + STAN + time + acquirer + forwarder",
    "15": "settlement date MMDD (0500: the day of the totals, by field 7's date)",
    "76": "debits, number (0500/0510: purchases that stand)",
    "77": "debits reversed, number", "88": "debits, amount (minor units, 16 digits)",
    "89": "debits reversed, amount",
}
#: Message types: request → response.
MTI = {"0200": "0210", "0201": "0210", "0420": "0430", "0421": "0430", "0500": "0510",
       "0800": "0810"}
#: The fields each message type must carry.
REQUIRED = {
    "0200": ("2", "3", "4", "7", "11", "12", "13", "22", "41", "42", "49"),
    "0210": ("3", "4", "7", "11", "37", "39", "41"),
    "0420": ("3", "4", "7", "11", "41", "42", "49", "90"),
    "0430": ("7", "11", "39", "41", "90"),
    "0500": ("7", "11", "15", "41", "42", "76", "77", "88", "89"),
    "0510": ("7", "11", "15", "39", "41", "76", "88"),
    "0800": ("7", "11", "41"),
    "0810": ("7", "11", "39", "41"),
}
REQUIRED["0201"] = REQUIRED["0200"]
REQUIRED["0421"] = REQUIRED["0420"]
#: Fields that hold digits only.
_NUMERIC = ("2", "3", "4", "7", "11", "12", "13", "15", "22", "49", "76", "77", "88",
            "89", "90")
#: Response code → connector status. 00 approves; the bank decline table's codes
#: decline (91/96: unknown); any other code is a decline under its own code, except
#: 68 ("response received too late"), which is unknown.
RESPONSES = {"00": "paid", "68": "unknown"}
for _code, (_outcome, _m) in DECLINES["bank"].items():
    if _code.isdigit():
        RESPONSES[_code] = _outcome
#: ISO 4217 alphabetic → numeric (field 49).
CURRENCY_NUMERIC = {"CNY": "156", "HKD": "344", "MOP": "446", "TWD": "901", "USD": "840",
                    "EUR": "978", "GBP": "826", "JPY": "392", "SGD": "702", "KRW": "410",
                    "AUD": "036", "CAD": "124", "CHF": "756", "THB": "764", "MYR": "458"}
#: Card entry → field 22 (PAN entry mode 2 digits + PIN entry capability 1: can accept).
ENTRY_MODE = {"magstripe": "901", "chip": "051", "nfc": "071"}
#: Largest message accepted (a 2-byte prefix allows 65535).
MAX_MESSAGE = 4096
#: Acquirer and forwarding institution ids in field 90 (11 digits each).
ACQUIRER_ID = "00000000000"


class MessageError(ProviderError):
    """A message that is not a well-formed one of this link's (bad length prefix,
    bad field, missing field, unknown type)."""

    code = "BAD_ISO8583"


def _check(doc: dict) -> dict:
    mti = doc.get("t")
    if mti not in REQUIRED:
        raise MessageError(f"message type {mti!r} is not one of this link's")
    missing = [f for f in REQUIRED[mti] if f not in doc]
    if missing:
        raise MessageError(f"{mti} lacks field(s) {', '.join(missing)}")
    for f in _NUMERIC:
        v = doc.get(f)
        if v is not None and not (v.isascii() and v.isdigit()):
            raise MessageError(f"field {f} of {mti} must be digits")
    pb = doc.get("52")
    if pb is not None and not all(c in "0123456789abcdefABCDEF" for c in pb):
        raise MessageError("field 52 (PIN block) must be 16 hex digits")
    return doc


def encode(doc: dict) -> bytes:
    """The ISO 8583 bytes of ``doc`` (``{"t": MTI, "2": …}``), checked first."""
    doc = {k: v for k, v in doc.items() if k not in ("p", "1")}
    _check(doc)
    try:
        raw, _ = iso8583.encode(doc, SPEC)
    except iso8583.EncodeError as exc:
        raise MessageError(f"cannot encode {doc.get('t')}: {exc}") from None
    return bytes(raw)


def decode(raw: bytes) -> dict:
    """The fields of one ISO 8583 message; MessageError for anything else."""
    try:
        doc, _ = iso8583.decode(bytes(raw), SPEC)
    except iso8583.DecodeError as exc:
        raise MessageError(f"not an ISO 8583 message: {exc}") from None
    except (ValueError, UnicodeError) as exc:
        raise MessageError(f"not an ISO 8583 message: {exc}") from None
    return _check(doc)


def frame(raw: bytes) -> bytes:
    """``raw`` behind its 2-byte big-endian length."""
    if not 0 < len(raw) <= MAX_MESSAGE:
        raise MessageError(f"a message is 1–{MAX_MESSAGE} bytes, got {len(raw)}")
    return len(raw).to_bytes(2, "big") + raw


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    """One framed message from ``sock`` (its timeout applies); ConnectionError when
    the peer closes, MessageError for a length outside 1–:data:`MAX_MESSAGE`."""
    n = int.from_bytes(_recv_exact(sock, 2), "big")
    if not 0 < n <= MAX_MESSAGE:
        raise MessageError(f"a message is 1–{MAX_MESSAGE} bytes, the prefix says {n}")
    return _recv_exact(sock, n)


def send_message(sock: socket.socket, doc: dict) -> bytes:
    raw = encode(doc)
    sock.sendall(frame(raw))
    return raw


def transmission_time(ts: float) -> str:
    """Field 7 of Unix time ``ts``: MMDDhhmmss UTC."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%m%d%H%M%S")


def original_data(mti: str, stan: str, tx_time: str) -> str:
    """Field 90 of a reversal: the original's MTI, STAN, transmission time, acquirer
    and forwarding institution ids (42 digits)."""
    return f"{mti}{stan}{tx_time}{ACQUIRER_ID}{ACQUIRER_ID}"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` or ``HOST:PORT`` → (host, port)."""
    text = str(endpoint).removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProviderError(f"an ISO 8583 endpoint is tcp://HOST:PORT or HOST:PORT, got "
                            f"{endpoint!r}")
    return host.strip("[]"), int(port)


_STATE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS iso_stan (
        terminal_id TEXT PRIMARY KEY, last INTEGER NOT NULL)""",
    # one row per charge attempt: its key at the host, never its PAN or PIN block
    """CREATE TABLE IF NOT EXISTS iso_attempts (
        merchant_ref TEXT PRIMARY KEY, terminal_id TEXT NOT NULL, stan TEXT NOT NULL,
        tx_time TEXT NOT NULL, amount_minor INTEGER NOT NULL, currency TEXT NOT NULL,
        masked_pan TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'prepared',
        advices INTEGER NOT NULL DEFAULT 0, next_advice_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, reversed_at REAL)""",
)


class _State:
    """The connector's own records (``iso8583.sqlite``): the last STAN per terminal
    and each attempt's key, so a reversal advice can be made after a restart."""

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        private_database(path)
        self.con = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        for stmt in _STATE_SCHEMA:
            self.con.execute(stmt)

    def next_stan(self, terminal_id: str) -> str:
        with self.lock:
            self.con.execute("BEGIN IMMEDIATE")
            row = self.con.execute("SELECT last FROM iso_stan WHERE terminal_id = ?",
                                   (terminal_id,)).fetchone()
            n = (row[0] if row else 0) % 999_999 + 1
            self.con.execute("INSERT OR REPLACE INTO iso_stan (terminal_id, last) "
                             "VALUES (?, ?)", (terminal_id, n))
            self.con.execute("COMMIT")
        return f"{n:06d}"

    def record(self, ref: str, terminal_id: str, stan: str, tx_time: str,
               amount_minor: int, currency: str, masked: str, now: float) -> None:
        with self.lock:
            self.con.execute(
                "INSERT OR REPLACE INTO iso_attempts (merchant_ref, terminal_id, stan, "
                "tx_time, amount_minor, currency, masked_pan, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ref, terminal_id, stan, tx_time, amount_minor, currency, masked, now))

    def get(self, ref: str) -> dict | None:
        with self.lock:
            cur = self.con.execute("SELECT * FROM iso_attempts WHERE merchant_ref = ?",
                                   (ref,))
            row = cur.fetchone()
            return None if row is None else dict(zip([d[0] for d in cur.description], row))

    def set(self, ref: str, **values) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.lock:
            self.con.execute(f"UPDATE iso_attempts SET {cols} WHERE merchant_ref = ?",
                             (*values.values(), ref))

    def claim_advice(self, ref: str, now: float, backoff, force: bool) -> int | None:
        """The number of advices already sent for ``ref`` when the next one is due
        (``force``: now) — and that one counted and the one after it scheduled, in one
        step, so two threads never send the same advice as the first; None when not
        yet due."""
        with self.lock:
            self.con.execute("BEGIN IMMEDIATE")
            try:
                row = self.con.execute("SELECT advices, next_advice_at FROM iso_attempts "
                                       "WHERE merchant_ref = ?", (ref,)).fetchone()
                if row is None or (not force and now < row[1]):
                    return None
                self.con.execute("UPDATE iso_attempts SET advices = ?, next_advice_at = ? "
                                 "WHERE merchant_ref = ?", (row[0] + 1, now + backoff(row[0]),
                                                            ref))
                return row[0]
            finally:
                self.con.execute("COMMIT")

    def close(self) -> None:
        self.con.close()


class Iso8583Connector(ThreadedConnector):
    """A card channel's link to an acquirer's host over ISO 8583 (``protocol =
    "iso8583"`` in payments.toml): ``endpoint`` ``tcp://HOST:PORT``, the acquirer's
    ``merchant_id`` (field 42, up to 15) and ``terminal_id`` (field 41, up to 8),
    ``state_path`` the STAN and attempt records.

    One TCP connection per exchange. ``timeout_s``: how long an 0200 waits for its
    0210; a lost connection before the answer sends the same message again as 0201
    (same key: the host answers its first response). ``advice_timeout_s``: how long
    an 0420 waits for its 0430; ``advice_backoff_s``: the first wait between advices,
    doubled each time up to ``advice_backoff_max_s``."""

    #: refunds are not part of this link (the gateway refuses them, NOT_SUPPORTED)
    refunds = False
    thread_name = "iso8583"

    def __init__(self, endpoint: str, kind: str = "bank", *, timeout_s: float = 5.0,
                 merchant_id: str, terminal_id: str, state_path: str | Path,
                 context: zmq.Context | None = None, advice_timeout_s: float | None = None,
                 advice_backoff_s: float = 0.5, advice_backoff_max_s: float = 30.0,
                 clock=time.time) -> None:
        super().__init__(endpoint, "bank", timeout_s=timeout_s, context=context)
        self.host, self.port = parse_endpoint(endpoint)
        if not (isinstance(merchant_id, str) and 1 <= len(merchant_id) <= 15
                and merchant_id.isascii() and merchant_id.isalnum()):
            raise ProviderError("merchant_id is 1–15 letters and digits (field 42)")
        if not (isinstance(terminal_id, str) and 1 <= len(terminal_id) <= 8
                and terminal_id.isascii() and terminal_id.isalnum()):
            raise ProviderError("terminal_id is 1–8 letters and digits (field 41)")
        self.merchant_id = merchant_id.ljust(15)
        self.terminal_id = terminal_id.ljust(8)
        self.advice_timeout_s = float(advice_timeout_s or timeout_s)
        self.advice_backoff_s = float(advice_backoff_s)
        self.advice_backoff_max_s = float(advice_backoff_max_s)
        self.clock = clock
        self.state = _State(Path(state_path))

    # -- messages --------------------------------------------------------------------
    def _financial(self, ref: str, amount_minor: int, currency: str, card: Card) -> dict:
        _check_money(amount_minor, currency)
        _check_ref(ref)
        if not isinstance(card, Card):
            raise ProviderError("a card charge takes card=Card(…) and nothing else")
        if card.pan is None:
            raise ProviderError("an ISO 8583 charge needs the card's PAN (a network token "
                                "is sent as the PAN the network gave it)")
        num = CURRENCY_NUMERIC.get(currency.upper())
        if num is None:
            raise ProviderError(f"no ISO 4217 numeric code known for {currency!r}")
        if amount_minor >= 10 ** 12:
            raise ProviderError("amount_minor does not fit field 4 (12 digits)")
        now = self.clock()
        stan = self.state.next_stan(self.terminal_id)
        tx_time = transmission_time(now)
        local = datetime.fromtimestamp(now)
        doc = {"t": "0200", "2": card.pan, "3": "000000", "4": f"{amount_minor:012d}",
               "7": tx_time, "11": stan, "12": local.strftime("%H%M%S"),
               "13": local.strftime("%m%d"), "22": ENTRY_MODE[card.entry],
               "41": self.terminal_id, "42": self.merchant_id, "49": num}
        if card.pin_block is not None:
            doc["52"] = card.pin_block
        encode(doc)      # refused here (MessageError) before anything is written
        self.state.record(ref, self.terminal_id, stan, tx_time, amount_minor,
                          currency.upper(), card.masked, now)
        return doc

    def _advice(self, rec: dict, repeat: bool) -> dict:
        now = self.clock()
        return {"t": "0421" if repeat else "0420", "3": "000000",
                "4": f"{rec['amount_minor']:012d}", "7": transmission_time(now),
                "11": self.state.next_stan(rec["terminal_id"]), "39": "68",
                "41": rec["terminal_id"], "42": self.merchant_id,
                "49": CURRENCY_NUMERIC[rec["currency"]],
                "90": original_data("0200", rec["stan"], rec["tx_time"])}

    # -- the exchange ----------------------------------------------------------------
    def _connect(self, timeout: float) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=max(timeout, 0.01))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _exchange(self, doc: dict, timeout: float, *, repeats: int = 0) -> dict | None:
        """Send ``doc``, the matching response or None when none came in ``timeout``.
        A connection lost before the answer sends it again (0201/0421, same key) up to
        ``repeats`` times while time remains."""
        deadline = time.monotonic() + timeout
        want = MTI[doc["t"]]
        tries = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                with self._connect(left) as s:
                    send_message(s, doc)
                    while True:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return None
                        s.settimeout(left)
                        try:
                            reply = decode(read_frame(s))
                        except MessageError as exc:
                            log.warning("iso8583 %s: a bad reply from %s:%d: %s", doc["t"],
                                        self.host, self.port, exc.message)
                            continue
                        if reply["t"] == want and reply.get("11") == doc["11"] \
                                and reply.get("41") == doc["41"]:
                            return reply
            except (socket.timeout, TimeoutError):
                return None
            except (ConnectionError, OSError):
                if tries >= repeats:
                    return None
                tries += 1
                doc = {**doc, "t": doc["t"][:3] + "1"}      # the repeat: same key
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _charge_reply(self, ref: str, doc: dict) -> dict | None:
        """The 0200's exchange as a reply map (:meth:`Connector.result` reads it);
        None when no answer came in time — then the first reversal advice goes out."""
        reply = self._exchange(doc, self.timeout_s, repeats=2)
        if reply is None:
            log.warning("iso8583 0200 %s (card %s): no answer from %s:%d in %.2f s",
                        ref, mask_pan(doc["2"]), self.host, self.port, self.timeout_s)
            self.state.set(ref, state="unanswered")
            self.settle(ref)
            return None
        code = reply.get("39", "")
        status = RESPONSES.get(code, "failed")
        self.state.set(ref, state="approved" if status == "paid" else "answered")
        log.info("iso8583 0200 %s (card %s) → %s", ref, mask_pan(doc["2"]), code)
        return {"ok": True, "status": status, "code": None if code == "00" else code,
                "provider_ref": reply.get("37"), "auth_code": reply.get("38"),
                "paid_minor": int(reply["4"]) if status == "paid" else 0,
                "message": DECLINES["bank"].get(code, ("", ""))[1]}

    def settle(self, ref: str, *, force: bool = False) -> ProviderResult:
        """Undo an attempt whose outcome is unknown (or a paid one being cancelled):
        one reversal advice, if due (``force``: now), ``reversed`` once the host has
        acknowledged one, else ``unknown`` — the next is due after the back-off."""
        rec = self.state.get(ref)
        if rec is None:
            return ProviderResult("not_found", merchant_ref=ref,
                                  message="no ISO 8583 attempt under this merchant_ref")
        if rec["state"] == "reversed":
            return ProviderResult("reversed", merchant_ref=ref, message="reversal acknowledged")
        tries = self.state.claim_advice(
            ref, self.clock(), lambda n: min(self.advice_backoff_s * (2 ** min(n, 30)),
                                             self.advice_backoff_max_s), force)
        if tries is None:
            return ProviderResult("unknown", decline_code="TIMEOUT", merchant_ref=ref,
                                  message="reversal advice not yet acknowledged")
        reply = self._exchange(self._advice(rec, repeat=tries > 0), self.advice_timeout_s)
        if reply is None:
            log.warning("iso8583 0420 %s: advice %d not acknowledged", ref, tries + 1)
            return ProviderResult("unknown", decline_code="TIMEOUT", merchant_ref=ref,
                                  message=f"reversal advice {tries + 1} not acknowledged")
        self.state.set(ref, state="reversed", reversed_at=self.clock())
        log.info("iso8583 0430 %s: reversal acknowledged after %d advice(s)", ref, tries + 1)
        return ProviderResult("reversed", merchant_ref=ref, message="reversal acknowledged")

    # -- the gateway's ops (charge, prepare_charge, post, answers: ThreadedConnector) ---
    def _charge_job(self, merchant_ref: str, amount_minor: int, currency: str,
                    terminal: str | None, card: Card | None = None, **other) -> dict:
        if other:
            raise ProviderError("an ISO 8583 charge takes card=Card(…) and nothing else")
        return self._financial(merchant_ref, amount_minor, currency, card)

    def query(self, merchant_ref: str) -> ProviderResult:
        """ISO 8583 has no query: an open charge is settled by reversal advice
        (:meth:`settle`), sent when due."""
        _check_ref(merchant_ref)
        return self.settle(merchant_ref)

    def reverse(self, merchant_ref: str) -> ProviderResult:
        _check_ref(merchant_ref)
        return self.settle(merchant_ref, force=True)

    def refund(self, merchant_ref: str, refund_ref: str, amount_minor: int) -> ProviderResult:
        raise ProviderError("refunds over ISO 8583 (a 0200 with processing code 20) are "
                            "not part of this link: reverse the same day",
                            code="NOT_SUPPORTED")

    def bill(self, date: str, inject=None):
        raise ProviderError("an ISO 8583 acquirer's settlement file is not fetched over "
                            "this link", code="NO_BILL")

    def stats(self) -> dict | None:
        return None

    def configure(self, **knobs) -> dict | None:
        raise ProviderError("an acquirer host is not configured over ISO 8583",
                            code="NOT_SUPPORTED")

    def totals(self, date: str) -> dict:
        """The day's totals (0500/0510) for this terminal: the purchases that stand
        (approved, not reversed) and the reversals acknowledged, by the UTC date of
        field 7, as this side holds them, against the host's. ``agreed``: the host
        answered 00 (95: its totals differ; it sends its own in 76/88). ProviderError
        ``TIMEOUT`` when it does not answer."""
        day = datetime.strptime(date, "%Y-%m-%d")
        mmdd = day.strftime("%m%d")
        with self.state.lock:
            rows = self.state.con.execute(
                "SELECT state, COUNT(*), COALESCE(SUM(amount_minor), 0) FROM iso_attempts "
                "WHERE terminal_id = ? AND substr(tx_time, 1, 4) = ? AND substr(datetime("
                "created_at, 'unixepoch'), 1, 4) = ? GROUP BY state",
                (self.terminal_id, mmdd, date[:4])).fetchall()
        by = {r[0]: (r[1], r[2]) for r in rows}
        ours, back = by.get("approved", (0, 0)), by.get("reversed", (0, 0))
        doc = {"t": "0500", "7": transmission_time(self.clock()),
               "11": self.state.next_stan(self.terminal_id), "15": mmdd,
               "41": self.terminal_id, "42": self.merchant_id, "76": f"{ours[0]:010d}",
               "77": f"{back[0]:010d}", "88": f"{ours[1]:016d}", "89": f"{back[1]:016d}"}
        reply = self._exchange(doc, self.timeout_s)
        if reply is None:
            raise ProviderError(f"no 0510 from {self.host}:{self.port} in "
                                f"{self.timeout_s:g} s", code="TIMEOUT")
        return {"date": date, "agreed": reply["39"] == "00", "code": reply["39"],
                "ours": {"count": ours[0], "amount_minor": ours[1]},
                "reversed": {"count": back[0], "amount_minor": back[1]},
                "host": {"count": int(reply["76"]), "amount_minor": int(reply["88"])}}

    def ping(self) -> bool:
        """An 0800 network echo answered by an 0810."""
        doc = {"t": "0800", "7": transmission_time(self.clock()),
               "11": self.state.next_stan(self.terminal_id), "41": self.terminal_id}
        return self._exchange(doc, self.timeout_s) is not None

