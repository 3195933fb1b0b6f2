"""Sessions: POST /api/v1/sessions logs in (public, rate-limited); DELETE /api/v1/sessions/current
logs out (revokes the presented token)."""

from __future__ import annotations

import flask

from storage.models import Account
from web.auth import client_ip, public
from web.errors import InvalidCredentials
from web.io import parse_body, respond
from web.schemas import LoginRequest, SessionOut
from web.security import rfc3339, verify_secret
from web.state import current_session, front

bp = flask.Blueprint("sessions", __name__, url_prefix="/api/v1")


@bp.post("/sessions")
@public
def login():
    """Count the attempt first (over a limit: 429 before any argon2), then check the password. A client with a
    device token of this account is counted on that device alone; everyone else per username and per IP."""
    body = parse_body(LoginRequest)
    state = front()
    device = state.devices.device_of(body.device_token, body.username)
    if device is not None:
        subjects = [(state.limits.login_device, f"{body.username}:{device}")]
    else:
        subjects = [(state.limits.login_account, body.username), (state.limits.login_ip, client_ip())]
    state.failures.admit(subjects)
    row = (Account.select(Account.id, Account.password_hash)
           .where((Account.username == body.username) & (Account.kind == "user")).first())
    if not verify_secret(row.password_hash if row else None, body.password):
        raise InvalidCredentials("unknown username or wrong password")
    # The right password: this username's count starts over (the device's, or strangers'), and the address
    # gets its attempt back (a shared address is not charged for logins that work).
    state.failures.reset(*subjects[0])
    state.failures.forgive(subjects[1:])
    state.sessions.purge_expired(row.id)
    token, session = state.sessions.create(row.id)
    device_token = body.device_token if device is not None else state.devices.issue(body.username)
    return respond(SessionOut(token=token, expires_at=rfc3339(session.expires_at_ms), device_token=device_token), 200)


@bp.delete("/sessions/current")
def logout():
    session = current_session()
    state = front()
    state.sessions.revoke(session)
    state.pay_memo.forget(session)
    return flask.Response(status=204)
