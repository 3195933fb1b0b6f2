"""An actor whose on_start fails gives back what it opened (pykka runs neither on_stop nor on_failure then):
its pooled database connection, and BlockWatch's chain client and I/O threads."""

from __future__ import annotations

import threading

import pykka
import pytest

from actors.blockwatch import BlockWatch
from chain.embedded import EmbeddedChain
from core import messages as m
from core.money import AssetRegistry
from storage.db import connect_database, migrate
from tests.conftest import make_config


def test_blockwatch_refusing_another_chain_releases_its_connection_and_threads(mysql_url):
    db = connect_database(mysql_url)
    migrate(db)
    db.close()  # this thread's own connection back to the pool
    with EmbeddedChain(block_interval_s=0) as chain:
        config = make_config(mysql_url, rpc_urls=(chain.url,), chain_id=chain.chain_id + 1)
        threads_before = {t.ident for t in threading.enumerate()}
        ref = BlockWatch.start(config, router=None, assets=AssetRegistry.from_config(config))
        with pytest.raises(pykka.ActorDeadError):
            ref.ask(m.Ping(), timeout=30)  # on_start raised ChainIdMismatch
        ref.stop(block=False)
    assert db._in_use == {}, "the failed actor kept a pooled connection"  # peewee's pool: thread -> connection
    assert [t.name for t in threading.enumerate()
            if t.ident not in threads_before and t.name.startswith("blockwatch")] == []
    db.close_all()
