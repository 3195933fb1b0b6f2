"""The treasury: the hot wallet (address, balances on chain, the lane's next nonce, what is in flight and the
most it may still cost) and the gas wallet, as the signer answers them (core.messages.HotWalletQuery, the admin
API's GET hot-wallet), and the signing pause: an operator engages or releases it (web/review.py, the switch and
its staff log row in one transaction). Withdrawals still queue for review while paused."""

from __future__ import annotations

import flask

from core import messages as m
from core.errors import WalletError
from core.limits import SCRAPE_ASK_TIMEOUT_S, CONSOLE_REASON_MAX_LEN
from storage import stafflog
from storage.models import OperatorSwitch, Withdrawal
from treasury import switches
from web import review
from web.console import auth
from web.console.blueprint import bp
from web.state import front

WAITING = ("approved", "signed", "broadcast")


@bp.get("/treasury")
@auth.page
def treasury():
    wallet, wallet_error, low = None, None, ()
    if front().router.actor("signer") is None:
        wallet_error = "The signer is not running (no chain node or no hot wallet configured)."
    else:
        try:
            wallet = front().router.ask_actor("signer", m.HotWalletQuery(), timeout=SCRAPE_ASK_TIMEOUT_S)
            # below WALLET_HOT_LOW after the signer's last tick (treasury/sweeps.py): a refill is asked for
            low = front().router.ask_actor("signer", m.GetStats(), timeout=SCRAPE_ASK_TIMEOUT_S).hot_low
        except WalletError as exc:
            wallet_error = f"The signer did not answer: {exc.detail}"
    switch = OperatorSwitch.get_or_none(OperatorSwitch.name == switches.SIGNING_PAUSED)
    counts = {status: Withdrawal.select().where(Withdrawal.status == status).count() for status in WAITING}
    flagged = Withdrawal.select().where(Withdrawal.needs_operator == True).count()  # noqa: E712
    return flask.render_template("console/treasury.html", wallet=wallet, wallet_error=wallet_error,
                                 paused=bool(switch and switch.engaged), switch=switch, counts=counts, flagged=flagged,
                                 hot_low=low)


def _switch(paused: bool) -> flask.Response:
    reason = (flask.request.form.get("reason") or "").strip()
    if len(reason) > CONSOLE_REASON_MAX_LEN:
        flask.flash(f"The reason is at most {CONSOLE_REASON_MAX_LEN} characters.", "error")
        return flask.redirect(flask.url_for("console.treasury"))
    me = auth.staff()
    changed = review.set_signing_paused(paused, stafflog.Actor(me.admin_id, me.name, me.role), reason)
    word = "paused" if paused else "resumed"
    flask.flash(f"Signing {word}." if changed else f"Signing was already {word}: nothing changed.",
                "info" if changed else "error")
    return flask.redirect(flask.url_for("console.treasury"))


@bp.post("/treasury/pause")
@auth.action("operator")
def pause():
    return _switch(True)


@bp.post("/treasury/resume")
@auth.action("operator")
def resume():
    return _switch(False)
