"""The chain: stores linked to HQ over NATS JetStream (docs/chain.md).

* :mod:`~lanecore.gateway.chain.streams` — the streams, subjects, message ids and the
  crash points both sides share;
* :mod:`~lanecore.gateway.chain.link` — ``lanecore link``: a store's outbox reader
  (its durable tables, after a cursor, to the stores' stream) and the applier of
  HQ's changes (HQ's stream) to the store's catalogue and promotions;
* :mod:`~lanecore.gateway.chain.hq` — ``lanecore hq``: the ingest consumer into
  PostgreSQL and HQ's ops (prices, promotions) published to every store;
* :mod:`~lanecore.gateway.chain.books` — HQ's books: every store's ledger against
  its providers' bills, clearing per manufacturer across stores (``hq.recon``,
  ``hq.clearing``, ``lanecore hq books``).

A process room beside ``service``, ``payments`` and ``coupons``: it imports ``net``
(the OpServer, the client) and ``core`` (the catalogue's price update), and never
another process — it reads the stores' files and talks to the coupon gateway over
its socket. psycopg and nats-py are imported only here.
"""
