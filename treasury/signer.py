"""The signer's logic, without threads (DESIGN.md "Withdrawals", rules 4-6 and 8-11).

Sign once (rule 4): for approved withdrawals, in ONE database transaction, each takes the hot wallet lane's
next nonce, is signed offline, and its attempt (nonce, hash, raw bytes, fees) is written with the withdrawal's
move to `signed`, all committed before any byte is broadcast. A crash before the commit burns no nonce; after
it, the restart sends the same bytes (`resend_unsent`). A withdrawal is never signed again with a new nonce.

Broadcast (rule 5) to every node (chain/broadcast.py); the first "sent" answer moves it to `broadcast`.

Follow-up (rules 6 and 8), each tick, for what is broadcast and has no receipt on the active node:
- the nonce is used on chain but none of our hashes has a receipt: someone else used the hot key; flag
  `needs_operator`, keep the money frozen, never fail or refund by itself;
- the node does not know the newest attempt (dropped): send its bytes again;
- no receipt `replace_after_ms` after the last attempt (doubling per attempt, up to REPLACE_AFTER_MS_MAX):
  sign a replacement with the same nonce, both fee fields raised by at least 12.5 % (or to the market if
  higher), under the gas price cap; a bump that cannot fit under the cap is flagged, not sent.
Settlement is BlockWatch's: it sees a hash on the canonical chain at depth and has the shard settle.

Funds (rule 10): a withdrawal is signed only while the hot wallet covers everything not yet mined (value +
gas limit × fee cap of each); otherwise it waits `approved` and `waiting_for_funds` says so.
Pause (rule 11): the switch is read inside the signing transaction (treasury/switches.py).

Time is integer milliseconds of wall time from a clock the caller passes (stored in rows, so it survives a
restart); tests pass a fake one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Protocol, Sequence

import peewee

from chain.broadcast import Broadcaster, SendResult
from chain.nodes import ChainClient
from chain.session import NodeSession
from chain.txbuild import Fees, Payment, SignedTx, sign
from core.limits import (
    ETH_TRANSFER_GAS, REPLACE_AFTER_MS_MAX, REPLACE_BUMP_PER_MILLE, SIGN_BATCH_MAX, SIGN_BATCHES_PER_TICK,
)
from core.money import AssetRegistry
from core.errors import StateMismatch
from storage import sql
from storage.fence import FenceLost, Fence, fenced
from storage.events import record_withdrawal_events
from treasury import switches
from storage.models import NonceLane, Sweep, TxAttempt, Withdrawal

log = logging.getLogger(__name__)

PURPOSE = "withdrawal"
ATTEMPT_COLUMNS = ("purpose", "ref_id", "lane", "nonce", "tx_hash", "raw", "max_fee_per_gas", "max_priority_fee_per_gas",
                   "gas_limit", "value", "kind", "status", "sends", "created_at")
FOLLOW_UP_MAX = 500  # broadcast withdrawals looked at per tick
COLD_OPEN = ("signed", "broadcast")  # a cold move (treasury/sweeps.py) on the hot wallet's lane, not final


class FeeSource(Protocol):
    def quote(self, speed: str) -> Fees: ...

    def token_gas(self, session: NodeSession, token: str, sender: str, to: str, amount: int) -> int: ...


@dataclasses.dataclass
class SignerMetrics:
    signed: int = 0
    broadcasts: int = 0
    replacements: int = 0
    rebroadcasts: int = 0
    flagged: int = 0
    waiting_for_funds: int = 0  # approved withdrawals the hot wallet could not cover at the last look
    paused: bool = False
    last_error: str | None = None


@dataclasses.dataclass(frozen=True)
class InFlight:
    """What the hot wallet still owes to transactions not mined yet."""

    eth: int  # value + gas limit × max fee of each
    tokens: dict[str, int]  # asset -> amount
    count: int


@dataclasses.dataclass
class Funds:
    """What the hot wallet may still spend, as signing goes on."""

    eth: int
    tokens: dict[str, int]

    def spend(self, asset: str, eth: int, token_amount: int) -> bool:
        """Take `eth` (value + the most gas may cost) and `token_amount` of `asset`, if both are there."""
        if self.eth < eth or (token_amount and self.tokens.get(asset, 0) < token_amount):
            return False
        self.eth -= eth
        if token_amount:
            self.tokens[asset] -= token_amount
        return True


def replacement_fees(old: Fees, market: Fees, cap: int) -> Fees | None:
    """Both fields raised by at least REPLACE_BUMP_PER_MILLE, or to the market if higher, capped; None when even
    the minimum bump does not fit under the cap."""
    least_max = math.ceil(old.max_fee_per_gas * (1000 + REPLACE_BUMP_PER_MILLE) / 1000)
    least_priority = math.ceil(old.max_priority_fee_per_gas * (1000 + REPLACE_BUMP_PER_MILLE) / 1000)
    if least_max > cap or least_priority > cap:
        return None
    max_fee = min(max(least_max, market.max_fee_per_gas), cap)
    priority = min(max(least_priority, market.max_priority_fee_per_gas), max_fee)
    return Fees(max_fee, priority)


def replace_wait_ms(replace_after_ms: int, attempts: int) -> int:
    """How long after the last of `attempts` attempts a replacement is due: doubling, bounded."""
    return min(replace_after_ms * 2 ** max(attempts - 1, 0), REPLACE_AFTER_MS_MAX)


class SignerLogic:
    def __init__(self, db: peewee.Database, chain: ChainClient, broadcaster: Broadcaster, assets: AssetRegistry,
                 hot_address: str, private_key: Callable[[], bytes], fees: FeeSource, gas_price_cap_wei: int,
                 replace_after_ms: int, wall_ms: Callable[[], int],
                 on_signed: Callable[[Sequence[TxAttempt]], None] = lambda attempts: None,
                 on_status: Callable[[int, str], None] = lambda withdrawal_id, status: None,
                 fence: Fence | None = None) -> None:
        self.db = db
        self.fence = fence  # cluster mode: the signer's epoch; every transaction here checks it first
        self.chain = chain
        self.broadcaster = broadcaster
        self.assets = assets
        self.hot_address = hot_address
        self.private_key = private_key  # decrypts on demand: the key is never held by anyone else
        self.fees = fees
        self.cap = gas_price_cap_wei
        self.replace_after_ms = replace_after_ms
        self.wall_ms = wall_ms
        self.on_signed = on_signed  # BlockWatch must watch these hashes (blockout_ctx)
        self.on_status = on_status  # news of a status change (blockout_rsp)
        self.metrics = SignerMetrics()
        self.chain_id: int | None = None
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signer-send")

    # -- one tick -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Everything due, in order; each part bounded. Errors of one part do not skip the others."""
        for part in (self.resend_unsent, self.sign_approved, self.follow_up):
            try:
                part()
            except FenceLost:
                raise  # another process signs now: nothing more here, ever (the actor system stops)
            except Exception as exc:  # noqa: BLE001 - a node or the database failed; retried next tick
                self.metrics.last_error = f"{part.__name__}: {type(exc).__name__}: {exc}"[:300]
                log.warning("signer step failed; retried next tick", extra={"step": part.__name__,
                                                                          "error": self.metrics.last_error})
                self._reconnect()

    def transaction(self):  # noqa: ANN201 - a context manager
        """Every write of the signer and the treasury: fenced in cluster mode, so a signer paused past the loss
        of its lock (another signsrv took over) can never commit a nonce or an attempt."""
        return fenced(self.db, self.fence)

    def _reconnect(self) -> None:
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; the pool drops it
            log.debug("closing a failed connection", exc_info=True)

    # -- rule 4: sign once ----------------------------------------------------------------------------------
    def sign_approved(self, limit: int = SIGN_BATCH_MAX, batches: int = SIGN_BATCHES_PER_TICK) -> int:
        """Sign approved withdrawals (oldest first) that the hot wallet covers, `limit` a batch, up to `batches`
        batches; broadcast each. Batch k is sent (on the sender thread) while batch k + 1 is signed and committed:
        waiting for the node and for the database overlap. Nonces stay in order: one sender, batches in turn."""
        total, sending, funds = 0, None, None
        try:
            for _ in range(batches):
                signed, funds = self._sign_batch(limit, funds)
                if not signed:
                    break
                self.on_signed(signed)
                if sending is not None:
                    sending.result()  # at most one batch in flight: bounded, and in nonce order
                sending = self._sender.submit(self._broadcast_on_sender, signed)
                total += len(signed)
        finally:
            if sending is not None:
                sending.result()
        return total

    def _sign_batch(self, limit: int, funds: Funds | None) -> tuple[list[TxAttempt], Funds | None]:
        if switches.engaged(self.db, switches.SIGNING_PAUSED):
            self.metrics.paused = True
            return [], funds
        self.metrics.paused = False
        candidates = list(Withdrawal.select().where((Withdrawal.status == "approved")
                                                    & (Withdrawal.needs_operator == False))  # noqa: E712
                          .order_by(Withdrawal.id).limit(limit))
        if not candidates:
            self.metrics.waiting_for_funds = 0
            return [], funds
        session = self.session()
        if funds is None:  # read once per call; each batch spends from it (money only leaves by our hand)
            funds = self._free_funds(session)
        plans = self._plan(session, candidates, funds)
        return (self._sign_and_commit(session, plans) if plans else []), funds

    def _broadcast_on_sender(self, attempts: Sequence[TxAttempt]) -> None:
        try:
            self._broadcast(attempts)
        finally:
            self.db.close()  # the sender thread's pooled connection goes back

    def close(self) -> None:
        self._sender.shutdown(wait=True)

    def _free_funds(self, session: NodeSession) -> Funds:
        """The hot wallet's balances less what its unmined transactions may still cost (rule 10)."""
        balance_eth, balance_tokens = self._hot_balances(session, [a.symbol for a in self.assets if a.contract])
        owed = self.in_flight(session)
        return Funds(balance_eth - owed.eth, {a: balance_tokens[a] - owed.tokens.get(a, 0) for a in balance_tokens})

    def _plan(self, session: NodeSession, candidates: list[Withdrawal],
              funds: Funds) -> list[tuple[Withdrawal, Payment, int, Fees]]:
        plans, waiting = [], 0
        for withdrawal in candidates:
            payment, gas_limit = self._payment(session, withdrawal)
            fees = self._capped(self.fees.quote(withdrawal.speed))
            if not funds.spend(withdrawal.asset, payment.value + gas_limit * fees.max_fee_per_gas,
                               payment.token_amount if payment.token else 0):
                waiting += 1
                continue
            plans.append((withdrawal, payment, gas_limit, fees))
        if waiting and waiting != self.metrics.waiting_for_funds:
            log.warning("approved withdrawals wait: the hot wallet does not cover them", extra={
                "waiting": waiting, "hot_wallet": self.hot_address, "free_eth_wei": str(funds.eth)})
        self.metrics.waiting_for_funds = waiting
        return plans

    def _sign_and_commit(self, session: NodeSession, plans: list) -> list[TxAttempt]:
        """Nonces, signatures, the withdrawals' move to `signed` and their attempts: one transaction, a few
        statements for the whole batch, committed before any byte leaves."""
        chain_id = self._chain_id()
        key = self.private_key()
        now = self.wall_ms()
        self._ensure_lane(session)
        with self.transaction():
            nonce = self._lock_lane()
            if switches.engaged(self.db, switches.SIGNING_PAUSED, lock=True):
                self.metrics.paused = True
                return []  # the transaction ends with nothing changed
            signed = [(withdrawal.id, sign(key, chain_id, nonce + i, payment, gas_limit, fees))
                      for i, (withdrawal, payment, gas_limit, fees) in enumerate(plans)]
            self._mark_signed(signed, now)
            sql.insert_many(self.db, "tx_attempt", ATTEMPT_COLUMNS, [_attempt_row(wid, tx, "original", self.hot_address, now)
                                                                     for wid, tx in signed])
            NonceLane.update(next_nonce=nonce + len(signed), updated_at=now).where(
                NonceLane.address == self.hot_address).execute()
        attempts = list(TxAttempt.select().where(TxAttempt.tx_hash.in_([tx.tx_hash for _, tx in signed]))
                        .order_by(TxAttempt.nonce))
        self.metrics.signed += len(attempts)
        for attempt in attempts:
            self.on_status(attempt.ref_id, "signed")
        return attempts

    def _mark_signed(self, signed: list[tuple[int, SignedTx]], now: int) -> None:
        """approved -> signed with the lane's nonce, each conditional; all or the transaction rolls back."""
        p = self.db.param
        cases = " ".join(f"WHEN {p} THEN {p}" for _ in signed)
        params: list = ["signed", self.hot_address]
        for withdrawal_id, tx in signed:
            params += [withdrawal_id, tx.nonce]
        params += [now, "approved", *(withdrawal_id for withdrawal_id, _ in signed)]
        cursor = self.db.execute_sql(
            f"UPDATE withdrawal SET status = {p}, lane = {p}, nonce = CASE id {cases} END, updated_at = {p} "
            f"WHERE status = {p} AND needs_operator = 0 AND id IN ({', '.join([p] * len(signed))})", params)
        if cursor.rowcount != len(signed):
            # Nothing else moves an approved withdrawal: a second signer, or a bug. Sign nothing.
            raise StateMismatch(f"{len(signed) - cursor.rowcount} of {len(signed)} withdrawals were no longer "
                                "approved; nothing signed")

    def _insert_attempt(self, withdrawal_id: int, signed: SignedTx, kind: str, now: int) -> TxAttempt:
        TxAttempt.insert(purpose=PURPOSE, ref_id=withdrawal_id, lane=self.hot_address, nonce=signed.nonce,
                         tx_hash=signed.tx_hash, raw=signed.raw, max_fee_per_gas=signed.fees.max_fee_per_gas,
                         max_priority_fee_per_gas=signed.fees.max_priority_fee_per_gas, gas_limit=signed.gas_limit,
                         value=signed.value, kind=kind, status="signed", sends=0, created_at=now).execute()
        return TxAttempt.get(TxAttempt.tx_hash == signed.tx_hash)

    def _ensure_lane(self, session: NodeSession) -> None:
        """A lane starts at the node's pending nonce of the address; from then on the database is the truth."""
        if NonceLane.get_or_none(NonceLane.address == self.hot_address) is None:
            start = int(session.call("eth_getTransactionCount", [self.hot_address, "pending"]), 16)
            with self.transaction():
                NonceLane.insert(address=self.hot_address, next_nonce=start, updated_at=self.wall_ms()
                                 ).on_conflict_ignore().execute()

    def _lock_lane(self) -> int:
        """The lane's next nonce, its row locked until the transaction ends (the UPDATE takes the lock first,
        on SQLite too)."""
        NonceLane.update(updated_at=self.wall_ms()).where(NonceLane.address == self.hot_address).execute()
        return NonceLane.get(NonceLane.address == self.hot_address).next_nonce

    # -- rule 5: broadcast -------------------------------------------------------------------------------------
    def resend_unsent(self) -> int:
        """Withdrawals signed but not yet taken by any node (a crash or no answer): the same bytes again."""
        rows = list(TxAttempt.select().join(Withdrawal, on=(Withdrawal.id == TxAttempt.ref_id))
                    .where((TxAttempt.purpose == PURPOSE) & (Withdrawal.status == "signed")
                           & (Withdrawal.needs_operator == False)  # noqa: E712 - an operator decides now
                           & (TxAttempt.status == "signed")).order_by(TxAttempt.id).limit(SIGN_BATCH_MAX))
        if rows:
            self._broadcast(rows)
        return len(rows)

    def _broadcast(self, attempts: Sequence[TxAttempt]) -> list[SendResult]:
        results = self.broadcaster.send([bytes(a.raw) for a in attempts])
        self._record_sends(attempts, results, self.wall_ms())
        self.metrics.broadcasts += len(attempts)
        used = [a.ref_id for a, r in zip(attempts, results) if r.nonce_used]
        if used:
            self._check_nonces_used(self.session(), used)
        return results

    def _record_sends(self, attempts: Sequence[TxAttempt], results: Sequence[SendResult], now: int) -> None:
        """One transaction for the batch: attempts a node took are `broadcast`, so are their withdrawals."""
        sent = [a for a, r in zip(attempts, results) if r.sent]
        refused = [(a, r) for a, r in zip(attempts, results) if not r.sent]
        with self.transaction():
            if sent:
                first_sends = dict(TxAttempt.select(TxAttempt.ref_id, TxAttempt.tx_hash).where(
                    TxAttempt.id.in_([a.id for a in sent]) & (TxAttempt.status == "signed")
                    & (TxAttempt.purpose == "withdrawal")).tuples())
                (TxAttempt.update(sends=TxAttempt.sends + 1, last_sent_at=now, last_error=None, status="broadcast")
                 .where(TxAttempt.id.in_([a.id for a in sent]) & TxAttempt.status.in_(("signed", "broadcast")))
                 .execute())
                (Withdrawal.update(status="broadcast", updated_at=now)
                 .where(Withdrawal.id.in_([a.ref_id for a in sent]) & (Withdrawal.status == "signed")).execute())
                # Each attempt's first send is news to the user (a replacement is a new hash to follow).
                record_withdrawal_events(self.db, [(w, "broadcast") for w in first_sends], now, first_sends)
            for attempt, result in refused:
                (TxAttempt.update(sends=TxAttempt.sends + 1, last_sent_at=now, last_error=result.summary())
                 .where(TxAttempt.id == attempt.id).execute())
        for attempt in sent:
            self.on_status(attempt.ref_id, "broadcast")
        for attempt, result in refused:
            log.warning("no node took the transaction; the same bytes go again next tick",
                        extra={"withdrawal_id": attempt.ref_id, "tx_hash": attempt.tx_hash, "answers": result.summary()})

    # -- rules 6 and 8: follow-up ------------------------------------------------------------------------------
    def follow_up(self, limit: int = FOLLOW_UP_MAX) -> None:
        # `signed` too: a transaction every node refused (under the base fee, say) is as stuck as one in no block
        waiting = list(Withdrawal.select().where((Withdrawal.status.in_(("signed", "broadcast")))
                                                 & (Withdrawal.needs_operator == False))  # noqa: E712
                       .order_by(Withdrawal.id).limit(limit))
        if not waiting:
            return
        attempts = self._attempts_of([w.id for w in waiting])
        session = self.session()
        hashes = [a.tx_hash for group in attempts.values() for a in group]
        receipts = dict(zip(hashes, session.receipts(hashes, missing_ok=True)))
        mined_nonce = int(session.call("eth_getTransactionCount", [self.hot_address, "latest"]), 16)
        for withdrawal in waiting:
            group = attempts.get(withdrawal.id, [])
            if not group or any(receipts.get(a.tx_hash) is not None for a in group):
                continue  # mined (BlockWatch settles it at depth) or nothing to follow
            if mined_nonce > withdrawal.nonce:
                self._flag(withdrawal.id, f"nonce {withdrawal.nonce} of {self.hot_address} is used on chain by a "
                                          "transaction that is none of ours: funds stay frozen for an operator")
                continue
            self._unstick(session, withdrawal, group)

    def _unstick(self, session: NodeSession, withdrawal: Withdrawal, group: list[TxAttempt]) -> None:
        newest = group[-1]
        now = self.wall_ms()
        # From the newest attempt's signing, not its last send: sending the same bytes again does not reset it.
        due = newest.sends > 0 and now - newest.created_at >= replace_wait_ms(self.replace_after_ms, len(group))
        if due:
            self._replace(session, withdrawal, newest)
        elif withdrawal.status == "broadcast" and session.call("eth_getTransactionByHash", [newest.tx_hash]) is None:
            log.warning("transaction dropped by the node; sending it again",
                        extra={"withdrawal_id": withdrawal.id, "tx_hash": newest.tx_hash})
            self.metrics.rebroadcasts += 1
            self._broadcast([newest])

    def _replace(self, session: NodeSession, withdrawal: Withdrawal, newest: TxAttempt) -> None:
        old = Fees(newest.max_fee_per_gas, newest.max_priority_fee_per_gas)
        fees = replacement_fees(old, self.fees.quote(withdrawal.speed), self.cap)
        if fees is None:
            self._flag(withdrawal.id, f"stuck: a replacement of {newest.tx_hash} needs more than the gas price cap of "
                                      f"{self.cap} wei")
            return
        payment, gas_limit = self._payment(session, withdrawal, newest.gas_limit)
        signed = sign(self.private_key(), self._chain_id(), withdrawal.nonce, payment, gas_limit, fees)
        now = self.wall_ms()
        with self.transaction():
            still = (Withdrawal.update(updated_at=now)
                     .where((Withdrawal.id == withdrawal.id) & Withdrawal.status.in_(("signed", "broadcast"))
                            & (Withdrawal.needs_operator == False)).execute())  # noqa: E712
            if still != 1:
                return  # settled or flagged meanwhile: nothing to replace
            attempt = self._insert_attempt(withdrawal.id, signed, "replacement", now)
        self.metrics.replacements += 1
        log.warning("replacing a stuck withdrawal transaction", extra={
            "withdrawal_id": withdrawal.id, "old_hash": newest.tx_hash, "new_hash": signed.tx_hash,
            "max_fee_per_gas": fees.max_fee_per_gas, "max_priority_fee_per_gas": fees.max_priority_fee_per_gas})
        self.on_signed([attempt])
        self._broadcast([attempt])

    def _check_nonces_used(self, session: NodeSession, withdrawal_ids: Iterable[int]) -> None:
        """A node said "nonce too low": fine if one of our hashes for it has a receipt; flag it if none has and
        the nonce is mined (rule 8)."""
        attempts = self._attempts_of(list(set(withdrawal_ids)))
        mined_nonce = int(session.call("eth_getTransactionCount", [self.hot_address, "latest"]), 16)
        for withdrawal_id, group in attempts.items():
            receipts = session.receipts([a.tx_hash for a in group], missing_ok=True)
            if any(r is not None for r in receipts) or mined_nonce <= group[0].nonce:
                continue
            self._flag(withdrawal_id, f"nonce {group[0].nonce} of {self.hot_address} is used on chain by a "
                                      "transaction that is none of ours: funds stay frozen for an operator")

    def _flag(self, withdrawal_id: int, reason: str) -> None:
        with self.transaction():  # a paused signer's stale view must not freeze what the new owner handles
            changed = (Withdrawal.update(needs_operator=True, operator_reason=reason[:255], updated_at=self.wall_ms())
                       .where((Withdrawal.id == withdrawal_id) & (Withdrawal.needs_operator == False)).execute())  # noqa: E712
        if changed:
            self.metrics.flagged += 1
            log.critical("withdrawal needs an operator", extra={"withdrawal_id": withdrawal_id, "reason": reason})
            self.on_status(withdrawal_id, "needs_operator")

    # -- reads ---------------------------------------------------------------------------------------------------
    def in_flight(self, session: NodeSession | None = None) -> InFlight:
        """Withdrawals signed whose nonce is not mined yet: the most each may still cost the hot wallet."""
        mined = int((session or self.session()).call("eth_getTransactionCount", [self.hot_address, "latest"]), 16)
        rows = list(Withdrawal.select(Withdrawal.id, Withdrawal.asset, Withdrawal.amount)
                    .where((Withdrawal.status.in_(("signed", "broadcast"))) & (Withdrawal.lane == self.hot_address)
                           & (Withdrawal.nonce >= mined)).tuples())
        worst: dict[int, int] = {}
        for ref_id, value, gas_limit, max_fee in (TxAttempt.select(TxAttempt.ref_id, TxAttempt.value,
                                                                   TxAttempt.gas_limit, TxAttempt.max_fee_per_gas)
                                                  .where((TxAttempt.purpose == PURPOSE)
                                                         & TxAttempt.ref_id.in_([r[0] for r in rows])).tuples()
                                                  if rows else ()):
            worst[ref_id] = max(worst.get(ref_id, 0), value + gas_limit * max_fee)
        tokens: dict[str, int] = {}
        for _, asset, amount in rows:
            if self.assets.get(asset).contract is not None:
                tokens[asset] = tokens.get(asset, 0) + amount
        cold_eth, cold_tokens, cold_count = cold_in_flight(mined, self.hot_address)
        for asset, amount in cold_tokens.items():
            tokens[asset] = tokens.get(asset, 0) + amount
        return InFlight(sum(worst.values()) + cold_eth, tokens, len(rows) + cold_count)

    def _hot_balances(self, session: NodeSession, assets: Iterable[str]) -> tuple[int, dict[str, int]]:
        eth = int(session.call("eth_getBalance", [self.hot_address, "latest"]), 16)
        tokens = {}
        for symbol in sorted(assets):
            asset = self.assets.get(symbol)
            if asset.contract is not None:
                tokens[symbol] = token_balance(session, asset.contract, self.hot_address)
        return eth, tokens

    def _payment(self, session: NodeSession, withdrawal: Withdrawal, gas_limit: int | None = None) -> tuple[Payment, int]:
        asset = self.assets.get(withdrawal.asset)
        if asset.contract is None:
            return Payment(withdrawal.to_address, value=withdrawal.amount), ETH_TRANSFER_GAS
        payment = Payment(withdrawal.to_address, token=asset.contract, token_amount=withdrawal.amount)
        if gas_limit is None:
            gas_limit = self.fees.token_gas(session, asset.contract, self.hot_address, withdrawal.to_address,
                                            withdrawal.amount)
        return payment, gas_limit

    def _capped(self, fees: Fees) -> Fees:
        max_fee = min(fees.max_fee_per_gas, self.cap)
        return Fees(max_fee, min(fees.max_priority_fee_per_gas, max_fee))

    def _attempts_of(self, withdrawal_ids: list[int]) -> dict[int, list[TxAttempt]]:
        grouped: dict[int, list[TxAttempt]] = {}
        if not withdrawal_ids:
            return grouped
        for attempt in (TxAttempt.select().where((TxAttempt.purpose == PURPOSE) & TxAttempt.ref_id.in_(withdrawal_ids))
                        .order_by(TxAttempt.id)):
            grouped.setdefault(attempt.ref_id, []).append(attempt)
        return grouped

    def session(self) -> NodeSession:
        if self.chain.chain_id is None:
            self.chain.start()  # no node answered at start: the first use checks the chain id
        try:
            return self.chain.session()
        except Exception:  # noqa: BLE001 - no healthy node right now: check again, then give up this tick
            self.chain.refresh()
            return self.chain.session()

    def _chain_id(self) -> int:
        if self.chain_id is None:
            self.chain_id = self.chain.chain_id
        assert self.chain_id is not None, "the chain client was not started"
        return self.chain_id


def cold_in_flight(mined_nonce: int, hot: str) -> tuple[int, dict[str, int], int]:
    """Cold moves from the hot wallet whose nonce is not mined: the most each may still cost it (wei: value +
    gas limit × max fee of its dearest attempt; tokens: the amount), and how many there are."""
    rows = list(Sweep.select(Sweep.id, Sweep.asset, Sweep.amount)
                .where((Sweep.kind == "cold") & Sweep.status.in_(COLD_OPEN) & (Sweep.from_address == hot)
                       & (Sweep.nonce >= mined_nonce)).tuples())
    if not rows:
        return 0, {}, 0
    worst: dict[int, int] = {}
    for ref_id, value, gas_limit, max_fee in (TxAttempt.select(TxAttempt.ref_id, TxAttempt.value, TxAttempt.gas_limit,
                                                               TxAttempt.max_fee_per_gas)
                                              .where((TxAttempt.purpose == "cold")
                                                     & TxAttempt.ref_id.in_([r[0] for r in rows])).tuples()):
        worst[ref_id] = max(worst.get(ref_id, 0), value + gas_limit * max_fee)
    tokens: dict[str, int] = {}
    for _, asset, amount in rows:
        if asset != "ETH":
            tokens[asset] = tokens.get(asset, 0) + amount
    return sum(worst.values()), tokens, len(rows)


def token_balance(session: NodeSession, token: str, holder: str) -> int:
    data = "0x70a08231" + "0" * 24 + holder[2:].lower()  # balanceOf(address)
    return int(session.call("eth_call", [{"to": token, "data": data}, "latest"]), 16)


def _attempt_row(withdrawal_id: int, signed: SignedTx, kind: str, lane: str, now: int) -> tuple:
    """A row for storage.sql.insert_many (amounts as digit strings, as the exact column takes them)."""
    return (PURPOSE, withdrawal_id, lane, signed.nonce, signed.tx_hash, signed.raw, str(signed.fees.max_fee_per_gas),
            str(signed.fees.max_priority_fee_per_gas), signed.gas_limit, str(signed.value), kind, "signed", 0, now)
