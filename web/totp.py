"""An optional TOTP second factor for a user's withdrawals (RFC 6238 through pyotp: 30 s steps, 6 digits).

Enrol: POST /api/v1/me/totp {pay_password} answers a new secret and its otpauth:// URI (for an authenticator
app); POST /api/v1/me/totp/confirm {code} activates it. From then on every withdrawal needs a current code:
the withdrawal endpoint calls `require_withdrawal_totp` before it asks the shard. Disabling
(POST /api/v1/me/totp/disable {code}) needs a code too. Wrong codes are limited per account (totp:account),
like logins; a code is accepted once (its time step must be newer than the last accepted), and one step of
clock drift either way is tolerated.

The secret is sealed with AES-GCM under the master key (storage/sealed_secrets.py), bound to the account, under the
current version of the key ring; every version of the ring opens it, and `wallet keys rotate` re-encrypts it.
"""

from __future__ import annotations

from collections.abc import Callable

import flask
import pyotp

from core.keys import KeyRing
from core.limits import TOTP_DRIFT_STEPS
from storage.models import Account, now_ms
from storage.sealed_secrets import USER_TOTP, secret_column
from web.auth import check_pay_password
from web.errors import TotpAlreadyEnabled, TotpNotEnrolled, TotpRequired, WrongTotpCode
from web.io import parse_body, respond
from web.models import TotpFactor
from web.schemas import TotpCodeRequest, TotpEnrolOut, TotpEnrolRequest
from web.security import Session
from web.state import current_session, front

bp = flask.Blueprint("totp", __name__, url_prefix="/api/v1")

ISSUER = "Wallet"
STEP_S = 30  # RFC 6238's default, what authenticator apps assume


def _ring() -> KeyRing:
    # The whole ring (current and retired versions), not the current key alone: a factor sealed before a
    # rotation opens until `wallet keys rotate` has re-encrypted it.
    return front().config.key_ring()


def _secret_of(row: TotpFactor) -> str:
    return secret_column(USER_TOTP).open(_ring(), row.ciphertext, row.key_version, (row.account_id,))


def enabled(account_id: int) -> bool:
    """Asked by every withdrawal request: one fixed statement (peewee's query building cost more than the
    round trip)."""
    db = TotpFactor._meta.database
    sql = (f"SELECT 1 FROM {TotpFactor._meta.table_name} WHERE account_id = {db.param} "
           "AND confirmed_at IS NOT NULL")
    return db.execute_sql(sql, (account_id,)).fetchone() is not None


def check_code(account_id: int, code: str | None, clock_ms=now_ms, confirmed: bool = True) -> None:
    """Accept `code` for the account's factor once, or raise (counted against totp:account)."""
    state = front()
    subjects = [(state.limits.totp_account, str(account_id))]
    state.failures.admit(subjects)  # counted first: concurrent guesses cannot all reach the check
    row = TotpFactor.get_or_none(TotpFactor.account_id == account_id)
    if row is None or (row.confirmed_at is not None) != confirmed:
        state.failures.forgive(subjects)  # not a guess
        raise TotpNotEnrolled("no TOTP enrolment to check this code against")
    totp = pyotp.TOTP(_secret_of(row), interval=STEP_S)
    now_step = clock_ms() // 1000 // STEP_S
    for step in range(now_step - TOTP_DRIFT_STEPS, now_step + TOTP_DRIFT_STEPS + 1):
        if step > row.last_step and code is not None and pyotp.utils.strings_equal(totp.generate_otp(step), code):
            # Conditional: two requests racing with one code cannot both pass.
            if TotpFactor.update(last_step=step).where((TotpFactor.account_id == account_id)
                                                       & (TotpFactor.last_step < step)).execute():
                state.failures.reset(state.limits.totp_account, str(account_id))
                return
    raise WrongTotpCode("the TOTP code is wrong, or was used already")


def require_withdrawal_totp(session: Session, code: str | None, answered_before: Callable[[], bool]) -> None:
    """For the withdrawal endpoint: nothing if the account has no TOTP factor or the request was answered
    before (a retry: its code is spent); else a valid, unused code."""
    if not enabled(session.account_id) or answered_before():
        return
    if not code:
        raise TotpRequired("this account protects withdrawals with TOTP: send a current code")
    check_code(session.account_id, code)


@bp.post("/me/totp")
def enrol():
    body = parse_body(TotpEnrolRequest)
    session = current_session()
    check_pay_password(session, body.pay_password)
    if enabled(session.account_id):
        raise TotpAlreadyEnabled("TOTP is enabled already; disable it first to enrol another")
    secret = pyotp.random_base32(32)  # 160 bits
    sealed, key_version = secret_column(USER_TOTP).seal(_ring(), secret, (session.account_id,))
    TotpFactor.delete().where(TotpFactor.account_id == session.account_id).execute()  # an unconfirmed one
    TotpFactor.insert(account_id=session.account_id, ciphertext=sealed, key_version=key_version,
                      created_at=now_ms(), last_step=0).execute()
    username = Account.select(Account.username).where(Account.id == session.account_id).scalar()
    uri = pyotp.TOTP(secret, interval=STEP_S).provisioning_uri(name=username, issuer_name=ISSUER)
    return respond(TotpEnrolOut(secret=secret, otpauth_uri=uri), 201)


@bp.post("/me/totp/confirm")
def confirm():
    body = parse_body(TotpCodeRequest)
    session = current_session()
    check_code(session.account_id, body.code, confirmed=False)
    TotpFactor.update(confirmed_at=now_ms()).where(TotpFactor.account_id == session.account_id).execute()
    return flask.Response(status=204)


@bp.post("/me/totp/disable")
def disable():
    body = parse_body(TotpCodeRequest)
    session = current_session()
    check_code(session.account_id, body.code)
    TotpFactor.delete().where(TotpFactor.account_id == session.account_id).execute()
    return flask.Response(status=204)
