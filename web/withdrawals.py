"""The user's withdrawals: fee quotes, request, list, detail, cancel (DESIGN.md "Withdrawals" and the HTTP table).

A request quotes the fee now (web/fees.py), fixes it in the command, and asks the owning shard, which checks
rule 1 and freezes amount + fee with the withdrawal's row in one transaction. The op id comes from (account,
Idempotency-Key) as for transfers: a retry gets the first answer (the fee too, whatever the market says now).
Reads come from the database (the shard and the signer write the rows; the front only reads committed ones).
"""

from __future__ import annotations

import flask
from eth_utils import is_hex_address, to_checksum_address

from actors.transport import HandedLock
from core import messages as m
from core.errors import InvalidAddress, UnknownWithdrawal, WithdrawalStateConflict
from storage.models import ChainCursor, TxAttempt, TxObservation, Withdrawal
from web import idempotency
from web.auth import check_pay_password
from web.totp import require_withdrawal_totp
from web.io import paginate, parse_body, parse_query, respond
from web.schemas import (
    CancelledOut, FeeQuotesOut, FeesQuery, PageQuery, WithdrawalAccepted, WithdrawalOut, WithdrawalRequest,
    WithdrawalsPage,
)
from web.security import rfc3339
from web.state import Front, current_session, front

bp = flask.Blueprint("withdrawals", __name__, url_prefix="/api/v1")

OP_PREFIX = "w"


@bp.get("/withdrawals/fees")
def fees():
    query = parse_query(FeesQuery)
    quote = front().withdrawal_fees.quote(query.asset)
    return respond(FeeQuotesOut(asset=query.asset, fees={speed: str(fee) for speed, fee in quote.items()}))


@bp.post("/withdrawals")
def request_withdrawal():
    key = idempotency.require_key()
    body = parse_body(WithdrawalRequest)
    state, session = front(), current_session()
    check_pay_password(session, body.pay_password)
    to_address = checksummed(body.to_address)
    op_id = idempotency.op_id(OP_PREFIX, session.account_id, key)
    attempt = idempotency.Attempt.of(OP_PREFIX, session.account_id, key, {
        "asset": body.asset, "to_address": to_address, "amount": body.amount, "speed": body.speed})
    refusals_limit = [(state.limits.refused_account, str(session.account_id))]
    with state.inflight.hold(op_id) as lock:
        refused = idempotency.recorded_failure(attempt, state.refusals)
        if refused is not None:
            return refused
        require_withdrawal_totp(session, body.totp_code, lambda: _requested_already(op_id))
        state.failures.refused_lately(refusals_limit)
        with idempotency.recording_failures(attempt, state.refusals, lambda: state.failures.admit(refusals_limit)):
            result, fee = _request(state, op_id, session.account_id, body, to_address, lock)
    return respond(WithdrawalAccepted(id=str(result.ref), status=result.status, fee=str(fee)), 202)


def _request(state: Front, op_id: str, account_id: int, body: WithdrawalRequest, to_address: str,
             lock: HandedLock | None):
    asset = state.assets.get(body.asset)
    fee = state.withdrawal_fees.quote(asset.symbol)[body.speed]
    command = m.RequestWithdrawal(op_id=op_id, account_id=account_id, asset=asset.symbol, to_address=to_address,
                                  amount=int(body.amount), fee=fee, speed=body.speed)
    result = state.router.command(command, lock=lock)
    if result.replayed:  # the first request's fee, not today's quote
        fee = Withdrawal.get_by_id(result.ref).fee
    return result, fee


def _requested_already(op_id: str) -> bool:
    return Withdrawal.select().where(Withdrawal.op_id == op_id).exists()


def checksummed(raw: str) -> str:
    """EIP-55: all-lowercase (or all-uppercase) hex is accepted and checksummed; mixed case must be a valid
    checksum (a typo in one letter is caught). The shard checks the rest of rule 1 again."""
    if not raw.startswith("0x") or not is_hex_address(raw):
        raise InvalidAddress("to_address must be a 0x-prefixed 40-hex-digit Ethereum address")
    digits = raw[2:]
    if digits == digits.lower() or digits == digits.upper():
        return to_checksum_address(raw)
    return raw  # mixed case: the shard refuses it unless the checksum is right


@bp.get("/withdrawals")
def list_withdrawals():
    query = parse_query(PageQuery)
    select = Withdrawal.select().where(Withdrawal.account_id == current_session().account_id)
    if query.before is not None:
        select = select.where(Withdrawal.id < query.before)
    page, next_cursor = paginate(list(select.order_by(Withdrawal.id.desc()).limit(query.limit + 1)), query.limit,
                                 lambda row: row.id)
    return respond(WithdrawalsPage(withdrawals=describe_many(page), next_cursor=next_cursor))


@bp.get("/withdrawals/<int:withdrawal_id>")
def get_withdrawal(withdrawal_id: int):
    return respond(describe_many([own(withdrawal_id)])[0])


@bp.post("/withdrawals/<int:withdrawal_id>/cancel")
def cancel(withdrawal_id: int):
    row = own(withdrawal_id)
    if row.status != "reviewing":
        raise WithdrawalStateConflict(f"withdrawal {withdrawal_id} is {row.status}: only a reviewing one can be "
                                      "cancelled")
    result = front().router.command(m.CancelWithdrawal(op_id=f"wc:{withdrawal_id}", account_id=row.account_id,
                                                       withdrawal_id=withdrawal_id))
    return respond(CancelledOut(id=str(withdrawal_id), status=result.status))


def own(withdrawal_id: int) -> Withdrawal:
    """The caller's withdrawal; another user's answers exactly like one that does not exist."""
    row = Withdrawal.get_or_none((Withdrawal.id == withdrawal_id)
                                 & (Withdrawal.account_id == current_session().account_id))
    if row is None:
        raise UnknownWithdrawal(f"no withdrawal {withdrawal_id}")
    return row


def describe_many(rows: list[Withdrawal]) -> list[WithdrawalOut]:
    ids = [row.id for row in rows]
    hashes: dict[int, list[str]] = {}
    if ids:
        for ref_id, tx_hash in (TxAttempt.select(TxAttempt.ref_id, TxAttempt.tx_hash)
                                .where((TxAttempt.purpose == "withdrawal") & TxAttempt.ref_id.in_(ids))
                                .order_by(TxAttempt.id).tuples()):
            hashes.setdefault(ref_id, []).append(tx_hash)
    depth = confirmations_of([h for group in hashes.values() for h in group])
    return [_describe(row, hashes.get(row.id, []), depth) for row in rows]


def confirmations_of(tx_hashes: list[str]) -> dict[str, int]:
    """tx hash -> confirmations on the chain BlockWatch verified (only hashes seen in a canonical block)."""
    if not tx_hashes:
        return {}
    tips = dict(ChainCursor.select(ChainCursor.chain_id, ChainCursor.height).tuples())
    seen = (TxObservation.select(TxObservation.tx_hash, TxObservation.chain_id, TxObservation.block_number)
            .where(TxObservation.tx_hash.in_(tx_hashes) & (TxObservation.orphaned == False)).tuples())  # noqa: E712
    return {h: max(0, tips.get(c, block) - block + 1) for h, c, block in seen}


def _describe(row: Withdrawal, hashes: list[str], depth: dict[str, int]) -> WithdrawalOut:
    tx_hash = row.tx_hash or (hashes[-1] if hashes else None)
    return WithdrawalOut(
        id=str(row.id), asset=row.asset, to_address=row.to_address, amount=str(row.amount), fee=str(row.fee),
        speed=row.speed, status=row.status, tx_hash=tx_hash, hashes=hashes,
        confirmations=max((depth.get(h, 0) for h in hashes), default=0), needs_operator=row.needs_operator,
        created_at=rfc3339(row.created_at), updated_at=rfc3339(row.updated_at))
