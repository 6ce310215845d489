"""Daily reconciliation: the ledger's charges against each provider's bill file.

Pure domain code: rows in, a :class:`Report` out. Reading the ledger database and the
bill files is the caller's job (``lanecore recon`` in cli.py); the bill format and the
meaning of every finding are in ``docs/pay/providers.md``.

A **bill row** is one line of a provider's daily bill (all money in integer minor
units, times as ISO 8601 UTC strings)::

    trade_time, merchant_ref, provider_ref, type, amount_minor, currency, status,
    fee_minor, refund_ref

``type`` is ``charge`` (one per trade that was paid, with ``status`` ``SUCCESS``,
``REFUND`` once any refund was made, or ``REVERSED`` once cancelled), ``reverse``
(the money of a paid trade returned by a cancel) or ``refund`` (one per refund, keyed
by ``refund_ref``).

A **ledger row** is a mapping with ``merchant_ref``, ``channel``, ``amount_minor``,
``currency``, ``state`` (the ledger's state names) and, for refunds, ``type:
"refund"`` and ``refund_ref`` (ledger rows without ``type`` are charges).

The same module holds :func:`inject`, which corrupts a bill on purpose (the provider
simulator uses it, and so does the property test), so a test knows exactly which
discrepancies a day holds.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from lanecore.core.errors import LanecoreError

#: The bill CSV's columns, in order.
BILL_COLUMNS = ("trade_time", "merchant_ref", "provider_ref", "type", "amount_minor",
                "currency", "status", "fee_minor", "refund_ref")
BILL_TYPES = ("charge", "reverse", "refund")
#: Charge-line statuses: the trade is still paid (SUCCESS, or REFUND after a refund)
#: or was cancelled after paying (REVERSED).
STILL_PAID = frozenset(("SUCCESS", "REFUND"))
#: Ledger states in which the merchant believes it holds the money.
LEDGER_PAID = "paid"
LEDGER_REVERSED = "reversed"
#: The kinds of discrepancy :func:`inject` can add, each a count.
INJECT_KINDS = ("drop", "extra", "amount", "duplicate")
#: The finding categories of a report (also the ``finding`` column of its CSV).
FINDINGS = ("missing_in_ledger", "missing_at_provider", "amount_mismatch",
            "status_mismatch", "duplicate")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: The provider (and the name of its bill files, ``KIND-DATE.csv``) behind each
#: channel kind that calls one: card channels call the bank.
PROVIDER_KIND = {"wechat": "wechat", "alipay": "alipay", "unionpay": "unionpay",
                 "card": "bank"}
#: Channel kinds the payment gateway settles itself: no provider bill, their "bill"
#: is the gateway's own record of the day (the drawer's, the member accounts').
LOCAL_KINDS = ("cash", "stored_value")


class ReconError(LanecoreError):
    """``BAD_BILL`` (a bill line that cannot be read), ``BAD_INJECT`` (an injection
    that asks for more lines than the bill has, or an unknown kind), ``BAD_DATE``,
    ``AMBIGUOUS_BILL`` (a provider's bill several channels could own)."""

    code = "BAD_BILL"


@dataclass(frozen=True)
class BillRow:
    """One bill line (money in minor units; ``channel`` is the provider kind the bill
    came from, not a CSV column)."""

    trade_time: str
    merchant_ref: str
    provider_ref: str
    type: str
    amount_minor: int
    currency: str
    status: str
    fee_minor: int
    refund_ref: str = ""
    channel: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes a line unique in an honest bill."""
        return (self.type, self.merchant_ref, self.refund_ref)

    def to_csv(self) -> dict:
        """The line as a CSV row (column → text)."""
        d = asdict(self)
        d.pop("channel")
        return {k: str(d[k]) for k in BILL_COLUMNS}


def check_date(date: str) -> str:
    """``date`` if it is ``YYYY-MM-DD``, else ReconError ``BAD_DATE``."""
    if not (isinstance(date, str) and _DATE.match(date)):
        raise ReconError(f"date must be YYYY-MM-DD, got {date!r}", code="BAD_DATE")
    return date


def parse_bill(rows: Iterable[Mapping], channel: str) -> list[BillRow]:
    """Bill rows from CSV dicts (``csv.DictReader`` over a bill file) of ``channel``.

    Raises ReconError ``BAD_BILL`` naming the line (1 = the first data line)."""
    out = []
    for n, r in enumerate(rows, 1):
        try:
            row = BillRow(
                trade_time=str(r["trade_time"]), merchant_ref=str(r["merchant_ref"]),
                provider_ref=str(r["provider_ref"]), type=str(r["type"]),
                amount_minor=int(r["amount_minor"]), currency=str(r["currency"]),
                status=str(r["status"]), fee_minor=int(r["fee_minor"] or 0),
                refund_ref=str(r.get("refund_ref") or ""), channel=channel)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReconError(f"{channel} bill line {n}: {type(exc).__name__}: {exc}") from None
        if row.type not in BILL_TYPES:
            raise ReconError(f"{channel} bill line {n}: type {row.type!r} is not one of "
                             f"{', '.join(BILL_TYPES)}")
        if not row.merchant_ref or (row.type == "refund") != bool(row.refund_ref):
            raise ReconError(f"{channel} bill line {n}: needs a merchant_ref, and a "
                             "refund_ref exactly on refund lines")
        out.append(row)
    return out


def bill_csv(rows: Iterable[BillRow]) -> str:
    """Bill rows as lanecore's bill CSV text (:data:`BILL_COLUMNS`, a header line,
    ``\n`` line ends): the simulator's bill, and a provider's own bill normalised
    (``DATA_DIR/bills/CHANNEL-DATE.csv`` beside the file as it came)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=BILL_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r.to_csv())
    return buf.getvalue()


def bill_channel(prefix: str, channels: Mapping[str, str]) -> str:
    """The ledger channel a bill file ``PREFIX-DATE.csv`` belongs to. ``channels`` is
    the payment gateway's ``{channel name: kind}`` (``payments.toml``). A prefix that
    names a channel is that channel (the gateway's own copies, ``DATA_DIR/bills/``);
    one that names a provider (``bank``) is the one channel of a kind calling it
    (``card``). Raises ReconError ``AMBIGUOUS_BILL`` when several channels call that
    provider; a prefix nothing names is its own channel (its lines will not match)."""
    if prefix in channels:
        return prefix
    callers = sorted(name for name, kind in channels.items()
                     if PROVIDER_KIND.get(kind) == prefix)
    if len(callers) > 1:
        raise ReconError(f"a {prefix} bill could be channel {' or '.join(callers)}: "
                         "name the file by its channel (CHANNEL-DATE.csv)",
                         code="AMBIGUOUS_BILL")
    return callers[0] if callers else prefix


def local_bill(ledger_rows: Iterable[Mapping], records: Mapping[str, int],
               channel: str, *, source: str) -> list[BillRow]:
    """The "bill" of a channel the gateway settles itself (cash, stored value): one
    paid charge line per payment its own record holds (``records``: merchant_ref →
    amount taken, e.g. ``core.pay.cash.paid_records``), among the day's ledger
    charges of ``channel``. ``source`` prefixes the line's provider_ref."""
    out = []
    for r in ledger_rows:
        if r.get("type", "charge") != "charge" or r["channel"] != channel:
            continue
        ref = r["merchant_ref"]
        if ref in records:
            out.append(BillRow(trade_time="", merchant_ref=ref,
                               provider_ref=f"{source}:{ref}", type="charge",
                               amount_minor=records[ref], currency=str(r["currency"]),
                               status="SUCCESS", fee_minor=0, channel=channel))
    return out


# ----------------------------------------------------------------------------------
# Injection (what a test corrupts on purpose)
# ----------------------------------------------------------------------------------

def inject(rows: list[BillRow], spec: Mapping) -> tuple[list[BillRow], dict]:
    """Corrupt a bill: ``spec`` = ``{"drop": n, "extra": n, "amount": n, "duplicate":
    n, "seed": s}`` (missing kinds count 0). Returns ``(rows, record)`` where
    ``record`` says exactly what was done::

        {"seed": s, "drop": [merchant_ref…], "extra": [merchant_ref…],
         "amount": [{"merchant_ref", "from", "to"}…], "duplicate": [merchant_ref…]}

    Only ``charge`` lines of trades still paid (``SUCCESS``) are dropped, changed or
    duplicated — each a different line, so every discrepancy stays visible on its
    own; an ``extra`` line is a paid trade under a merchant reference nobody used
    (``INJ-…``). Raises ReconError ``BAD_INJECT`` when the bill has too few lines."""
    unknown = set(spec) - set(INJECT_KINDS) - {"seed"}
    if unknown:
        raise ReconError(f"unknown injection kind(s) {', '.join(sorted(unknown))}; "
                         f"use {', '.join(INJECT_KINDS)} and seed", code="BAD_INJECT")
    counts = {}
    for k in INJECT_KINDS:
        v = spec.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ReconError(f"inject {k} must be a count ≥ 0, got {v!r}", code="BAD_INJECT")
        counts[k] = v
    seed = spec.get("seed", 0)
    rng = random.Random(seed)
    eligible = [i for i, r in enumerate(rows) if r.type == "charge" and r.status == "SUCCESS"]
    need = counts["drop"] + counts["amount"] + counts["duplicate"]
    if need > len(eligible):
        raise ReconError(f"the bill has {len(eligible)} paid charge lines; the injection "
                         f"needs {need}", code="BAD_INJECT")
    picked = rng.sample(eligible, need)
    drop = set(picked[:counts["drop"]])
    amount = picked[counts["drop"]:counts["drop"] + counts["amount"]]
    dup = set(picked[counts["drop"] + counts["amount"]:])
    record: dict = {"seed": seed, "drop": [], "extra": [], "amount": [], "duplicate": []}
    changed = {}
    for i in amount:
        r = rows[i]
        # Never zero and never the same: a change of up to ±50 %, at least 1 minor unit.
        delta = rng.randint(1, max(1, r.amount_minor // 2))
        new = r.amount_minor - delta if rng.random() < 0.5 and r.amount_minor > delta \
            else r.amount_minor + delta
        changed[i] = new
        record["amount"].append({"merchant_ref": r.merchant_ref, "from": r.amount_minor,
                                 "to": new})
    out: list[BillRow] = []
    for i, r in enumerate(rows):
        if i in drop:
            record["drop"].append(r.merchant_ref)
            continue
        if i in changed:
            r = BillRow(**{**asdict(r), "amount_minor": changed[i]})
        out.append(r)
        if i in dup:
            record["duplicate"].append(r.merchant_ref)
            out.append(r)
    template = rows[0] if rows else None
    for _ in range(counts["extra"]):
        ref = f"INJ-{rng.getrandbits(48):012x}"
        amount_minor = rng.randint(1, 50_000)
        out.append(BillRow(
            trade_time=template.trade_time if template else "",
            merchant_ref=ref, provider_ref=f"X{rng.getrandbits(64):016x}", type="charge",
            amount_minor=amount_minor,
            currency=template.currency if template else "CNY", status="SUCCESS",
            fee_minor=0, refund_ref="", channel=template.channel if template else ""))
        record["extra"].append(ref)
    return out, record


# ----------------------------------------------------------------------------------
# Reconciliation
# ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One discrepancy (or, in ``Report.matched``, one agreement). Amounts in minor
    units; ``None`` where that side has no line."""

    finding: str
    channel: str
    merchant_ref: str
    refund_ref: str = ""
    ledger_amount_minor: int | None = None
    bill_amount_minor: int | None = None
    ledger_state: str | None = None
    bill_status: str | None = None
    detail: str = ""


@dataclass
class ChannelTotals:
    """Settlement totals of one channel for the day, minor units. ``charged_minor``
    counts every paid trade's charge line once; ``net_minor`` = charged − reversed −
    refunded − fees, what the provider owes the merchant."""

    charges: int = 0
    charged_minor: int = 0
    reversed_minor: int = 0
    refunded_minor: int = 0
    fee_minor: int = 0
    net_minor: int = 0
    ledger_paid: int = 0
    ledger_paid_minor: int = 0


@dataclass
class Report:
    """The outcome of :func:`reconcile`. Each list holds :class:`Finding` rows."""

    matched: list = field(default_factory=list)
    missing_in_ledger: list = field(default_factory=list)
    missing_at_provider: list = field(default_factory=list)
    amount_mismatch: list = field(default_factory=list)
    status_mismatch: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    totals: dict = field(default_factory=dict)          # channel → ChannelTotals
    #: Channels with paid ledger charges but no bill: channel → number of charges.
    unreconciled: dict = field(default_factory=dict)
    refunds_checked: bool = True

    @property
    def discrepancies(self) -> list[Finding]:
        return (self.missing_in_ledger + self.missing_at_provider + self.amount_mismatch
                + self.status_mismatch + self.duplicates)

    @property
    def clean(self) -> bool:
        return not self.discrepancies and not self.unreconciled

    def rows(self) -> list[dict]:
        """Every finding, matched ones last, as CSV rows."""
        return [asdict(f) for f in self.discrepancies + self.matched]

    def to_dict(self) -> dict:
        return {
            "clean": self.clean,
            "counts": {"matched": len(self.matched),
                       "missing_in_ledger": len(self.missing_in_ledger),
                       "missing_at_provider": len(self.missing_at_provider),
                       "amount_mismatch": len(self.amount_mismatch),
                       "status_mismatch": len(self.status_mismatch),
                       "duplicate": len(self.duplicates)},
            "discrepancies": [asdict(f) for f in self.discrepancies],
            "totals": {ch: asdict(t) for ch, t in sorted(self.totals.items())},
            "unreconciled": dict(self.unreconciled),
            "refunds_checked": self.refunds_checked,
        }

    def summary(self) -> str:
        """A readable summary: counts, each discrepancy, totals per channel."""
        d = self.to_dict()
        lines = ["reconciliation: " + ("clean" if self.clean else "DISCREPANCIES"),
                 "  " + ", ".join(f"{k} {v}" for k, v in d["counts"].items())]
        for f in self.discrepancies:
            ref = f.merchant_ref + (f" refund {f.refund_ref}" if f.refund_ref else "")
            lines.append(f"  {f.finding:<20} {f.channel:<9} {ref}: ledger "
                         f"{_amt(f.ledger_amount_minor)} ({f.ledger_state or '-'}), bill "
                         f"{_amt(f.bill_amount_minor)} ({f.bill_status or '-'})"
                         + (f" — {f.detail}" if f.detail else ""))
        lines.append("  channel    charges     charged    reversed    refunded        fee"
                     "         net   ledger paid")
        for ch, t in sorted(self.totals.items()):
            lines.append(f"  {ch:<9} {t.charges:>8} {t.charged_minor:>11} "
                         f"{t.reversed_minor:>11} {t.refunded_minor:>11} {t.fee_minor:>10} "
                         f"{t.net_minor:>11} {t.ledger_paid_minor:>13}")
        for ch, n in sorted(self.unreconciled.items()):
            lines.append(f"  no bill for {ch}: {n} paid charge(s) not reconciled")
        if not self.refunds_checked:
            lines.append("  refunds: not in the ledger rows given, not reconciled")
        return "\n".join(lines)


def _amt(v: int | None) -> str:
    return "-" if v is None else str(v)


def reconcile(ledger_rows: Iterable[Mapping], bill_rows: Iterable[BillRow], *,
              channels: Iterable[str] | None = None, check_refunds: bool = True) -> Report:
    """Match one day's ledger rows against the bill rows of one or more channels.

    Charges are matched by ``merchant_ref``, refunds by ``refund_ref`` (only when
    ``check_refunds``; otherwise refund lines count in the totals only). Ledger
    charges of a channel without any bill line are not reported one by one but
    counted in ``Report.unreconciled`` (a missing bill file is one problem, not
    hundreds). ``channels`` names the channels whose bills were given — pass it,
    since an empty bill (or one whose every line went missing) is still a bill; by
    default, the channels that appear in ``bill_rows``. A ledger charge ``reversed`` with no charge line is a trade cancelled
    before it was paid: nothing moved, nothing to report. Open or failed ledger
    charges with a paid charge line are ``missing_in_ledger`` (the provider holds
    money the ledger does not count as paid)."""
    ledger_rows = [dict(r) for r in ledger_rows]
    bill_rows = list(bill_rows)
    report = Report(refunds_checked=check_refunds)
    billed_channels = {r.channel for r in bill_rows} if channels is None else set(channels)
    billed_channels |= {r.channel for r in bill_rows}

    # Duplicated lines: reported once each, then counted once.
    seen: Counter = Counter(r.key for r in bill_rows)
    unique: dict[tuple, BillRow] = {}
    for r in bill_rows:
        if r.key in unique:
            continue
        unique[r.key] = r
        if seen[r.key] > 1:
            report.duplicates.append(Finding(
                "duplicate", r.channel, r.merchant_ref, r.refund_ref,
                bill_amount_minor=r.amount_minor, bill_status=r.status,
                detail=f"{r.type} line appears {seen[r.key]} times"))

    for r in unique.values():
        t = report.totals.setdefault(r.channel, ChannelTotals())
        if r.type == "charge":
            t.charges += 1
            t.charged_minor += r.amount_minor
        elif r.type == "reverse":
            t.reversed_minor += r.amount_minor
        else:
            t.refunded_minor += r.amount_minor
        t.fee_minor += r.fee_minor
    for t in report.totals.values():
        t.net_minor = t.charged_minor - t.reversed_minor - t.refunded_minor - t.fee_minor

    charges = {r["merchant_ref"]: r for r in ledger_rows if r.get("type", "charge") == "charge"}
    refunds = {r["refund_ref"]: r for r in ledger_rows if r.get("type") == "refund"}
    for r in charges.values():
        if r["state"] == LEDGER_PAID and r["channel"] in billed_channels:
            t = report.totals.setdefault(r["channel"], ChannelTotals())
            t.ledger_paid += 1
            t.ledger_paid_minor += r["amount_minor"]

    billed_charges = set()
    for r in unique.values():
        if r.type != "charge":
            continue
        billed_charges.add(r.merchant_ref)
        led = charges.get(r.merchant_ref)
        report_pair(report, led, r, paid_states=(LEDGER_PAID, LEDGER_REVERSED))

    for ref, led in charges.items():
        if ref in billed_charges or led["state"] != LEDGER_PAID:
            continue
        if led["channel"] not in billed_channels:
            report.unreconciled[led["channel"]] = report.unreconciled.get(led["channel"], 0) + 1
            continue
        report.missing_at_provider.append(Finding(
            "missing_at_provider", led["channel"], ref,
            ledger_amount_minor=led["amount_minor"], ledger_state=led["state"],
            detail="paid in the ledger, no charge line in the bill"))

    if check_refunds:
        billed_refunds = set()
        for r in unique.values():
            if r.type != "refund":
                continue
            billed_refunds.add(r.refund_ref)
            report_pair(report, refunds.get(r.refund_ref), r, paid_states=(LEDGER_PAID,))
        for ref, led in refunds.items():
            if ref in billed_refunds or led["state"] != LEDGER_PAID \
                    or led["channel"] not in billed_channels:
                continue
            report.missing_at_provider.append(Finding(
                "missing_at_provider", led["channel"], led["merchant_ref"], ref,
                ledger_amount_minor=led["amount_minor"], ledger_state=led["state"],
                detail="refund in the ledger, no refund line in the bill"))
    return report


def report_pair(report: Report, led: Mapping | None, line: BillRow, *,
                paid_states: tuple) -> None:
    """Classify one bill line against its ledger row (or None) into ``report``."""
    common = dict(channel=line.channel, merchant_ref=line.merchant_ref,
                  refund_ref=line.refund_ref, bill_amount_minor=line.amount_minor,
                  bill_status=line.status)
    if led is None or led["state"] not in paid_states:
        report.missing_in_ledger.append(Finding(
            "missing_in_ledger", ledger_amount_minor=None if led is None else led["amount_minor"],
            ledger_state=None if led is None else led["state"],
            detail="no such charge in the ledger" if led is None
            else f"the ledger has it {led['state']}", **common))
        return
    pair = dict(ledger_amount_minor=led["amount_minor"], ledger_state=led["state"], **common)
    if led["amount_minor"] != line.amount_minor:
        report.amount_mismatch.append(Finding("amount_mismatch", **pair))
        return
    if line.type == "charge":
        ledger_paid = led["state"] == LEDGER_PAID
        if ledger_paid != (line.status in STILL_PAID):
            report.status_mismatch.append(Finding(
                "status_mismatch", detail="paid on one side, reversed on the other", **pair))
            return
    report.matched.append(Finding("matched", **pair))
