"""GET /api/v1/balances: the caller's balances, asked from the shard that owns the account."""

from __future__ import annotations

import flask

from web.io import respond
from web.schemas import BalanceOut, BalancesOut
from web.state import current_session, front

bp = flask.Blueprint("balances", __name__, url_prefix="/api/v1")


@bp.get("/balances")
def list_balances():
    balances = front().router.balances(current_session().account_id)
    return respond(BalancesOut(balances=[BalanceOut(asset=asset, available=str(available), frozen=str(frozen))
                                         for asset, (available, frozen) in balances.items()]))
