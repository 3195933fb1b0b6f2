"""Every message has a handler and every money command a planner, pinned by tables (no isinstance chains), and
the stored fingerprint of a command can never drift."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json

from hypothesis import given, strategies as st

from actors.allocator import Allocator
from actors.blockwatch import BlockWatch
from actors.reconciler import ReconcilerActor
from actors.signer import Signer
from actors.notifier import Notifier
from actors.transrv_shard import TransrvShard
from core import messages as m
from core.config import Config
from core.money import AssetRegistry
from ledger.planning import Planner

ASSETS = AssetRegistry.from_config(Config())


def actor_instances():
    """Unstarted actors: their tables are built from bound methods, nothing runs."""
    return [TransrvShard(0, router=None, assets=ASSETS), Allocator(router=None, directory=None, shard_count=1),
            BlockWatch(Config(), router=None, assets=ASSETS), Notifier(Config()),
            Signer(Config(), router=None, assets=ASSETS, key_ring=None), ReconcilerActor(Config())]


def message_types() -> set[type]:
    return {obj for _, obj in inspect.getmembers(m, inspect.isclass)
            if obj.__module__ == m.__name__ and dataclasses.is_dataclass(obj)}


def money_commands() -> set[type]:
    return {t for t in message_types() if issubclass(t, m.MoneyCommand)}


def test_every_message_that_is_not_a_reply_has_a_handler():
    handled: set[type] = set()
    for actor in actor_instances():
        table = actor.handlers()
        assert not set(table) & set(actor.batched), f"{type(actor).__name__} lists a type twice"
        handled |= set(table) | set(actor.batched)
    expected = message_types() - set(m.REPLY_TYPES)
    assert expected - handled == set(), "messages nobody handles"
    assert handled - message_types() == set(), "handlers of types that are not messages"


def test_every_money_command_has_a_planner_and_is_batched_by_the_shard():
    assert set(Planner(ASSETS).table) == money_commands()
    assert set(TransrvShard.batched) == money_commands()


@st.composite
def commands(draw):
    cls = draw(st.sampled_from(sorted(money_commands(), key=lambda t: t.__name__)))
    values = {}
    for field in dataclasses.fields(cls):
        if field.type in ("int", int):
            values[field.name] = draw(st.integers(min_value=-(10**70), max_value=10**70))
        else:
            values[field.name] = draw(st.text(max_size=40))
    return cls(**values)


@given(commands())
def test_a_fingerprint_is_the_sha256_of_the_canonical_json(command):
    """The stored value: a replay compares it with what is in the operation table, so its exact form is pinned
    (the fast path builds the JSON by hand; this is the specification it must equal)."""
    skipped = {"op_id", *getattr(command, "server_fields", ())}
    fields = {f.name: getattr(command, f.name) for f in dataclasses.fields(command) if f.name not in skipped}
    canonical = json.dumps([type(command).__name__, fields], sort_keys=True, default=str)
    assert command.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_fingerprint_ignores_the_op_id_and_sees_every_other_field():
    a = m.Transfer("op-1", 1, 2, 0, "ETH", 5)
    assert a.fingerprint() == m.Transfer("op-2", 1, 2, 0, "ETH", 5).fingerprint()
    for changed in (dict(account_id=9), dict(to_account=9), dict(to_shard=1), dict(asset="TOK"), dict(amount=6)):
        assert dataclasses.replace(a, **changed).fingerprint() != a.fingerprint(), changed
    assert m.Credit("op", 1, "ETH", 5).fingerprint() != m.Debit("op", 1, "ETH", 5).fingerprint()
    request = m.RequestWithdrawal("w", 1, "ETH", "0x000000000000000000000000000000000000dEaD", 5, 7, "fast")
    assert dataclasses.replace(request, fee=9).fingerprint() == request.fingerprint()  # the service's own quote
    assert dataclasses.replace(request, speed="slow").fingerprint() != request.fingerprint()
