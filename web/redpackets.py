"""Red packets: POST /api/v1/red-packets (send: the sender's shard escrows the total), POST
/api/v1/red-packets/<code>/claim (claim a share), GET /api/v1/red-packets/<id> (the sender's view).

A code names the shard that holds its packet (ledger/redpackets.py), so a claim goes straight there: no
lookup, and every claim of one packet is served by that shard in arrival order, batched like any money
command. A claim's Idempotency-Key is optional: with one, a retry is answered the first claim's amount; without
one, a second claim by the same account is 409 already_claimed. Claiming needs no pay password (it only
receives). The GET reads committed rows; another user's packet is 404, as an unknown one.
"""

from __future__ import annotations

import flask

from core import messages as m
from core.ids import unique_hex
from core.errors import UnknownRedPacket
from ledger.redpackets import check_shape, shard_of_code
from storage.models import Account, RedPacket, RedPacketClaim
from web import idempotency
from web.auth import check_pay_password
from web.io import parse_body, respond
from web.schemas import ClaimedShare, ClaimOut, RedPacketDetail, RedPacketOut, RedPacketRequest
from web.security import rfc3339
from web.state import current_session, front

bp = flask.Blueprint("red_packets", __name__, url_prefix="/api/v1")

CREATE_PREFIX, CLAIM_PREFIX = "p", "c"


@bp.post("/red-packets")
def create_red_packet():
    key = idempotency.require_key()
    body = parse_body(RedPacketRequest)
    expires_in_ms = body.expires_in_s * 1000
    check_shape(int(body.total), body.shares, body.mode, expires_in_ms)  # before the pay password: a 400 is free
    state, session = front(), current_session()
    check_pay_password(session, body.pay_password)
    op_id = idempotency.op_id(CREATE_PREFIX, session.account_id, key)
    fields = {"asset": body.asset, "total": body.total, "shares": str(body.shares), "mode": body.mode,
              "expires_in_s": str(body.expires_in_s)}
    attempt = idempotency.Attempt.of(CREATE_PREFIX, session.account_id, key, fields)
    with state.inflight.hold(op_id) as lock:
        refused = idempotency.recorded_failure(attempt, state.refusals)
        if refused is not None:
            return refused
        with idempotency.recording_failures(attempt, state.refusals):
            asset = state.assets.get(body.asset)
            result: m.OpResult = state.router.command(m.CreateRedPacket(
                op_id=op_id, account_id=session.account_id, asset=asset.symbol, amount=int(body.total),
                shares=body.shares, mode=body.mode, expires_in_ms=expires_in_ms), lock=lock)
    return respond(RedPacketOut(id=result.red_packet_id, code=result.code, status="open"), 201)


@bp.post("/red-packets/<code>/claim")
def claim_red_packet(code: str):
    state, session = front(), current_session()
    shard = shard_of_code(code)
    if shard is None or shard >= state.router.shard_count:
        raise UnknownRedPacket("no red packet has this code")
    command = m.ClaimRedPacket(op_id="", account_id=session.account_id,
                               claimant_shard=state.router.shard_of(session.account_id), code=code)
    if idempotency.HEADER in flask.request.headers:
        key = idempotency.require_key()
        op_id = idempotency.op_id(CLAIM_PREFIX, session.account_id, key)
        with state.inflight.hold(op_id) as lock:
            result = state.router.ask_shard(shard, _with_op_id(command, op_id), lock=lock)
    else:
        result = state.router.ask_shard(shard, _with_op_id(command, f"{CLAIM_PREFIX}:{session.account_id}:"
                                                                    f"{unique_hex()}"))
    return respond(ClaimOut(red_packet_id=result.red_packet_id, amount=str(result.amount)), 200)


def _with_op_id(command: m.ClaimRedPacket, op_id: str) -> m.ClaimRedPacket:
    return m.ClaimRedPacket(op_id=op_id, account_id=command.account_id, claimant_shard=command.claimant_shard,
                            code=command.code)


@bp.get("/red-packets/<packet_id>")
def get_red_packet(packet_id: str):
    row = RedPacket.get_or_none((RedPacket.id == packet_id[:64])
                                & (RedPacket.sender_account == current_session().account_id))
    if row is None:
        raise UnknownRedPacket("no red packet of yours has this id")
    claims = list(RedPacketClaim.select(Account.username, RedPacketClaim.amount, RedPacketClaim.claimed_at)
                  .join(Account, on=(Account.id == RedPacketClaim.account_id))
                  .where(RedPacketClaim.red_packet_id == row.id).order_by(RedPacketClaim.position).tuples())
    return respond(RedPacketDetail(
        id=row.id, asset=row.asset, total=str(row.total), shares=row.shares, mode=row.mode,
        claimed=[ClaimedShare(username=name, amount=str(amount), claimed_at=rfc3339(at)) for name, amount, at in claims],
        remaining=str(row.remaining), refunded=str(row.refunded), status=row.status,
        expires_at=rfc3339(row.expires_at)))

