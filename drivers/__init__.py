"""Device drivers (pyserial) for a lane's devices and their simulators.

Scales (``scales``), the raw load-cell bridge (``bridge``), scanners (``scanner``),
EAS deactivators and gates (``eas``), the customer QR display (``qrdisplay``),
ESC/POS printers (``printer``, ``receipt_print``), all on ``link``'s ports that reopen
themselves; the synthetic load cell (``loadcell_sim``), pty pairs (``pty``) and a
simulator for every device (``sim``).

May import: ``core`` (receipts, EMV QR, errors) and ``ext`` — never ``gateway`` or
the command line: a driver hands its readings to a sink it is given.
"""
