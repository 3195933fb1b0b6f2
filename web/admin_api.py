"""The admin API (`/admin/api/v1`, signsrv's face in JSON): the review queue, approvals and rejections, the
signing pause, the hot wallet, flagged deposits, account holds and the staff log (DESIGN.md "Admin API and
console").

Staff authenticate with the bearer token `wallet admin create` printed (`Authorization: Bearer wadm_...`);
a user's token is refused. Roles: a reviewer approves and rejects; an operator pauses, resumes, releases
holds and clears a withdrawal's needs_operator flag; an auditor reads. The withdrawal operations are
web/review.py's, shared with the console. Every action is appended to the staff log in the transaction of the change, by
whoever makes the change (the shard for approvals and rejections, the allocator for holds, here for the
switch). Errors are the user API's problem details.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit
from typing import Callable, Literal, TypeVar

import flask
from pydantic import BaseModel, ConfigDict, Field

from core import messages as m
from core.errors import Forbidden, NoReconciliation
from storage import admins, stafflog, webhooks
from storage.db import database_proxy
from storage.models import AdminUser, Deposit, Sweep, TxAttempt, Withdrawal, WithdrawalApproval
from treasury import reconcile, switches
from web import review
from web.auth import public
from web.errors import InvalidToken, Unauthorized
from web.io import parse_body, parse_query
from web.security import rfc3339
from web.state import front

bp = flask.Blueprint("admin_api", __name__, url_prefix="/admin/api/v1")

F = TypeVar("F", bound=Callable)
PAGE_MAX = 200


# -- who ---------------------------------------------------------------------------------------------------------


@bp.before_request
def authenticate_staff() -> None:
    header = flask.request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer <admin token> (from `wallet admin create`)")
    admin = admins.admin_for_token(token) if scheme.lower() == "bearer" else None
    if admin is None:
        raise InvalidToken("the admin token is unknown")
    flask.g.admin = admin


def staff() -> AdminUser:
    return flask.g.admin


def may(*roles: str) -> Callable[[F], F]:
    """Only these roles may make this request (the others get 403 and nothing changes)."""

    def wrap(view: F) -> F:
        def guarded(*args, **kwargs):  # noqa: ANN002, ANN003
            if staff().role not in roles:
                raise Forbidden(f"a {staff().role} may not do this (needs {' or '.join(roles)})")
            return view(*args, **kwargs)

        guarded.__name__ = view.__name__
        return public(guarded)  # type: ignore[return-value] - the user API's bearer check steps aside

    return wrap


def actor() -> stafflog.Actor:
    admin = staff()
    return stafflog.Actor(admin.id, admin.name, admin.role)


# -- bodies ------------------------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReasonBody(Strict):
    reason: str = Field(min_length=1, max_length=255)


class PauseBody(Strict):
    reason: str = Field(default="", max_length=255)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["reviewing", "approved", "signed", "broadcast", "confirmed", "failed", "rejected",
                    "cancelled"] | None = None
    limit: int = Field(default=50, ge=1, le=PAGE_MAX)
    after: int | None = Field(default=None, ge=0, le=2**62, description="the last id of the previous page")


class SweepQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["topup", "signed", "broadcast", "confirmed", "failed"] | None = None
    kind: Literal["eth", "token", "cold"] | None = None
    limit: int = Field(default=50, ge=1, le=PAGE_MAX)
    after: int | None = Field(default=None, ge=0, le=2**62)


class DepositQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["pending", "confirmed", "orphaned", "reorged_after_credit", "below_minimum",
                    "credit_failed"] | None = None
    limit: int = Field(default=50, ge=1, le=PAGE_MAX)
    after: int | None = Field(default=None, ge=0, le=2**62)


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["pending", "delivered", "abandoned"] | None = None
    endpoint: int | None = Field(default=None, ge=1, le=2**62)
    limit: int = Field(default=50, ge=1, le=PAGE_MAX)
    before: int | None = Field(default=None, ge=1, le=2**62)


class LogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=50, ge=1, le=PAGE_MAX)
    before: int | None = Field(default=None, ge=1, le=2**62)


def answer(body: dict, status: int = 200) -> flask.Response:
    return flask.Response(flask.json.dumps(body), status=status, mimetype="application/json")


# -- withdrawals -------------------------------------------------------------------------------------------------


@bp.get("/withdrawals")
@may(*admins.ROLES)
def list_withdrawals():
    """Oldest first (the review queue's order), keyset-paginated by id."""
    query = parse_query(ListQuery)
    select = Withdrawal.select()
    if query.status is not None:
        select = select.where(Withdrawal.status == query.status)
    if query.after is not None:
        select = select.where(Withdrawal.id > query.after)
    rows = list(select.order_by(Withdrawal.id).limit(query.limit + 1))
    page = rows[:query.limit]
    return answer({"withdrawals": [_row(w) for w in page],
                 "next_after": str(page[-1].id) if len(rows) > query.limit else None})


@bp.get("/withdrawals/<int:withdrawal_id>")
@may(*admins.ROLES)
def get_withdrawal(withdrawal_id: int):
    row = _withdrawal(withdrawal_id)
    attempts = [{"tx_hash": a.tx_hash, "nonce": a.nonce, "kind": a.kind, "status": a.status,
                 "max_fee_per_gas": str(a.max_fee_per_gas), "max_priority_fee_per_gas": str(a.max_priority_fee_per_gas),
                 "gas_limit": a.gas_limit, "sends": a.sends, "last_error": a.last_error,
                 "created_at": rfc3339(a.created_at)}
                for a in TxAttempt.select().where((TxAttempt.purpose == "withdrawal") & (TxAttempt.ref_id == row.id))
                .order_by(TxAttempt.id)]
    approvals = [{"admin": a.admin_name, "at": rfc3339(a.created_at)}
                 for a in WithdrawalApproval.select().where(WithdrawalApproval.withdrawal_id == row.id)
                 .order_by(WithdrawalApproval.created_at)]
    history = [_log_row(e) for e in stafflog.history(f"withdrawal:{row.id}")]
    return answer({**_row(row), "attempts": attempts, "approvals": approvals, "history": history})


@bp.post("/withdrawals/<int:withdrawal_id>/approve")
@may("reviewer")
def approve(withdrawal_id: int):
    return answer({"id": str(withdrawal_id), "status": review.approve(withdrawal_id, actor())})


@bp.post("/withdrawals/<int:withdrawal_id>/reject")
@may("reviewer")
def reject(withdrawal_id: int):
    body = parse_body(ReasonBody)
    return answer({"id": str(withdrawal_id), "status": review.reject(withdrawal_id, actor(), body.reason)})


@bp.post("/withdrawals/<int:withdrawal_id>/clear-flag")
@may("operator")
def clear_flag(withdrawal_id: int):
    """needs_operator cleared with a reason (treasury/flags.py): the signer follows the withdrawal up again."""
    body = parse_body(ReasonBody)
    review.clear_operator_flag(withdrawal_id, actor(), body.reason)
    return answer({"id": str(withdrawal_id), "needs_operator": False})


@bp.post("/withdrawals/pause")
@may("operator")
def pause():
    body = parse_body(PauseBody) if flask.request.content_length else PauseBody()
    changed = review.set_signing_paused(True, actor(), body.reason)
    return answer({"signing_paused": True, "changed": changed})


@bp.post("/withdrawals/resume")
@may("operator")
def resume():
    body = parse_body(PauseBody) if flask.request.content_length else PauseBody()
    changed = review.set_signing_paused(False, actor(), body.reason)
    return answer({"signing_paused": False, "changed": changed})


_withdrawal = review.withdrawal


def _row(row: Withdrawal) -> dict:
    return {"id": str(row.id), "account_id": row.account_id, "asset": row.asset, "to_address": row.to_address,
            "amount": str(row.amount), "fee": str(row.fee), "speed": row.speed, "status": row.status,
            "approvals_needed": row.approvals_needed, "needs_operator": row.needs_operator,
            "operator_reason": row.operator_reason, "reason": row.reason, "lane": row.lane, "nonce": row.nonce,
            "tx_hash": row.tx_hash, "created_at": rfc3339(row.created_at), "updated_at": rfc3339(row.updated_at)}


# -- the hot wallet, deposits, holds, the staff log ------------------------------------------------------------------


@bp.get("/reconciliation")
@may(*admins.ROLES)
def reconciliation():
    """The last reconciliation report (treasury/reconcile.py): per asset, ledger against chain at one block."""
    report = reconcile.last_report()
    if report is None:
        raise NoReconciliation("no reconciliation has run yet (`wallet reconcile`, or the reconciler's interval)")
    return answer(report)


@bp.get("/hot-wallet")
@may(*admins.ROLES)
def hot_wallet():
    wallet: m.HotWallet = front().router.ask_actor("signer", m.HotWalletQuery())
    return answer({"address": wallet.address, "gas_wallet": wallet.gas_wallet,
                   "gas_wallet_balances": {asset: str(amount) for asset, amount in wallet.gas_balances},
                 "balances": {asset: str(amount) for asset, amount in wallet.balances},
                 "nonce": wallet.next_nonce, "in_flight": {
                     "count": wallet.in_flight_count, "eth_wei": str(wallet.in_flight_eth),
                     "tokens": {asset: str(amount) for asset, amount in wallet.in_flight_tokens}},
                 "signing_paused": review.signing_paused(),
                 "sweeps_paused": switches.engaged(_db(), switches.SWEEPS_PAUSED),
                 "cold_paused": switches.engaged(_db(), switches.COLD_PAUSED),
                 "waiting_for_funds": wallet.waiting_for_funds})


@bp.get("/deposits")
@may(*admins.ROLES)
def deposits():
    query = parse_query(DepositQuery)
    select = Deposit.select()
    if query.status is not None:
        select = select.where(Deposit.status == query.status)
    if query.after is not None:
        select = select.where(Deposit.id > query.after)
    rows = list(select.order_by(Deposit.id).limit(query.limit + 1))
    page = rows[:query.limit]
    return answer({"deposits": [{"id": str(d.id), "account_id": d.account_id, "asset": d.asset, "amount": str(d.amount),
                               "tx_hash": d.tx_hash, "log_index": d.log_index, "block_number": d.block_number,
                               "status": d.status} for d in page],
                 "next_after": str(page[-1].id) if len(rows) > query.limit else None})


# -- treasury: sweeps and cold moves (treasury/sweeps.py), and their pause switches ----------------------------------


@bp.get("/sweeps")
@may(*admins.ROLES)
def sweeps():
    query = parse_query(SweepQuery)
    select = Sweep.select()
    if query.status is not None:
        select = select.where(Sweep.status == query.status)
    if query.kind is not None:
        select = select.where(Sweep.kind == query.kind)
    if query.after is not None:
        select = select.where(Sweep.id > query.after)
    rows = list(select.order_by(Sweep.id).limit(query.limit + 1))
    page = rows[:query.limit]
    hashes: dict[int, list[dict]] = {}
    if page:
        for a in (TxAttempt.select().where(TxAttempt.purpose.in_(("sweep", "gas_topup", "cold"))
                                           & TxAttempt.ref_id.in_([r.id for r in page])).order_by(TxAttempt.id)):
            hashes.setdefault(a.ref_id, []).append({"purpose": a.purpose, "tx_hash": a.tx_hash, "nonce": a.nonce,
                                                    "kind": a.kind, "status": a.status})
    return answer({"sweeps": [{"id": str(r.id), "kind": r.kind, "asset": r.asset, "from_address": r.from_address,
                               "to_address": r.to_address, "amount": str(r.amount), "status": r.status,
                               "nonce": r.nonce, "topup_wei": str(r.topup_amount), "tx_hash": r.tx_hash,
                               "block_number": r.block_number,
                               "gas_paid": None if r.gas_paid is None else str(r.gas_paid),
                               "needs_operator": r.needs_operator, "operator_reason": r.operator_reason,
                               "attempts": hashes.get(r.id, []), "created_at": rfc3339(r.created_at),
                               "updated_at": rfc3339(r.updated_at)} for r in page],
                   "next_after": str(page[-1].id) if len(rows) > query.limit else None})


def _switch(name: str, on: bool):
    body = parse_body(PauseBody) if flask.request.content_length else PauseBody()
    changed = switches.set_switch(_db(), name, on, actor(), body.reason)
    return answer({name: on, "changed": changed})


@bp.post("/sweeps/pause")
@may("operator")
def pause_sweeps():
    return _switch(switches.SWEEPS_PAUSED, True)


@bp.post("/sweeps/resume")
@may("operator")
def resume_sweeps():
    return _switch(switches.SWEEPS_PAUSED, False)


@bp.post("/cold/pause")
@may("operator")
def pause_cold():
    return _switch(switches.COLD_PAUSED, True)


@bp.post("/cold/resume")
@may("operator")
def resume_cold():
    return _switch(switches.COLD_PAUSED, False)


@bp.post("/accounts/<int:account_id>/release-hold")
@may("operator")
def release_hold(account_id: int):
    body = parse_body(ReasonBody)
    admin = staff()
    front().router.ask_actor("allocator", m.SetAccountHold(account_id, False, body.reason,
                                                           by=m.StaffRef(admin.id, admin.name, admin.role)))
    return answer({"account_id": account_id, "on_hold": False})


@bp.get("/audit-log")
@may(*admins.ROLES)
def audit_log():
    query = parse_query(LogQuery)
    select = stafflog.StaffAction.select()
    if query.before is not None:
        select = select.where(stafflog.StaffAction.id < query.before)
    rows = list(select.order_by(stafflog.StaffAction.id.desc()).limit(query.limit + 1))
    page = rows[:query.limit]
    return answer({"entries": [_log_row(e) for e in page],
                 "next_before": str(page[-1].id) if len(rows) > query.limit else None})


@bp.get("/webhooks")
@may(*admins.ROLES)
def webhook_endpoints():
    """The endpoints (`wallet webhooks add`), without their signing secrets (nor a URL's credentials or query)."""
    return answer({"endpoints": [{"id": e.id, "url": _without_credentials(e.url), "active": not e.disabled,
                                  "created_at": rfc3339(e.created_at), "pending": e.pending,
                                  "delivered": e.delivered, "abandoned": e.abandoned}
                                 for e in webhooks.list_endpoints()]})


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


@bp.get("/webhooks/deliveries")
@may(*admins.ROLES)
def webhook_deliveries():
    """The delivery log, newest first: what each endpoint was sent, how often, and what it answered."""
    query = parse_query(DeliveryQuery)
    rows = webhooks.delivery_log(query.limit + 1, query.endpoint, query.status, query.before)
    page = rows[:query.limit]
    return answer({"deliveries": [{
        "id": str(d.id), "endpoint_id": d.endpoint_id, "event_id": d.event_id, "kind": d.kind,
        "account_id": d.account_id, "status": d.status, "attempts": d.attempts,
        "next_attempt_at": rfc3339(d.next_attempt_at) if d.next_attempt_at is not None else None,
        "delivered_at": rfc3339(d.delivered_at) if d.delivered_at is not None else None,
        "last_status": d.last_status, "last_error": d.last_error} for d in page],
        "next_before": str(page[-1].id) if len(rows) > query.limit else None})


def _log_row(entry: stafflog.StaffAction) -> dict:
    return {"id": entry.id, "at": rfc3339(entry.at_ms), "admin": entry.admin_name, "role": entry.role,
            "action": entry.action, "subject": entry.subject, "details": flask.json.loads(entry.details),
            "hash": entry.row_hash, "prev_hash": entry.prev_hash}


def _db():
    return database_proxy.obj
