"""GET /api/v1/deposits: the caller's deposits, newest first, with live confirmations and status.

Deposits are read from the database (BlockWatch writes them; the front only reads committed rows).
Confirmations count on the chain BlockWatch has verified: tip − block + 1 for a deposit on it, 0 for
one whose block left the chain.
"""

from __future__ import annotations

from typing import Literal

import flask
from pydantic import BaseModel, ConfigDict, Field

from ledger.deposits import ON_CANONICAL_CHAIN
from storage.models import ChainCursor, Deposit
from web.io import parse_query, respond
from web.schemas import CURSOR_PATTERN, Strict
from web.state import current_session

bp = flask.Blueprint("deposits", __name__, url_prefix="/api/v1")

DepositStatus = Literal["pending", "confirmed", "orphaned", "reorged_after_credit", "below_minimum",
                        "credit_failed"]


class DepositsQuery(BaseModel):
    """Query strings carry text, so numbers are parsed here (lax), then bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=50, ge=1, le=200, description="Deposits per page")
    cursor: str | None = Field(default=None, pattern=CURSOR_PATTERN,
                               description="`next_cursor` of the previous page; omit for the newest deposits")


class DepositOut(Strict):
    id: str = Field(description="Deposit id; newer deposits have larger ids")
    asset: str
    amount: str = Field(pattern=r"^[1-9][0-9]{0,64}$", description="Base units as a string of digits")
    tx_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    log_index: int = Field(ge=-1, description="Position of the token Transfer log in its block; -1 for ETH")
    block_number: int
    confirmations: int = Field(ge=0, description="Blocks on top of the deposit's block, itself included; 0 "
                                                 "once its block left the chain")
    status: DepositStatus = Field(description="pending → confirmed (credited); orphaned (its block left the "
                                              "chain before crediting; pending again if the transfer reappears); "
                                              "reorged_after_credit (credited, then reorged out: an operator "
                                              "reviews it); below_minimum (recorded, not credited); credit_failed "
                                              "(the credit was refused: an operator reviews it)")


class DepositsPage(Strict):
    deposits: list[DepositOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end")


@bp.get("/deposits")
def list_deposits():
    query = parse_query(DepositsQuery)
    account_id = current_session().account_id
    select = Deposit.select().where(Deposit.account_id == account_id)
    if query.cursor:
        select = select.where(Deposit.id < int(query.cursor))
    rows = list(select.order_by(Deposit.id.desc()).limit(query.limit + 1))
    page, more = rows[:query.limit], len(rows) > query.limit
    tips = dict(ChainCursor.select(ChainCursor.chain_id, ChainCursor.height).tuples()) if page else {}
    return respond(DepositsPage(deposits=[_describe(row, tips.get(row.chain_id)) for row in page],
                                next_cursor=str(page[-1].id) if more else None))


def _describe(row: Deposit, tip: int | None) -> DepositOut:
    on_chain = row.status in ON_CANONICAL_CHAIN and tip is not None
    return DepositOut(id=str(row.id), asset=row.asset, amount=str(row.amount), tx_hash=row.tx_hash,
                      log_index=row.log_index, block_number=row.block_number,
                      confirmations=max(0, tip - row.block_number + 1) if on_chain else 0, status=row.status)
