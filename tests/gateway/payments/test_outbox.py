"""The SMS outbox (gateway/payments/outbox.py): idempotent enqueue, phone checks, delivery to
a file sink, retries with backoff then ``failed``, and a crash between ``sending``
and ``sent`` redelivered once with nothing lost."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat

import pytest

from lanecore.core.errors import LanecoreError
from lanecore.gateway.payments.outbox import (FAILED, PENDING, SENDING, SENT, ConsoleSink,
                                              FileSink, Outbox, OutboxError,
                                              normalise_phone, sink_from_url)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

PHONE = "+447700900123"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recording:
    """A sink that keeps what it is given and fails while ``fail`` says so."""

    def __init__(self, fail: int = 0, error: BaseException | None = None) -> None:
        self.got, self.fail = [], fail
        self.error = error or ConnectionError("provider timed out")

    def send(self, message) -> None:
        self.got.append(message.msg_ref)
        if self.fail:
            self.fail -= 1
            raise self.error


class Crash(BaseException):
    """The process dying inside the sink (not an Exception: nothing catches it)."""


class CrashAfterWriting(FileSink):
    """Writes the line, then the process "dies" before the outbox marks it sent."""

    def __init__(self, path, crash_on: str) -> None:
        super().__init__(path)
        self.crash_on = crash_on

    def send(self, message) -> None:
        super().send(message)
        if message.msg_ref == self.crash_on:
            raise Crash()


def connect(path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "store.db"


@pytest.fixture
def clock():
    return Clock()


def code_of(fn, *a, **kw) -> str:
    with pytest.raises(OutboxError) as info:
        fn(*a, **kw)
    assert isinstance(info.value, LanecoreError)
    return info.value.code


def read_lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()]


# -- enqueue --------------------------------------------------------------------------

def test_enqueue_is_idempotent(db, clock):
    box = Outbox(connect(db), Recording(), clock=clock)
    first = box.enqueue("rcpt-S001-A1B2-0001", PHONE, "Total £3.45")
    assert (first.state, first.tries, first.encoding, first.segments) == (PENDING, 0,
                                                                          "GSM-7", 1)
    clock.t += 5
    again = box.enqueue("rcpt-S001-A1B2-0001", "+44 7700 900123", "Total £3.45")
    assert again == first                               # same row, same created_at
    assert box.counts() == {PENDING: 1, SENDING: 0, SENT: 0, FAILED: 0}
    box.deliver_pending()
    # still the same answer once sent: a retried request never sends twice
    assert box.enqueue("rcpt-S001-A1B2-0001", PHONE, "Total £3.45").state == SENT
    assert box.deliver_pending() == 0
    # another process opening the same database sees the same row
    other = Outbox(connect(db), Recording(), clock=clock)
    assert other.get("rcpt-S001-A1B2-0001").state == SENT
    assert other.get("nope") is None


def test_ref_conflict(db, clock):
    box = Outbox(connect(db), Recording(), clock=clock)
    box.enqueue("m1", PHONE, "hello")
    assert code_of(box.enqueue, "m1", PHONE, "hello!") == "REF_CONFLICT"
    assert code_of(box.enqueue, "m1", "+447700900124", "hello") == "REF_CONFLICT"
    assert box.get("m1").text == "hello" and box.counts()[PENDING] == 1


@pytest.mark.parametrize("phone", [
    "07700900123", "447700900123", "+0447700900123", "+1234567", "+1234567890123456",
    "++447700900123", "+44 7700 90012a", "+447700900123\n", "", 447700900123, None,
    "+" + "1" * 40,
])
def test_bad_phone(db, phone):
    box = Outbox(connect(db), Recording())
    assert code_of(box.enqueue, "m1", phone, "hi") == "BAD_PHONE"


@pytest.mark.parametrize("phone,stored", [
    ("+447700900123", "+447700900123"), ("+44 7700 900123", "+447700900123"),
    ("+1 (415) 555-0100", "+14155550100"), ("+86 138.0013.8000", "+8613800138000"),
    ("+12345678", "+12345678"), ("+123456789012345", "+123456789012345"),
])
def test_phone_forms(phone, stored):
    assert normalise_phone(phone) == stored


@pytest.mark.parametrize("ref,text", [
    ("", "hi"), ("has space", "hi"), ("-lead", "hi"), ("x" * 65, "hi"), (7, "hi"),
    ("m1", ""), ("m1", "   "), ("m1", b"hi"), ("m1", "bell\x07"), ("m1", "a" * 1531),
    ("m1", "中" * 671),
])
def test_bad_message(db, ref, text):
    box = Outbox(connect(db), Recording())
    assert code_of(box.enqueue, ref, PHONE, text) == "BAD_MESSAGE"


def test_size_limits_and_encoding_recorded(db):
    box = Outbox(connect(db), Recording())
    assert box.enqueue("long", PHONE, "a" * 1530).segments == 10
    m = box.enqueue("zh", PHONE, "联华超市 谢谢惠顾\n" + "中" * 61)
    assert (m.encoding, m.segments) == ("UCS-2", 2)


def test_outbox_settings(db):
    assert code_of(Outbox, sqlite3.connect(db), Recording()) == "BAD_REQUEST"
    assert code_of(Outbox, connect(db), object()) == "BAD_SINK"
    assert code_of(Outbox, connect(db), Recording(), max_tries=0) == "BAD_REQUEST"
    assert code_of(Outbox, connect(db), Recording(), backoff_s=-1) == "BAD_REQUEST"
    assert code_of(Outbox(connect(db), Recording()).deliver_pending, 0) == "BAD_REQUEST"


# -- delivery -------------------------------------------------------------------------

def test_delivery_to_a_file_sink(db, tmp_path, clock):
    out = tmp_path / "sms.jsonl"
    box = Outbox(connect(db), sink_from_url(f"file:{out}"), clock=clock)
    texts = {"m1": "Total £3.45", "m2": "Total €3.45", "m3": "联华超市 ¥3.45"}
    for ref, text in texts.items():
        box.enqueue(ref, PHONE, text)
        clock.t += 1
    assert box.deliver_pending(limit=2) == 2                # oldest first
    assert [x["msg_ref"] for x in read_lines(out)] == ["m1", "m2"]
    assert box.deliver_pending() == 1
    lines = read_lines(out)
    assert {x["msg_ref"]: x["text"] for x in lines} == texts
    assert lines[2] == {"msg_ref": "m3", "phone": PHONE, "text": "联华超市 ¥3.45",
                        "encoding": "UCS-2", "segments": 1, "attempt": 1}
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert box.deliver_pending() == 0
    m = box.get("m1")
    assert (m.state, m.tries, m.sent_at, m.last_error) == (SENT, 1, clock.t, None)
    assert box.counts() == {PENDING: 0, SENDING: 0, SENT: 3, FAILED: 0}


def test_a_failing_sink_is_retried_with_backoff_then_failed(db, clock):
    sink = Recording(fail=99)
    box = Outbox(connect(db), sink, max_tries=3, backoff_s=10, max_backoff_s=15,
                 clock=clock)
    box.enqueue("m1", PHONE, "hi")
    assert box.deliver_pending() == 0
    m = box.get("m1")
    assert (m.state, m.tries, m.next_at) == (PENDING, 1, clock.t + 10)
    assert m.last_error == "ConnectionError: provider timed out"
    clock.t += 9.9
    assert box.deliver_pending() == 0 and sink.got == ["m1"]      # still backing off
    clock.t += 0.1
    assert box.deliver_pending() == 0 and sink.got == ["m1", "m1"]
    assert box.get("m1").next_at == clock.t + 15                  # 20, capped at 15
    clock.t += 15
    assert box.deliver_pending() == 0 and len(sink.got) == 3
    m = box.get("m1")
    assert (m.state, m.tries, m.sent_at) == (FAILED, 3, None)
    assert "provider timed out" in m.last_error
    clock.t += 10 ** 6
    assert box.deliver_pending() == 0 and len(sink.got) == 3      # failed is final
    assert box.counts()[FAILED] == 1


def test_a_sink_that_recovers(db, clock):
    sink = Recording(fail=1, error=RuntimeError("x" * 2000))
    box = Outbox(connect(db), sink, backoff_s=30, clock=clock)
    box.enqueue("m1", PHONE, "hi")
    box.enqueue("m2", PHONE, "there")
    assert box.deliver_pending() == 1                             # m1 failed, m2 sent
    assert len(box.get("m1").last_error) == 500
    clock.t += 30
    assert box.deliver_pending() == 1
    m = box.get("m1")
    assert (m.state, m.tries, m.last_error) == (SENT, 2, None)
    assert sink.got == ["m1", "m2", "m1"]


def test_a_crash_between_sending_and_sent_redelivers_once(db, tmp_path, clock):
    out = tmp_path / "sms.jsonl"
    box = Outbox(connect(db), CrashAfterWriting(out, crash_on="m2"), lease_s=60,
                 clock=clock)
    for ref in ("m1", "m2", "m3"):
        box.enqueue(ref, PHONE, f"receipt {ref}")
        clock.t += 1
    with pytest.raises(Crash):
        box.deliver_pending()
    # m1 went and was marked; m2 went but the process died before "sent"; m3 was
    # never reached
    assert [box.get(r).state for r in ("m1", "m2", "m3")] == [SENT, SENDING, PENDING]

    # the process restarts: a new connection, a sink that works
    clock.t += 30
    again = Outbox(connect(db), FileSink(out), lease_s=60, clock=clock)
    assert again.deliver_pending() == 1                          # m3; m2's lease holds
    assert again.get("m2").state == SENDING
    clock.t += 30
    assert again.deliver_pending() == 1                          # m2, again
    assert again.deliver_pending() == 0
    lines = read_lines(out)
    refs = [x["msg_ref"] for x in lines]
    assert refs == ["m1", "m2", "m3", "m2"]                      # m2 twice, nothing lost
    assert [x["attempt"] for x in lines if x["msg_ref"] == "m2"] == [1, 2]
    assert {x["msg_ref"]: x["text"] for x in lines} == {r: f"receipt {r}"
                                                        for r in ("m1", "m2", "m3")}
    assert again.counts() == {PENDING: 0, SENDING: 0, SENT: 3, FAILED: 0}


class CrashOn(Recording):
    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref

    def send(self, message) -> None:
        self.got.append(message.msg_ref)
        if message.msg_ref == self.ref:
            raise Crash()


def test_a_message_that_kills_every_deliverer_ends_failed(db, clock):
    sink = CrashOn("poison")
    box = Outbox(connect(db), sink, max_tries=2, lease_s=10, clock=clock)
    box.enqueue("poison", PHONE, "boom")
    clock.t += 1
    box.enqueue("fine", PHONE, "ok")
    with pytest.raises(Crash):
        box.deliver_pending()
    # the attempt is charged to the message that was being delivered, no other
    assert (box.get("fine").state, box.get("fine").tries) == (PENDING, 0)
    clock.t += 10
    with pytest.raises(Crash):
        box.deliver_pending()                   # "fine" (due first), then poison again
    assert box.get("fine").state == SENT and sink.got == ["poison", "fine", "poison"]
    clock.t += 10
    quiet = Recording()
    box = Outbox(connect(db), quiet, max_tries=2, lease_s=10, clock=clock)
    assert box.deliver_pending() == 0 and quiet.got == []
    m = box.get("poison")
    assert (m.state, m.tries) == (FAILED, 2)
    assert "stopped during delivery" in m.last_error


def test_inside_a_callers_transaction(db, clock):
    con = connect(db)
    box = Outbox(con, Recording(), clock=clock)
    con.execute("BEGIN")
    box.enqueue("m1", PHONE, "hi")
    con.execute("ROLLBACK")                                      # the caller's choice
    assert box.get("m1") is None


# -- sinks ----------------------------------------------------------------------------

def test_sink_from_url(tmp_path):
    assert sink_from_url(f"file:{tmp_path}/a.jsonl").path == f"{tmp_path}/a.jsonl"
    assert sink_from_url(f"file://{tmp_path}/a.jsonl").path == f"{tmp_path}/a.jsonl"
    assert sink_from_url(f"file://localhost{tmp_path}/a.jsonl").path == \
        f"{tmp_path}/a.jsonl"
    assert sink_from_url("file:sms.jsonl").path == "sms.jsonl"
    assert isinstance(sink_from_url("console:"), ConsoleSink)
    assert isinstance(sink_from_url("console:stderr"), ConsoleSink)


@pytest.mark.parametrize("url", [
    "", "http://sms.example/send", "file:", "file://", "file://otherhost/x",
    "file:/tmp/dir/", "console:printer", "console", "FILE:/x", None, 7, "file:/a\x00b",
])
def test_bad_sink(url):
    assert code_of(sink_from_url, url) == "BAD_SINK"


def test_console_sink(db, clock):
    stream = io.StringIO()
    box = Outbox(connect(db), ConsoleSink(stream), clock=clock)
    box.enqueue("m1", PHONE, "Total £3.45\nVerify AbC")
    assert box.deliver_pending() == 1
    assert stream.getvalue() == (f"SMS m1 to {PHONE} (GSM-7, 1 segment, attempt 1)\n"
                                 "Total £3.45\nVerify AbC\n\n")


def test_console_sink_default_is_stdout(db, clock, capsys):
    box = Outbox(connect(db), sink_from_url("console:"), clock=clock)
    box.enqueue("m1", PHONE, "hi")
    box.deliver_pending()
    assert "SMS m1 to" in capsys.readouterr().out


def test_a_file_sink_that_cannot_write_is_a_retry(db, tmp_path, clock):
    box = Outbox(connect(db), FileSink(tmp_path / "missing" / "sms.jsonl"), clock=clock)
    box.enqueue("m1", PHONE, "hi")
    assert box.deliver_pending() == 0
    m = box.get("m1")
    assert m.state == PENDING and m.last_error.startswith("FileNotFoundError")
