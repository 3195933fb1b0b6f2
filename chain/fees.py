"""Fee quotes for withdrawals: EIP-1559 fee fields per speed (`slow`, `standard`, `fast`) from the node's
`eth_feeHistory`, and the gas of a token transfer from `eth_estimateGas`.

The rule (DESIGN.md "Withdrawals", rule 2), from one eth_feeHistory over the last FEE_HISTORY_BLOCKS blocks with
reward percentiles FEE_REWARD_PERCENTILES (10, 50, 90: slow, standard, fast):
- priority fee (tip) of a speed = the median, over the window's blocks that carried transactions, of that
  percentile of the block's tips; at least PRIORITY_FEE_FLOOR_WEI (0.001 gwei: geth's default minimum tip for
  block building, below which a default node would never include it). Blocks without transactions report
  zero tips by convention and would pull the median to nothing, so they are left out; a window without any
  transaction gives the floor. Faster is never cheaper: standard >= slow and fast >= standard.
- max fee = 2 x the next block's base fee (the last of baseFeePerGas, which the node computes for the block
  after the newest) + the tip: the base fee rises by at most 12.5 % a block, so the transaction stays
  includable through six full blocks in a row (1.125**6 = 2.03) before it must be replaced.

`FeeOracle` caches the quotes for `ttl_ms` (an integer-ms clock, so tests move time by hand), so the request path
(GET /api/v1/withdrawals/fees) does not ask the node each time; one thread fetches while the others wait for
its answer. When no node answers, callers get core.errors.Unavailable, and for `retry_after_ms` after a failure
they get it at once without asking again: a node outage does not turn every request into a slow one.

ETH transfer gas is 21,000; a token transfer's gas limit is its estimate plus a margin (see
`estimate_token_transfer_gas`). The front computes the user's fee: ETH = 21,000 x max_fee_per_gas of the chosen
speed; a token's = its configured flat rate (WALLET_WITHDRAW_TOKEN_FEES).
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from chain.erc20 import encode_transfer
from chain.errors import ChainError, FatalChainError, RetriableChainError
from chain.types import address, quantity
from core.errors import Unavailable
from core.limits import (
    ETH_TRANSFER_GAS, FEE_HISTORY_BLOCKS, FEE_HISTORY_BLOCKS_MAX, FEE_QUOTE_RETRY_AFTER_MS, FEE_QUOTE_TTL_MS,
    FEE_REWARD_PERCENTILES, MAX_FEE_BASE_FEE_MULTIPLE, PRIORITY_FEE_FLOOR_WEI, TOKEN_GAS_MARGIN_MIN,
    TOKEN_GAS_MARGIN_PERCENT, TOKEN_TRANSFER_GAS_MAX,
)

SPEEDS = ("slow", "standard", "fast")
__all__ = ["ETH_TRANSFER_GAS", "SPEEDS", "FeeOracle", "FeeQuote", "FeeQuotes", "GasEstimateRefused",
           "estimate_token_transfer_gas", "quotes_from_fee_history"]


class Session(Protocol):
    """What a quote needs of chain/session.py's NodeSession."""

    label: str

    def call(self, method: str, params: list) -> Any: ...

    def fail(self, reason: str) -> None: ...


class SessionSource(Protocol):
    def session(self) -> Session: ...


@dataclasses.dataclass(frozen=True)
class FeeQuote:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclasses.dataclass(frozen=True)
class FeeQuotes:
    slow: FeeQuote
    standard: FeeQuote
    fast: FeeQuote
    next_base_fee_per_gas: int
    newest_block: int  # the newest block of the window
    fetched_at_ms: int  # on the oracle's clock

    def of(self, speed: str) -> FeeQuote:
        if speed not in SPEEDS:
            raise ValueError(f"speed must be one of {SPEEDS}, got {speed!r}")
        return getattr(self, speed)


class GasEstimateRefused(FatalChainError):
    """The node will not estimate the transfer (it reverts from this sender now: e.g. the sender lacks the
    tokens), or the estimate is beyond what a plain ERC-20 transfer costs. Asking again changes nothing until
    the state does."""


class FeeOracle:
    """Cached fee quotes (see the module's docstring). Thread-safe. `sessions` is a ChainClient (anything with
    `.session()`) or a zero-argument callable returning a session."""

    def __init__(self, sessions: SessionSource | Callable[[], Session], *,
                 clock_ms: Callable[[], int] | None = None, ttl_ms: int = FEE_QUOTE_TTL_MS,
                 retry_after_ms: int = FEE_QUOTE_RETRY_AFTER_MS, blocks: int = FEE_HISTORY_BLOCKS,
                 percentiles: Sequence[int] = FEE_REWARD_PERCENTILES) -> None:
        if not 0 < ttl_ms or not 0 <= retry_after_ms or not 1 <= blocks <= FEE_HISTORY_BLOCKS_MAX:
            raise ValueError("ttl_ms > 0, retry_after_ms >= 0 and 1 <= blocks <= FEE_HISTORY_BLOCKS_MAX required")
        if len(percentiles) != len(SPEEDS) or list(percentiles) != sorted(percentiles):
            raise ValueError("three increasing percentiles: slow, standard, fast")
        self._open_session = sessions.session if hasattr(sessions, "session") else sessions
        self._clock_ms = clock_ms or _monotonic_ms
        self.ttl_ms = ttl_ms
        self.retry_after_ms = retry_after_ms
        self.blocks = blocks
        self.percentiles = tuple(percentiles)
        self._lock = threading.Lock()
        self._cached: FeeQuotes | None = None
        self._failed_at_ms: int | None = None
        self._failure = ""
        self.fetches = 0  # eth_feeHistory calls made (tests count them)

    def quotes(self) -> FeeQuotes:
        """The quotes of every speed: cached if younger than ttl_ms, else fetched now."""
        with self._lock:
            now = self._clock_ms()
            cached = self._cached
            if cached is not None and now - cached.fetched_at_ms < self.ttl_ms:
                return cached
            if self._failed_at_ms is not None and now - self._failed_at_ms < self.retry_after_ms:
                raise Unavailable(f"fee quotes unavailable: {self._failure}")
            try:
                fresh = self._fetch(now)
            except Unavailable as exc:
                self._failed_at_ms, self._failure = now, exc.detail.removeprefix("fee quotes unavailable: ")
                raise
            self._cached, self._failed_at_ms = fresh, None
            return fresh

    def quote(self, speed: str) -> FeeQuote:
        return self.quotes().of(speed)

    def _fetch(self, now_ms: int) -> FeeQuotes:
        self.fetches += 1
        try:
            session = self._open_session()
            raw = session.call("eth_feeHistory", [hex(self.blocks), "latest", list(self.percentiles)])
        except ChainError as exc:  # no healthy node, or the active one failed after its retries
            raise Unavailable(f"fee quotes unavailable: no node answered eth_feeHistory ({exc})") from None
        try:
            return quotes_from_fee_history(raw, self.percentiles, now_ms)
        except RetriableChainError as exc:  # garbage from this node: leave it, the next fetch uses another
            session.fail(f"eth_feeHistory answer malformed: {exc}")
            raise Unavailable(f"fee quotes unavailable: {session.label} answered eth_feeHistory wrongly") from None


def quotes_from_fee_history(raw: Any, percentiles: Sequence[int] = FEE_REWARD_PERCENTILES,
                            fetched_at_ms: int = 0) -> FeeQuotes:
    """The quotes of an eth_feeHistory result (the rule in the module's docstring). A malformed result is a
    RetriableChainError naming what is wrong."""
    if not isinstance(raw, dict):
        raise RetriableChainError(f"eth_feeHistory result is not an object: {str(raw)[:120]}")
    base_fees = [quantity(v, "baseFeePerGas") for v in _list(raw, "baseFeePerGas")]
    ratios = _list(raw, "gasUsedRatio")
    rewards = _list(raw, "reward")
    blocks = len(ratios)
    if blocks < 1 or len(base_fees) != blocks + 1 or len(rewards) != blocks:
        raise RetriableChainError(f"eth_feeHistory: {len(base_fees)} base fees, {blocks} gas ratios and "
                                  f"{len(rewards)} reward rows do not match")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1 for r in ratios):
        raise RetriableChainError("eth_feeHistory: a gasUsedRatio is not a number in [0, 1]")
    tips: list[list[int]] = [[] for _ in percentiles]
    for ratio, row in zip(ratios, rewards):
        if not isinstance(row, list) or len(row) != len(percentiles):
            raise RetriableChainError(f"eth_feeHistory: a reward row does not hold {len(percentiles)} values")
        if ratio > 0:  # an empty block's tips are zeros by convention, not a price anyone paid
            for column, value in zip(tips, row):
                column.append(quantity(value, "reward"))
    next_base_fee = base_fees[-1]
    priorities, floor = [], PRIORITY_FEE_FLOOR_WEI
    for column in tips:  # faster is never cheaper
        floor = max(floor, statistics.median_low(column) if column else 0)
        priorities.append(floor)
    quotes = [FeeQuote(MAX_FEE_BASE_FEE_MULTIPLE * next_base_fee + tip, tip) for tip in priorities]
    oldest = quantity(raw.get("oldestBlock"), "oldestBlock")
    return FeeQuotes(*quotes, next_base_fee_per_gas=next_base_fee, newest_block=oldest + blocks - 1,
                     fetched_at_ms=fetched_at_ms)


def estimate_token_transfer_gas(session: Session, token: str, from_address: str, to_address: str,
                                amount: int) -> int:
    """The gas limit for `from_address` sending `amount` of `token` to `to_address`: eth_estimateGas of the
    ERC-20 transfer(to, amount) on the node's latest state, plus TOKEN_GAS_MARGIN_PERCENT and at least
    TOKEN_GAS_MARGIN_MIN (the state may change before the transaction runs: a balance slot going from zero to
    non-zero costs 22,100 more; gas not used is not paid).

    The estimate runs the transfer from `from_address`, which must hold `amount` now, else the node reverts:
    GasEstimateRefused. An estimate beyond TOKEN_TRANSFER_GAS_MAX is refused too. No answer: Unavailable."""
    call = {"from": address(from_address, "from address"), "to": address(token, "token"),
            "data": encode_transfer(to_address, amount)}
    try:
        raw = session.call("eth_estimateGas", [call, "latest"])
    except FatalChainError as exc:
        raise GasEstimateRefused(f"the node will not estimate this token transfer: {exc}", code=exc.code,
                                 method="eth_estimateGas", rpc_message=exc.rpc_message) from None
    except ChainError as exc:
        raise Unavailable(f"gas estimate unavailable: no node answered eth_estimateGas ({exc})") from None
    try:
        estimate = quantity(raw, "eth_estimateGas result")
    except RetriableChainError as exc:
        session.fail(f"eth_estimateGas answer malformed: {exc}")
        raise Unavailable(f"gas estimate unavailable: {session.label} answered eth_estimateGas wrongly") from None
    if estimate < ETH_TRANSFER_GAS:
        session.fail(f"eth_estimateGas answered {estimate}, below the {ETH_TRANSFER_GAS} of any transaction")
        raise Unavailable(f"gas estimate unavailable: {session.label} answered eth_estimateGas wrongly")
    if estimate > TOKEN_TRANSFER_GAS_MAX:
        raise GasEstimateRefused(f"a transfer of {token} is estimated at {estimate} gas, above the "
                                 f"{TOKEN_TRANSFER_GAS_MAX} a plain ERC-20 transfer may cost", method="eth_estimateGas")
    return estimate + max(estimate * TOKEN_GAS_MARGIN_PERCENT // 100, TOKEN_GAS_MARGIN_MIN)


def _list(raw: dict, key: str) -> list:
    value = raw.get(key)
    if not isinstance(value, list):
        raise RetriableChainError(f"eth_feeHistory: {key} is not a list")
    return value


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000
