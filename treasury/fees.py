"""The signer's view of fees: the market's EIP-1559 fields per speed (chain/fees.py FeeOracle over the node's
eth_feeHistory) and a token transfer's gas limit (its estimate plus a margin)."""

from __future__ import annotations

from chain.fees import FeeOracle, estimate_token_transfer_gas
from chain.nodes import ChainClient
from chain.session import NodeSession
from chain.txbuild import Fees


class OracleFees:
    def __init__(self, chain: ChainClient) -> None:
        self.oracle = FeeOracle(chain)

    def quote(self, speed: str) -> Fees:
        quote = self.oracle.quote(speed)
        return Fees(quote.max_fee_per_gas, quote.max_priority_fee_per_gas)

    def token_gas(self, session: NodeSession, token: str, sender: str, to: str, amount: int) -> int:
        return estimate_token_transfer_gas(session, token, sender, to, amount)
