"""GET /api/v1/assets: the assets this service handles (ETH and the configured ERC-20 tokens)."""

from __future__ import annotations

import flask

from web.io import respond
from web.schemas import AssetOut, AssetsOut
from web.state import front

bp = flask.Blueprint("assets", __name__, url_prefix="/api/v1")


@bp.get("/assets")
def list_assets():
    assets = [AssetOut(symbol=a.symbol, decimals=a.decimals, contract=a.contract) for a in front().assets]
    return respond(AssetsOut(assets=assets))
