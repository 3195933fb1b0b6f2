"""Money at the edges: assets, amounts and addresses, parsed once and then passed as typed values.

Amounts are `int` in the asset's base unit (wei for ETH). Never float.
"""

from __future__ import annotations

import dataclasses
from typing import NewType

from eth_utils import is_checksum_address, is_hex_address

from core.config import Config
from core.limits import AMOUNT_DIGITS_MAX, AMOUNT_LIMIT
from core.errors import InvalidAddress, InvalidAmount, UnknownAsset

Wei = NewType("Wei", int)  # base units of any asset (wei for ETH, the token's smallest unit)
Address = NewType("Address", str)  # EIP-55 checksummed
TxHash = NewType("TxHash", str)  # 0x-prefixed lowercase hex



@dataclasses.dataclass(frozen=True)
class Asset:
    symbol: str
    decimals: int
    contract: Address | None = None  # None for the chain's native coin


ETH = Asset("ETH", 18, None)


class AssetRegistry:
    """The assets this service handles: ETH plus the configured ERC-20 tokens."""

    def __init__(self, assets: list[Asset]) -> None:
        self._by_symbol = {a.symbol: a for a in assets}
        self._by_contract = {a.contract.lower(): a for a in assets if a.contract}

    @classmethod
    def from_config(cls, config: Config) -> AssetRegistry:
        tokens = [Asset(t.symbol, t.decimals, Address(t.contract)) for t in config.tokens]
        return cls([ETH, *tokens])

    def __iter__(self):
        return iter(self._by_symbol.values())

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._by_symbol

    def get(self, symbol: object) -> Asset:
        if not isinstance(symbol, str) or symbol not in self._by_symbol:
            raise UnknownAsset(f"unknown asset {symbol!r}")
        return self._by_symbol[symbol]

    def by_contract(self, contract: str) -> Asset | None:
        return self._by_contract.get(contract.lower())

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._by_symbol)


def parse_amount(raw: object) -> Wei:
    """A positive whole number of base units, given as a string of digits (or an int inside the service)."""
    if isinstance(raw, bool):
        raise InvalidAmount("amount must be a string of digits")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= AMOUNT_DIGITS_MAX + 1:
        value = int(raw)
    else:
        raise InvalidAmount("amount must be a string of base-unit digits, e.g. \"1000000000000000000\"")
    check_amount(value)
    return Wei(value)


def check_amount(value: int) -> None:
    if value <= 0:
        raise InvalidAmount("amount must be greater than zero")
    if value >= AMOUNT_LIMIT:
        raise InvalidAmount("amount is too large")


def parse_address(raw: object) -> Address:
    """An EIP-55 checksummed address; lower/upper-case-only or wrongly checksummed input is refused."""
    if not isinstance(raw, str) or not is_hex_address(raw):
        raise InvalidAddress("address must be a 0x-prefixed 40-hex-digit Ethereum address")
    if not is_checksum_address(raw):
        raise InvalidAddress("address must carry a valid EIP-55 checksum")
    return Address(raw)
