"""Account security: change the password (the current one required; every other session is revoked), change
the pay password, list and revoke one's sessions, and recover an account without e-mail.

Recovery: registration answers ten one-time recovery codes, once (only their SHA-256 is stored: they are 80
random bits, so a fast hash suffices). POST /api/v1/password-resets {username, recovery_code, new_password}
spends one (a conditional update: a code works once, also under a race), sets the new password and revokes
every session. Wrong current passwords and wrong recovery codes are limited like logins, per account (or
username) and per client IP (password:*, recovery:*; README).

Account rows belong to the allocator: new hashes are written by it (UpdateCredentials); the sessions and the
recovery codes are the front's own rows.
"""

from __future__ import annotations

import hashlib
import secrets

import flask

from core import messages as m
from core.limits import RECOVERY_CODES_PER_ACCOUNT
from storage.models import Account, now_ms
from web.auth import check_pay_password, client_ip, public
from web.errors import InvalidRecoveryCode, UnknownSession, WrongPassword
from web.io import parse_body, respond
from web.models import RecoveryCode, WebSession
from web.schemas import (
    PasswordChange, PasswordReset, PasswordResetOut, PayPasswordChange, SessionInfo, SessionsOut,
)
from web.security import Session, hash_secret, rfc3339, verify_secret
from web.state import current_session, front

bp = flask.Blueprint("account_security", __name__, url_prefix="/api/v1")

_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read from paper
SESSION_ID_LEN = 16  # the session's public id: the first hex digits of its token's SHA-256


# -- recovery codes ---------------------------------------------------------------------------------------


def recovery_hash(code: str) -> str:
    return hashlib.sha256(_normal(code).encode()).hexdigest()


def _normal(code: str) -> str:
    return code.strip().lower().replace("-", "").replace(" ", "")


def new_recovery_codes(account_id: int) -> list[str]:
    """Ten fresh codes for an account (any earlier ones are replaced); returns them, the only time they are seen."""
    codes = ["-".join("".join(secrets.choice(_ALPHABET) for _ in range(4)) for _ in range(4))
             for _ in range(RECOVERY_CODES_PER_ACCOUNT)]  # 16 characters of 31: 79 bits
    now = now_ms()
    db = RecoveryCode._meta.database
    with db.atomic():
        RecoveryCode.delete().where(RecoveryCode.account_id == account_id).execute()
        RecoveryCode.insert_many([{"account_id": account_id, "code_hash": recovery_hash(c), "created_at": now}
                                  for c in codes]).execute()
    return codes


@bp.post("/password-resets")
@public
def reset_password():
    body = parse_body(PasswordReset)
    state = front()
    subjects = [(state.limits.recovery_account, body.username), (state.limits.recovery_ip, client_ip())]
    state.failures.admit(subjects)  # counted first: concurrent guesses cannot all reach the check
    account_id = (Account.select(Account.id).where((Account.username == body.username) & (Account.kind == "user"))
                  .scalar())
    spent = account_id is not None and RecoveryCode.update(used_at=now_ms()).where(
        (RecoveryCode.account_id == account_id) & (RecoveryCode.code_hash == recovery_hash(body.recovery_code))
        & RecoveryCode.used_at.is_null()).execute() == 1
    if not spent:
        raise InvalidRecoveryCode("unknown username, or a wrong or used recovery code")
    state.router.ask_actor("allocator", m.UpdateCredentials(account_id, password_hash=hash_secret(body.new_password)))
    _revoke_sessions(account_id, keep=None)
    state.failures.reset(state.limits.recovery_account, body.username)
    state.failures.forgive(subjects[1:])
    state.failures.reset(state.limits.login_account, body.username)
    left = RecoveryCode.select().where((RecoveryCode.account_id == account_id) & RecoveryCode.used_at.is_null()).count()
    return respond(PasswordResetOut(recovery_codes_left=left), 200)


# -- passwords ------------------------------------------------------------------------------------------------


@bp.post("/me/password")
def change_password():
    body = parse_body(PasswordChange)
    state, session = front(), current_session()
    subjects = [(state.limits.password_account, str(session.account_id)), (state.limits.password_ip, client_ip())]
    state.failures.admit(subjects)
    stored = Account.select(Account.password_hash).where(Account.id == session.account_id).scalar()
    if not verify_secret(stored, body.current_password):
        raise WrongPassword("the current password is wrong")
    state.router.ask_actor("allocator", m.UpdateCredentials(session.account_id,
                                                            password_hash=hash_secret(body.new_password)))
    state.failures.forgive(subjects)
    _revoke_sessions(session.account_id, keep=session.token_hash)
    return flask.Response(status=204)


@bp.post("/me/pay-password")
def change_pay_password():
    body = parse_body(PayPasswordChange)
    state, session = front(), current_session()
    check_pay_password(session, body.current_pay_password)  # limited as pay:account / pay:ip
    state.router.ask_actor("allocator", m.UpdateCredentials(session.account_id,
                                                            pay_password_hash=hash_secret(body.new_pay_password)))
    # Every session's memo of the old pay password goes: the next money request proves the new one.
    for (digest,) in WebSession.select(WebSession.token_hash).where(
            WebSession.account_id == session.account_id).tuples():
        state.pay_memo.forget(Session(digest, session.account_id, 0))
    return flask.Response(status=204)


def _revoke_sessions(account_id: int, keep: str | None) -> None:
    state = front()
    for digest in state.sessions.revoke_all(account_id, keep=keep):
        state.pay_memo.forget(Session(digest, account_id, 0))


# -- sessions -------------------------------------------------------------------------------------------------


@bp.get("/sessions")
def list_sessions():
    session = current_session()
    rows = (WebSession.select().where((WebSession.account_id == session.account_id)
                                      & WebSession.revoked_at.is_null() & (WebSession.expires_at > now_ms()))
            .order_by(WebSession.created_at.desc()))
    return respond(SessionsOut(sessions=[
        SessionInfo(id=row.token_hash[:SESSION_ID_LEN], created_at=rfc3339(row.created_at),
                    expires_at=rfc3339(row.expires_at), current=row.token_hash == session.token_hash)
        for row in rows]))


@bp.delete("/sessions/<session_id>")
def revoke_session(session_id: str):
    session, state = current_session(), front()
    if len(session_id) != SESSION_ID_LEN or any(c not in "0123456789abcdef" for c in session_id):
        raise UnknownSession("no session of yours has this id")
    rows = [digest for (digest,) in WebSession.select(WebSession.token_hash).where(
        (WebSession.account_id == session.account_id) & WebSession.token_hash.startswith(session_id)
        & WebSession.revoked_at.is_null()).tuples()]
    if not rows:
        raise UnknownSession("no session of yours has this id")
    for digest in rows:
        target = Session(digest, session.account_id, 0)
        state.sessions.revoke(target)
        state.pay_memo.forget(target)
    return flask.Response(status=204)
