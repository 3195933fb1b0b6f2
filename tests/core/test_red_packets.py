"""Red packets on the shard ledgers, without threads (LedgerEnv): escrow in the creating transaction, claims in
arrival order decided by the sender's shard, cross-shard claimants credited through the outbox, expiry refunding
the rest once (also across a restart), replays answering the same, and the double-average split."""

from __future__ import annotations

import random
import statistics

import pytest

from app.audit import run_audit
from core import messages as m
from core.errors import (
    AlreadyClaimed, ClaimedOut, InsufficientFunds, InvalidRedPacket, OperationConflict, RedPacketExpired,
    UnknownRedPacket,
)
from ledger.redpackets import EXPIRED, next_share, packet_id_of, shard_of_code
from storage.models import Operation, RedPacket, RedPacketClaim
from tests.core.support import db_balances, row_counts, unique_op

HOUR_MS = 3_600_000


def escrow_of(env, shard: int) -> int:
    return env.shards[shard].system["escrow"]


def create(env, sender, total, shares, mode="random", expires_in_ms=HOUR_MS, op_id=None):
    cmd = m.CreateRedPacket(op_id=op_id or unique_op("p"), account_id=sender.account_id, asset="ETH", amount=total,
                            shares=shares, mode=mode, expires_in_ms=expires_in_ms)
    return env.one(sender.shard, cmd)


def claim(env, packet_shard: int, claimant, code: str, op_id=None):
    cmd = m.ClaimRedPacket(op_id=op_id or unique_op("c"), account_id=claimant.account_id,
                           claimant_shard=claimant.shard, code=code)
    outcome = env.run(packet_shard, cmd)
    env.deliver(outcome)
    return outcome.replies[0]


def users_on(env, shard: int, count: int):
    found = []
    while len(found) < count:
        user = env.open_account()
        if user.shard == shard:
            found.append(user)
    return found


def test_a_packet_escrows_its_total_and_claims_split_it_exactly(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 1_000)
    created = create(env, sender, 1_000, 10)
    assert created.status == "completed" and created.red_packet_id == packet_id_of(created.op_id)
    assert shard_of_code(created.code) == sender.shard and len(created.code) == 42
    assert db_balances([sender.account_id, escrow_of(env, sender.shard)]) == {
        sender.account_id: (0, 0), escrow_of(env, sender.shard): (1_000, 0)}
    claimants = [env.open_account() for _ in range(10)]  # both shards
    amounts = [claim(env, sender.shard, c, created.code).amount for c in claimants]
    assert sum(amounts) == 1_000 and min(amounts) >= 1
    assert all(db_balances([c.account_id])[c.account_id] == (a, 0) for c, a in zip(claimants, amounts))
    row = RedPacket.get_by_id(created.red_packet_id)
    assert (row.status, row.remaining, row.shares_left) == ("claimed_out", 0, 0)
    late = env.open_account()
    assert isinstance(claim(env, sender.shard, late, created.code), ClaimedOut)
    assert isinstance(claim(env, sender.shard, claimants[0], created.code), AlreadyClaimed)
    assert db_balances([escrow_of(env, sender.shard)])[escrow_of(env, sender.shard)] == (0, 0)
    report = run_audit()
    assert report.ok, report.violations


def test_equal_mode_gives_the_remainder_to_the_last_share(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 1_003)
    created = create(env, sender, 1_003, 4, mode="equal")
    amounts = [claim(env, sender.shard, env.open_account(), created.code).amount for _ in range(4)]
    assert amounts == [250, 250, 250, 253]


def test_a_cross_shard_claim_moves_escrow_to_transit_and_the_outbox_credits_the_claimant(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 50)
    created = create(env, sender, 50, 1)
    other = users_on(env, 1 - sender.shard, 1)[0]
    cmd = m.ClaimRedPacket(op_id=unique_op("c"), account_id=other.account_id, claimant_shard=other.shard,
                           code=created.code)
    outcome = env.run(sender.shard, cmd)
    reply = outcome.replies[0]
    assert (reply.status, reply.amount) == ("in_transit", 50)
    transit = env.shards[sender.shard].system["transit"]
    assert db_balances([transit])[transit] == (50, 0)
    assert run_audit().ok  # money in transit is owed by an undelivered outbox row
    assert env.deliver(outcome)[0].status == "completed"
    far_transit = env.shards[other.shard].system["transit"]  # transit accounts of the two shards net to zero
    assert db_balances([other.account_id, transit, far_transit]) == {
        other.account_id: (50, 0), transit: (50, 0), far_transit: (-50, 0)}
    report = run_audit()
    assert report.ok, report.violations


def test_claiming_ones_own_packet_is_allowed_once(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 10)
    created = create(env, sender, 10, 2, mode="equal")
    assert claim(env, sender.shard, sender, created.code).amount == 5
    assert isinstance(claim(env, sender.shard, sender, created.code), AlreadyClaimed)
    assert db_balances([sender.account_id])[sender.account_id] == (5, 0)


def test_a_replayed_claim_answers_the_same_amount_and_other_content_is_a_conflict(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 10**6)
    created = create(env, sender, 10**6, 5)
    claimant = env.open_account()
    first = claim(env, sender.shard, claimant, created.code, op_id="c-replay")
    env.reload(sender.shard)  # the replay comes from the database, not memory
    again = claim(env, sender.shard, claimant, created.code, op_id="c-replay")
    assert (again.amount, again.replayed, again.red_packet_id) == (first.amount, True, first.red_packet_id)
    other = env.open_account()
    assert isinstance(claim(env, sender.shard, other, created.code, op_id="c-replay"), OperationConflict)
    replay = create(env, sender, 10**6, 5, op_id=created.op_id)
    assert (replay.code, replay.red_packet_id, replay.replayed) == (created.code, created.red_packet_id, True)
    assert RedPacketClaim.select().count() == 1


def test_expiry_refunds_the_rest_once_also_after_a_restart(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 100)
    created = create(env, sender, 100, 4, mode="equal", expires_in_ms=60_000)
    claimant = env.open_account()
    claim(env, sender.shard, claimant, created.code)
    assert env.shards[sender.shard].expire_due() is None  # not yet
    env.wall_clock.advance(60_000)  # expiry is wall-clock time: it outlives restarts
    assert isinstance(claim(env, sender.shard, env.open_account(), created.code), RedPacketExpired)
    env.reload(sender.shard)  # a restart between expiry and refund: the open packet is loaded, then expired
    outcome = env.shards[sender.shard].expire_due()
    assert [r.amount for r in outcome.replies] == [75]
    assert env.shards[sender.shard].expire_due() is None
    env.reload(sender.shard)
    assert env.shards[sender.shard].expire_due() is None
    row = RedPacket.get_by_id(created.red_packet_id)
    assert (row.status, row.remaining, row.refunded) == (EXPIRED, 0, 75)
    assert db_balances([sender.account_id])[sender.account_id] == (75, 0)
    assert Operation.select().where(Operation.kind == "red_packet_refund").count() == 1
    assert isinstance(claim(env, sender.shard, env.open_account(), created.code), RedPacketExpired)
    report = run_audit()
    assert report.ok, report.violations


def test_a_claim_of_a_packet_memory_forgot_is_answered_from_the_database(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 2)
    created = create(env, sender, 2, 1)
    claimant = env.open_account()
    claim(env, sender.shard, claimant, created.code)
    ledger = env.shards[sender.shard]
    ledger.packets.clear()
    assert isinstance(claim(env, sender.shard, claimant, created.code), AlreadyClaimed)
    assert isinstance(claim(env, sender.shard, env.open_account(), created.code), ClaimedOut)
    assert isinstance(claim(env, sender.shard, claimant, "00" + "0" * 40), UnknownRedPacket)


@pytest.mark.parametrize("total, shares, mode, expires_in_ms", [
    (5, 6, "random", HOUR_MS), (5, 0, "random", HOUR_MS), (5, 10_001, "random", HOUR_MS),
    (5, 1, "lottery", HOUR_MS), (5, 1, "equal", 0), (5, 1, "equal", 86_400_001),
])
def test_impossible_packets_are_refused_and_change_nothing(ledger_env, total, shares, mode, expires_in_ms):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 100)
    before = row_counts()
    assert isinstance(create(env, sender, total, shares, mode, expires_in_ms), InvalidRedPacket)
    assert row_counts() == before and RedPacket.select().count() == 0


def test_a_packet_beyond_the_balance_is_refused_and_changes_nothing(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 99)
    before = row_counts()
    assert isinstance(create(env, sender, 100, 2), InsufficientFunds)
    assert row_counts() == before and RedPacket.select().count() == 0
    assert env.shards[sender.shard].packets.open == {}


def test_claims_in_one_batch_are_served_in_arrival_order(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 30)
    created = create(env, sender, 30, 3, mode="equal")
    claimants = users_on(env, sender.shard, 5)
    cmds = [m.ClaimRedPacket(op_id=unique_op("c"), account_id=c.account_id, claimant_shard=c.shard, code=created.code)
            for c in claimants]
    replies = env.run(sender.shard, *cmds).replies
    assert [r.amount for r in replies[:3]] == [10, 10, 10]
    assert all(isinstance(r, ClaimedOut) for r in replies[3:])
    report = run_audit()
    assert report.ok, report.violations


def test_the_double_average_split_keeps_every_share_in_bounds_and_its_mean_at_total_over_shares():
    rng = random.Random(12)
    total, shares, packets = 10_000, 10, 4_000
    by_position: list[list[int]] = [[] for _ in range(shares)]
    for _ in range(packets):
        remaining = total
        for k in range(shares):
            left = shares - k
            amount = next_share("random", total, shares, remaining, left, rng)
            assert 1 <= amount <= (remaining if left == 1 else 2 * remaining // left)
            assert remaining - amount >= left - 1
            by_position[k].append(amount)
            remaining -= amount
        assert remaining == 0
    expected = total / shares
    for k, amounts in enumerate(by_position):
        # Each position's mean is total/shares; its standard error over 4,000 packets is below 2% of it.
        assert abs(statistics.fmean(amounts) - expected) < 0.06 * expected, (k, statistics.fmean(amounts))
    assert max(by_position[0]) > 1.8 * expected and min(by_position[0]) < 0.2 * expected  # it really is random
    tight = [next_share("random", 3, 3, 3, 3, rng) for _ in range(100)]
    assert set(tight) == {1}  # total == shares: one unit each


def test_the_keyed_generator_is_uniform_and_keyed():
    from ledger.redpackets import KeyedRandom

    rng = KeyedRandom(b"k" * 32)
    draws = [rng.randint(1, 6) for _ in range(60_000)]
    counts = [draws.count(face) for face in range(1, 7)]
    assert min(counts) > 9_500 and max(counts) < 10_500 and set(draws) == set(range(1, 7))
    assert KeyedRandom(b"k" * 32).getrandbits(160) == KeyedRandom(b"k" * 32).getrandbits(160)
    assert KeyedRandom().getrandbits(160) != KeyedRandom().getrandbits(160)
    assert 0 <= KeyedRandom().random() < 1 and KeyedRandom().getrandbits(160) < 2**160
    with pytest.raises(NotImplementedError):
        rng.getstate()


def test_the_audit_sees_a_packet_whose_rows_disagree_with_the_ledger(ledger_env):
    env = ledger_env
    sender = env.open_account()
    env.fund(sender, 100)
    created = create(env, sender, 100, 4, mode="equal")
    claim(env, sender.shard, env.open_account(), created.code)
    assert run_audit().ok
    RedPacket.update(remaining=76).where(RedPacket.id == created.red_packet_id).execute()
    problems = run_audit().violations
    assert any("total 100 != claims 25 + refunded 0 + left 76" in p for p in problems), problems
    assert any("escrow account" in p and "have 76 left" in p for p in problems), problems
    RedPacket.update(remaining=75, status="claimed_out").where(RedPacket.id == created.red_packet_id).execute()
    assert any("claimed_out but 75 left" in p for p in run_audit().violations)
