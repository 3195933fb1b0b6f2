"""The actor base class: one dispatch table, typed errors for unknown asks, told failures that never stop the
actor, and the batching mailbox a shard's group commit is built on. Real pykka actors, no mocks."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import threading

import pykka
import pytest

from actors import base
from actors.base import Actor
from core.errors import InsufficientFunds, UnknownMessage


@dataclasses.dataclass(frozen=True)
class Add:
    value: int


@dataclasses.dataclass(frozen=True)
class Boom:
    pass


@dataclasses.dataclass(frozen=True)
class Total:
    pass


@dataclasses.dataclass(frozen=True)
class Unknown:
    pass


@dataclasses.dataclass(frozen=True)
class Hold:
    """Keeps the actor busy until the test opens the gate, so what is sent meanwhile waits in the mailbox."""


@dataclasses.dataclass(frozen=True)
class Note:
    text: str


class Adder(Actor):
    """Adds in batches; refuses a negative addend per message (a WalletError, as a shard refuses)."""

    batched = (Add,)
    batch_max = 100

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.total = 0
        self.batches: list[list[int]] = []
        self.notes: list[str] = []
        self.gate = gate

    def handlers(self):
        return {Boom: self._boom, Total: lambda msg: self.total, Note: self._note,
                Hold: lambda msg: self.gate.wait(10)}

    def handle_batch(self, messages, asked):
        self.batches.append([msg.value for msg in messages])
        replies = []
        for msg in messages:
            if msg.value < 0:
                replies.append(InsufficientFunds("negative"))
            else:
                self.total += msg.value
                replies.append(self.total)
        return replies

    def absorbed_while_draining(self, message, asked):
        if isinstance(message, Note) and not asked:
            self.notes.append(message.text)
            return True
        return False

    def _boom(self, message):
        raise RuntimeError("handler bug")

    def _note(self, message):
        self.notes.append(message.text)


def test_the_base_class_is_written_for_the_pinned_pykka():
    assert importlib.metadata.version("pykka") == base.PYKKA_VERSION, "review actors/base.py for the new pykka"


def test_an_unknown_asked_message_is_a_typed_error_and_the_actor_lives():
    ref = Adder.start()
    try:
        with pytest.raises(UnknownMessage, match="Adder has no handler for Unknown"):
            ref.ask(Unknown(), timeout=5)
        assert ref.ask(Total(), timeout=5) == 0
    finally:
        ref.stop()


def test_a_told_failure_is_logged_and_never_stops_the_actor(caplog):
    ref = Adder.start()
    try:
        with caplog.at_level(logging.ERROR, logger="actors.base"):
            ref.tell(Boom())
            ref.tell(Unknown())
            ref.tell(Add(-1))  # a refusal of a told batch item: one line with its code
            assert ref.ask(Total(), timeout=5) == 0  # answered in order, after the three
        assert ref.is_alive()
        messages = [(r.getMessage(), getattr(r, "message_type", None)) for r in caplog.records]
        assert ("told message failed", "Boom") in messages
        assert ("told message refused", "Unknown") in messages  # UnknownMessage is a WalletError: its code
        refused = [r for r in caplog.records if r.getMessage() == "told message refused"]
        assert [(r.message_type, r.code) for r in refused] == [("Unknown", "unknown_message"),
                                                              ("Add", "insufficient_funds")]
        assert all(r.exc_info is None for r in refused)  # a refusal is one line, never a traceback
    finally:
        ref.stop()


def test_an_asked_failure_goes_to_the_asker():
    ref = Adder.start()
    try:
        with pytest.raises(RuntimeError, match="handler bug"):
            ref.ask(Boom(), timeout=5)
        with pytest.raises(InsufficientFunds):
            ref.ask(Add(-5), timeout=5)
        assert ref.ask(Add(3), timeout=5) == 3
    finally:
        ref.stop()


def test_waiting_messages_become_one_batch_and_a_query_waits_for_it():
    gate = threading.Event()
    ref = Adder.start(gate)
    try:
        ref.tell(Hold())
        first = ref.ask(Add(1), block=False)
        rest = [ref.ask(Add(n), block=False) for n in range(2, 6)]
        ref.tell(Note("absorbed"))  # told and harmless: handled during the drain, the batch goes on
        more = [ref.ask(Add(n), block=False) for n in range(6, 8)]
        total = ref.ask(Total(), block=False)  # ends the drain; answered after the batch
        late = ref.ask(Add(100), block=False)
        gate.set()
        assert first.get(timeout=5) == 1
        assert [f.get(timeout=5) for f in rest + more] == [3, 6, 10, 15, 21, 28]
        assert total.get(timeout=5) == 28
        assert late.get(timeout=5) == 128
        assert ref.proxy().batches.get(timeout=5) == [[1, 2, 3, 4, 5, 6, 7], [100]]
        assert ref.proxy().notes.get(timeout=5) == ["absorbed"]
    finally:
        ref.stop()


def test_a_batch_is_bounded_by_batch_max():
    gate = threading.Event()
    ref = Adder.start(gate)
    try:
        ref.proxy().batch_max = 3  # ProxySetAttr takes pykka's own path
        ref.tell(Hold())
        futures = [ref.ask(Add(1), block=False) for _ in range(8)]
        gate.set()
        assert [f.get(timeout=5) for f in futures] == list(range(1, 9))
        assert [len(b) for b in ref.proxy().batches.get(timeout=5)] == [3, 3, 2]
    finally:
        ref.stop()


def test_stop_is_answered_in_order_and_later_asks_fail():
    ref = Adder.start()
    answer = ref.ask(Add(2), block=False)
    ref.stop()
    assert answer.get(timeout=5) == 2
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(Total(), timeout=5)


def test_a_tick_timer_tells_once_after_its_delay_is_cancelled_on_stop_and_drops_a_tell_to_a_stopped_actor():
    seen = []
    arrived = threading.Event()

    class Ticked(pykka.ThreadingActor):
        def on_receive(self, message):
            seen.append(message)
            arrived.set()

    ref = Ticked.start()
    timer = base.TickTimer(ref, "tick")
    timer.after(0.01)
    assert arrived.wait(10) and seen == ["tick"]
    timer.tell_now("news")
    ref.ask("sync", timeout=10)  # the mailbox is in order: "news" came before it
    assert seen[:2] == ["tick", "news"]
    late = base.TickTimer(ref, "late")
    late.after(3600)
    late.cancel()  # what on_stop does: no thread left waiting to tell
    ref.stop()
    timer.tell_now()  # to a stopped actor: dropped, no error
    assert "late" not in seen
