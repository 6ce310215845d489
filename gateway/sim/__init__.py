"""Stand-ins for the world outside the store: the payment provider simulator
(``provider``: WeChat-, Alipay-, UnionPay-style wallets and a card acquirer, with
bills) and the wallet app that issues coupons in a multi-information QR (``wallet``).

May import: ``gateway.net``, ``gateway.payments.providers`` (the codes and tables the
connectors speak) and ``core``.
"""
