"""One actor system per database: a second one on the same database must refuse to start, because two
writers of a shard's balances would spend the same money twice."""

import subprocess
import sys

import pytest

from storage.locks import SystemAlreadyRunning, SystemLock
from tests.conftest import make_config
from tests.helpers import fund, register, start_system, wait_until
from app.system import ActorSystem


def test_a_second_system_on_the_same_database_refuses_to_start(any_db_url):
    first = start_system(make_config(any_db_url, shards=1))
    try:
        alice = register(first, "alice")
        fund(first, alice.account_id, 100)
        second = ActorSystem(make_config(any_db_url, shards=1))
        with pytest.raises(SystemAlreadyRunning):
            second.start()
        assert first.router.balances(alice.account_id)["ETH"] == (100, 0)
    finally:
        first.stop()
    again = ActorSystem(make_config(any_db_url, shards=1)).start()  # released by a clean stop
    try:
        assert again.router.balances(alice.account_id)["ETH"] == (100, 0)
    finally:
        again.stop()


HOLDER = """
import sys
from storage.locks import SystemLock
lock = SystemLock(sys.argv[1]).acquire()  # keep a reference: the lock lives as long as it
print("held", flush=True)
sys.stdin.read()
"""


def test_a_process_killed_with_sigkill_leaves_no_stale_lock(any_db_url):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, any_db_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemAlreadyRunning):
            SystemLock(any_db_url).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # The server notices the closed connection almost at once; allow for a slow machine.
    lock = wait_until(lambda: SystemLock(any_db_url).acquire(), timeout_s=10, interval_s=0.05,
                      what="the lock of a killed process released", ignore=(SystemAlreadyRunning,))
    assert lock.check()
    lock.release()
