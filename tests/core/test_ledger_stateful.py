"""Hypothesis stateful test: random batches of credits, same- and cross-shard transfers, withdrawal requests
and cancels, replays and conflicting replays against two ShardLedgers on a real database, plus withdrawal
settlements (confirmed or reverted), credit deliveries, redeliveries and restarts; after every step memory and
database match a simple model and the audit passes."""

from __future__ import annotations

import dataclasses
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from core import messages as m
from app.audit import run_audit
from core.errors import InsufficientFunds, OperationConflict, SelfTransfer, WalletError

from tests.core.support import EXTERNAL_ADDRESS, LedgerEnv, db_balances, unique_op

SHARDS = 2
USERS = 4
ASSET_SYMBOLS = ("ETH", "TOK")
EXAMPLES = 30
STEPS = 40
AUDIT_EVERY = 4
OPENING_BALANCE = 1000

command_spec = st.tuples(
    st.sampled_from(["credit", "transfer", "transfer", "withdraw", "cancel", "replay", "conflict"]),
    st.integers(0, USERS - 1),  # sender (an index among the shard's users)
    st.integers(0, USERS - 1),  # recipient (an index among all users)
    st.integers(1, 400),  # amount
    st.integers(0, 30),  # fee
    st.sampled_from(ASSET_SYMBOLS),
    st.integers(0, 10**6),  # which earlier operation to replay
)


class Model:
    """What the ledger should hold: user balances, and the first result of every applied operation."""

    def __init__(self, balances: dict[tuple[int, str], tuple[int, int]]) -> None:
        self.balances = {key: list(pair) for key, pair in balances.items()}
        self.applied: dict[str, tuple[m.MoneyCommand, m.OpResult]] = {}
        self.reviewing: dict[int, m.RequestWithdrawal] = {}  # withdrawal id -> its request

    def expect(self, cmd: m.MoneyCommand, is_cross_shard: bool) -> m.OpResult | type[WalletError]:
        """Apply `cmd` to the model and return the reply the ledger must give (a new withdrawal's id is
        unknown: its reply is compared without `ref`, then `took` records it)."""
        if cmd.op_id in self.applied:
            first, result = self.applied[cmd.op_id]
            return dataclasses.replace(result, replayed=True) if first == cmd else OperationConflict
        if isinstance(cmd, m.Transfer) and cmd.to_account == cmd.account_id:
            return SelfTransfer
        deltas = self.cancel_deltas(cmd) if isinstance(cmd, m.CancelWithdrawal) else self._deltas(cmd, is_cross_shard)
        after = {key: [self.balances[key][0] + d[0], self.balances[key][1] + d[1]] for key, d in deltas.items()}
        if any(min(pair) < 0 for pair in after.values()):
            return InsufficientFunds
        self.balances.update(after)
        if isinstance(cmd, m.RequestWithdrawal):
            result = m.OpResult(cmd.op_id, "reviewing")
        elif isinstance(cmd, m.CancelWithdrawal):
            self.reviewing.pop(cmd.withdrawal_id)
            result = m.OpResult(cmd.op_id, "cancelled", ref=cmd.withdrawal_id)
        else:
            result = m.OpResult(cmd.op_id, "in_transit" if is_cross_shard else "completed")
        self.applied[cmd.op_id] = (cmd, result)
        return result

    def took(self, cmd: m.MoneyCommand, got: m.OpResult) -> None:
        """The ledger's reply to a new withdrawal request, with the id its row got."""
        self.applied[cmd.op_id] = (cmd, got)
        self.reviewing[got.ref] = cmd

    def settled(self, withdrawal_id: int, succeeded: bool) -> None:
        request = self.reviewing.pop(withdrawal_id)
        pair = self.balances[(request.account_id, request.asset)]
        pair[1] -= request.amount + request.fee
        if not succeeded:
            pair[0] += request.amount + request.fee

    @staticmethod
    def _deltas(cmd: m.MoneyCommand, is_cross_shard: bool) -> dict[tuple[int, str], tuple[int, int]]:
        key = (cmd.account_id, cmd.asset)
        if isinstance(cmd, (m.Credit, m.CrossShardCredit)):
            return {key: (cmd.amount, 0)}
        if isinstance(cmd, m.Transfer):
            if is_cross_shard:
                return {key: (-cmd.amount, 0)}  # the recipient gets it when the credit is delivered
            return {key: (-cmd.amount, 0), (cmd.to_account, cmd.asset): (cmd.amount, 0)}
        if isinstance(cmd, m.RequestWithdrawal):
            return {key: (-(cmd.amount + cmd.fee), cmd.amount + cmd.fee)}
        raise AssertionError(f"unexpected command {cmd}")

    def cancel_deltas(self, cmd: m.CancelWithdrawal) -> dict[tuple[int, str], tuple[int, int]]:
        request = self.reviewing[cmd.withdrawal_id]
        total = request.amount + request.fee
        return {(request.account_id, request.asset): (total, -total)}


def make_machine(env: LedgerEnv, users: list[m.Registered]) -> type[RuleBasedStateMachine]:
    """Each example starts from what the previous ones left (reloaded from the database), with the same
    users, so shrinking may run any number of examples without opening accounts."""

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            for shard in range(SHARDS):
                env.reload(shard)
            self.prefix = uuid.uuid4().hex[:8]
            self.counter = 0
            self.users = users
            self.by_shard = {s: [u for u in users if u.shard == s] for s in range(SHARDS)}
            for user in users:
                for asset in ASSET_SYMBOLS:
                    self.open_with(user, asset)
            self.model = Model({(u.account_id, a): env.shards[u.shard].book.balance(u.account_id, a)
                                for u in users for a in ASSET_SYMBOLS})
            self.pending: list[tuple[int, m.CrossShardCredit]] = []  # credits owed, not yet delivered
            self.delivered: list[tuple[int, m.CrossShardCredit]] = []
            self.steps = 0

        def open_with(self, user: m.Registered, asset: str) -> None:
            """Every example starts from the same balances (OPENING_BALANCE available, nothing frozen), whatever
            the ones before left: Hypothesis replays and shrinks examples, and each must draw the same rules (a
            withdrawal refused for funds in one run and taken in the next would change what `settle` may do)."""
            available, frozen = env.shards[user.shard].book.balance(user.account_id, asset)
            assert frozen == 0, (user, asset, frozen)  # teardown cancelled what was reviewing
            if available < OPENING_BALANCE:
                env.fund(user, OPENING_BALANCE - available, asset)
            elif available > OPENING_BALANCE:
                reply = env.one(user.shard, m.Debit(unique_op("level"), user.account_id, asset,
                                                    available - OPENING_BALANCE))
                assert isinstance(reply, m.OpResult), reply

        def new_op(self, kind: str) -> str:
            self.counter += 1
            return f"{self.prefix}-{kind}-{self.counter}"

        def build(self, shard: int, spec: tuple) -> m.MoneyCommand:
            kind, sender, recipient, amount, fee, asset, pick = spec
            sender_id = self.by_shard[shard][sender % len(self.by_shard[shard])].account_id
            mine = {u.account_id for u in self.by_shard[shard]}
            earlier = [cmd for cmd, _ in self.model.applied.values() if cmd.account_id in mine
                       and hasattr(cmd, "amount")]
            if kind in ("replay", "conflict") and earlier:
                cmd = earlier[pick % len(earlier)]
                return cmd if kind == "replay" else dataclasses.replace(cmd, amount=cmd.amount + 1)
            if kind == "transfer":
                to = self.users[recipient]
                return m.Transfer(self.new_op("t"), sender_id, to.account_id, to.shard, asset, amount)
            if kind == "withdraw":
                return m.RequestWithdrawal(self.new_op("w"), sender_id, asset, EXTERNAL_ADDRESS, amount, fee,
                                           "standard")
            open_here = [(wid, r) for wid, r in self.model.reviewing.items() if r.account_id in mine]
            if kind == "cancel" and open_here:
                wid, request = open_here[pick % len(open_here)]
                return m.CancelWithdrawal(self.new_op("x"), request.account_id, wid)
            return m.Credit(self.new_op("c"), sender_id, asset, amount)

        @rule(shard=st.integers(0, SHARDS - 1), specs=st.lists(command_spec, min_size=1, max_size=4))
        def run_batch(self, shard, specs):
            commands, expected = [], []
            for spec in specs:  # one at a time, so a replay may pick an operation earlier in this batch
                cmd = self.build(shard, spec)
                commands.append(cmd)
                expected.append(self.model.expect(cmd, isinstance(cmd, m.Transfer) and cmd.to_shard != shard))
            outcome = env.run(shard, *commands)
            for cmd, want, got in zip(commands, expected, outcome.replies):
                if isinstance(want, type):
                    assert isinstance(got, want), (cmd, got)
                elif isinstance(cmd, m.RequestWithdrawal) and not want.replayed:
                    assert dataclasses.replace(got, ref=None) == want and got.ref is not None, (cmd, got)
                    self.model.took(cmd, got)
                elif isinstance(cmd, m.RequestWithdrawal) and want.ref is None:  # replayed in its own batch
                    assert dataclasses.replace(got, ref=None) == want and got.ref is not None, (cmd, got)
                else:
                    assert got == want, (cmd, got)
            new_credits = {r.op_id for r in expected if isinstance(r, m.OpResult) and r.status == "in_transit"
                           and not r.replayed}
            assert {c.source_op_id for _, c in outcome.credits_to_send} == new_credits
            self.pending.extend(outcome.credits_to_send)

        @precondition(lambda self: self.pending)
        @rule(pick=st.integers(0, 10**6))
        def deliver(self, pick):
            target, credit = self.pending.pop(pick % len(self.pending))
            assert env.one(target, credit) == m.OpResult(credit.op_id, "completed")
            self.model.balances[(credit.account_id, credit.asset)][0] += credit.amount
            self.delivered.append((target, credit))

        @precondition(lambda self: self.model.reviewing)
        @rule(pick=st.integers(0, 10**6), succeeded=st.booleans())
        def settle(self, pick, succeeded):
            """A reviewer approves, the signer sends it, BlockWatch reports it final: mined or reverted."""
            wid, request = sorted(self.model.reviewing.items())[pick % len(self.model.reviewing)]
            owner = next(u for u in self.users if u.account_id == request.account_id)
            approved = env.one(owner.shard, m.ApproveWithdrawal(self.new_op("a"), owner.account_id, wid, 1, "rev"))
            assert (approved.status, approved.ref) == ("approved", wid)
            tx_hash = env.act_as_signer(wid, "0x" + self.new_op("h").encode().hex()[:64].ljust(64, "0"))
            settled = env.one(owner.shard, m.SettleWithdrawal(self.new_op("s"), owner.account_id, wid, tx_hash,
                                                              int(succeeded), 21_000, 7))
            assert (settled.status, settled.ref) == ("confirmed" if succeeded else "failed", wid)
            self.model.settled(wid, succeeded)

        @precondition(lambda self: self.delivered)
        @rule(pick=st.integers(0, 10**6))
        def redeliver(self, pick):
            target, credit = self.delivered[pick % len(self.delivered)]
            assert env.one(target, credit) == m.OpResult(credit.op_id, "completed", replayed=True)

        @rule(shard=st.integers(0, SHARDS - 1))
        def restart(self, shard):
            """A crash: memory is rebuilt from the database, including the undelivered outbox."""
            old = env.shards[shard]
            new = env.reload(shard)
            assert new.book.balances == old.book.balances
            assert set(new.outbox.unacked) == set(old.outbox.unacked) | set(old.outbox.marks_unwritten)

        @invariant()
        def memory_and_database_match_the_model(self):
            self.steps += 1
            for asset in ASSET_SYMBOLS:
                stored = db_balances([u.account_id for u in self.users], asset)
                for user in self.users:
                    want = tuple(self.model.balances[(user.account_id, asset)])
                    assert min(want) >= 0
                    assert env.shards[user.shard].book.balance(user.account_id, asset) == want
                    assert stored[user.account_id] == want
            if self.steps % AUDIT_EVERY == 0:
                report = run_audit()
                assert report.ok, report.violations

        def teardown(self):
            while self.pending:
                self.deliver(0)
            for wid, request in sorted(self.model.reviewing.items()):  # the next example starts unfrozen
                owner = next(u for u in self.users if u.account_id == request.account_id)
                cancelled = env.one(owner.shard, m.CancelWithdrawal(self.new_op("x"), owner.account_id, wid))
                assert (cancelled.status, cancelled.ref) == ("cancelled", wid), cancelled
            report = run_audit()
            assert report.ok, report.violations

    return LedgerMachine


def test_ledger_matches_a_model_under_random_commands(any_db_url):
    env = LedgerEnv.create(any_db_url, shard_count=SHARDS, pool=USERS)
    users = [env.open_account() for _ in range(USERS)]
    assert {u.shard for u in users} == set(range(SHARDS))  # fewest-accounts placement spreads them
    try:
        run_state_machine_as_test(make_machine(env, users), settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        env.close()
