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
    body = parse_body(LoginRequest)
    state = front()
    subjects = [(state.limits.login_account, body.username), (state.limits.login_ip, client_ip())]
    state.failures.check(subjects)
    row = (Account.select(Account.id, Account.password_hash)
           .where((Account.username == body.username) & (Account.kind == "user")).first())
    if not verify_secret(row.password_hash if row else None, body.password):
        state.failures.fail(subjects)
        raise InvalidCredentials("unknown username or wrong password")
    state.failures.reset(state.limits.login_account, body.username)
    state.sessions.purge_expired(row.id)
    token, session = state.sessions.create(row.id)
    return respond(SessionOut(token=token, expires_at=rfc3339(session.expires_at_ms)), 200)


@bp.delete("/sessions/current")
def logout():
    session = current_session()
    state = front()
    state.sessions.revoke(session)
    state.pay_memo.forget(session)
    return flask.Response(status=204)
