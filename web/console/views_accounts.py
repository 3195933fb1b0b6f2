"""Accounts: look one up by username, deposit address or id; its balances (asked of its shard through the
router: the front never reads balances itself), hold, recent journal and deposits, and the staff actions on it.
Accounts on hold, and the operator's release (the Allocator owns account rows: core.messages.SetAccountHold with
the staff member, which it writes with its staff log row in one transaction)."""

from __future__ import annotations

import re

import flask
from eth_utils import to_checksum_address

from core import messages as m
from core.errors import WalletError
from core.limits import CONSOLE_HISTORY_ROWS, CONSOLE_PAGE_ROWS, CONSOLE_QUERY_MAX_LEN
from storage.models import Account, Deposit
from storage.stafflog import StaffAction
from web.console import auth
from web.console.blueprint import bp
from web.console.forms import ReasonForm
from web.history import recent_entries
from web.state import front

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_ID_RE = re.compile(r"^#?([0-9]{1,19})$")


@bp.get("/accounts")
@auth.page
def accounts():
    query = flask.request.args.get("q", "").strip()[:CONSOLE_QUERY_MAX_LEN]
    if query:
        account = find_account(query)
        if account is not None:
            return flask.redirect(flask.url_for("console.account", account_id=account.id))
    return flask.render_template("console/accounts.html", query=query, not_found=bool(query))


def find_account(query: str) -> Account | None:
    """A user account by id ("42" or "#42"), deposit address (any case), or exact username."""
    users = Account.kind == "user"
    if match := _ID_RE.match(query):
        found = Account.get_or_none(users & (Account.id == int(match.group(1))))
        if found is not None:
            return found
    if _ADDRESS_RE.match(query):
        return Account.get_or_none(users & (Account.deposit_address == to_checksum_address(query)))
    return Account.get_or_none(users & (Account.username == query))


@bp.get("/accounts/<int:account_id>")
@auth.page
def account(account_id: int):
    row = Account.get_or_none((Account.id == account_id) & (Account.kind == "user"))
    if row is None:
        flask.abort(404, f"No user account {account_id}.")
    balances, balances_error = None, None
    try:
        balances = sorted(front().router.balances(account_id).items())
    except WalletError as exc:
        balances_error = exc.detail
    deposits = list(Deposit.select().where(Deposit.account_id == account_id).order_by(Deposit.id.desc())
                    .limit(CONSOLE_HISTORY_ROWS))
    subjects = [f"account:{account_id}"] + [f"deposit:{d.id}" for d in deposits]  # each subject indexed
    actions = list(StaffAction.select().where(StaffAction.subject.in_(subjects))
                   .order_by(StaffAction.id.desc()).limit(CONSOLE_HISTORY_ROWS))
    return flask.render_template("console/account.html", account=row, balances=balances,
                                 balances_error=balances_error, history=recent_entries(account_id, CONSOLE_HISTORY_ROWS),
                                 deposits=deposits, actions=actions)


@bp.get("/holds")
@auth.page
def holds():
    after = flask.request.args.get("after", type=int)
    query = Account.select().where((Account.kind == "user") & (Account.on_hold == True))  # noqa: E712
    if after is not None:
        query = query.where(Account.id > after)
    rows = list(query.order_by(Account.id).limit(CONSOLE_PAGE_ROWS + 1))
    more = len(rows) > CONSOLE_PAGE_ROWS
    rows = rows[:CONSOLE_PAGE_ROWS]
    return flask.render_template("console/holds.html", rows=rows, next_after=rows[-1].id if more else None)


@bp.post("/accounts/<int:account_id>/release-hold")
@auth.action("operator")
def release_hold(account_id: int):
    form = ReasonForm()
    if not form.validate():
        flask.flash("Give a reason (at most 255 characters).", "error")
    else:
        try:
            front().router.ask_actor("allocator", m.SetAccountHold(account_id, False, form.reason.data, auth.staff()))
            flask.flash(f"Hold released on account {account_id}.", "info")
        except WalletError as exc:
            flask.flash(f"Hold not released: {exc.detail}", "error")
    return flask.redirect(flask.url_for("console.account", account_id=account_id))
