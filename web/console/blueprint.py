"""The console's blueprint and its wiring into the app: the server-side session interface, Flask-WTF's CSRF
key, the guard, HTML error pages and the security headers. Registering the blueprint is all `create_app`
does for it (web/app.py `blueprints()`)."""

from __future__ import annotations

import datetime
import logging
from decimal import Decimal
from pathlib import Path

import flask
from flask_wtf.csrf import generate_csrf
from werkzeug.exceptions import HTTPException

from core.errors import WalletError
from core.limits import CONSOLE_STYLESHEET_MAX_AGE_S
from web.console import auth
from web.console.sessions import ConsoleSessionInterface, is_console_path
from web.console.state import Console
from web.state import front

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
bp = flask.Blueprint("console", __name__, url_prefix="/admin", template_folder="templates")

# No inline script or style anywhere, no asset from elsewhere, no framing, forms post only here.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: Flask-WTF checks the Referer of a form posted over TLS.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


@bp.record_once
def _wire(state: flask.blueprints.BlueprintSetupState) -> None:
    app = state.app
    console = Console.build(app.extensions["wallet"].config)
    app.extensions["console"] = console
    app.session_interface = ConsoleSessionInterface(app.session_interface, console)
    app.config["WTF_CSRF_SECRET_KEY"] = console.csrf_key
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # a token lives as long as its session, which idles out
    app.after_request(_security_headers)


def _security_headers(response: flask.Response) -> flask.Response:
    """Every page under /admin (but the JSON API's), errors included; money is on most pages, so none is
    stored by a browser or proxy."""
    path = flask.request.path
    if is_console_path(path) or path.startswith("/admin/static/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        if path.startswith("/admin/static/"):
            response.headers["Cache-Control"] = f"private, max-age={CONSOLE_STYLESHEET_MAX_AGE_S}"
        else:
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
    return response


bp.before_request(auth.guard)


@bp.context_processor
def _template_globals() -> dict:
    return {"csrf_token": generate_csrf, "staff": flask.g.get("staff")}


@bp.app_template_filter("when")
def _when(ms: int | None) -> str:
    if ms is None:
        return "—"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("age")
def _age(ms: int | None) -> str:
    """A duration, roughly: "45 s", "12 min", "3 h", "2 d"."""
    if ms is None:
        return "—"
    seconds = max(0, int(ms) // 1000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@bp.app_template_filter("gwei")
def _gwei(wei: int | str) -> str:
    text = format(Decimal(int(wei)).scaleb(-9), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@bp.app_template_filter("amount")
def _amount(value: int | str, asset: str) -> str:
    """Base units shown in whole units of the asset (exact: Decimal), e.g. "1.5 ETH"."""
    try:
        decimals = front().assets.get(asset).decimals
    except WalletError:
        return f"{value} (base units of {asset})"
    text = format(Decimal(int(value)).scaleb(-decimals), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {asset}"


# -- errors: HTML pages, never JSON, never a stack trace ----------------------------------------------


@bp.errorhandler(auth.NotLoggedIn)
def _not_logged_in(exc: auth.NotLoggedIn) -> flask.Response:
    return auth.to_login(exc)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):  # noqa: ANN202
    status = exc.code or 500
    return flask.render_template("console/error.html", status=status, title=exc.name,
                                 detail=exc.description), status


@bp.errorhandler(WalletError)
def _wallet_error(exc: WalletError):  # noqa: ANN202
    if exc.status >= 500:
        log.error("console request failed", extra={"code": exc.code, "detail": exc.detail})
    return flask.render_template("console/error.html", status=exc.status, title=exc.code,
                                 detail=exc.detail), exc.status


@bp.get("/static/console.css")
@auth.anonymous
def stylesheet() -> flask.Response:
    return flask.send_from_directory(HERE / "static", "console.css", mimetype="text/css", max_age=CONSOLE_STYLESHEET_MAX_AGE_S)


# The pages attach their routes to `bp`.
from web.console import (  # noqa: E402,F401
    views_accounts, views_deposits, views_health, views_login, views_stafflog, views_treasury, views_withdrawals,
)
