"""Flagged deposits: credited then reorged out of the chain (reorged_after_credit: the account is on hold until an
operator releases it), and credits a shard refused for good (credit_failed: an operator sets it back to pending
once the cause is fixed). BlockWatch owns the deposit table, so the retry is a message to it
(core.messages.RetryDepositCredit); it writes the change and its staff log row in one transaction."""

from __future__ import annotations

import flask
import peewee

from blockwatch.deposits import CREDIT_FAILED, REORGED_AFTER_CREDIT
from core import messages as m
from core.errors import Unavailable, WalletError
from core.limits import CONSOLE_PAGE_ROWS
from storage.models import Account, Deposit
from web.console import auth
from web.console.blueprint import bp
from web.console.forms import ReasonForm
from web.state import front

FLAGGED = (REORGED_AFTER_CREDIT, CREDIT_FAILED)


@bp.get("/deposits")
@auth.page
def deposits():
    status = flask.request.args.get("status", "")
    statuses = (status,) if status in FLAGGED else FLAGGED
    after = flask.request.args.get("after", type=int)
    query = (Deposit.select(Deposit, Account.username).join(Account, on=(Account.id == Deposit.account_id))
             .where(Deposit.status.in_(statuses)))
    if after is not None:
        query = query.where(Deposit.id > after)
    rows = list(query.order_by(Deposit.id).limit(CONSOLE_PAGE_ROWS + 1).objects())
    more = len(rows) > CONSOLE_PAGE_ROWS
    rows = rows[:CONSOLE_PAGE_ROWS]
    return flask.render_template("console/deposits.html", rows=rows, status=status, statuses=FLAGGED,
                                 next_after=rows[-1].id if more else None)


@bp.post("/deposits/<int:deposit_id>/retry-credit")
@auth.action("operator")
def retry_credit(deposit_id: int):
    form = ReasonForm()
    if not form.validate():
        flask.flash("Give a reason (at most 255 characters).", "error")
    else:
        try:
            done: m.CreditRetried = front().router.ask_actor(
                "blockwatch", m.RetryDepositCredit(deposit_id, form.reason.data, auth.staff()))
            flask.flash(f"Deposit {done.deposit_id} is pending again: BlockWatch credits it on its next step.", "info")
        except Unavailable as exc:
            flask.flash(f"Not retried: BlockWatch is not running or did not answer ({exc.detail}).", "error")
        except WalletError as exc:
            flask.flash(f"Not retried: {exc.detail}", "error")
    return flask.redirect(flask.url_for("console.deposits"))


def flagged_counts() -> dict[str, int]:
    rows = (Deposit.select(Deposit.status, peewee.fn.COUNT(Deposit.id)).where(Deposit.status.in_(FLAGGED))
            .group_by(Deposit.status).tuples())
    return dict(rows)
