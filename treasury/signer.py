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
from typing import Callable, Iterable, Protocol, Sequence

import peewee

from chain.broadcast import Broadcaster, SendResult
from chain.nodes import ChainClient
from chain.session import NodeSession
from chain.txbuild import Fees, Payment, SignedTx, sign
from core.limits import (
    ETH_TRANSFER_GAS, REPLACE_AFTER_MS_MAX, REPLACE_BUMP_PER_MILLE, SIGN_BATCH_MAX,
)
from core.money import AssetRegistry
from treasury import switches
from storage.models import NonceLane, TxAttempt, Withdrawal

log = logging.getLogger(__name__)

PURPOSE = "withdrawal"
FOLLOW_UP_MAX = 500  # broadcast withdrawals looked at per tick


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
                 on_status: Callable[[int, str], None] = lambda withdrawal_id, status: None) -> None:
        self.db = db
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

    # -- one tick -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Everything due, in order; each part bounded. Errors of one part do not skip the others."""
        for part in (self.resend_unsent, self.sign_approved, self.follow_up):
            try:
                part()
            except Exception as exc:  # noqa: BLE001 - a node or the database failed; retried next tick
                self.metrics.last_error = f"{part.__name__}: {type(exc).__name__}: {exc}"[:300]
                log.warning("signer step failed; retried next tick", extra={"step": part.__name__,
                                                                          "error": self.metrics.last_error})
                self._reconnect()

    def _reconnect(self) -> None:
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; the pool drops it
            log.debug("closing a failed connection", exc_info=True)

    # -- rule 4: sign once ----------------------------------------------------------------------------------
    def sign_approved(self, limit: int = SIGN_BATCH_MAX) -> int:
        """Sign up to `limit` approved withdrawals (oldest first) that the hot wallet covers; broadcast them."""
        if switches.engaged(self.db, switches.SIGNING_PAUSED):
            self.metrics.paused = True
            return 0
        self.metrics.paused = False
        candidates = list(Withdrawal.select().where((Withdrawal.status == "approved")
                                                    & (Withdrawal.needs_operator == False))  # noqa: E712
                          .order_by(Withdrawal.id).limit(limit))
        if not candidates:
            self.metrics.waiting_for_funds = 0
            return 0
        session = self.session()
        plans = self._plan(session, candidates)
        signed = self._sign_and_commit(session, plans) if plans else []
        if signed:
            self.on_signed(signed)
            self._broadcast(signed)
        return len(signed)

    def _plan(self, session: NodeSession, candidates: list[Withdrawal]) -> list[tuple[Withdrawal, Payment, int, Fees]]:
        balance_eth, balance_tokens = self._hot_balances(session, {w.asset for w in candidates})
        owed = self.in_flight(session)
        free_eth = balance_eth - owed.eth
        free_tokens = {a: balance_tokens.get(a, 0) - owed.tokens.get(a, 0) for a in balance_tokens}
        plans, waiting = [], 0
        for withdrawal in candidates:
            payment, gas_limit = self._payment(session, withdrawal)
            fees = self._capped(self.fees.quote(withdrawal.speed))
            gas_cost = gas_limit * fees.max_fee_per_gas
            token_need = payment.token_amount if payment.token else 0
            if free_eth < payment.value + gas_cost or (payment.token and free_tokens.get(withdrawal.asset, 0) < token_need):
                waiting += 1
                continue
            free_eth -= payment.value + gas_cost
            if payment.token:
                free_tokens[withdrawal.asset] -= token_need
            plans.append((withdrawal, payment, gas_limit, fees))
        if waiting and waiting != self.metrics.waiting_for_funds:
            log.warning("approved withdrawals wait: the hot wallet does not cover them", extra={
                "waiting": waiting, "hot_wallet": self.hot_address, "free_eth_wei": str(free_eth)})
        self.metrics.waiting_for_funds = waiting
        return plans

    def _sign_and_commit(self, session: NodeSession, plans: list) -> list[TxAttempt]:
        chain_id = self._chain_id()
        key = self.private_key()
        now = self.wall_ms()
        self._ensure_lane(session)
        attempts: list[TxAttempt] = []
        with self.db.atomic():
            nonce = self._lock_lane()
            if switches.engaged(self.db, switches.SIGNING_PAUSED, lock=True):
                self.metrics.paused = True
                return []  # the transaction ends with nothing changed
            for withdrawal, payment, gas_limit, fees in plans:
                changed = (Withdrawal.update(status="signed", lane=self.hot_address, nonce=nonce, updated_at=now)
                           .where((Withdrawal.id == withdrawal.id) & (Withdrawal.status == "approved")
                                  & (Withdrawal.needs_operator == False)).execute())  # noqa: E712
                if changed != 1:
                    continue  # no longer approved (another signer? never: one lane, one writer; but never sign twice)
                signed = sign(key, chain_id, nonce, payment, gas_limit, fees)
                attempts.append(self._insert_attempt(withdrawal.id, signed, "original", now))
                nonce += 1
            NonceLane.update(next_nonce=nonce, updated_at=now).where(NonceLane.address == self.hot_address).execute()
        self.metrics.signed += len(attempts)
        for attempt in attempts:
            self.on_status(attempt.ref_id, "signed")
        return attempts

    def _insert_attempt(self, withdrawal_id: int, signed: SignedTx, kind: str, now: int) -> TxAttempt:
        attempt_id = TxAttempt.insert(
            purpose=PURPOSE, ref_id=withdrawal_id, lane=self.hot_address, nonce=signed.nonce, tx_hash=signed.tx_hash,
            raw=signed.raw, max_fee_per_gas=signed.fees.max_fee_per_gas,
            max_priority_fee_per_gas=signed.fees.max_priority_fee_per_gas, gas_limit=signed.gas_limit,
            value=signed.value, kind=kind, status="signed", sends=0, created_at=now).execute()
        return TxAttempt.get_by_id(attempt_id)

    def _ensure_lane(self, session: NodeSession) -> None:
        """A lane starts at the node's pending nonce of the address; from then on the database is the truth."""
        if NonceLane.get_or_none(NonceLane.address == self.hot_address) is None:
            start = int(session.call("eth_getTransactionCount", [self.hot_address, "pending"]), 16)
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
        now = self.wall_ms()
        used: list[TxAttempt] = []
        for attempt, result in zip(attempts, results):
            self._record_send(attempt, result, now)
            if result.nonce_used:
                used.append(attempt)
        self.metrics.broadcasts += len(attempts)
        if used:
            self._check_nonces_used(self.session(), [a.ref_id for a in used])
        return results

    def _record_send(self, attempt: TxAttempt, result: SendResult, now: int) -> None:
        error = None if result.sent else result.summary()
        moved = 0
        with self.db.atomic():
            (TxAttempt.update(sends=TxAttempt.sends + 1, last_sent_at=now, last_error=error,
                              status="broadcast" if result.sent else attempt.status)
             .where((TxAttempt.id == attempt.id) & (TxAttempt.status.in_(("signed", "broadcast")))).execute())
            if result.sent:
                moved = (Withdrawal.update(status="broadcast", updated_at=now)
                         .where((Withdrawal.id == attempt.ref_id) & (Withdrawal.status == "signed")).execute())
        if result.sent and moved:
            self.on_status(attempt.ref_id, "broadcast")
        if not result.sent:
            log.warning("no node took the transaction; the same bytes go again next tick",
                        extra={"withdrawal_id": attempt.ref_id, "tx_hash": attempt.tx_hash, "answers": error})

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
        with self.db.atomic():
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
        return InFlight(sum(worst.values()), tokens, len(rows))

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


def token_balance(session: NodeSession, token: str, holder: str) -> int:
    data = "0x70a08231" + "0" * 24 + holder[2:].lower()  # balanceOf(address)
    return int(session.call("eth_call", [{"to": token, "data": data}, "latest"]), 16)
