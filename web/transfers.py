"""POST /api/v1/transfers: an internal transfer to another user, by username.

Order matters: validate the key and body, prove the pay password, resolve the recipient, then mark the
op in flight and ask the sender's shard. The op id comes from (account, Idempotency-Key), so a retry is
answered by the shard with the first result, and other content under the same key is refused (422).
"""

from __future__ import annotations

import flask

from web import idempotency
from web.auth import check_pay_password
from web.io import parse_body, respond
from web.schemas import TransferOut, TransferRequest
from web.state import current_session, front

bp = flask.Blueprint("transfers", __name__, url_prefix="/api/v1")

OP_PREFIX = "t"


@bp.post("/transfers")
def create_transfer():
    key = idempotency.require_key()
    body = parse_body(TransferRequest)
    state, session = front(), current_session()
    asset = state.assets.get(body.asset)
    check_pay_password(session, body.pay_password)
    to_account, _ = state.router.directory.lookup(body.to_username)
    op_id = idempotency.op_id(OP_PREFIX, session.account_id, key)
    with state.inflight.hold(op_id):
        result = state.router.transfer(op_id, session.account_id, to_account, asset.symbol, int(body.amount))
    return respond(TransferOut(id=result.op_id, status=result.status), 201)
