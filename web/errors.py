"""Every failure leaves the front as RFC 9457 problem details (`application/problem+json`) with a stable
machine-readable `code`: domain errors (WalletError), the front's own errors below, HTTP errors raised by
routing (404, 405, 413) and anything unexpected (500, logged with the request id, never the body).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import flask
import peewee
import pydantic
import redis
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from core.errors import ValidationError, WalletError

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"


def problem_type(code: str) -> str:
    """A stable URI per code (a URN: it names the problem, it does not pretend to resolve)."""
    return f"urn:wallet:problem:{code}"


# -- the front's own errors ------------------------------------------------------------------------


class Unauthorized(WalletError):
    code = "unauthorized"
    status = 401


class InvalidToken(Unauthorized):
    code = "invalid_token"


class TokenExpired(Unauthorized):
    code = "token_expired"


class InvalidCredentials(WalletError):
    """Unknown username or wrong password: one answer for both, so usernames cannot be probed."""

    code = "invalid_credentials"
    status = 401


class WrongPayPassword(WalletError):
    code = "wrong_pay_password"
    status = 403


class RateLimited(WalletError):
    code = "rate_limited"
    status = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = max(1, retry_after_s)


# Faults of the request itself: validation errors of the domain hierarchy (400), each with its own code.
class IdempotencyKeyMissing(ValidationError):
    code = "idempotency_key_missing"


class IdempotencyKeyInvalid(ValidationError):
    code = "idempotency_key_invalid"


class MalformedJson(ValidationError):
    code = "malformed_json"


class DuplicateKey(ValidationError):
    code = "duplicate_key"


class UnsupportedMediaType(WalletError):
    code = "unsupported_media_type"
    status = 415


class RequestInvalid(ValidationError):
    """The body or query failed validation; `errors` lists each field (never the submitted value)."""

    def __init__(self, detail: str, errors: list[dict[str, str]], code: str | None = None) -> None:
        super().__init__(detail)
        self.errors = errors
        if code is not None:
            self.code = code

    @classmethod
    def from_pydantic(cls, exc: pydantic.ValidationError) -> WalletError:
        items = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(item["type"] == "json_invalid" for item in items):
            return MalformedJson("the body is not valid JSON")
        # Field names can be client-chosen (unknown keys): cut them short rather than echo a huge one.
        errors = [{"field": ".".join(str(part) for part in item["loc"])[:64] or "(body)", "message": item["msg"]}
                  for item in items]
        if any(item["type"] in ("model_type", "model_attributes_type") for item in items):
            return cls("the body must be a JSON object", errors)
        # An amount problem has its own code, the same one the ledger uses (invalid_amount), but only for the
        # model's own amount field: an extra key named "amount" is a plain validation error like any other.
        code = "invalid_amount" if any(item["loc"][:1] == ("amount",) and item["type"] != "extra_forbidden"
                                       for item in items) else None
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return cls(summary, errors, code)


# Codes for HTTP errors raised by Flask/Werkzeug themselves (routing, body size).
HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 408: "request_timeout", 411: "length_required", 413: "payload_too_large",
    414: "uri_too_long", 415: "unsupported_media_type", 416: "range_not_satisfiable", 429: "rate_limited",
    431: "headers_too_large", 500: "internal_error", 501: "not_implemented", 503: "service_unavailable",
}


# -- rendering -------------------------------------------------------------------------------------


def problem_body(status: int, code: str, detail: str, **extra: Any) -> str:
    body = {"type": problem_type(code), "title": HTTP_STATUS_CODES.get(status, "Error"), "status": status,
            "detail": detail, "code": code, **extra}
    return json.dumps(body)


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> flask.Response:
    if flask.has_request_context():
        flask.g.problem_code = code  # the access log line names it: one line per refusal, never a traceback
    response = flask.Response(problem_body(status, code, detail, **extra), status=status,
                              mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _wallet_error(exc: WalletError) -> flask.Response:
    headers = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status == 401:  # RFC 6750: name the scheme; "invalid_token" only when a token was presented
        token_refused = isinstance(exc, (InvalidToken, TokenExpired))
        headers["WWW-Authenticate"] = 'Bearer realm="wallet"' + (', error="invalid_token"' if token_refused else "")
    if isinstance(exc, RequestInvalid):
        extra["errors"] = exc.errors
    if exc.status >= 500:
        log.error("request failed", extra={"code": exc.code, "detail": exc.detail})
    return problem(exc.status, exc.code, exc.detail, headers, **extra)


def _http_error(exc: HTTPException) -> flask.Response:
    status = exc.code or 500
    headers = {}
    if status == 405:
        allow = dict(exc.get_headers()).get("Allow")
        if allow:
            headers["Allow"] = allow
    detail = exc.description or HTTP_STATUS_CODES.get(status, "error")
    return problem(status, HTTP_CODES.get(status, "http_error"), detail, headers)


def _dependency_down(exc: Exception) -> flask.Response:
    """The database or Redis failed, or every pooled connection is busy (MaxConnectionsExceeded, a
    ValueError, would otherwise be a 500): an operating error, not a bug. The client may retry."""
    log.warning("dependency unavailable", extra={"endpoint": flask.request.endpoint, "error": type(exc).__name__})
    return problem(503, "service_unavailable", "a dependency of the service is unavailable; retry later")


def _unexpected(exc: Exception) -> flask.Response:
    log.exception("unexpected error", extra={"endpoint": flask.request.endpoint})
    return problem(500, "internal_error", "an unexpected error occurred; it has been logged")


def init_app(app: flask.Flask) -> None:
    app.register_error_handler(WalletError, _wallet_error)
    app.register_error_handler(HTTPException, _http_error)
    for dependency_error in (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded,
                             redis.RedisError):
        app.register_error_handler(dependency_error, _dependency_down)
    app.register_error_handler(Exception, _unexpected)


# -- account security ---------------------------------------------------------------------------------------


class WrongPassword(WalletError):
    """The current password given to change it is wrong (the session is fine: not a 401)."""

    code = "wrong_password"
    status = 403


class InvalidRecoveryCode(WalletError):
    """Unknown username, or a recovery code that is wrong or used: one answer for all."""

    code = "invalid_recovery_code"
    status = 401


class UnknownSession(WalletError):
    code = "unknown_session"
    status = 404


class TotpRequired(WalletError):
    code = "totp_required"
    status = 403


class WrongTotpCode(WalletError):
    code = "wrong_totp_code"
    status = 403


class TotpAlreadyEnabled(WalletError):
    code = "totp_already_enabled"
    status = 409


class TotpNotEnrolled(WalletError):
    code = "totp_not_enrolled"
    status = 409
