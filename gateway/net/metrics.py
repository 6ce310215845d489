"""Prometheus metrics and structured logs for every long-running process.

``--metrics ADDR`` (off by default) serves ``/metrics`` from a per-process
:class:`~prometheus_client.CollectorRegistry` on loopback (a non-loopback address is
refused with ``PLAIN_NOT_ALLOWED`` unless the caller allows it: metrics carry no
secrets but are still store data). The hot path pays one ``perf_counter()`` pair and
one histogram update per request (:meth:`OpServer._answer`); request and error
counts come from the counters the server keeps anyway, read on scrape, and so do the
process's own gauges (``OpServer.metric_families``), each from a read-only SQLite
connection of the scrape thread. ``docs/deploy.md`` lists every metric.

``--log-format json`` writes one JSON object a line (:class:`JsonFormatter`): ``ts``,
``level``, ``process``, ``logger``, ``msg`` and, where the code passes them with
``extra=``, ``op``, ``id``, ``lane``, ``order_no``, ``terminal``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time

#: Latency buckets (seconds): a weighing frame takes tens of µs, a payment seconds.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
           0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Fields a log record may carry (``extra=``) that the JSON line keeps.
LOG_FIELDS = ("op", "id", "lane", "order_no", "terminal")


class _Collector:
    """Request/error counters and the process's gauges, read from ``server`` on scrape."""

    def __init__(self, server) -> None:
        self.server = server

    def describe(self):
        return []      # no values on registration (nothing is read at start)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        s = self.server
        req = CounterMetricFamily("lanecore_requests", "Requests answered, per op",
                                  labels=["op"])
        for op, n in list(s.counts.items()):
            req.add_metric([op], n)
        yield req
        err = CounterMetricFamily("lanecore_errors", "Error replies, per op and code "
                                  "(op '-': before an op was known)", labels=["op", "code"])
        per_code: dict[str, int] = {}
        for (op, code), n in list(s.op_errors.items()):
            err.add_metric([op, code], n)
            per_code[code] = per_code.get(code, 0) + n
        for code, n in list(s.errors.items()):
            rest = n - per_code.get(code, 0)
            if rest > 0:
                err.add_metric(["-", code], rest)
        yield err
        ev = CounterMetricFamily("lanecore_events", "Events published, per topic",
                                 labels=["topic"])
        for topic, n in list(s.published.items()):
            ev.add_metric([topic], n)
        yield ev
        yield CounterMetricFamily("lanecore_replays", "Retries answered from memory or "
                                  "the record", value=s.replays)
        depth, peers = s.queue_depth()
        yield GaugeMetricFamily("lanecore_queue_depth", "Requests read and not yet "
                                "answered", value=depth)
        yield GaugeMetricFamily("lanecore_queue_peers", "Connections with requests "
                                "waiting", value=peers)
        yield GaugeMetricFamily("lanecore_uptime_seconds", "Seconds since the process "
                                "started", value=time.monotonic() - s.started)
        db = None
        try:
            db = s.metrics_db()
            families = list(s.metric_families(db))
        except sqlite3.Error:
            families = []   # the store file is busy or gone: wait for the next scrape
        finally:
            if db is not None:
                db.close()
        yield from families


def enable(server, *, process: str):
    """A registry for ``server`` (an OpServer): its latency histogram and collector."""
    from prometheus_client import CollectorRegistry, Histogram
    registry = CollectorRegistry(auto_describe=False)
    server.latency = Histogram("lanecore_request_seconds", "Time to answer a request, "
                               "per op", ["op"], buckets=BUCKETS, registry=registry)
    server.remember_db_path()
    registry.register(_Collector(server))
    server.process_name = process
    return registry


def check_address(addr: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``: loopback) for ``--metrics``; a non-loopback host is
    refused (PLAIN_NOT_ALLOWED) unless ``allow_remote``."""
    from lanecore.gateway.net.security import SecurityError
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise SecurityError(f"--metrics {addr!r}: give HOST:PORT", code="BAD_ARGS") from None
    if not allow_remote and host not in ("127.0.0.1", "::1", "localhost") \
            and not host.startswith("127."):
        raise SecurityError(f"--metrics {addr}: metrics are served on loopback only",
                            code="PLAIN_NOT_ALLOWED")
    return host, number


#: ``HOST:PORT`` the metrics are served on, once ``serve`` has bound it (port 0 asks
#: for a free one: this says which); the ready line carries it as ``metrics``.
_METRICS_BOUND: str | None = None


def serve(server, addr: str, *, process: str, allow_remote: bool = False):
    """Start serving ``server``'s metrics on ``addr`` (a daemon thread). Port 0: a
    free port, named in the ready line (``metrics``). An address that cannot be bound
    is LanecoreError ``CANNOT_BIND`` naming it."""
    global _METRICS_BOUND
    from prometheus_client import start_http_server
    host, port = check_address(addr, allow_remote=allow_remote)
    registry = enable(server, process=process)
    try:
        httpd, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        from lanecore.core.errors import LanecoreError
        raise LanecoreError(f"--metrics {addr}: cannot bind: {exc.strerror or exc}",
                            code="CANNOT_BIND") from None
    port = httpd.server_address[1]
    _METRICS_BOUND = f"{host}:{port}"
    logging.getLogger("lanecore.metrics").info("metrics on http://%s:%d/metrics", host, port)
    return registry


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, process, logger, msg, and the request's
    op/id/lane/order_no/terminal where the code passed them (``extra=``)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname,
               "process": self.process, "logger": record.name,
               "msg": record.getMessage()}
        for field in LOG_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value if isinstance(value, (int, float)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(fmt: str, process: str, level=logging.INFO) -> None:
    """The process's root handler on stderr: ``text`` (the usual line) or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(fmt == "json")     # warnings too, one JSON object each


def gauge(name: str, doc: str, value) -> object:
    from prometheus_client.core import GaugeMetricFamily
    return GaugeMetricFamily(name, doc, value=value)


def grouped(db, name: str, doc: str, label: str, sql: str):
    """A gauge per value of ``label`` from ``sql`` (rows of (label, count)); nothing
    when the table is not there (yet)."""
    from prometheus_client.core import GaugeMetricFamily
    family = GaugeMetricFamily(name, doc, labels=[label])
    if db is not None:
        try:
            for key, n in db.execute(sql):
                family.add_metric([str(key)], n)
        except sqlite3.OperationalError:
            pass
    return family


def announce(text: str, *, level: str = "INFO") -> None:
    """A line for the operator on stderr: a log record when the logs are JSON (every
    line of the log stays one JSON object), else printed as it is."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("lanecore").log(getattr(logging, level), text)
    else:
        print(text, file=sys.stderr, flush=True)


#: Set by ``want_ready_json`` (the process's ``--json``): ``ready`` also prints its
#: fields as one JSON line on stdout.
_READY_JSON = False


def want_ready_json(on: bool) -> None:
    """``--json``: the ready line goes to stdout as JSON too (docs/deploy.md)."""
    global _READY_JSON
    _READY_JSON = bool(on)


def ready(text: str, **fields) -> None:
    """The process is serving: ``text`` for the operator (``announce``) and, with
    ``--json``, ``{"ready": true, "pid": …, **fields}`` as one line on stdout — what a
    supervisor (``lanecore store up``) or a script waits for."""
    import json
    import os
    announce(text)
    if _READY_JSON:
        if _METRICS_BOUND is not None:
            fields = {**fields, "metrics": _METRICS_BOUND}
        print(json.dumps({"ready": True, "pid": os.getpid(), **fields}), flush=True)
