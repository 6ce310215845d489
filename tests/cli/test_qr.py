"""``lanecore qr mpm`` and ``lanecore qr decode-mpm``: payloads, images, errors and
exit statuses. Most cases call ``cli.main`` in-process; a few run the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lanecore import cli
from lanecore.core.pay import emvqr as E

SHOP = ["--currency", "156", "--country", "CN", "--merchant-name", "LANECORE MART",
        "--city", "SHENZHEN", "--no-account"]
PROMPTPAY_AMOUNT = ("00020101021229370016A000000677010111011300660000000005802TH53037645404"
                    "4.226304E469")


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "lanecore", *map(str, args)],
                          input=stdin, capture_output=True, env=dict(os.environ),
                          timeout=120)


def call(capsys, *args):
    """``(exit status, stdout, stderr)`` of ``lanecore ARGS`` run in this process."""
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_mpm_json_dynamic_with_bill_terminal_and_account(capsys):
    status, out, err = call(capsys, "qr", "mpm", "--amount-minor", "1234", *SHOP,
                            "--bill", "A0001", "--terminal", "T07",
                            "--gui", "com.lanecore.pay", "--account", "M123", "--json")
    assert status == 0 and err == ""
    doc = json.loads(out)
    assert list(doc) == ["payload"]
    assert doc["payload"] == E.build_mpm(amount_minor=1234, currency="156", country="CN",
                                         merchant_name="LANECORE MART", city="SHENZHEN",
                                         bill="A0001", terminal="T07",
                                         gui="com.lanecore.pay", account="M123")
    f = E.parse(doc["payload"])
    assert f["01"] == "12" and f["54"] == "12.34" and f["53"] == "156"
    assert f["62"] == {"01": "A0001", "07": "T07"}
    assert f["26"] == {"00": "com.lanecore.pay", "01": "M123"}


def test_mpm_static_without_amount(capsys):
    status, out, _ = call(capsys, "qr", "mpm", *SHOP, "--json")
    f = E.parse(json.loads(out)["payload"])
    assert status == 0 and f["01"] == "11" and "54" not in f


@pytest.mark.parametrize("currency,minor,text", [
    ("826", "5", "0.05"), ("978", "100", "1.00"), ("840", "1999", "19.99"),
    ("764", "422", "4.22"), ("392", "500", "500"), ("752", "12345", "123.45"),
])
def test_mpm_amount_uses_the_currencys_exponent(capsys, currency, minor, text):
    args = [a if a != "156" else currency for a in SHOP]
    status, out, _ = call(capsys, "qr", "mpm", "--amount-minor", minor, *args, "--json")
    assert status == 0 and E.parse(json.loads(out)["payload"])["54"] == text


def test_mpm_terminal_art_then_payload(capsys):
    status, out, _ = call(capsys, "qr", "mpm", "--amount-minor", "1", *SHOP)
    lines = out.splitlines()
    assert status == 0 and lines[-1].startswith("000201010212")
    assert E.decode_mpm(lines[-1])["ok"]
    assert set("".join(lines[:-1])) <= set(" \u2580\u2584\u2588")
    assert len(lines) - 1 == (len(E.qr_matrix(lines[-1], border=2)) + 1) // 2


def test_mpm_png_file_reads_back_through_opencv(capsys, tmp_path):
    import cv2   # not skipped: the test fails without OpenCV

    png = tmp_path / "pay.png"
    status, out, _ = call(capsys, "qr", "mpm", "--amount-minor", "2372", *SHOP,
                          "--name-local", "联华超市", "--png", str(png), "--json")
    doc = json.loads(out)
    assert status == 0 and doc["png"] == str(png)
    assert E.parse(doc["payload"])["64"] == {"00": "ZH", "01": "联华超市"}
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(
        cv2.imread(str(png), cv2.IMREAD_GRAYSCALE))
    assert points is not None and text == doc["payload"]


def test_mpm_svg_file(capsys, tmp_path):
    svg = tmp_path / "pay.svg"
    status, out, _ = call(capsys, "qr", "mpm", *SHOP, "--svg", str(svg))
    assert status == 0 and E.decode_mpm(out.strip())["ok"]
    assert svg.read_text(encoding="utf-8") == E.qr_svg(out.strip())


@pytest.mark.parametrize("args,code", [
    (["--amount-minor", "0"], "EMV_AMOUNT"),
    (["--amount-minor", "-5"], "EMV_AMOUNT"),
    (["--amount-minor", "12.5"], "EMV_AMOUNT"),
    (["--amount-minor", "１２"], "EMV_AMOUNT"),       # full-width digits are not ASCII
    (["--currency", "999"], "EMV_CURRENCY"),
    (["--country", "China"], "EMV_FORMAT"),
    (["--merchant-name", "X" * 26], "EMV_FORMAT"),
    (["--gui", "com.lanecore.pay"], "EMV_FORMAT"),
    (["--account", "M1", "--gui", "g", "--account-tag", "60"], "EMV_FORMAT"),
])
def test_mpm_bad_input_exits_2_with_code(capsys, args, code):
    status, out, err = call(capsys, "qr", "mpm", *SHOP, *args, "--json")
    assert status == 2 and out == ""
    assert err.startswith(f"lanecore: {code}: ") and err.count("\n") == 1


def test_mpm_unwritable_image(capsys, tmp_path):
    status, out, err = call(capsys, "qr", "mpm", *SHOP, "--png",
                            str(tmp_path / "missing" / "pay.png"))
    assert status == 2 and err.startswith("lanecore: CANNOT_WRITE: ")


def test_mpm_png_and_svg_exclusive():
    p = run("qr", "mpm", *SHOP, "--png", "a.png", "--svg", "a.svg")
    assert p.returncode == 2 and b"not allowed with" in p.stderr


def test_decode_json_ok(capsys):
    status, out, _ = call(capsys, "qr", "decode-mpm", PROMPTPAY_AMOUNT, "--json")
    doc = json.loads(out)
    assert status == 0 and doc["ok"] is True and doc["crc_ok"] is True
    assert doc["fields"] == {"00": "01", "01": "12",
                             "29": {"00": "A000000677010111", "01": "0066000000000"},
                             "58": "TH", "53": "764", "54": "4.22", "63": "E469"}
    assert doc["currency"] == "THB" and doc["amount_minor"] == 422


def test_decode_nested_templates_62_and_64(capsys):
    payload = E.build_mpm(amount_minor=1, currency="156", country="CN", merchant_name="M",
                          city="C", bill="B1", terminal="T1", name_local="联华")
    status, out, _ = call(capsys, "qr", "decode-mpm", payload, "--json")
    fields = json.loads(out)["fields"]
    assert fields["62"] == {"01": "B1", "07": "T1"} and fields["64"] == {"00": "ZH",
                                                                         "01": "联华"}


def test_decode_bad_crc(capsys):
    status, out, err = call(capsys, "qr", "decode-mpm", PROMPTPAY_AMOUNT[:-1] + "0",
                            "--json")
    doc = json.loads(out)
    assert status == 1 and doc["ok"] is False and doc["crc_ok"] is False
    assert doc["error"]["code"] == "EMV_CRC" and doc["fields"]["54"] == "4.22"


def test_decode_not_a_payload(capsys):
    status, out, _ = call(capsys, "qr", "decode-mpm", "hello", "--json")
    assert status == 1
    assert json.loads(out) == {"ok": False, "error": {
        "code": "EMV_FORMAT", "message": E.decode_mpm("hello")["error"]["message"]}}


def test_decode_human_output(capsys):
    status, out, err = call(capsys, "qr", "decode-mpm", PROMPTPAY_AMOUNT)
    assert status == 0 and err == ""
    assert "29\n  00  A000000677010111\n  01  0066000000000\n" in out
    assert out.splitlines()[-1] == "CRC ok; currency THB; amount_minor 422"
    status, out, err = call(capsys, "qr", "decode-mpm", PROMPTPAY_AMOUNT[:-1] + "0")
    assert status == 1 and err.startswith("lanecore: EMV_CRC: ")


def test_real_command_round_trip_through_stdin():
    made = run("qr", "mpm", "--amount-minor", "2372", *SHOP, "--bill", "A9",
               "--name-local", "最佳运输", "--json")
    assert made.returncode == 0, made.stderr
    payload = json.loads(made.stdout)["payload"]
    read = run("qr", "decode-mpm", "-", "--json", stdin=(payload + "\n").encode("utf-8"))
    doc = json.loads(read.stdout)
    assert read.returncode == 0 and doc["ok"] and doc["amount_minor"] == 2372
    assert doc["fields"]["64"]["01"] == "最佳运输" and doc["fields"]["62"] == {"01": "A9"}


def test_docs_example_is_what_the_command_prints(capsys):
    import shlex
    from pathlib import Path

    doc = (Path(cli.__file__).parent / "docs" / "pay" / "qr.md").read_text(encoding="utf-8")
    block = doc.split("$ lanecore ", 1)[1].split("\n```", 1)[0]
    command, printed = block.replace("\\\n", " ").split("\n", 1)
    status, out, _ = call(capsys, *shlex.split(command))
    assert status == 0 and json.loads(out) == json.loads(printed)
