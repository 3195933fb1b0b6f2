"""GET /api/v1/me: the caller's own account."""

from __future__ import annotations

import flask

from storage.models import Account
from core.errors import UnknownAccount
from web.io import respond
from web.schemas import AccountOut
from web.state import current_session

bp = flask.Blueprint("me", __name__, url_prefix="/api/v1")


@bp.get("/me")
def me():
    row = Account.get_or_none((Account.id == current_session().account_id) & (Account.kind == "user"))
    if row is None:
        raise UnknownAccount("the session's account no longer exists")
    return respond(AccountOut(account_id=row.id, username=row.username, shard=row.shard,
                              deposit_address=row.deposit_address))
