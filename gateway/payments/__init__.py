"""The payment gateway process (``gateway``: ops, routing, the ledger's
exactly-once charges, recovery), its connectors to payment providers
(``providers``), the POS terminals' registry and limits (``terminals``) and the
durable SMS outbox (``outbox``).

May import: ``gateway.net``, ``core`` and ``drivers`` (the receipt printer's ESC/POS).
"""
