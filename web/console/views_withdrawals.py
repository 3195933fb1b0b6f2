"""The review queue and a withdrawal's page, with the staff actions on them: approve and reject (reviewers),
clear a needs_operator flag (operators). The actions are web/review.py's, the very ones of the JSON admin API:
the shard writes an approval or rejection with its staff log row, treasury/flags.py a cleared flag with its
row. A refused action (lost race, second approval by the same reviewer) says why and changes nothing."""

from __future__ import annotations

import json

import flask

from core.errors import WalletError
from core.limits import CONSOLE_PAGE_ROWS
from storage import stafflog
from storage.events import Event
from storage.models import TxAttempt
from web import review
from web.console import auth, queue
from web.console.blueprint import bp
from web.console.forms import EmptyForm, ReasonForm
from web.console.state import console
from web.state import front
from web.withdrawals import confirmations_of

EVENT_ROWS_MAX = 500  # the account's newest withdrawal events looked through for one withdrawal's history


def _actor() -> stafflog.Actor:
    me = auth.staff()
    return stafflog.Actor(me.admin_id, me.name, me.role)


@bp.get("/withdrawals")
@auth.page
def withdrawals():
    raw = {key: flask.request.args.get(key, "")[:40] for key in ("status", "asset", "min", "max", "after", "flagged")}
    filters = queue.parse_filters(raw)
    rows, next_after = queue.page(filters, CONSOLE_PAGE_ROWS)
    return flask.render_template("console/withdrawals.html", rows=_rows(rows), filters=filters, raw=raw,
                                 statuses=queue.STATUSES, assets=front_assets(), now=console().clock(),
                                 next_args={**filters.args(raw), "after": next_after} if next_after else None)


def _rows(rows: list) -> list[queue.Row]:
    return queue.rows_for(rows, queue.context(rows), auth.staff().admin_id)


def front_assets() -> list[str]:
    return list(front().assets.symbols)


@bp.get("/withdrawals/<int:withdrawal_id>")
@auth.page
def withdrawal(withdrawal_id: int):
    row = review.withdrawal(withdrawal_id)
    attempts = list(TxAttempt.select().where((TxAttempt.purpose == "withdrawal") & (TxAttempt.ref_id == row.id))
                    .order_by(TxAttempt.id))
    depth = confirmations_of([a.tx_hash for a in attempts])
    return flask.render_template("console/withdrawal.html", r=_rows([row])[0], attempts=attempts, depth=depth,
                                 confirmations=max(depth.values(), default=0), history=state_history(row),
                                 now=console().clock())


def state_history(row) -> list[dict]:  # noqa: ANN001 - a Withdrawal
    """Its user-visible moves (the event outbox, written with each move) and the staff's actions on it (the staff
    log), oldest first: when, what, who."""
    events = (Event.select(Event.id, Event.kind, Event.created_at)
              .where((Event.account_id == row.account_id) & Event.kind.startswith("withdrawal.")
                     & Event.payload.contains(f'"withdrawal_id":"{row.id}"'))
              .order_by(Event.id.desc()).limit(EVENT_ROWS_MAX))
    entries = [{"at": e.created_at, "order": (e.created_at, 0, e.id), "what": e.kind.split(".", 1)[1],
                "who": "service", "details": ""} for e in events]
    for action in stafflog.history(f"withdrawal:{row.id}"):
        details = json.loads(action.details)
        entries.append({"at": action.at_ms, "order": (action.at_ms, 1, action.id), "what": action.action,
                        "who": f"{action.admin_name} ({action.role})",
                        "details": ", ".join(f"{k}: {v}" for k, v in sorted(details.items()))})
    return sorted(entries, key=lambda entry: entry["order"])


def _back(withdrawal_id: int) -> flask.Response:
    target = flask.request.form.get("back")
    if target == "queue":
        return flask.redirect(flask.url_for("console.withdrawals"))
    return flask.redirect(flask.url_for("console.withdrawal", withdrawal_id=withdrawal_id))


@bp.post("/withdrawals/<int:withdrawal_id>/approve")
@auth.action("reviewer")
def approve(withdrawal_id: int):
    EmptyForm()  # the guard has checked its CSRF token
    try:
        status = review.approve(withdrawal_id, _actor())
        flask.flash(f"Withdrawal {withdrawal_id} approved: now {status}"
                    + (" (waits for a second reviewer)." if status == "reviewing" else "."), "info")
    except WalletError as exc:
        flask.flash(f"Not approved: {exc.detail}", "error")
    return _back(withdrawal_id)


@bp.post("/withdrawals/<int:withdrawal_id>/reject")
@auth.action("reviewer")
def reject(withdrawal_id: int):
    form = ReasonForm()
    if not form.validate():
        flask.flash("Give a reason (at most 255 characters).", "error")
        return _back(withdrawal_id)
    try:
        status = review.reject(withdrawal_id, _actor(), form.reason.data)
        flask.flash(f"Withdrawal {withdrawal_id} {status}: amount and fee are unfrozen.", "info")
    except WalletError as exc:
        flask.flash(f"Not rejected: {exc.detail}", "error")
    return _back(withdrawal_id)


@bp.post("/withdrawals/<int:withdrawal_id>/clear-flag")
@auth.action("operator")
def clear_flag(withdrawal_id: int):
    form = ReasonForm()
    if not form.validate():
        flask.flash("Give a reason (at most 255 characters).", "error")
        return _back(withdrawal_id)
    try:
        review.clear_operator_flag(withdrawal_id, _actor(), form.reason.data)
        flask.flash(f"Flag cleared on withdrawal {withdrawal_id}: the signer follows it up again.", "info")
    except WalletError as exc:
        flask.flash(f"Flag not cleared: {exc.detail}", "error")
    return _back(withdrawal_id)
