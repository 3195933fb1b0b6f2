"""Proof of reserves, published (DESIGN.md "Treasury"): GET /api/v1/reserves (public: the newest snapshot's
root and total per asset, its block height and the addresses the reserves sit on), GET
/api/v1/reserves/deposit-addresses (public, paged) and GET /api/v1/me/reserve-proof?asset= (the caller's own
path, nobody else's salt). The proof document is what `wallet verify-proof FILE` checks offline.
"""

from __future__ import annotations

import flask

from core.errors import NoReserveProof, Unavailable
from storage import walletkeys
from storage.db import database_proxy
from storage.models import Account
from treasury.reserves import NotInSnapshot, Reserves
from web.auth import public
from web.io import parse_query, respond
from web.schemas import (
    ReserveAddressesOut, ReserveAddressQuery, ReserveProofOut, ReserveQuery, ReservesOut, ReserveSnapshotOut,
    ReserveWalletsOut,
)
from web.state import current_session, front

bp = flask.Blueprint("reserves", __name__, url_prefix="/api/v1")

PROOF_FORMAT = ("merkle-sum-sha256/v1: leaf = sha256(00 || account id u64 || salt 32 || balance u256), "
                "node = sha256(01 || left hash || left sum u256 || right hash || right sum u256), "
                "odd levels padded with sha256(02) of sum 0, big-endian; sums must be >= 0")


def reserves() -> Reserves:
    """One per app: it caches built trees for the newest snapshots."""
    extensions = flask.current_app.extensions
    found = extensions.get("wallet_reserves")
    if found is None:
        config = front().config
        if config.master_key is None:
            raise Unavailable("proof of reserves needs WALLET_MASTER_KEY")
        found = extensions.setdefault("wallet_reserves", Reserves(database_proxy.obj, config.key_ring()))
    return found


@bp.get("/reserves")
@public
def published():
    state = front()
    snapshots = []
    for asset in state.assets:
        info = reserves().latest(asset.symbol)
        if info is not None:
            snapshots.append(ReserveSnapshotOut(**info.as_json()))
    wallets = walletkeys.wallet_addresses()
    count = Account.select().where((Account.kind == "user") & Account.deposit_address.is_null(False)).count()
    return respond(ReservesOut(snapshots=snapshots, proof_format=PROOF_FORMAT, addresses=ReserveWalletsOut(
        hot=wallets.get("hot"), gas=wallets.get("gas"), cold=state.config.cold_address, deposit_address_count=count)))


@bp.get("/reserves/deposit-addresses")
@public
def deposit_addresses():
    query = parse_query(ReserveAddressQuery)
    where = (Account.kind == "user") & Account.deposit_address.is_null(False)
    if query.after is not None:
        where &= Account.id > query.after
    rows = list(Account.select(Account.id, Account.deposit_address).where(where).order_by(Account.id)
                .limit(query.limit + 1).tuples())
    page = rows[:query.limit]
    next_after = str(page[-1][0]) if len(rows) > query.limit else None
    return respond(ReserveAddressesOut(addresses=[address for _, address in page], next_after=next_after))


@bp.get("/me/reserve-proof")
def my_proof():
    query = parse_query(ReserveQuery)
    asset = front().assets.get(query.asset)  # unknown_asset, 400
    try:
        document = reserves().proof(asset.symbol, current_session().account_id)
    except NotInSnapshot as exc:
        raise NoReserveProof(str(exc)) from None
    return respond(ReserveProofOut(**document))
