"""Treasury moves, run by the signer on its tick (DESIGN.md "Treasury"): sweeps of deposit addresses into the hot
wallet, and the hot wallet's surplus to cold storage. Custody moves, not user money: no user balance changes;
the gas they burn is booked from `fees` once they are final (`book_gas`, a BookSweepGas on shard 0).

Sweep. A deposit address with credited deposits newer than its last final sweep is a candidate; its balance is
read on chain before anything is signed, and it is swept when it holds at least WALLET_SWEEP_MIN of the asset:
- ETH: the balance minus the exact gas cost. Both fee fields are the same (max fee = priority fee), so the
  price paid is exactly the max fee whatever the base fee: 21,000 × max fee leaves the address, nothing stays.
- a token: the transfer's gas (limit × max fee, fee fields equal again) is what the address must hold; what it
  lacks comes first from the gas wallet (the top-up, on the gas wallet's own nonce lane). The top-up AND the
  token transfer are signed and committed together, before any byte leaves; the transfer is held back until
  the top-up has `confirmations` blocks, then sent. A crash anywhere resumes from the rows: the same bytes go
  again, never a second top-up.
One open sweep per deposit address at a time: its nonce is the address's next one on chain (the address sends
nothing else), and the unique (from_address, nonce) makes a second signature of it impossible.

Cold. When the hot wallet's free balance of an asset (after what its unmined withdrawals may cost) is above
WALLET_HOT_CAP, the surplus down to WALLET_HOT_TARGET goes to WALLET_COLD_ADDRESS, signed on the hot wallet's
lane like a withdrawal (the lane's row lock orders them), at the withdrawals' fees and gas price cap: a move
that waited for cheap gas there would hold up every withdrawal after it. An ETH move also keeps its own gas:
the hot wallet never ends below the target. Below WALLET_HOT_LOW a warning asks for a refill (and the metric says so).

Follow-up is the withdrawals' (treasury/signer.py): an attempt not taken is sent again, one dropped by the node
is sent again, one without a receipt `replace_after_ms` after it was signed is replaced with the same nonce and
both fees raised by at least 12.5 % (replacement_fees), under the gas price cap. A token sweep whose transfer
needs more gas than its top-up brought is flagged for an operator instead (a second top-up is a decision).
Sweeps pause and cold moves pause with their own switches, apart from the signing of withdrawals.

Deposit addresses' keys are decrypted here only (`deposit_key`), for the signature, and never logged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import peewee

from chain.broadcast import SendResult
from chain.session import NodeSession
from chain.txbuild import Fees, Payment, SignedTx, sign
from core.limits import (
    ETH_TRANSFER_GAS, SWEEP_BATCHES_PER_TICK, SWEEP_CANDIDATES_MAX, SWEEP_FOLLOW_UP_MAX, SWEEP_SPEED, SWEEPS_PER_TICK,
)
from storage import sql
from storage.fence import FenceLost
from storage.models import NonceLane, Sweep, TxAttempt
from treasury import switches
from treasury.signer import SignerLogic, replace_wait_ms, replacement_fees

log = logging.getLogger(__name__)

SWEEP, TOPUP, COLD = "sweep", "gas_topup", "cold"  # tx_attempt.purpose
PURPOSES = (SWEEP, TOPUP, COLD)
OPEN = ("topup", "signed", "broadcast")
FINAL = ("confirmed", "failed")
SWEEP_COLUMNS = ("kind", "asset", "from_address", "to_address", "amount", "deposit_upto", "status", "nonce",
                 "topup_amount", "needs_operator", "created_at", "updated_at")
ATTEMPT_COLUMNS = ("purpose", "ref_id", "lane", "nonce", "tx_hash", "raw", "max_fee_per_gas",
                   "max_priority_fee_per_gas", "gas_limit", "value", "kind", "status", "sends", "created_at")


@dataclasses.dataclass
class TreasuryMetrics:
    sweeps_signed: int = 0
    topups_signed: int = 0
    cold_signed: int = 0
    confirmed: int = 0
    failed: int = 0
    replacements: int = 0
    flagged: int = 0
    below_minimum: int = 0  # candidates whose on-chain balance was under WALLET_SWEEP_MIN at the last look
    waiting_for_gas: int = 0  # token sweeps the gas wallet could not pay a top-up for at the last look
    hot_low: tuple[str, ...] = ()  # assets the hot wallet holds less of than WALLET_HOT_LOW
    gas_booked_wei: int = 0


@dataclasses.dataclass(frozen=True)
class TreasuryRules:
    sweep_min: dict[str, int]
    hot_cap: dict[str, int]
    hot_target: dict[str, int]
    hot_low: dict[str, int]
    cold_address: str | None
    confirmations: int
    gas_price_cap_wei: int  # custody moves may wait for cheaper gas than withdrawals

    @classmethod
    def from_config(cls, config) -> TreasuryRules:  # noqa: ANN001 - core.config.Config
        config.check_treasury()  # a Config built in code skipped from_env's checks: a bad cold address stops here
        caps = config.per_asset("hot_cap")
        targets = {symbol: config.per_asset("hot_target").get(symbol, cap) for symbol, cap in caps.items()}
        return cls(config.per_asset("sweep_min"), caps, targets, config.per_asset("hot_low"), config.cold_address,
                   config.confirmations, config.sweep_gas_price_cap_wei)


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str  # eth | token
    address: str
    asset: str
    amount: int
    deposit_upto: int
    nonce: int
    payment: Payment
    gas_limit: int
    fees: Fees
    topup: int  # wei the gas wallet sends first (0: the address holds its gas already)


class SweepLogic:
    def __init__(self, signer: SignerLogic, rules: TreasuryRules, gas_address: str | None,
                 gas_key: Callable[[], bytes], deposit_key: Callable[[str], bytes],
                 book_gas: Callable[[Sequence[tuple[int, int]]], None]) -> None:
        self.signer = signer  # its chain, broadcaster, fees, cap, clock and the hot wallet's lane
        self.db: peewee.Database = signer.db
        self.rules = rules
        self.gas_address = gas_address
        self.gas_key = gas_key
        self.deposit_key = deposit_key  # decrypts one deposit address's key, for one signature
        self.book_gas = book_gas  # [(sweep id, wei)]: books the gas to `fees`, idempotent; raises if not all done
        self.cap = min(rules.gas_price_cap_wei, signer.cap)
        self.metrics = TreasuryMetrics()
        self._token_gas: dict[str, int] = {}  # asset -> a token sweep's gas limit, estimated once per tick
        self._below: dict[tuple[str, str], int] = {}  # (address, asset) -> newest deposit id seen under the minimum

    @property
    def enabled(self) -> bool:
        return bool(self.rules.sweep_min or self.rules.hot_cap or self.rules.hot_low)

    # -- one tick -----------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """After the withdrawals' part of the tick: nothing here can hold a withdrawal back."""
        if not self.enabled and not self._open_exists():
            return
        for part in (self.follow_up, self.resend_unsent, self.sweep, self.move_to_cold, self.check_low):
            try:
                part()
            except FenceLost:
                raise  # another process signs now
            except Exception as exc:  # noqa: BLE001 - a node or the database failed; retried next tick
                self.signer.metrics.last_error = f"treasury {part.__name__}: {type(exc).__name__}: {exc}"[:300]
                log.warning("treasury step failed; retried next tick",
                            extra={"step": part.__name__, "error": self.signer.metrics.last_error})
                self.signer._reconnect()

    def _quote(self) -> Fees:
        quote = self.signer.fees.quote(SWEEP_SPEED)
        max_fee = min(quote.max_fee_per_gas, self.cap)
        return Fees(max_fee, min(quote.max_priority_fee_per_gas, max_fee))

    def _open_exists(self) -> bool:
        return Sweep.select().where(Sweep.status.in_(OPEN)).exists()

    # -- sweeps: choose, check on chain, sign and commit, then send ------------------------------------------------
    def sweep(self, limit: int = SWEEPS_PER_TICK, batches: int = SWEEP_BATCHES_PER_TICK) -> int:
        """Up to `batches` batches of `limit` sweeps: batch k is sent (on the signer's sender thread) while batch
        k + 1 is read, signed and committed; one batch in flight at a time, so the gas lane's nonces go in order."""
        if not self.rules.sweep_min or switches.engaged(self.db, switches.SWEEPS_PAUSED):
            return 0
        total, sending, session = 0, None, None
        try:
            for _ in range(batches):
                candidates = self._candidates(SWEEP_CANDIDATES_MAX)[:limit]  # balances are read for these only
                if not candidates:
                    break
                session = session or self.signer.session()
                plans = self._plans(session, candidates, limit)
                if not plans:
                    continue  # all under the minimum: remembered, the next batch reads others
                attempts = self._sign_sweeps(session, plans)
                if sending is not None:
                    sending.result()
                sending = self.signer._sender.submit(self._send_on_sender, attempts)
                total += len(plans)
        finally:
            if sending is not None:
                sending.result()
        return total

    def _send_on_sender(self, attempts: Sequence[TxAttempt]) -> None:
        try:
            self._send(attempts)
        finally:
            self.db.close()  # the sender thread's pooled connection goes back

    def _candidates(self, limit: int) -> list[tuple[str, str, int]]:
        """(address, asset, newest credited deposit id) with credits newer than the last final sweep, on addresses
        with no open sweep; tokens before ETH (a token sweep may use the address's ETH for its gas)."""
        assets = sorted(self.rules.sweep_min)
        p = self.db.param
        rows = self.db.execute_sql(
            f"SELECT d.address, d.asset, MAX(d.id) FROM deposit d WHERE d.status = {p} "
            f"AND d.asset IN ({', '.join([p] * len(assets))}) "
            f"AND NOT EXISTS (SELECT 1 FROM sweep o WHERE o.from_address = d.address AND o.kind <> 'cold' "
            f"AND (o.status IN ('topup', 'signed', 'broadcast') OR o.needs_operator = 1)) "
            f"GROUP BY d.address, d.asset HAVING MAX(d.id) > COALESCE((SELECT MAX(s.deposit_upto) FROM sweep s "
            f"WHERE s.from_address = d.address AND s.asset = d.asset AND s.status IN ('confirmed', 'failed')), 0) "
            f"ORDER BY MAX(d.id) LIMIT {int(limit)}", ["confirmed", *assets]).fetchall()
        fresh = [(a, s, int(u)) for a, s, u in rows if self._below.get((a, s)) != int(u)]
        fresh.sort(key=lambda c: (c[1] == "ETH", c[2]))
        chosen, addresses = [], set()
        for candidate in fresh:
            if candidate[0] not in addresses:  # one sweep per address at a time
                addresses.add(candidate[0])
                chosen.append(candidate)
        return chosen

    def _plans(self, session: NodeSession, candidates: list[tuple[str, str, int]], limit: int) -> list[_Plan]:
        """Balances and nonces read on chain (one batch), then what each sweep sends. Under the minimum: skipped
        until a newer deposit arrives."""
        calls: list[tuple[str, list]] = []
        for address, asset, _ in candidates:
            calls.append(("eth_getBalance", [address, "latest"]))
            calls.append(("eth_getTransactionCount", [address, "pending"]))
            contract = self.signer.assets.get(asset).contract
            data = "0x70a08231" + "0" * 24 + address[2:].lower()
            calls.append(("eth_call", [{"to": contract, "data": data}, "latest"]) if contract
                         else ("eth_chainId", []))
        if self.gas_address is not None:
            calls.append(("eth_getBalance", [self.gas_address, "latest"]))
        answers = session.calls(calls)
        self._token_gas: dict[str, int] = {}
        quote = self._quote()
        fees = Fees(quote.max_fee_per_gas, quote.max_fee_per_gas)  # equal fields: the price paid is exact
        gas_free = int(answers[-1], 16) - self._topups_owed() if self.gas_address is not None else 0
        plans, below, waiting = [], 0, 0
        for i, (address, asset, upto) in enumerate(candidates):
            eth, nonce, token = (int(x, 16) for x in answers[3 * i:3 * i + 3])
            plan = self._plan(session, address, asset, upto, eth, nonce, token, fees)
            if plan is None:
                below += 1
                self._below[(address, asset)] = upto
                continue
            if plan.topup:
                # a top-up the gas wallet cannot pay would stop its lane: it waits for a refill instead
                cost = plan.topup + ETH_TRANSFER_GAS * fees.max_fee_per_gas
                if cost > gas_free:
                    waiting += 1
                    continue
                gas_free -= cost
            plans.append(plan)
            if len(plans) >= limit:
                break
        if waiting and waiting != self.metrics.waiting_for_gas:
            log.warning("token sweeps wait: the gas wallet cannot pay their top-ups; refill it",
                        extra={"waiting": waiting, "gas_wallet": self.gas_address})
        self.metrics.below_minimum, self.metrics.waiting_for_gas = below, waiting
        return plans

    def _topups_owed(self) -> int:
        """The most the gas wallet's top-ups not yet final may still take from it (value + 21,000 × max fee of
        each attempt; a mined one is counted again, on the safe side, until its sweep moves on)."""
        owed = 0
        for value, max_fee in (TxAttempt.select(TxAttempt.value, TxAttempt.max_fee_per_gas)
                               .join(Sweep, on=(Sweep.id == TxAttempt.ref_id))
                               .where((TxAttempt.purpose == TOPUP) & (Sweep.status == "topup")
                                      & (TxAttempt.kind == "original")).tuples()):
            owed += int(value) + ETH_TRANSFER_GAS * int(max_fee)
        return owed

    def _plan(self, session: NodeSession, address: str, asset: str, upto: int, eth: int, nonce: int, token: int,
              fees: Fees) -> _Plan | None:
        minimum, hot = self.rules.sweep_min[asset], self.signer.hot_address
        contract = self.signer.assets.get(asset).contract
        if contract is None:
            value = eth - ETH_TRANSFER_GAS * fees.max_fee_per_gas
            if eth < minimum or value <= 0:
                return None
            return _Plan("eth", address, asset, value, upto, nonce, Payment(hot, value=value), ETH_TRANSFER_GAS,
                         fees, 0)
        if token < minimum or token <= 0:
            return None
        if self.gas_address is None:
            raise RuntimeError("no gas wallet key: a token sweep cannot get its gas (run `wallet init`)")
        gas_limit = self._token_gas.get(asset)
        if gas_limit is None:
            # The same transfer (a whole balance to the hot wallet) runs the same code from any deposit address:
            # one estimate per asset and tick (with its margin) serves the lot.
            gas_limit = self._token_gas[asset] = self.signer.fees.token_gas(session, contract, address, hot, token)
        topup = max(gas_limit * fees.max_fee_per_gas - eth, 0)
        return _Plan("token", address, asset, token, upto, nonce,
                     Payment(hot, token=contract, token_amount=token), gas_limit, fees, topup)

    def _sign_sweeps(self, session: NodeSession, plans: list[_Plan]) -> list[TxAttempt]:
        """Every sweep row, its top-up and its main transaction: signed and committed in one transaction.
        Returns what goes now: the top-ups, and the main transactions of sweeps that need none."""
        chain_id = self.signer._chain_id()
        now = self.signer.wall_ms()
        topups = [p for p in plans if p.topup]
        if topups:
            _ensure_lane(self.signer, session, self.gas_address, now)
        gas_key = self.gas_key() if topups else None
        rows: list[tuple] = []
        held_back: set[str] = set()  # token transfers that wait for their top-up
        with self.signer.transaction():
            if switches.engaged(self.db, switches.SWEEPS_PAUSED, lock=True):
                return []
            gas_nonce = _lock_lane(self.gas_address, now) if topups else 0
            sql.insert_many(self.db, "sweep", SWEEP_COLUMNS, [
                (plan.kind, plan.asset, plan.address, self.signer.hot_address, str(plan.amount), plan.deposit_upto,
                 "topup" if plan.topup else "signed", plan.nonce, str(plan.topup), False, now, now) for plan in plans])
            # (from_address, nonce) is unique: it names each new row
            ids = dict(((a, n), i) for i, a, n in sql.select_in(
                self.db, f"SELECT id, from_address, nonce FROM sweep WHERE nonce >= {min(p.nonce for p in plans)} "
                         "AND from_address", [p.address for p in plans]))
            for plan in plans:
                sweep_id = ids[(plan.address, plan.nonce)]
                if plan.topup:
                    topup = sign(gas_key, chain_id, gas_nonce, Payment(plan.address, value=plan.topup),
                                 ETH_TRANSFER_GAS, plan.fees)
                    rows.append(_attempt_row(TOPUP, sweep_id, self.gas_address, topup, "original", now))
                    gas_nonce += 1
                main = sign(self.deposit_key(plan.address), chain_id, plan.nonce, plan.payment, plan.gas_limit,
                            plan.fees)
                if plan.topup:
                    held_back.add(main.tx_hash)
                rows.append(_attempt_row(SWEEP, sweep_id, plan.address, main, "original", now))
            sql.insert_many(self.db, "tx_attempt", ATTEMPT_COLUMNS, rows)
            if topups:
                NonceLane.update(next_nonce=gas_nonce, updated_at=now).where(
                    NonceLane.address == self.gas_address).execute()
        self.metrics.sweeps_signed += len(plans)
        self.metrics.topups_signed += len(topups)
        log.info("sweeps signed", extra={"sweeps": len(plans), "gas_topups": len(topups)})
        go = {r[4]: r for r in rows if r[4] not in held_back}
        if not go:
            return []
        # What _send needs, from the rows just written (their bytes are in memory: not read back)
        ids = dict(sql.select_in(self.db, "SELECT tx_hash, id FROM tx_attempt WHERE tx_hash", list(go)))
        return [TxAttempt(id=ids[h], purpose=r[0], ref_id=r[1], tx_hash=h, raw=r[5]) for h, r in go.items()]

    # -- cold storage ------------------------------------------------------------------------------------------------
    def move_to_cold(self) -> int:
        """Per asset over its cap, one move of the surplus down to the target (one open move per asset)."""
        cold = self.rules.cold_address
        if not self.rules.hot_cap or cold is None or switches.engaged(self.db, switches.COLD_PAUSED):
            return 0
        open_assets = {a for (a,) in Sweep.select(Sweep.asset).where((Sweep.kind == "cold")
                                                                      & Sweep.status.in_(OPEN)).tuples()}
        session = self.signer.session()
        funds = self.signer._free_funds(session)  # balances less what unmined withdrawals and cold moves may cost
        # On the withdrawals' lane: the withdrawals' fees and cap, never the sweeps' lower one (a cold move stuck
        # under the base fee would hold up every withdrawal signed after it)
        quote = self.signer._capped(self.signer.fees.quote(SWEEP_SPEED))
        moved = 0
        # Tokens first: the gas of their moves comes out of the ETH the ETH move must leave at the target.
        for asset, cap in sorted(self.rules.hot_cap.items(), key=lambda item: (item[0] == "ETH", item[0])):
            if asset in open_assets:
                continue
            plan = self._cold_plan(session, asset, cap, funds, quote)
            if plan is not None:
                self._sign_cold(session, asset, *plan)
                funds.eth -= plan[0].value + plan[2] * quote.max_fee_per_gas
                moved += 1
        return moved

    def _cold_plan(self, session: NodeSession, asset: str, cap: int, funds, quote: Fees):  # noqa: ANN001
        target, contract = self.rules.hot_target[asset], self.signer.assets.get(asset).contract
        if contract is None:
            gas_cost = ETH_TRANSFER_GAS * quote.max_fee_per_gas
            amount = funds.eth - target - gas_cost  # the move pays its own gas out of the surplus
            if funds.eth <= cap or amount <= 0:
                return None
            return Payment(self.rules.cold_address, value=amount), amount, ETH_TRANSFER_GAS, quote
        held = funds.tokens.get(asset, 0)
        if held <= cap:
            return None
        amount = held - target
        gas_limit = self.signer.fees.token_gas(session, contract, self.signer.hot_address, self.rules.cold_address,
                                               amount)
        if funds.eth < gas_limit * quote.max_fee_per_gas:
            log.warning("a cold move waits: the hot wallet lacks the ETH for its gas", extra={"asset": asset})
            return None
        return Payment(self.rules.cold_address, token=contract, token_amount=amount), amount, gas_limit, quote

    def _sign_cold(self, session: NodeSession, asset: str, payment: Payment, amount: int, gas_limit: int,
                   fees: Fees) -> None:
        hot, now = self.signer.hot_address, self.signer.wall_ms()
        _ensure_lane(self.signer, session, hot, now)
        key = self.signer.private_key()
        with self.signer.transaction():
            nonce = _lock_lane(hot, now)  # the withdrawals' lane: the row lock orders the two
            if switches.engaged(self.db, switches.COLD_PAUSED, lock=True):
                return
            signed = sign(key, self.signer._chain_id(), nonce, payment, gas_limit, fees)
            sweep_id = Sweep.insert(kind="cold", asset=asset, from_address=hot, to_address=self.rules.cold_address,
                                    amount=amount, status="signed", nonce=nonce, created_at=now,
                                    updated_at=now).execute()
            sql.insert_many(self.db, "tx_attempt", ATTEMPT_COLUMNS, [_attempt_row(COLD, sweep_id, hot, signed,
                                                                                  "original", now)])
            NonceLane.update(next_nonce=nonce + 1, updated_at=now).where(NonceLane.address == hot).execute()
        self.metrics.cold_signed += 1
        log.warning("hot wallet above its cap: surplus sent to cold storage", extra={
            "asset": asset, "amount": str(amount), "cold_address": self.rules.cold_address, "tx_hash": signed.tx_hash})
        self._send([TxAttempt.get(TxAttempt.tx_hash == signed.tx_hash)])

    def check_low(self) -> tuple[str, ...]:
        """Assets the hot wallet holds less of than its low mark: a warning when one goes low, a metric."""
        if not self.rules.hot_low:
            return ()
        eth, tokens = self.signer._hot_balances(self.signer.session(), self.rules.hot_low)
        held = {"ETH": eth, **tokens}
        low = tuple(sorted(a for a, mark in self.rules.hot_low.items() if held.get(a, 0) < mark))
        for asset in set(low) - set(self.metrics.hot_low):
            log.warning("hot wallet below its low mark: refill it from cold storage", extra={
                "asset": asset, "held": str(held.get(asset, 0)), "low_mark": str(self.rules.hot_low[asset]),
                "hot_wallet": self.signer.hot_address})
        self.metrics.hot_low = low
        return low

    # -- sending -------------------------------------------------------------------------------------------------------
    def resend_unsent(self) -> int:
        """Attempts signed and committed but taken by no node yet (a crash, no answer, or a token transfer whose
        top-up has just confirmed): the same bytes."""
        rows = list(TxAttempt.select(TxAttempt).join(Sweep, on=(Sweep.id == TxAttempt.ref_id))
                    .where(TxAttempt.purpose.in_(PURPOSES) & (TxAttempt.status == "signed")
                           & (Sweep.needs_operator == False)  # noqa: E712
                           & (((TxAttempt.purpose == TOPUP) & (Sweep.status == "topup"))
                              | ((TxAttempt.purpose != TOPUP) & Sweep.status.in_(("signed", "broadcast")))))
                    .order_by(TxAttempt.id).limit(SWEEPS_PER_TICK).namedtuples())
        self._send(rows)
        return len(rows)

    def _send(self, attempts: Sequence[TxAttempt]) -> list[SendResult]:
        if not attempts:
            return []
        results = self.signer.broadcaster.send([bytes(a.raw) for a in attempts])
        now = self.signer.wall_ms()
        sent = [a for a, r in zip(attempts, results) if r.sent]
        with self.signer.transaction():
            if sent:
                (TxAttempt.update(sends=TxAttempt.sends + 1, last_sent_at=now, last_error=None, status="broadcast")
                 .where(TxAttempt.id.in_([a.id for a in sent])).execute())
                mains = [a.ref_id for a in sent if a.purpose != TOPUP]
                if mains:
                    (Sweep.update(status="broadcast", updated_at=now)
                     .where(Sweep.id.in_(mains) & (Sweep.status == "signed")).execute())
            for attempt, result in zip(attempts, results):
                if not result.sent:
                    (TxAttempt.update(sends=TxAttempt.sends + 1, last_sent_at=now, last_error=result.summary()[:255])
                     .where(TxAttempt.id == attempt.id).execute())
                    log.warning("no node took a treasury transaction; the same bytes go again next tick",
                                extra={"sweep_id": attempt.ref_id, "tx_hash": attempt.tx_hash,
                                       "answers": result.summary()})
        return results

    # -- follow-up: receipts at depth settle, stuck ones are replaced ----------------------------------------------------
    def follow_up(self, limit: int = SWEEP_FOLLOW_UP_MAX) -> None:
        open_sweeps = list(Sweep.select().where(Sweep.status.in_(OPEN) & (Sweep.needs_operator == False))  # noqa: E712
                           .order_by(Sweep.id).limit(limit))
        if not open_sweeps:
            return
        groups = self._attempts_of(open_sweeps)
        session = self.signer.session()
        hashes = [a.tx_hash for group in groups.values() for a in group]
        receipts = dict(zip(hashes, session.receipts(hashes, missing_ok=True)))
        tip = session.head()
        topped_up, final = [], []
        for sweep in open_sweeps:
            group = groups.get(sweep.id, [])
            if not group:
                continue
            mined = next((receipts[a.tx_hash] for a in group if receipts.get(a.tx_hash) is not None), None)
            if mined is None:
                if any(a.sends for a in group):
                    self._unstick(session, sweep, group)
            elif tip - mined.block_number + 1 >= self.rules.confirmations:
                (topped_up if sweep.status == "topup" else final).append((sweep, group, mined))
        if topped_up:
            self._topups_final(topped_up)
        if final:
            self._final(final)

    def _attempts_of(self, sweeps: list[Sweep]) -> dict[int, list[TxAttempt]]:
        """Per open sweep, the attempts of its current step: the top-ups while it waits for gas, else the main."""
        topup_phase = {s.id for s in sweeps if s.status == "topup"}
        grouped: dict[int, list[TxAttempt]] = {}
        light = [f for f in TxAttempt._meta.sorted_fields if f.name != "raw"]  # the bytes are read only to send
        for attempt in (TxAttempt.select(*light).where(TxAttempt.purpose.in_(PURPOSES)
                                                 & TxAttempt.ref_id.in_([s.id for s in sweeps])).order_by(TxAttempt.id)
                        .namedtuples()):  # thousands of rows a tick: tuples, not model instances
            if (attempt.purpose == TOPUP) == (attempt.ref_id in topup_phase):
                grouped.setdefault(attempt.ref_id, []).append(attempt)
        return grouped

    def _topups_final(self, done: list[tuple[Sweep, list[TxAttempt], object]]) -> None:
        """The gas arrived and is final: the token transfers signed with it go next (resend_unsent). One
        transaction for the tick's lot."""
        now = self.signer.wall_ms()
        with self.signer.transaction():
            _update_rows(self.db, {"gas_paid": {sweep.id: str(r.gas_used * r.effective_gas_price) for sweep, _, r in done}},
                         {"status": "signed", "updated_at": now}, "status = 'topup'")
            TxAttempt.update(status="mined").where(TxAttempt.tx_hash.in_([r.tx_hash for _, _, r in done])).execute()
        for sweep, _, receipt in done:
            if receipt.status != 1:  # a plain ETH transfer does not revert; if it did, someone must look
                self._flag(sweep.id, f"the gas top-up {receipt.tx_hash} reverted")

    def _final(self, done: list[tuple[Sweep, list[TxAttempt], object]]) -> None:
        """Main transactions with their confirmations: the gas each (and its top-up) burnt is booked to `fees`
        first (one BookSweepGas per sweep, idempotent by its op id, all asked at once), then the sweeps are
        final, in one transaction."""
        outcomes = []
        for sweep, group, receipt in done:
            winner = next(a for a in group if a.tx_hash == receipt.tx_hash)
            gas = (sweep.gas_paid or 0) + receipt.gas_used * receipt.effective_gas_price
            amount = winner.value if sweep.asset == "ETH" else sweep.amount  # an ETH replacement sends a new value
            outcomes.append((sweep, group, receipt, winner, gas, amount))
        self.book_gas([(sweep.id, gas) for sweep, _, _, _, gas, _ in outcomes if gas])
        now = self.signer.wall_ms()
        with self.signer.transaction():
            for ok in (True, False):
                part = [o for o in outcomes if (o[2].status == 1) == ok]
                if not part:
                    continue
                _update_rows(self.db, {"tx_hash": {o[0].id: o[2].tx_hash for o in part},
                                       "block_number": {o[0].id: o[2].block_number for o in part},
                                       "gas_paid": {o[0].id: str(o[4]) for o in part},
                                       "amount": {o[0].id: str(o[5]) for o in part}},
                             {"status": "confirmed" if ok else "failed", "updated_at": now, "needs_operator": not ok,
                              "operator_reason": None if ok else "the sweep transaction reverted on chain"},
                             "status IN ('topup', 'signed', 'broadcast')")
            TxAttempt.update(status="mined").where(TxAttempt.id.in_([o[3].id for o in outcomes])).execute()
            losers = [a.id for sweep, group, _, winner, _, _ in outcomes for a in group if a.id != winner.id]
            if losers:
                TxAttempt.update(status="replaced").where(TxAttempt.id.in_(losers)).execute()
        for sweep, _, receipt, _, gas, amount in outcomes:
            self.metrics.gas_booked_wei += gas
            if receipt.status == 1:
                self.metrics.confirmed += 1
            else:
                self.metrics.failed += 1
                log.critical("treasury move reverted on chain; operator needed",
                             extra={"sweep_id": sweep.id, "tx_hash": receipt.tx_hash})
        log.info("treasury moves final", extra={"count": len(outcomes), "gas_paid": str(sum(o[4] for o in outcomes))})

    def _unstick(self, session: NodeSession, sweep: Sweep, group: list[TxAttempt]) -> None:
        newest = group[-1]
        now = self.signer.wall_ms()
        if now - newest.created_at >= replace_wait_ms(self.signer.replace_after_ms, len(group)):
            self._replace(session, sweep, newest)
        elif newest.status == "broadcast" and session.call("eth_getTransactionByHash", [newest.tx_hash]) is None:
            log.warning("treasury transaction dropped by the node; sending it again",
                        extra={"sweep_id": sweep.id, "tx_hash": newest.tx_hash})
            self._send([TxAttempt.get_by_id(newest.id)])

    def _replace(self, session: NodeSession, sweep: Sweep, newest: TxAttempt) -> None:
        market = self.signer.fees.quote(SWEEP_SPEED)
        cap = self.signer.cap if newest.purpose == COLD else self.cap  # a cold move is on the withdrawals' lane
        bumped = replacement_fees(Fees(newest.max_fee_per_gas, newest.max_priority_fee_per_gas), market, cap)
        if bumped is None:
            self._flag(sweep.id, f"stuck: a replacement of {newest.tx_hash} needs more than the gas price cap")
            return
        payment, key = self._replacement(session, sweep, newest, bumped)
        if payment is None:
            return
        fees = bumped if newest.purpose == COLD else Fees(bumped.max_fee_per_gas, bumped.max_fee_per_gas)
        signed = sign(key, self.signer._chain_id(), newest.nonce, payment, newest.gas_limit, fees)
        now = self.signer.wall_ms()
        with self.signer.transaction():
            if Sweep.update(updated_at=now).where((Sweep.id == sweep.id) & (Sweep.status == sweep.status)).execute() != 1:
                return  # moved on meanwhile
            sql.insert_many(self.db, "tx_attempt", ATTEMPT_COLUMNS,
                            [_attempt_row(newest.purpose, sweep.id, newest.lane, signed, "replacement", now)])
        self.metrics.replacements += 1
        log.warning("replacing a stuck treasury transaction", extra={
            "sweep_id": sweep.id, "purpose": newest.purpose, "old_hash": newest.tx_hash, "new_hash": signed.tx_hash,
            "max_fee_per_gas": fees.max_fee_per_gas})
        self._send([TxAttempt.get(TxAttempt.tx_hash == signed.tx_hash)])

    def _replacement(self, session: NodeSession, sweep: Sweep, newest: TxAttempt, fees: Fees):  # noqa: ANN001
        """What the replacement pays and the key that signs it, or (None, None) when it is flagged instead."""
        if newest.purpose == TOPUP:
            return Payment(sweep.from_address, value=newest.value), self.gas_key()
        if newest.purpose == COLD:
            contract = self.signer.assets.get(sweep.asset).contract
            payment = (Payment(sweep.to_address, value=newest.value) if contract is None
                       else Payment(sweep.to_address, token=contract, token_amount=sweep.amount))
            return payment, self.signer.private_key()
        if sweep.kind == "eth":
            balance = int(session.call("eth_getBalance", [sweep.from_address, "latest"]), 16)
            value = balance - newest.gas_limit * fees.max_fee_per_gas
            if value <= 0:
                self._flag(sweep.id, "stuck: the address cannot pay a higher fee for its sweep")
                return None, None
            return Payment(sweep.to_address, value=value), self.deposit_key(sweep.from_address)
        self._flag(sweep.id, f"stuck: the token transfer {newest.tx_hash} needs more gas than its top-up brought; "
                             "an operator decides on a second top-up")
        return None, None

    def _flag(self, sweep_id: int, reason: str) -> None:
        with self.signer.transaction():  # fenced, as every write of the signer
            changed = (Sweep.update(needs_operator=True, operator_reason=reason[:255], updated_at=self.signer.wall_ms())
                       .where((Sweep.id == sweep_id) & (Sweep.needs_operator == False)).execute())  # noqa: E712
        if changed:
            self.metrics.flagged += 1
            log.critical("treasury move needs an operator", extra={"sweep_id": sweep_id, "reason": reason})


def _update_rows(db: peewee.Database, per_row: dict[str, dict[int, object]], same: dict[str, object],
                 condition: str) -> None:
    """One UPDATE of many sweep rows: per-row values by id (CASE), the same values for all, and a condition each
    row must still meet (a row that moved on meanwhile is left alone)."""
    p = db.param
    ids = sorted(next(iter(per_row.values())))
    sets, params = [], []
    for column, values in per_row.items():
        sets.append(f"{column} = CASE id {' '.join(f'WHEN {p} THEN {p}' for _ in ids)} END")
        for row_id in ids:
            params += [row_id, values[row_id]]
    for column, value in same.items():
        sets.append(f"{column} = {p}")
        params.append(value)
    db.execute_sql(f"UPDATE sweep SET {', '.join(sets)} WHERE {condition} AND id IN ({', '.join([p] * len(ids))})",
                   params + ids)


def _ensure_lane(signer: SignerLogic, session: NodeSession, address: str, now: int) -> None:
    """A lane starts at the node's pending nonce of the address; from then on the database is the truth."""
    if NonceLane.get_or_none(NonceLane.address == address) is None:
        start = int(session.call("eth_getTransactionCount", [address, "pending"]), 16)
        with signer.transaction():
            NonceLane.insert(address=address, next_nonce=start, updated_at=now).on_conflict_ignore().execute()


def _lock_lane(address: str, now: int) -> int:
    """The lane's next nonce, its row locked until the transaction ends."""
    NonceLane.update(updated_at=now).where(NonceLane.address == address).execute()
    return NonceLane.get(NonceLane.address == address).next_nonce


def _attempt_row(purpose: str, sweep_id: int, lane: str, signed: SignedTx, kind: str, now: int) -> tuple:
    return (purpose, sweep_id, lane, signed.nonce, signed.tx_hash, signed.raw, str(signed.fees.max_fee_per_gas),
            str(signed.fees.max_priority_fee_per_gas), signed.gas_limit, str(signed.value), kind, "signed", 0, now)
