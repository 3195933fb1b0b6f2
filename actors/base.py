"""The one base class of every actor: a dispatch table, told failures that never stop the actor, and an
optional batching mailbox (a shard's group commit).

Pykka hands every message to `on_receive` and cannot tell it whether the sender waits (ask) or not (tell).
Both matter here: an unknown message asked for is an error to the asker (never pykka's silent `None`),
while a told message that fails is logged with context and the actor goes on (pykka would stop it). And a
shard drains what waits in its mailbox into one batch. So this class runs the mailbox loop itself. That
uses pykka internals (the loop method, the inbox of envelopes with `message` and `reply_to`, the stop
message), written against pykka PYKKA_VERSION; tests/actors/test_base.py pins that version, so an upgrade
is a deliberate review of this file.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable, Mapping, Sequence

import pykka
from pykka import messages as pykka_messages

from core.errors import UnknownMessage, WalletError
from storage.fence import FenceLost

log = logging.getLogger(__name__)

PYKKA_VERSION = "4.5.0"

Handler = Callable[[Any], Any]
# Messages pykka itself handles (stop, proxy calls): they take pykka's own path.
_PYKKA_MESSAGES = (pykka_messages._ActorStop, pykka_messages.ProxyCall,  # noqa: SLF001
                   pykka_messages.ProxyGetAttr, pykka_messages.ProxySetAttr)


class Actor(pykka.ThreadingActor):
    """Subclasses return their table from `handlers()`; a batching actor also names the message types it
    takes in batches (`batched`) and implements `handle_batch`."""

    batched: tuple[type, ...] = ()
    batch_max: int = 1
    # A fenced singleton (cluster mode): called once a transaction of it found its fence lost, i.e. another
    # process owns it now. The actor system then stops this process; nothing of that transaction committed.
    on_fenced: Callable[[], None] | None = None

    def handlers(self) -> Mapping[type, Handler]:
        raise NotImplementedError

    def handle_batch(self, messages: Sequence[Any], asked: Sequence[bool]) -> list[Any]:
        """One reply per message: a value, or a WalletError to answer (asked) or log (told)."""
        raise NotImplementedError

    def absorbed_while_draining(self, message: Any, asked: bool) -> bool:
        """A message met while draining a batch that may be handled on the spot instead of ending the drain
        (it must not depend on the batch's outcome). True if it was handled."""
        return False

    # -- the mailbox loop (pykka internals, see the module docstring) -------------------------------------
    def _actor_loop_running(self) -> None:
        table = dict(self.handlers())
        batched = frozenset(self.batched)
        inbox = self.actor_inbox
        while not self.actor_stopped.is_set():
            envelope = inbox.get()
            try:
                if type(envelope.message) in batched:
                    envelope = self._run_batch(envelope, batched)
                    if envelope is None:
                        continue
                self._deliver(envelope, table)
            except Exception:  # noqa: BLE001 - a fault of this loop itself must not kill the thread silently
                log.exception("actor loop fault; message dropped", extra={"actor": type(self).__name__})

    def _deliver(self, envelope: Any, table: dict[type, Handler]) -> None:
        message, reply_to = envelope.message, envelope.reply_to
        if isinstance(message, _PYKKA_MESSAGES):
            self._pykka_path(envelope)
            return
        handler = table.get(type(message))
        try:
            if handler is None:
                raise UnknownMessage(f"{type(self).__name__} has no handler for {type(message).__name__}")
            result = handler(message)
        except Exception as exc:  # noqa: BLE001 - the asker gets it; a told failure is logged, the actor lives
            if isinstance(exc, FenceLost):
                self._fenced_out(exc)
            if reply_to is not None:
                reply_to.set_exception(exc_info=sys.exc_info())
            else:
                self._log_told_failure(message, exc)
            return
        except BaseException:  # noqa: BLE001 - as pykka: stop everything (SystemExit, KeyboardInterrupt)
            self._stop()
            pykka.ActorRegistry.stop_all()
            raise
        if reply_to is not None:
            reply_to.set(result)

    def _run_batch(self, first: Any, batched: frozenset[type]) -> Any:
        """Drain waiting envelopes into one batch until it is full or a message of another kind is met
        (returned, to be delivered right after the batch, in order). The inbox has a single consumer (this
        thread), so `empty()` being false means `get()` will not block."""
        envelopes = [first]
        inbox = self.actor_inbox
        after = None
        while len(envelopes) < self.batch_max and not inbox.empty():
            envelope = inbox.get()
            if type(envelope.message) in batched:
                envelopes.append(envelope)
            elif not self.absorbed_while_draining(envelope.message, envelope.reply_to is not None):
                after = envelope
                break
        messages = [e.message for e in envelopes]
        try:
            replies = self.handle_batch(messages, [e.reply_to is not None for e in envelopes])
        except Exception:  # noqa: BLE001 - a bug in the batch: every asker hears of it, the actor lives
            log.exception("batch failed", extra={"actor": type(self).__name__, "size": len(envelopes)})
            for envelope in envelopes:
                if envelope.reply_to is not None:
                    envelope.reply_to.set_exception(exc_info=sys.exc_info())
            return after
        for envelope, reply in zip(envelopes, replies):
            self._answer(envelope, reply)
        return after

    def _answer(self, envelope: Any, reply: Any) -> None:
        reply_to = envelope.reply_to
        if isinstance(reply, WalletError):
            if reply_to is None:
                self._log_told_failure(envelope.message, reply)
            else:
                reply_to.set_exception(exc_info=(type(reply), reply, None))
        elif reply_to is not None:
            reply_to.set(reply)

    def _pykka_path(self, envelope: Any) -> None:
        try:
            result = self._handle_receive(envelope.message)
        except Exception:  # noqa: BLE001
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception(exc_info=sys.exc_info())
            else:
                log.exception("pykka message failed", extra={"actor": type(self).__name__})
            return
        if envelope.reply_to is not None:
            envelope.reply_to.set(result)

    def _fenced_out(self, error: FenceLost) -> None:
        log.critical("fenced out: another process owns this actor now; nothing of the transaction committed",
                     extra={"actor": type(self).__name__, "detail": error.detail})
        on_fenced, self.on_fenced = self.on_fenced, None
        if on_fenced is not None:
            on_fenced()

    def _log_told_failure(self, message: Any, error: Exception) -> None:
        details = {"actor": type(self).__name__, "message_type": type(message).__name__,
                   "op_id": getattr(message, "op_id", None)}
        if isinstance(error, WalletError):
            # One line with the stable code: a refusal is an answer, not a crash.
            log.error("told message refused", extra={**details, "code": error.code, "detail": error.detail})
        else:
            log.error("told message failed", extra=details, exc_info=(type(error), error, error.__traceback__))


class TickTimer:
    """An actor's one pending wake-up: tells it `message` after a delay from a daemon timer thread, so the
    actor waits for its next tick in its mailbox like for any message. Cancelled on stop; a tell to an actor
    that stopped meanwhile is dropped."""

    def __init__(self, actor_ref: pykka.ActorRef, message: Any) -> None:
        self._ref = actor_ref
        self._message = message
        self._timer: threading.Timer | None = None

    def after(self, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self.tell_now)
        timer.daemon = True
        timer.start()
        self._timer = timer

    def tell_now(self, message: Any = None) -> None:
        try:
            self._ref.tell(self._message if message is None else message)
        except pykka.ActorDeadError:
            pass  # stopped meanwhile

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
