"""The fences of the singletons (storage/fence.py) on MariaDB and a real anvil node: a signer, an allocator or a
BlockWatch whose epoch another process has taken since (it was paused past the loss of its lock) commits
nothing — no nonce, no attempt, no account, no block or deposit — and tells the actor system it is fenced out;
the current owner goes on."""

from __future__ import annotations

import threading

import pykka
import pytest

from actors.allocator import Allocator
from actors.blockwatch import BlockWatch
from actors.signer import Signer
from core import messages as m
from devnet.anvil import DEV_KEYS, Anvil, send_eth
from storage import stafflog
from storage.db import database_proxy
from storage.fence import Fence, FenceLost
from storage.models import Account, ChainBlock, Deposit, NonceLane, PoolKey, TxAttempt
from tests.helpers import wait_until
from tests.withdrawals.support import ETH, N, open_bank
from treasury import switches

SYSTEM = stafflog.SERVICE


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


def _approved_but_unsigned(bank, user) -> int:
    """An approved withdrawal the bank's own signer (no fence: role all) has not signed: signing is paused
    while a reviewer approves, the bank's signer has seen the approval (an ask is answered after it), and only
    then is signing resumed; nothing wakes the bank's signer after that (its timer is an hour away)."""
    db = database_proxy.obj
    switches.set_switch(db, switches.SIGNING_PAUSED, True, SYSTEM)
    withdrawal_id = bank.requested(user, ETH // 10)["id"]
    assert bank.approve(withdrawal_id).status_code == 200
    wait_until(lambda: bank.status(withdrawal_id) == "approved", timeout_s=30, what="approved")
    assert bank.sign().paused
    switches.set_switch(db, switches.SIGNING_PAUSED, False, SYSTEM)
    return int(withdrawal_id)


def _start_signer(bank, fence: Fence, on_fenced) -> pykka.ActorRef:  # noqa: ANN001 - a callback
    system = bank.wallet.system
    return Signer.start(system.config, system.router, system.assets, system.config.key_ring(), None, fence, on_fenced)


def test_a_paused_signer_whose_fence_was_taken_signs_nothing(node, mysql_url):
    bank = open_bank(node, mysql_url, None)
    refs = []
    try:
        alice = bank.funded_user("alice", eth=ETH)
        bank.fund_hot_wallet(eth=2 * ETH)
        withdrawal_id = _approved_but_unsigned(bank, alice)
        db = database_proxy.obj
        paused = Fence.take(db, "signer", "host-a")  # host-a owned the signer, then was paused...
        current = Fence.take(db, "signer", "host-b")  # ...and host-b took its lock and the next epoch

        fenced_out = threading.Event()
        refs.append(_start_signer(bank, paused, fenced_out.set))  # host-a resumes: its first tick signs
        wait_until(fenced_out.is_set, timeout_s=30, what="the paused signer fenced out")
        assert bank.status(withdrawal_id) == "approved"
        assert TxAttempt.select().count() == 0
        lane = NonceLane.get_or_none(NonceLane.address == bank.hot)
        assert lane is None or lane.next_nonce == 0  # no nonce was taken

        never = threading.Event()
        refs.append(_start_signer(bank, current, never.set))
        wait_until(lambda: bank.status(withdrawal_id) in ("signed", "broadcast"), timeout_s=30,
                   what="the current owner signed")
        (attempt,) = TxAttempt.select()
        assert (attempt.ref_id, attempt.nonce) == (withdrawal_id, 0)
        assert NonceLane.get(NonceLane.address == bank.hot).next_nonce == 1
        assert not never.is_set() and not current.lost
        (epoch, batches), = db.execute_sql("SELECT epoch, batches FROM shard_owner WHERE name = 'signer'")
        assert epoch == current.epoch and batches >= 1  # the owner's signing transaction went through its fence
    finally:
        for ref in refs:
            ref.stop()
        bank.stop()


def test_a_paused_allocator_whose_fence_was_taken_registers_nobody(node, mysql_url):
    bank = open_bank(node, mysql_url, None)
    refs = []
    try:
        db = database_proxy.obj
        paused = Fence.take(db, "allocator", "host-a")
        current = Fence.take(db, "allocator", "host-b")
        system = bank.wallet.system
        fenced_out = threading.Event()
        ring = system.config.key_ring()
        stale = Allocator.start(system.router, system.directory, system.config.shards, 1, ring, paused,
                                fenced_out.set)
        refs.append(stale)
        before, keys_before = Account.select().count(), PoolKey.select().count()
        with pytest.raises(FenceLost):
            stale.ask(m.RefillPool(3))  # no pool key either: the refill's transactions check the fence
        assert fenced_out.is_set()
        with pytest.raises(FenceLost):
            stale.ask(m.Register("mallory", "x", "y"))
        assert Account.select().count() == before and PoolKey.select().count() == keys_before
        assert Account.get_or_none(Account.username == "mallory") is None

        owner = Allocator.start(system.router, system.directory, system.config.shards, 1, ring, current, None)
        refs.append(owner)
        registered = owner.ask(m.Register("mallory", "x", "y"))
        assert Account.get_by_id(registered.account_id).username == "mallory"
        owner.ask(m.RefillPool(3))
        assert PoolKey.select().count() == keys_before + 3
    finally:
        for ref in refs:
            ref.stop()
        bank.stop()


def test_a_paused_blockwatch_whose_fence_was_taken_records_nothing(node, mysql_url):
    bank = open_bank(node, mysql_url, None)
    refs = []
    try:
        _, address = bank.wallet.user("alice")
        bank.wallet.scan_clean()  # the bank's own BlockWatch (no fence) is caught up; its timer is an hour away
        send_eth(node.url, DEV_KEYS[0], address, ETH)
        node.mine(N)
        before = (ChainBlock.select().count(), Deposit.select().count())
        db = database_proxy.obj
        paused = Fence.take(db, "blockwatch", "host-a")
        current = Fence.take(db, "blockwatch", "host-b")
        system = bank.wallet.system
        fenced_out = threading.Event()
        refs.append(BlockWatch.start(system.config, system.router, system.assets, paused, fenced_out.set))
        wait_until(fenced_out.is_set, timeout_s=30, what="the paused BlockWatch fenced out")  # its first tick
        assert (ChainBlock.select().count(), Deposit.select().count()) == before

        owner = BlockWatch.start(system.config, system.router, system.assets, current, None)
        refs.append(owner)
        wait_until(lambda: Deposit.select().count() == before[1] + 1, timeout_s=30,
                   what="the current owner recorded the deposit")
        assert ChainBlock.select().count() > before[0]
    finally:
        for ref in refs:
            ref.stop()
        bank.stop()
