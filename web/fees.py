"""What a withdrawal costs the user, quoted by the front (DESIGN.md rule 2) and fixed at request time.

ETH: 21,000 gas × the max fee per gas of the chosen speed (chain/fees.py FeeOracle over the node's
eth_feeHistory, cached a few seconds), never above the gas price cap the signer obeys. A token: the configured
flat rate in the token (WALLET_WITHDRAW_TOKEN_FEES), since there is no price oracle; the gas the hot wallet
really burns is booked to `fees` at settlement, so `fees` is the net fee income.
"""

from __future__ import annotations

import threading

from chain.fees import SPEEDS, FeeOracle
from chain.nodes import ChainClient
from core.config import Config
from core.errors import Unavailable, ValidationError
from core.limits import ETH_TRANSFER_GAS
from core.money import AssetRegistry


class FeeNotConfigured(ValidationError):
    code = "fee_not_configured"
    status = 422


class WithdrawalsUnavailable(ValidationError):
    """This service runs without a chain node (WALLET_RPC_URLS): nothing can leave, which no retry changes."""

    code = "withdrawals_unavailable"
    status = 422


class WithdrawalFees:
    def __init__(self, config: Config, assets: AssetRegistry) -> None:
        self.config = config
        self.assets = assets
        self.token_fees = config.per_asset("withdraw_token_fees")
        self._oracle: FeeOracle | None = None
        self._client: ChainClient | None = None
        self._lock = threading.Lock()

    def quote(self, symbol: str) -> dict[str, int]:
        """{speed: fee in the asset's base units}."""
        asset = self.assets.get(symbol)
        if asset.contract is not None:
            fee = self.token_fees.get(asset.symbol)
            if fee is None:
                raise FeeNotConfigured(f"no withdrawal fee is configured for {asset.symbol} "
                                       "(WALLET_WITHDRAW_TOKEN_FEES): its withdrawals are closed")
            return {speed: fee for speed in SPEEDS}
        quotes = self._fee_oracle().quotes()
        cap = self.config.gas_price_cap_wei
        return {speed: ETH_TRANSFER_GAS * min(quotes.of(speed).max_fee_per_gas, cap) for speed in SPEEDS}

    def _fee_oracle(self) -> FeeOracle:
        """The front's own view of the chain, opened on first use (the front starts without a node)."""
        with self._lock:
            if self._oracle is None:
                if not self.config.rpc_urls:
                    raise WithdrawalsUnavailable("no chain node is configured (WALLET_RPC_URLS): ETH withdrawals "
                                                 "are closed")
                client = ChainClient(self.config.rpc_urls, expected_chain_id=self.config.chain_id,
                                     health_timeout_s=self.config.chain_health_timeout_s)
                try:
                    client.start()
                except Exception as exc:  # noqa: BLE001 - the node is down: quoted later, not cached broken
                    client.close()
                    raise Unavailable(f"no chain node answers: {type(exc).__name__}") from None
                self._client, self._oracle = client, FeeOracle(client)
            return self._oracle

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
