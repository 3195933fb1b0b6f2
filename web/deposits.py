"""GET /api/v1/deposits: the caller's deposits, newest first, with live confirmations and status.

Deposits are read from the database (BlockWatch writes them; the front only reads committed rows).
Confirmations count on the chain BlockWatch has verified: tip − block + 1 for a deposit on it, 0 for
one whose block left the chain.
"""

from __future__ import annotations

import flask

from blockwatch.deposits import ON_CANONICAL_CHAIN
from storage.models import ChainCursor, Deposit
from web.io import paginate, parse_query, respond
from web.schemas import DepositOut, DepositsPage, PageQuery
from web.state import current_session

bp = flask.Blueprint("deposits", __name__, url_prefix="/api/v1")


@bp.get("/deposits")
def list_deposits():
    query = parse_query(PageQuery)
    select = Deposit.select().where(Deposit.account_id == current_session().account_id)
    if query.before is not None:
        select = select.where(Deposit.id < query.before)
    page, next_cursor = paginate(list(select.order_by(Deposit.id.desc()).limit(query.limit + 1)), query.limit,
                                 lambda row: row.id)
    tips = dict(ChainCursor.select(ChainCursor.chain_id, ChainCursor.height).tuples()) if page else {}
    return respond(DepositsPage(deposits=[_describe(row, tips.get(row.chain_id)) for row in page],
                                next_cursor=next_cursor))


def _describe(row: Deposit, tip: int | None) -> DepositOut:
    on_chain = row.status in ON_CANONICAL_CHAIN and tip is not None
    return DepositOut(id=str(row.id), asset=row.asset, amount=str(row.amount), tx_hash=row.tx_hash,
                      log_index=row.log_index, block_number=row.block_number,
                      confirmations=max(0, tip - row.block_number + 1) if on_chain else 0, status=row.status)
