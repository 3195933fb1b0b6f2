"""POST /api/v1/transfers: an internal transfer to another user, by username.

Order matters: validate the key and body, prove the pay password, then mark the op in flight, answer a
refusal recorded under this key if there is one, refuse (429) an account over its limit of refused money
requests (`refused:account`), else resolve asset and recipient and ask the sender's shard. The op id comes from (account, Idempotency-Key), so a retry is answered by the shard with the
first result, and other content under the same key is refused (422); a refusal (insufficient funds,
unknown recipient, ...) is recorded by the front, so a retry gets it again (see web/idempotency.py).
"""

from __future__ import annotations

import flask

from actors.transport import HandedLock
from core import messages as m
from web import idempotency
from web.auth import check_pay_password
from web.io import parse_body, respond
from web.schemas import TransferOut, TransferRequest
from web.state import Front, current_session, front

bp = flask.Blueprint("transfers", __name__, url_prefix="/api/v1")

OP_PREFIX = "t"


@bp.post("/transfers")
def create_transfer():
    key = idempotency.require_key()
    body = parse_body(TransferRequest)
    state, session = front(), current_session()
    check_pay_password(session, body.pay_password)
    op_id = idempotency.op_id(OP_PREFIX, session.account_id, key)
    attempt = idempotency.Attempt.of(OP_PREFIX, session.account_id, key,
                                     {"to_username": body.to_username, "asset": body.asset, "amount": body.amount})
    refusals_limit = [(state.limits.refused_account, str(session.account_id))]
    with state.inflight.hold(op_id) as lock:
        refused = idempotency.recorded_failure(attempt, state.refusals)
        if refused is not None:
            return refused
        state.failures.refused_lately(refusals_limit)
        with idempotency.recording_failures(attempt, state.refusals, lambda: state.failures.admit(refusals_limit)):
            result = _transfer(state, op_id, session.account_id, body, lock)
    return respond(TransferOut(id=result.op_id, status=result.status), 201)


def _transfer(state: Front, op_id: str, account_id: int, body: TransferRequest,
              lock: HandedLock | None) -> m.OpResult:
    asset = state.assets.get(body.asset)
    to_account, _ = state.router.directory.lookup(body.to_username)
    return state.router.transfer(op_id, account_id, to_account, asset.symbol, int(body.amount), lock=lock)
