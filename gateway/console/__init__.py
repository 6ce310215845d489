"""The store's console: the web application attendants, managers and admins use
(``lanecore console``, ``docs/console.md``).

An ASGI app (Starlette, served by uvicorn) that renders HTML on the server (Jinja2
templates in ``templates/``, a little hand-written JavaScript in ``static/``) and
pushes the floor live to the browser over server-sent events:

* ``app``: the pages, forms and routes, and the app factory ``create_app``;
* ``auth``: staff accounts, sessions, CSRF tokens, lockout and the ``actions`` log in
  ``console.db`` (argon2 password hashes);
* ``live``: the floor as the service's events socket tells it (lanes, alarms,
  devices) and the fan-out to every open page;
* ``i18n``: English and Simplified Chinese message catalogues (``locale/``),
  compiled in memory with Babel at start;
* ``analytics`` (its own module): the merchant's reports;
* ``hqviews``: the chain's analytics across stores from HQ's PostgreSQL
  (``lanecore console --hq``; psycopg, imported there only).

The console is one of the store's processes: it talks to the others only as their
client (ZeroMQ ops through ``gateway.net.client``, the events socket as a SUB) with
its own CurveZMQ identity. May import: ``gateway.net``, ``gateway.db`` (a URL's
password redacted), ``core``; never another process (``service``, ``payments``, ``coupons``, ``till``, ``lane``).
"""
