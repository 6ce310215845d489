"""A payment receipt (:class:`lanecore.core.pay.receipt.Receipt`) printed on an ESC/POS
printer, with :class:`lanecore.drivers.printer.EscPos` (the same header, bold and
QR commands as :class:`lanecore.drivers.printer.Receipt`).

The rows are :func:`lanecore.core.pay.receipt.layout`'s, laid out one column per
character (the printer's PC858 code page prints anything it lacks, a CJK character
included, as one ``?``): the store's name as the bold double-size header (half the
columns), the TOTAL and NET PAID rows bold, and — for a signed receipt — the
verification code followed by a QR of :func:`lanecore.core.pay.receipt.receipt_qr_text`
(``LCR1/<store_id>/<order_no>/<signature>``, 95 to 157 bytes, in byte mode at
error correction M). Then feed and a full cut. Bytes only: sending them is
:meth:`lanecore.drivers.printer.PrinterDriver.print_receipt`'s job.
"""

from __future__ import annotations

from lanecore.core.pay.receipt import Receipt, layout, receipt_qr_text
from lanecore.drivers.printer import EscPos

__all__ = ["render_escpos"]


def render_escpos(receipt: Receipt, signed=None, *, width: int = 42,
                  qr_module: int = 4, feed_lines: int = 4) -> bytes:
    """The ESC/POS bytes of ``receipt``: ``ESC @``, ``ESC t 19`` (PC858), the rows,
    ``ESC d feed_lines``, ``GS V 0`` (full cut). ``signed``:
    :func:`lanecore.core.pay.receipt.sign_receipt`'s output for this receipt, to print
    its verification code and QR; ``width``: characters per line (42 on 80 mm
    paper, 32 on 58 mm); ``qr_module``: QR dots per module (1..16). Raises
    ReceiptError (``BAD_REQUEST`` width, ``BAD_RECEIPT`` a ``signed`` of another
    receipt)."""
    rows = layout(receipt, width, signed=signed, east_asian=False)
    p = EscPos().init().codepage()
    for kind, text in rows:
        if kind == "title":
            # As printer.Receipt.header: centred, bold, double size (half the columns).
            p.align("center").bold().size(2, 2).line(receipt.store_name[:width // 2]) \
                .size().bold(False).align("left")
        elif kind == "total":
            p.bold().line(text).bold(False)
        elif kind == "verify":
            p.line(text)
            p.align("center").qr(receipt_qr_text(signed), module=qr_module, ec="M") \
                .line().align("left")
        else:
            p.line(text)
    return p.feed(feed_lines).cut(partial=False).to_bytes()
