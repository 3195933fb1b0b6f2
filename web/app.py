"""The Flask front (gatesrv): an app factory over a started actor system.

The front is stateless with respect to money: it validates, authenticates, resolves account -> shard
through the router and asks the shard with a timeout (no answer in time -> 503; the client retries with
the same Idempotency-Key and the operation applies once).
"""

from __future__ import annotations

import logging
import re
import time

import flask
from werkzeug.middleware.proxy_fix import ProxyFix

from storage.db import database_proxy
from core.config import Config
from core.ids import unique_hex
from web import errors
from web.auth import authenticate
from web.io import READ_LIMIT_BYTES
from web.state import Front, Services, front

access_log = logging.getLogger("web.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def blueprints() -> list[flask.Blueprint]:
    """One blueprint per resource. A new resource (deposits, withdrawals) adds its blueprint here."""
    from web import (
        account_security, accounts, admin_api, assets, balances, console, deposits, history, me, openapi, ops,
        redpackets, reserves, sessions, totp, transfers, withdrawals,
    )

    return [accounts.bp, sessions.bp, me.bp, assets.bp, balances.bp, transfers.bp, history.bp, openapi.bp,
            ops.bp, deposits.bp, withdrawals.bp, redpackets.bp, account_security.bp, totp.bp, admin_api.bp,
            console.bp, reserves.bp]


def create_app(system: Services, config: Config | None = None) -> flask.Flask:
    app = flask.Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = READ_LIMIT_BYTES
    # No redirects from the API: werkzeug would answer `//me` with a 308 to a URL built from the client's Host
    # header (an open redirect with an HTML body); an unknown path is a problem-details 404. (No route ends in
    # '/', so strict slashes never redirect either.)
    app.url_map.merge_slashes = False
    app.extensions["wallet"] = Front.build(system, config or system.config)
    errors.init_app(app)
    app.before_request(_start_request)
    app.before_request(authenticate)
    app.after_request(_finish_request)
    app.teardown_request(_close_database)
    for blueprint in blueprints():
        app.register_blueprint(blueprint)
    _trust_proxies(app, app.extensions["wallet"].config.trusted_proxies)
    return app


def create_ops_app(api: flask.Flask) -> flask.Flask:
    """The operations listener's app (WALLET_OPS_HTTP): /healthz, /readyz and /metrics over the same front
    state as the API app `api` (its metrics count the API's requests)."""
    from web import ops

    app = flask.Flask(__name__ + ".ops", static_folder=None)
    app.url_map.merge_slashes = False
    app.extensions["wallet"] = api.extensions["wallet"]
    errors.init_app(app)
    app.teardown_request(_close_database)
    app.register_blueprint(ops.internal)
    return app


def _trust_proxies(app: flask.Flask, hops: int) -> None:
    """Behind `hops` reverse proxies, the client is the address the outermost one saw: the `hops`-th
    X-Forwarded-For value from the right (each proxy appends its peer). Only X-Forwarded-For is trusted
    (not Host, scheme or prefix). With 0 the header is ignored: anyone can send one, so per-IP limits
    would count whatever the client chose."""
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)


def _start_request() -> None:
    flask.g.started = time.perf_counter()
    given = flask.request.headers.get(REQUEST_ID_HEADER, "")
    flask.g.request_id = given if _REQUEST_ID_RE.match(given) else unique_hex()


def _finish_request(response: flask.Response) -> flask.Response:
    request = flask.request
    request_id = flask.g.get("request_id") or unique_hex()
    response.headers[REQUEST_ID_HEADER] = request_id
    # Tokens, balances and history must not be kept by any cache; no response is to be sniffed as another type.
    # (The console's stylesheet sets its own, a private max-age: it holds no money.)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    seconds = time.perf_counter() - flask.g.get("started", time.perf_counter())
    endpoint = request.endpoint or "unmatched"  # bounded label set: never the raw path
    front().metrics.observe(endpoint, request.method, response.status_code, seconds)
    session = flask.g.get("session")
    # Never the body, headers, query or token: only what identifies the request and its outcome. The client
    # is the peer, or the address trusted proxies name (WALLET_TRUSTED_PROXIES); a refusal's code is here.
    access_log.info("request", extra={
        "request_id": request_id, "method": request.method, "endpoint": endpoint,
        "status": response.status_code, "code": flask.g.get("problem_code"), "client": request.remote_addr,
        "duration_ms": round(seconds * 1000, 2), "account_id": session.account_id if session is not None else None})
    return response


def _close_database(_exc: BaseException | None) -> None:
    """A request opens its connection on first use (peewee autoconnect; pooled on MySQL) and gives it back
    here, so requests that need no database (a cached session and a balance) never touch the pool."""
    db = database_proxy.obj
    if db is not None and not db.is_closed():
        db.close()
