"""A simulated customer QR display (seed 002) on a pty: ``lanecore sim qrdisplay``.

It behaves like the device's firmware: checks the register's payment data, builds
the EMVCo QR from it plus its own data (device id, hardware serial, store name),
"shows" it (keeps the last payload; ``--show`` draws it on stderr), and reports the
payment result the script decides. Script actions, besides the generic ones
(``unplug``, ``replug``, ``garbage [HEX]``, ``mute`` = display frozen, ``unmute``,
``slow S``):

* ``scan`` — the shopper's phone scanned the QR (state PAYING);
* ``pay [AMOUNT]`` — the shopper paid (AMOUNT in minor units, default the order's;
  another amount ends as ``AMOUNT_MISMATCH``);
* ``fail REASON`` — the payment failed with REASON (e.g. ``DECLINED``);
* ``card LAST4 [nfc]`` — a card (or NFC) at the reader; it pays the order in progress;
* ``delay S`` — results arrive S seconds after ``pay``/``fail``/``card``;
* ``drop-acks N`` — the next N acknowledgements are lost on the line.

SHOW_QR (the register's QR content: a wallet's code URL) is drawn as it is; while it
is up, ``pay`` and ``fail`` do nothing (the shopper pays the wallet, and the result
comes from the register: SHOW_RESULT, which takes the QR down and shows the result,
kept in :attr:`QrDisplaySim.shown_result`).

``docs/drivers/qr-display.md`` documents the options and the protocol.
"""

from __future__ import annotations

import sys
import time

from lanecore.core.pay.emvqr import MerchantQr, qr_text
from lanecore.drivers.qrdisplay import (REASONS, Cancel, CardRead, Command,
                                        DisplayProtocol, DisplayStatus, PayResult,
                                        PaymentData, QrPay, QrShown, ShowQr, ShowResult,
                                        StatusRequest)
from lanecore.drivers.sim import ScriptedDevice, ScriptError, float_arg

HELP = "customer QR display: payment data in, EMV payment QR shown, result out"


class QrDisplaySim(ScriptedDevice):
    """The QR display as a pty device. ``show``: ``None``, ``"qr"`` (terminal art)
    or ``"text"`` (the payload only) written to ``out`` (stderr by default) each
    time a QR is shown or a result arrives. ``auto_pay_s``: the shopper pays by
    themself that many seconds after each QR is shown (for runs by hand)."""

    name = "qrdisplay"

    def __init__(self, link_path=None, *, device_id: str = "QRD-0001",
                 serial: str = "SN2014071900001", store_name: str = "LANECORE MART",
                 store_name_local: str = "", city: str = "SHENZHEN", country: str = "CN",
                 merchant_gui: str = "com.lanecore.pay", merchant_id: str = "LANECORE-DEMO",
                 card_reader: bool = True, result_delay_s: float = 0.0,
                 auto_pay_s: float | None = None, show: str | None = None, out=None,
                 ack_timeout_s: float = 0.25, max_tries: int = 4,
                 tick_s: float = 0.01) -> None:
        super().__init__(link_path, tick_s=tick_s)
        self.device_id = device_id
        self.serial = serial
        self.store_name = store_name
        self.store_name_local = store_name_local
        self.city = city
        self.country = country
        self.merchant_gui = merchant_gui
        self.merchant_id = merchant_id
        self.card_reader = card_reader
        self.result_delay_s = result_delay_s
        self.auto_pay_s = auto_pay_s
        self.show = show
        self.out = out
        self.proto = DisplayProtocol(ack_timeout_s=ack_timeout_s, max_tries=max_tries)
        self.state = "IDLE"
        self.payment: PaymentData | None = None
        self.payload: str | None = None          # the QR on the screen
        self.last_result: PayResult | None = None
        #: the QR on the screen is the register's (SHOW_QR: a wallet's code URL); its
        #: result comes from the register (SHOW_RESULT), not from the shopper here
        self.register_qr = False
        #: the last SHOW_RESULT on the screen (None: none since the order was loaded)
        self.shown_result: ShowResult | None = None
        self.attempt = 0
        self.payments_started = 0                # attempts begun (tests count these)
        self.commands: list = []                 # every command acted on
        self.drop_acks = 0
        self._pending: tuple[float, PayResult] | None = None
        self._shown_at = 0.0
        self._txn_no = 0
        self._paid: dict[str, None] = {}       # the last 1000 paid orders, oldest first
        # bad device data must fail here, not later inside a QR_PAY
        MerchantQr(1, "CNY", store_name, city, "0", "0", device_id, serial,
                   merchant_gui, merchant_id, country, store_name_local=store_name_local)

    # ---- the register's commands ------------------------------------------------
    def on_bytes(self, data: bytes) -> None:
        with self._lock:
            now = time.monotonic()
            for ev in self.proto.feed(data, now):
                if isinstance(ev, Command):
                    self.commands.append(ev.message)
                    self._command(ev, now)
            self._flush()

    def _accept(self, cmd: Command) -> None:
        if self.drop_acks > 0:
            self.drop_acks -= 1
            self.proto.accept(cmd, send_ack=False)
        else:
            self.proto.accept(cmd)

    def _command(self, cmd: Command, now: float) -> None:
        msg = cmd.message
        busy = self.state in ("SHOWING_QR", "PAYING")
        # an order is paid once: a register that reloads it must not charge it again
        done = getattr(msg, "order_no", None) in self._paid
        if isinstance(msg, StatusRequest):
            self._accept(cmd)
            self.proto.send(self.status_message(), now)
        elif isinstance(msg, PaymentData):
            if busy:
                self.proto.reject(cmd, "BUSY", f"order {self.payment.order_no} is being "
                                               "paid; CANCEL it first")
            elif done:
                self.proto.reject(cmd, "ORDER_DONE", f"order {msg.order_no} is paid")
            else:
                self.payment, self.payload, self.state = msg, None, "DATA_LOADED"
                self.register_qr, self.shown_result = False, None
                self._accept(cmd)
        elif isinstance(msg, (ShowQr, ShowResult)):
            self._register_says(cmd, msg, busy, done, now)
        elif isinstance(msg, (QrPay, Cancel)):
            if self.payment is None:
                self.proto.reject(cmd, "NO_PAYMENT_DATA")
            elif msg.order_no != self.payment.order_no:
                self.proto.reject(cmd, "ORDER_MISMATCH", f"order {self.payment.order_no} "
                                                         f"is loaded, not {msg.order_no}")
            elif isinstance(msg, Cancel):
                if self.state == "RESULT":
                    self.proto.reject(cmd, "ORDER_DONE", "the order has its final result")
                else:
                    self._accept(cmd)
                    if self.state == "DATA_LOADED":
                        self.attempt += 1      # a cancelled attempt is an attempt
                    self._finish(self._result(False, "CANCELLED"), now)
            elif done:
                self.proto.reject(cmd, "ORDER_DONE", f"order {msg.order_no} is paid")
            else:
                self._accept(cmd)
                if not busy:
                    self._start_attempt(now)
                # shown again for the same attempt when it is already up
                self.proto.send(QrShown(self.payment.order_no, self.payload,
                                        self.payment.amount_minor, self.payment.currency,
                                        self.attempt), now)

    def _register_says(self, cmd: Command, msg, busy: bool, done: bool, now: float) -> None:
        """SHOW_QR (draw the register's QR content) and SHOW_RESULT (the payment's
        end, as the register learnt it from the payment gateway: the QR comes down)."""
        p = self.payment
        if p is None:
            self.proto.reject(cmd, "NO_PAYMENT_DATA")
        elif msg.order_no != p.order_no:
            self.proto.reject(cmd, "ORDER_MISMATCH", f"order {p.order_no} is loaded, not "
                                                     f"{msg.order_no}")
        elif (msg.amount_minor, msg.currency) != (p.amount_minor, p.currency):
            self.proto.reject(cmd, "AMOUNT_MISMATCH", f"order {p.order_no} is "
                                                      f"{p.amount_minor} {p.currency}")
        elif isinstance(msg, ShowQr):
            if done:
                self.proto.reject(cmd, "ORDER_DONE", f"order {msg.order_no} is paid")
                return
            self._accept(cmd)
            if not (busy and self.register_qr and self.payload == msg.content):
                self.attempt += 1             # the same content again: the same attempt
                self.payments_started += 1
            self.payload, self.register_qr, self.shown_result = msg.content, True, None
            self.state = "SHOWING_QR"
            self._pending = None
            self._shown_at = now
            self._print_qr()
            self.proto.send(QrShown(p.order_no, self.payload, p.amount_minor, p.currency,
                                    self.attempt), now)
        else:
            if done and msg.result != "paid":
                self.proto.reject(cmd, "ORDER_DONE", f"order {msg.order_no} is paid")
                return
            self._accept(cmd)
            self.payload, self.shown_result, self.state = None, msg, "RESULT"
            self._pending = None
            if msg.result == "paid":
                self._paid[msg.order_no] = None
                if len(self._paid) > 1000:
                    del self._paid[next(iter(self._paid))]
            self._say(f"result: {msg.result.upper()} {msg.amount_minor} {msg.currency} "
                      f"order {msg.order_no}{'  ' + msg.text if msg.text else ''}")

    def _start_attempt(self, now: float) -> None:
        p = self.payment
        self.attempt += 1
        self.payments_started += 1
        self.payload = MerchantQr(
            amount_minor=p.amount_minor, currency=p.currency, store_name=self.store_name,
            city=self.city, order_no=p.order_no, register=p.register,
            device_id=self.device_id, hardware_serial=self.serial,
            merchant_gui=self.merchant_gui, merchant_id=self.merchant_id,
            country=self.country, store_name_local=self.store_name_local).to_payload()
        self.register_qr, self.shown_result = False, None
        self.state = "SHOWING_QR"
        self._pending = None
        self._shown_at = now
        self._print_qr()

    # ---- results -------------------------------------------------------------------
    def _result(self, ok: bool, reason: str = "", paid: int = 0,
                channel: str = "QR") -> PayResult:
        p = self.payment
        txn = ""
        if paid:
            self._txn_no += 1
            txn = f"T{time.strftime('%Y%m%d')}{self.device_id[-4:]}{self._txn_no:06d}"
        return PayResult(p.order_no, ok, reason, txn, paid, p.currency, channel, self.attempt)

    def _schedule(self, result: PayResult) -> None:
        if self.result_delay_s <= 0:
            # the wallet's notice reaches the display over its own network, cable or not
            self._finish(result, time.monotonic())
        else:
            self._pending = (time.monotonic() + self.result_delay_s, result)

    def _finish(self, result: PayResult, now: float) -> None:
        self.last_result = result
        if result.ok:
            self._paid[result.order_no] = None
            if len(self._paid) > 1000:
                del self._paid[next(iter(self._paid))]
        self.state = "RESULT"
        self._pending = None
        self.proto.send(result, now)
        self._say(f"result: {'PAID ' + str(result.paid_minor) if result.ok else result.reason}"
                  f" order {result.order_no}")

    def tick(self, now: float) -> None:
        if self.muted:
            return                    # a frozen display does nothing at all
        with self._lock:
            self.proto.poll(now)
            if (self.auto_pay_s is not None and self.state == "SHOWING_QR"
                    and not self.register_qr
                    and self._pending is None and now - self._shown_at >= self.auto_pay_s):
                self._schedule(self._result(True, paid=self.payment.amount_minor))
            if self._pending is not None and now >= self._pending[0]:
                if self.state in ("SHOWING_QR", "PAYING"):
                    self._finish(self._pending[1], now)
                self._pending = None
            self._flush()

    def _flush(self) -> None:
        out = self.proto.take_output()
        if out and not self.muted:       # a frozen display says nothing
            self.send(out)

    def status_message(self) -> DisplayStatus:
        return DisplayStatus(self.state, self.payment.order_no if self.payment else None,
                             self.card_reader, self.device_id, self.serial,
                             self.store_name_local or self.store_name, self.last_result)

    # ---- script actions ------------------------------------------------------------
    def do(self, action: str, *args: str) -> None:
        with self._lock:
            self._do(action, args)
            self._flush()

    def _do(self, action: str, args: tuple) -> None:
        in_progress = self.state in ("SHOWING_QR", "PAYING")
        if action in ("pay", "fail") and in_progress and self.register_qr:
            # the wallet's own QR: the shopper pays the wallet, and the register
            # learns it from the payment gateway and says so with SHOW_RESULT
            self._say(f"{action}: the QR shown is the register's; its result comes "
                      "from the register")
            return
        if action == "scan":
            if self.state == "SHOWING_QR":
                self.state = "PAYING"
        elif action == "pay":
            if not in_progress:
                self._say("pay: no QR is shown")
                return
            paid = int(float_arg(action, args, 0)) if args else self.payment.amount_minor
            if paid != self.payment.amount_minor:
                self._schedule(self._result(False, "AMOUNT_MISMATCH", paid=paid))
            else:
                self._schedule(self._result(True, paid=paid))
        elif action == "fail":
            if not args:
                raise ScriptError(f"fail needs a reason: {', '.join(REASONS)}")
            if in_progress:
                self._schedule(self._result(False, args[0]))
        elif action == "card":
            if not args or not (len(args[0]) == 4 and args[0].isdigit()):
                raise ScriptError("card needs the card number's last 4 digits")
            if not self.card_reader:
                self._say("card: this display has no card reader")
                return
            kind = "NFC" if len(args) > 1 and args[1].lower() == "nfc" else "CARD"
            order = self.payment.order_no if in_progress else None
            self.proto.send(CardRead(kind, f"621700******{args[0]}", order), time.monotonic())
            if in_progress:
                self._schedule(self._result(True, paid=self.payment.amount_minor,
                                            channel="CARD"))
        elif action == "delay":
            self.result_delay_s = float_arg(action, args, 0)
        elif action == "drop-acks":
            self.drop_acks = int(float_arg(action, args, 0))
        else:
            super().do(action, *args)

    # ---- the screen ------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if self.show:
            print(f"[qrdisplay] {line}", file=self.out or sys.stderr, flush=True)

    def _print_qr(self) -> None:
        if not self.show:
            return
        p = self.payment
        lines = [f"order {p.order_no}  register {p.register}  "
                 f"total {p.amount_minor} {p.currency} (minor units)"]
        lines += [f"  {i.name}  x{i.qty}{'' if i.unit == 'pc' else ' ' + i.unit}  "
                  f"{i.amount_minor}" for i in p.items]
        if self.show == "qr":
            lines.append(qr_text(self.payload))
        lines.append(self.payload)
        self._say("\n".join(lines))


def add_arguments(parser) -> None:
    parser.add_argument("--device-id", default="QRD-0001", help="the display's device id")
    parser.add_argument("--serial", default="SN2014071900001", help="hardware serial")
    parser.add_argument("--store", default="LANECORE MART",
                        help="store name in the QR (printable ASCII, at most 25)")
    parser.add_argument("--store-local", default="",
                        help="store name in the local script (EMV template 64)")
    parser.add_argument("--city", default="SHENZHEN", help="merchant city (at most 15)")
    parser.add_argument("--country", default="CN", help="ISO 3166 alpha-2")
    parser.add_argument("--merchant-gui", default="com.lanecore.pay",
                        help="acquirer's globally unique id (EMV template 26/00)")
    parser.add_argument("--merchant-id", default="LANECORE-DEMO",
                        help="merchant id under that acquirer (EMV template 26/01)")
    parser.add_argument("--no-card-reader", action="store_true",
                        help="no card reader hangs off this display")
    parser.add_argument("--result-delay", type=float, default=0.0, metavar="S",
                        help="seconds from pay/fail/card to the result")
    parser.add_argument("--auto-pay", type=float, metavar="S",
                        help="the shopper pays S seconds after each QR is shown")
    parser.add_argument("--show", choices=("qr", "text"),
                        help="print each QR (terminal art or payload text) and result "
                             "on stderr")


def build(args, link_path) -> QrDisplaySim:
    """The display from ``lanecore sim qrdisplay`` options (not started)."""
    return QrDisplaySim(link_path, device_id=args.device_id, serial=args.serial,
                        store_name=args.store, store_name_local=args.store_local,
                        city=args.city, country=args.country,
                        merchant_gui=args.merchant_gui, merchant_id=args.merchant_id,
                        card_reader=not args.no_card_reader,
                        result_delay_s=args.result_delay, auto_pay_s=args.auto_pay,
                        show=args.show)


__all__ = ["HELP", "QrDisplaySim", "add_arguments", "build"]
