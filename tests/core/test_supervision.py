"""Lifecycle and supervision: a shard that dies behind the system's back is restarted from the database
with its money intact; a shard that keeps dying makes the system give up loudly; a whole restart loads
every shard's state from the database."""

from __future__ import annotations

from core import messages as m
from app.audit import run_audit

from tests.core.support import unique_op
from tests.helpers import fund, register, wait_until


def restarted(system, shard: int, old_ref):
    """Wait until the supervisor has put a new, answering actor in place of `old_ref`."""
    def new_ref():
        ref = system.router.shard_ref(shard)
        return ref if ref is not old_ref and ref.is_alive() else None
    return wait_until(new_ref, what=f"shard {shard} restarted")


def with_bobs_shard_stopped(systems):
    """A system where alice holds 1000 and bob's shard has been stopped behind the system's back."""
    system = systems()
    alice, bob = register(system, "alice"), register(system, "bob")
    fund(system, alice.account_id, 1000)
    bob_shard = system.router.shard_ref(bob.shard)
    bob_shard.stop()
    return system, alice, bob, bob_shard


def test_a_stopped_shard_is_restarted_from_the_database(systems):
    system = systems()
    alice, bob, _, _, erin = (register(system, n) for n in ("alice", "bob", "carol", "dave", "erin"))
    fund(system, alice.account_id, 1000)
    system.router.transfer(unique_op("t"), alice.account_id, erin.account_id, "ETH", 100)
    old = system.router.shard_ref(alice.shard)
    old.stop()  # behind the system's back
    new = restarted(system, alice.shard, old)
    assert new.ask(m.Ping()) == m.Pong(f"shard-{alice.shard}")
    assert system.router.balances(alice.account_id)["ETH"] == (900, 0)
    assert system.router.balances(erin.account_id)["ETH"] == (100, 0)
    assert system.router.transfer(unique_op("t"), alice.account_id, bob.account_id, "ETH", 50).status == "in_transit"
    wait_until(lambda: system.router.balances(bob.account_id)["ETH"] == (50, 0), what="credit after restart")
    assert system.failed is None


def test_a_transfer_towards_a_dead_shard_is_kept_and_delivered_after_its_restart(systems):
    system, alice, bob, target = with_bobs_shard_stopped(systems)
    # The source commits and answers even though the target is down; the outbox delivers later.
    result = system.router.transfer(unique_op("x"), alice.account_id, bob.account_id, "ETH", 300)
    assert result.status == "in_transit" and not result.replayed
    restarted(system, bob.shard, target)
    wait_until(lambda: system.router.balances(bob.account_id)["ETH"] == (300, 0), what="credit redelivered")
    assert system.router.balances(alice.account_id)["ETH"] == (700, 0)


def test_a_shard_that_keeps_dying_makes_the_system_fail(systems):
    system = systems()
    reasons: list[str] = []
    system.on_fatal = reasons.append
    for _ in range(10):
        if system.failed:
            break
        ref = system.router.shard_ref(1)
        ref.stop()
        wait_until(lambda: system.failed or system.router.shard_ref(1) is not ref, what="restart or failure")
    assert system.failed and reasons == [system.failed]
    assert "shard-1 died" in system.failed


def test_a_whole_restart_loads_balances_and_redelivers_the_outbox(systems):
    system, alice, bob, _ = with_bobs_shard_stopped(systems)
    system.router.transfer(unique_op("x"), alice.account_id, bob.account_id, "ETH", 400)
    system.stop()  # the credit is still owed: its outbox row is undelivered
    system = systems(pool=0)
    # At once, not after a redelivery timeout: start() has told every shard to replay its outbox once all
    # are routable. A ping to each shard, twice, orders us after the replay and after the credits it sent.
    for _ in range(2):
        for shard in range(system.config.shards):
            assert system.router.ask_shard(shard, m.Ping()) == m.Pong(f"shard-{shard}")
    assert system.router.balances(bob.account_id)["ETH"] == (400, 0)
    assert system.router.balances(alice.account_id)["ETH"] == (600, 0)
    system.stop()
    report = run_audit()
    assert report.ok, report.violations
