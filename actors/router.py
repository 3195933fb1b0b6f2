"""The seam between the front (or any caller) and the actors: account -> shard resolution and
ask-with-timeout. Messages are plain frozen dataclasses, so a shard may later live in another process
behind this same interface (a Redis transport instead of actor refs).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import pykka

from core import messages as m
from actors.directory import Directory
from actors.news import NewsBus
from actors.transport import HandedLock, StreamClient
from core.errors import Unavailable, UnknownAccount, WalletError


class Router:
    def __init__(self, directory: Directory, shard_count: int, ask_timeout_s: float = 5.0) -> None:
        self.directory = directory
        self.shard_count = shard_count
        self.ask_timeout_s = ask_timeout_s
        self._shards: list[pykka.ActorRef | None] = [None] * shard_count
        self._actors: dict[str, pykka.ActorRef] = {}
        self._lock = threading.Lock()
        self.news: NewsBus | None = None  # blockout_req/ctx/rsp (actors/news.py), set by the lifecycle
        # Cluster mode: callees not in this process are reached through their inbox streams. None (role
        # all): everything is local and nothing goes through Redis.
        self.remote: StreamClient | None = None

    # -- wiring (the lifecycle module sets refs, also after a restart) -----------------------------
    def set_shard(self, shard: int, ref: pykka.ActorRef) -> None:
        with self._lock:
            self._shards[shard] = ref

    def set_actor(self, name: str, ref: pykka.ActorRef) -> None:
        with self._lock:
            self._actors[name] = ref

    def actor(self, name: str) -> pykka.ActorRef | None:
        return self._actors.get(name)

    def shard_ref(self, shard: int) -> pykka.ActorRef:
        if not 0 <= shard < self.shard_count:
            raise UnknownAccount(f"shard {shard} does not exist")
        ref = self._shards[shard]
        if ref is None:
            raise Unavailable(f"shard {shard} is not running")
        return ref

    def is_local_shard(self, shard: int) -> bool:
        return 0 <= shard < self.shard_count and self._shards[shard] is not None

    # -- messaging ---------------------------------------------------------------------------------
    def ask_shard(self, shard: int, message: Any, timeout: float | None = None, lock: HandedLock | None = None) -> Any:
        """`lock`: a Redis lock the caller holds; a shard in another process releases it with an ok answer
        (actors/transport.py). A local shard leaves it to the caller."""
        if self.remote is not None and not self.is_local_shard(shard):
            self._check_shard(shard)
            timeout_s = self._timeout(timeout)
            if lock is not None and lock.answer_by is not None:  # no answer acted on after the lock lapsed
                timeout_s = max(0.0, min(timeout_s, lock.answer_by - time.monotonic()))
            return self.remote.ask(shard_target(shard), message, timeout_s, lock)
        return self._ask(self.shard_ref(shard), message, timeout)

    def tell_shard(self, shard: int, message: Any) -> None:
        ref = self._shards[shard] if 0 <= shard < self.shard_count else None
        if ref is not None:
            _tell(ref, message)  # a dead shard drops it; the sender's redelivery covers that
        elif self.remote is not None and 0 <= shard < self.shard_count:
            self.remote.tell(shard_target(shard), message)

    def tell_shards(self, tells: Sequence[tuple[int, Any]]) -> None:
        """Several tells at once: the ones to other processes go in one Redis round trip."""
        remote = []
        for shard, message in tells:
            if self.remote is not None and not self.is_local_shard(shard) and 0 <= shard < self.shard_count:
                remote.append((shard_target(shard), message))
            else:
                self.tell_shard(shard, message)
        if remote:
            self.remote.tell_many(remote)

    def ask_shards(self, asks: Sequence[tuple[int, Any]], timeout: float | None = None) -> list[Any]:
        """Send every ask before awaiting any answer (so a shard takes them as one batch); one answer per
        ask, in order, or the WalletError it failed with (Unavailable for no answer within `timeout`)."""
        if self.remote is not None and not all(self.is_local_shard(shard) for shard, _ in asks):
            return self._ask_shards_remote(asks, timeout)
        deadline = time.monotonic() + (self.ask_timeout_s if timeout is None else timeout)
        futures: list[Any] = []
        for shard, message in asks:
            try:
                futures.append(self.shard_ref(shard).ask(message, block=False))
            except pykka.ActorDeadError:
                futures.append(Unavailable(f"shard {shard} is restarting"))
            except WalletError as exc:
                futures.append(exc)
        return [future if isinstance(future, Exception) else self._await(future, deadline) for future in futures]

    def _await(self, future: pykka.Future, deadline: float) -> Any:
        try:
            return future.get(timeout=max(0.0, deadline - time.monotonic()))
        except pykka.Timeout:
            return Unavailable("the shard did not answer in time")
        except pykka.ActorDeadError:
            return Unavailable("the shard stopped before answering")
        except WalletError as exc:
            return exc

    def _ask_shards_remote(self, asks: Sequence[tuple[int, Any]], timeout: float | None) -> list[Any]:
        """Cluster mode: every ask through its shard's inbox in one round trip (local shards too: their host
        thread in this process reads the same inbox, so the ask still ends in the shard's own batch)."""
        for shard, _ in asks:
            self._check_shard(shard)
        answers = self.remote.ask_many([(shard_target(shard), message) for shard, message in asks],
                                       self._timeout(timeout))
        return [answer.value_or_error() for answer in answers]

    def ask_actor(self, name: str, message: Any, timeout: float | None = None) -> Any:
        ref = self._actors.get(name)
        if ref is None:
            if self.remote is not None and name in REMOTE_SINGLETONS:
                return self.remote.ask(name, message, self._timeout(timeout))
            raise Unavailable(f"{name} is not running")
        return self._ask(ref, message, timeout)

    def tell_actor(self, name: str, message: Any) -> None:
        ref = self._actors.get(name)
        if ref is not None:
            _tell(ref, message)
        elif self.remote is not None and name in REMOTE_SINGLETONS:
            self.remote.tell(name, message)

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.shard_count:
            raise UnknownAccount(f"shard {shard} does not exist")

    def _timeout(self, timeout: float | None) -> float:
        return self.ask_timeout_s if timeout is None else timeout

    def _ask(self, ref: pykka.ActorRef, message: Any, timeout: float | None) -> Any:
        try:
            return ref.ask(message, timeout=self.ask_timeout_s if timeout is None else timeout)
        except pykka.Timeout:
            raise Unavailable("the service did not answer in time; retry with the same idempotency key") from None
        except pykka.ActorDeadError:
            raise Unavailable("the service is restarting; retry with the same idempotency key") from None

    # -- conveniences used by the front and tests ------------------------------------------------------
    def shard_of(self, account_id: int) -> int:
        return self.directory.shard_of(account_id)

    def transfer(self, op_id: str, from_account: int, to_account: int, asset: str, amount: int,
                 timeout: float | None = None, lock: HandedLock | None = None) -> m.OpResult:
        command = m.Transfer(op_id=op_id, account_id=from_account, to_account=to_account,
                             to_shard=self.shard_of(to_account), asset=asset, amount=amount)
        return self.ask_shard(self.shard_of(from_account), command, timeout, lock)

    def command(self, command: m.MoneyCommand, timeout: float | None = None,
                lock: HandedLock | None = None) -> m.OpResult:
        return self.ask_shard(self.shard_of(command.account_id), command, timeout, lock)

    def balances(self, account_id: int, timeout: float | None = None) -> dict[str, tuple[int, int]]:
        """asset -> (available, frozen) for every configured asset."""
        reply: m.Balances = self.ask_shard(self.shard_of(account_id), m.GetBalances(account_id), timeout)
        return reply.as_dict()


# The singletons another process may host in cluster mode (their inbox is `<prefix>:inbox:<name>`).
REMOTE_SINGLETONS = frozenset({"allocator", "signer", "blockwatch"})


def shard_target(shard: int) -> str:
    return f"shard-{shard}"


def _tell(ref: pykka.ActorRef, message: Any) -> None:
    """Fire and forget. pykka raises if the actor is dead (e.g. between a crash and its restart); an event
    must not fail its sender for that: the sender, often an actor that has just committed, would otherwise
    report an error for work that is done, or die."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass
