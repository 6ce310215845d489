"""The processes that talk ZeroMQ + MessagePack, and what they share.

- ``net``      — the kit every process and client uses: the op server, the wire
  protocol's checks, the client library, CurveZMQ security, the worker broker and the
  terminals' request signatures.
- ``service``  — the verification service (``lanecore serve``).
- ``payments`` — the payment gateway with its providers' connectors, POS terminals and
  the SMS outbox (``lanecore gateway payments``).
- ``coupons``  — the coupon gateway (``lanecore gateway coupons``).
- ``till``     — the till with a customer QR display (``lanecore till``).
- ``lane``     — the lane controller that wires a lane's devices to the service
  (``lanecore lane run``).
- ``sim``      — the payment provider and wallet simulators (``lanecore sim provider``,
  ``lanecore sim wallet``); serial devices' simulators are in ``lanecore.drivers.sim``.
- ``store``    — the whole simulated store of ``lanecore demo``.

May import: ``core``, ``drivers`` and ``ext`` — never the command line. Inside, the
processes import ``net`` and not one another; ``sim`` may use the payment connectors'
tables; only ``store`` uses them all (``pyproject.toml``'s import-linter contracts).
"""
