"""The domain, pure Python: catalogue, configuration, and (later) baskets, pricing,
tolerance policy and the ledger model. No sockets, serial ports or threads here."""
