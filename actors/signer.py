"""Signer (signsrv): the only component that decrypts keys; signs approved withdrawals once, broadcasts them,
replaces what is stuck (rules 4-6, 8-11). A thin shell over treasury.signer.SignerLogic: it keeps time (a
self-scheduled tick), hears `blockout_req` news, and answers questions about the hot wallet.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence


from actors.base import Actor, Handler, TickTimer
from actors.router import Router
from chain.broadcast import Broadcaster
from chain.errors import ChainError, ChainIdMismatch
from chain.nodes import ChainClient, node_label
from chain.transport import Transport
from core import messages as m
from core.config import Config
from core.errors import Unavailable
from core.keys import KeyRing
from core.money import AssetRegistry
from storage import walletkeys
from storage.db import database_proxy
from storage.fence import Fence
from storage.models import NonceLane, TxAttempt, now_ms
from treasury.fees import OracleFees
from storage.pool import load_pool_sealed
from treasury.signer import SignerLogic, token_balance
from treasury.sweeps import SweepLogic, TreasuryRules

log = logging.getLogger(__name__)


class Signer(Actor):
    def __init__(self, config: Config, router: Router, assets: AssetRegistry, key_ring: KeyRing,
                 wall_ms=None, fence: Fence | None = None,  # noqa: ANN001 - a clock, for tests
                 on_fenced: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.fence = fence  # cluster mode: this process's epoch of the signer (storage/fence.py)
        self.on_fenced = on_fenced
        self.config = config
        self.router = router
        self.assets = assets
        self.key_ring = key_ring
        self.wall_ms = wall_ms
        self.logic: SignerLogic | None = None
        self.treasury: SweepLogic | None = None
        self.chain: ChainClient | None = None
        self.transport: Transport | None = None
        self._ticks = TickTimer(self.actor_ref, m.Tick())

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        try:
            self._start_logic(db)
        except BaseException:
            self.on_stop()  # pykka runs neither on_stop nor on_failure after a failed on_start
            raise

    def _start_logic(self, db) -> None:  # noqa: ANN001 - the bound peewee database
        hot = walletkeys.wallet_address("hot")
        if hot is None:
            raise RuntimeError("no hot wallet key: run `wallet init`")
        cfg = self.config
        self.chain = ChainClient(cfg.rpc_urls, expected_chain_id=cfg.chain_id,
                                 health_timeout_s=cfg.chain_health_timeout_s)
        try:
            self.chain.start()
        except ChainIdMismatch:
            raise  # a node of another chain: refuse to sign for the wrong chain
        except ChainError as exc:
            log.warning("no chain node answers yet; the signer retries every tick", extra={"error": str(exc)})
        self.transport = Transport(timeout_s=10.0)
        nodes = [(node_label(i, url), url) for i, url in enumerate(cfg.rpc_urls)]
        ring = self.key_ring
        self.logic = SignerLogic(
            db, self.chain, Broadcaster(nodes, self.transport), self.assets, hot,
            private_key=lambda: ring.open(walletkeys.load_sealed("hot")), fees=OracleFees(self.chain),
            gas_price_cap_wei=cfg.gas_price_cap_wei, replace_after_ms=cfg.replace_after_ms,
            wall_ms=self.wall_ms or now_ms, on_signed=self._signed, on_status=self._status, fence=self.fence)
        self.treasury = SweepLogic(
            self.logic, TreasuryRules.from_config(cfg), walletkeys.wallet_address("gas"),
            gas_key=lambda: ring.open(walletkeys.load_sealed("gas")), deposit_key=lambda a: ring.open(_pool_key(a)),
            book_gas=self._book_gas)
        news = self.router.news
        if news is not None:
            news.subscribe("blockout_req", lambda fields: self._ticks.tell_now(m.WithdrawalsApproved(())))
        log.info("signer started", extra={"hot_wallet": hot, "nodes": len(nodes)})
        self.actor_ref.tell(m.Tick())

    def on_stop(self) -> None:
        self._ticks.cancel()
        if self.logic is not None:
            self.logic.close()
        for closable in (self.chain, self.transport):
            if closable is not None:
                closable.close()
        database_proxy.obj.close()

    def handlers(self) -> Mapping[type, Handler]:
        return {
            m.Tick: self._tick,
            m.WithdrawalsApproved: lambda msg: self.logic.sign_approved(),
            m.HotWalletQuery: self._hot_wallet,
            m.RunSigner: self._run_now,
            m.GetStats: self._stats,
            m.Ping: lambda msg: m.Pong("signer"),
        }

    # -- time ---------------------------------------------------------------------------------------------
    def _tick(self, message: m.Tick) -> None:
        try:
            self._work()
        finally:
            self._ticks.after(self.config.signer_tick_ms / 1000)

    def _run_now(self, message: m.RunSigner) -> m.SignerStats:
        self._work()
        return self._stats(m.GetStats())

    def _work(self) -> None:
        """Withdrawals first, then the treasury's moves: their own lanes, so a stuck sweep holds up nothing."""
        self.logic.tick()
        self.treasury.tick()

    def _book_gas(self, moves: Sequence[tuple[int, int]]) -> None:
        """The gas of final treasury moves leaves `fees` (shard 0's), once each: the op id is the sweep's. Asked
        together (one group commit); any refusal or silence fails the lot, retried next tick (idempotent)."""
        replies = self.router.ask_shards([(0, m.BookSweepGas(op_id=f"sw:{sweep_id}", account_id=0, sweep_id=sweep_id,
                                                             amount=wei)) for sweep_id, wei in moves])
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed



    # -- news ---------------------------------------------------------------------------------------------
    def _signed(self, attempts: Sequence[TxAttempt]) -> None:
        """blockout_ctx: hash <-> withdrawal, committed; BlockWatch watches every hash until one is final."""
        self.router.tell_actor("blockwatch", m.WatchTransactions(tuple(a.tx_hash for a in attempts)))
        news = self.router.news
        if news is not None:
            for attempt in attempts:
                news.publish("blockout_ctx", {"withdrawal_id": str(attempt.ref_id), "tx_hash": attempt.tx_hash,
                                              "nonce": str(attempt.nonce), "kind": attempt.kind})

    def _status(self, withdrawal_id: int, status: str) -> None:
        news = self.router.news
        if news is not None:
            news.publish("blockout_rsp", {"withdrawal_id": str(withdrawal_id), "status": status})

    # -- questions ----------------------------------------------------------------------------------------
    def _hot_wallet(self, message: m.HotWalletQuery) -> m.HotWallet:
        logic = self.logic
        lane = NonceLane.get_or_none(NonceLane.address == logic.hot_address)
        try:
            session = logic.session()
            eth = int(session.call("eth_getBalance", [logic.hot_address, "latest"]), 16)
            balances = [("ETH", eth)] + [(a.symbol, token_balance(session, a.contract, logic.hot_address))
                                         for a in self.assets if a.contract is not None]
            owed = logic.in_flight(session)
            gas_wallet = walletkeys.wallet_address("gas")
            gas = (("ETH", int(session.call("eth_getBalance", [gas_wallet, "latest"]), 16)),) if gas_wallet else ()
        except ChainError as exc:
            raise Unavailable(f"no chain node answers: {exc}") from None
        return m.HotWallet(address=logic.hot_address, gas_wallet=gas_wallet, gas_balances=gas,
                           balances=tuple(balances), next_nonce=lane.next_nonce if lane else None,
                           in_flight_count=owed.count, in_flight_eth=owed.eth,
                           in_flight_tokens=tuple(sorted(owed.tokens.items())),
                           paused=logic.metrics.paused, waiting_for_funds=logic.metrics.waiting_for_funds)

    def _stats(self, message: m.GetStats) -> m.SignerStats:
        metrics, treasury = self.logic.metrics, self.treasury.metrics
        return m.SignerStats(signed=metrics.signed, broadcasts=metrics.broadcasts, replacements=metrics.replacements,
                             rebroadcasts=metrics.rebroadcasts, flagged=metrics.flagged,
                             waiting_for_funds=metrics.waiting_for_funds, paused=metrics.paused,
                             last_error=metrics.last_error, sweeps_signed=treasury.sweeps_signed,
                             sweeps_confirmed=treasury.confirmed, cold_signed=treasury.cold_signed,
                             treasury_flagged=treasury.flagged, hot_low=treasury.hot_low)


def _pool_key(address: str):  # noqa: ANN202 - core.keys.SealedKey
    sealed = load_pool_sealed(address)
    if sealed is None:
        raise RuntimeError(f"{address} is not a deposit address of the pool: no key to sweep it with")
    return sealed
