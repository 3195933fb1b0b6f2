"""The cluster transport behind the router: Redis Streams between processes (cluster mode only).

- Every callee has one inbox stream (`<prefix>:inbox:shard-3`, `:inbox:allocator`, ...), read by the hosts
  of that callee through one consumer group; every caller process has one reply stream
  (`<prefix>:reply:<process id>`). The stream name is the address: a caller needs no map of the cluster.
- A request entry carries the message as JSON (core/wire.py, never pickle), a correlation id, the reply
  stream (absent for a tell) and a deadline in epoch milliseconds. A request that expires is still applied
  (every command is idempotent) but not answered: the caller has already answered its client 503 with
  "retry with the same idempotency key".
- A host drains its inbox in batches (XREADGROUP COUNT n BLOCK) and hands the whole batch to the local
  actor before awaiting any answer, so a shard takes it as one group commit; it acknowledges (XACK) only
  after the actor answered, i.e. after the commit. What a dead host left pending is claimed by the next
  one (XAUTOCLAIM after CLAIM_IDLE_MS) and applied again: idempotency answers it as a replay.
- An ask may hand over a Redis lock its caller holds (HandedLock: the front's in-flight mark of an
  Idempotency-Key). The host releases it (compare-and-delete) in the round trip that sends an ok answer and
  says so in the reply; after an error or no answer the caller still holds it and releases it itself (it
  records a refusal first). A gate thus spends one round trip less per money request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
import uuid
from typing import Any, Callable, Sequence

import pykka
import redis

from core import wire
from core.ids import unique_hex
from core.limits import (
    STREAM_CLAIM_EVERY_MS as CLAIM_EVERY_MS, STREAM_CLAIM_IDLE_MS, STREAM_CLAIM_PASSES_MAX, STREAM_HOST_BATCHES_IN_FLIGHT,
    STREAM_HOST_ANSWER_TIMEOUT_S as HOST_ANSWER_TIMEOUT_S, STREAM_INBOX_MAXLEN as INBOX_MAXLEN,
    STREAM_READ_BLOCK_MS, STREAM_REDIS_RETRY_S as REDIS_RETRY_S, STREAM_REPLY_MAXLEN as REPLY_STREAM_MAXLEN,
)
from core.errors import Unavailable, WalletError

log = logging.getLogger(__name__)

GROUP = "hosts"
STOP_ANSWERS_WAIT_S = 5.0  # a stopping host waits this long for the answers of what its actor took
READ_BLOCK_MS = STREAM_READ_BLOCK_MS
CLAIM_IDLE_MS = STREAM_CLAIM_IDLE_MS


# Compare-and-delete: release a lock only if it still holds this token (it may have expired and been taken).
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclasses.dataclass
class HandedLock:
    """A Redis lock (key, token) the caller holds while it asks. `released` turns True when an ok answer
    arrives whose host released it; otherwise the caller still holds it. `answer_by` (time.monotonic()):
    the lock expires soon after; an ask waits no longer, so the caller never acts on an answer while another
    request may hold the same key (router.ask_shard)."""

    key: str
    token: str
    answer_by: float | None = None
    released: bool = False


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def process_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class StreamNames:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def inbox(self, target: str) -> str:
        return f"{self.prefix}:inbox:{target}"

    def reply(self, process: str) -> str:
        return f"{self.prefix}:reply:{process}"

    @property
    def lock_prefix(self) -> str:
        """Where the fronts' in-flight marks live (web/idempotency.InFlight): the only keys a host releases."""
        return f"{self.prefix}:inflight:"


class _Pending:
    __slots__ = ("event", "ok", "value", "released")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.value: Any = None
        self.released = False  # the host released the lock handed over with the ask


class StreamClient:
    """The caller's side: send asks and tells to inboxes, match replies from this process's reply stream."""

    def __init__(self, client: redis.Redis, names: StreamNames, process: str,
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self.redis = client
        self.names = names
        self.process = process
        self.reply_stream = names.reply(process)
        self.clock_ms = clock_ms
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> StreamClient:
        self._reader = threading.Thread(target=self._read_replies, name="stream-replies", daemon=True)
        self._reader.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._reader is not None:
            self._reader.join(timeout=READ_BLOCK_MS / 1000 * 4)
        try:
            self.redis.delete(self.reply_stream)
        except redis.RedisError:
            pass

    # -- asking ----------------------------------------------------------------------------------------
    def ask(self, target: str, message: Any, timeout_s: float, lock: HandedLock | None = None) -> Any:
        return self.ask_many([(target, message)], timeout_s, [lock])[0].result()

    def ask_many(self, asks: Sequence[tuple[str, Any]], timeout_s: float,
                 locks: Sequence[HandedLock | None] = ()) -> list[_Answer]:
        """Send every ask in one round trip, then wait for the answers (each by the same deadline). `locks`
        (one per ask, or none): held by the caller, released by the host with an ok answer."""
        deadline_ms = self.clock_ms() + int(timeout_s * 1000)
        locks = [*locks, *[None] * (len(asks) - len(locks))]
        entries = []
        for (target, message), lock in zip(asks, locks):
            corr = unique_hex()
            fields = {"m": wire.encode(message), "c": corr, "r": self.reply_stream, "d": str(deadline_ms)}
            if lock is not None:
                fields.update(lk=lock.key, lt=lock.token)
            entries.append((target, corr, fields))
        pendings = [_Pending() for _ in entries]
        with self._lock:
            for (_, corr, _), pending in zip(entries, pendings):
                self._pending[corr] = pending
        try:
            self._xadd_all(entries)
        except redis.RedisError:
            self._forget(entries)
            return [_Answer(Unavailable("the message queue is unreachable; retry with the same idempotency key"))
                    for _ in entries]
        answers = []
        for (target, corr, _), pending, lock in zip(entries, pendings, locks):
            left_s = max(0.0, (deadline_ms - self.clock_ms()) / 1000)
            if pending.event.wait(left_s):
                answers.append(_Answer(pending.value, pending.ok))
                if lock is not None and pending.ok and pending.released:
                    lock.released = True
            else:
                answers.append(_Answer(Unavailable(f"{target} did not answer in time; retry with the same "
                                                   "idempotency key")))
        self._forget(entries)
        return answers

    def tell(self, target: str, message: Any) -> None:
        self.tell_many([(target, message)])

    def tell_many(self, tells: Sequence[tuple[str, Any]]) -> None:
        """Fire and forget, in one round trip. Dropped if Redis is down: every told command has a sender that
        delivers again until acknowledged (the outbox), or is news the receiver also finds on its tick."""
        try:
            self._xadd_all([(target, "", {"m": wire.encode(message), "c": ""}) for target, message in tells])
        except redis.RedisError:
            log.warning("tells dropped: the message queue is unreachable", extra={"count": len(tells)})

    def _xadd_all(self, entries: list[tuple[str, str, dict]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for target, _, fields in entries:
            pipe.xadd(self.names.inbox(target), fields, maxlen=INBOX_MAXLEN, approximate=True)
        pipe.execute()

    def _forget(self, entries: list[tuple[str, str, dict]]) -> None:
        with self._lock:
            for _, corr, _ in entries:
                self._pending.pop(corr, None)

    # -- replies ---------------------------------------------------------------------------------------
    def _read_replies(self) -> None:
        # From the start of the stream, not "$": the stream is this process's alone (process_id is new at every
        # start), and with "$" an answer that came back before the first XREAD was lost (its ask timed out).
        last = "0-0"
        while not self._stopping.is_set():
            try:
                got = self.redis.xread({self.reply_stream: last}, count=1000, block=READ_BLOCK_MS)
            except redis.RedisError:
                self._stopping.wait(REDIS_RETRY_S)
                continue
            for _, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id
                    self._resolve(fields)

    def _resolve(self, fields: dict) -> None:
        corr = fields.get(b"c", b"").decode()
        with self._lock:
            pending = self._pending.get(corr)
        if pending is None:
            return  # answered after its deadline, or for a process that restarted
        try:
            if fields.get(b"ok") == b"1":
                pending.value, pending.ok = wire.decode(fields[b"v"]), True
                pending.released = fields.get(b"rl") == b"1"
            else:
                pending.value = wire.decode_error(fields[b"v"])
        except WalletError as exc:
            pending.value = exc
        pending.event.set()


class _Answer:
    __slots__ = ("value", "ok")

    def __init__(self, value: Any, ok: bool = False) -> None:
        self.value, self.ok = value, ok

    def result(self) -> Any:
        if not self.ok:
            raise self.value
        return self.value

    def value_or_error(self) -> Any:
        return self.value


class StreamHost:
    """The callee's side for one inbox: a thread that feeds batches of entries to a local actor, answers,
    and acknowledges after the actor's answer (after its commit)."""

    def __init__(self, client: redis.Redis, names: StreamNames, target: str,
                 resolve: Callable[[], pykka.ActorRef | None],
                 consumer: str, batch_max: int, clock_ms: Callable[[], int] = now_ms,
                 claim_idle_ms: int = CLAIM_IDLE_MS) -> None:
        self.redis = client
        self.claim_idle_ms = claim_idle_ms
        self.stream = names.inbox(target)
        self._lock_prefix = names.lock_prefix.encode()
        self.target = target
        self.resolve = resolve  # the actor's current ref (a supervisor may have restarted it)
        self.consumer = consumer
        self.batch_max = batch_max
        self.clock_ms = clock_ms
        self.batches = 0
        self.entries = 0
        self.expired = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._answerer: threading.Thread | None = None
        self._answers: queue.Queue = queue.Queue(maxsize=STREAM_HOST_BATCHES_IN_FLIGHT)  # bounded: backpressure
        self._in_flight: set[bytes] = set()
        self._in_flight_lock = threading.Lock()
        self._group_ready = False

    def start(self) -> StreamHost:
        self._answerer = threading.Thread(target=self._answer_loop, name=f"host-{self.target}-answers", daemon=True)
        self._answerer.start()
        self._thread = threading.Thread(target=self._run, name=f"host-{self.target}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=READ_BLOCK_MS / 1000 * 4 + 5)
        if self._answerer is not None:  # what was handed to the actor is still answered and acknowledged
            try:
                self._answers.put(None, timeout=STOP_ANSWERS_WAIT_S)
            except queue.Full:
                log.warning("inbox host stopped with answers still queued", extra={"stream": self.stream})
            self._answerer.join(timeout=STOP_ANSWERS_WAIT_S)  # a daemon thread: never holds the process

    def _run(self) -> None:
        next_claim = 0
        while not self._stopping.is_set():
            try:
                self._ensure_group()
                if self.clock_ms() >= next_claim:
                    next_claim = self.clock_ms() + CLAIM_EVERY_MS
                    self._claim_abandoned()
                got = self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self.batch_max,
                                            block=READ_BLOCK_MS)
                for _, entries in got or ():
                    self.handle(entries)
            except redis.RedisError as exc:
                self._group_ready = False  # a restarted Redis lost the group: create it again
                log.warning("inbox unreachable; retrying", extra={"stream": self.stream, "error": str(exc)})
                self._stopping.wait(REDIS_RETRY_S)
            except Exception:  # noqa: BLE001 - the host thread must outlive one bad batch
                log.exception("inbox batch failed", extra={"stream": self.stream})
                self._stopping.wait(REDIS_RETRY_S)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _claim_abandoned(self) -> None:
        """Entries a dead consumer read but never acknowledged: take them and apply them (again)."""
        start = "0-0"
        for _ in range(STREAM_CLAIM_PASSES_MAX):  # bounded: this many pages of batch_max entries
            reply = self.redis.xautoclaim(self.stream, GROUP, self.consumer, self.claim_idle_ms, start_id=start,
                                          count=self.batch_max)
            # Not the entries this host handed to its actor and has not answered yet (they are not abandoned).
            with self._in_flight_lock:
                start, entries = reply[0], [e for e in reply[1] if e[1] is not None and e[0] not in self._in_flight]
            if entries:
                log.info("claimed abandoned entries", extra={"stream": self.stream, "count": len(entries)})
                self.handle(entries)
            if start in (b"0-0", "0-0"):
                return

    def handle(self, entries: Sequence[tuple[bytes, dict]]) -> None:
        """One batch: decode, hand every message to the actor at once, then answer and acknowledge."""
        try:
            ref = self.resolve()
        except WalletError:
            ref = None
        if ref is None:
            return  # restarting: nothing acknowledged, the entries are claimed again once it is back
        asked: list[tuple[bytes, dict, Any]] = []
        done: list[bytes] = []  # acknowledged without an answer (poison entries)
        for entry_id, fields in entries:
            try:
                message = wire.decode(fields[b"m"])
            except (KeyError, WalletError) as exc:
                log.error("inbox entry refused", extra={"stream": self.stream, "id": entry_id, "error": str(exc)})
                done.append(entry_id)  # a poison entry is dropped, never retried forever
                continue
            try:
                asked.append((entry_id, fields, ref.ask(message, block=False)))
            except pykka.ActorDeadError:
                return  # nothing acknowledged: a restarted actor or the next host applies them
        self.batches += 1
        self.entries += len(entries)
        with self._in_flight_lock:
            self._in_flight.update(entry_id for entry_id, _, _ in asked)
        # Answered by another thread, so this one reads the next batch while the actor commits this one (the
        # next batch then waits in the actor's mailbox and becomes its next group commit, as in-process).
        while not self._stopping.is_set():  # bounded queue: wait while the actor is behind, but not past a stop
            try:
                self._answers.put((asked, done), timeout=REDIS_RETRY_S)
                return
            except queue.Full:
                continue
        # stopping: these stay unacknowledged and are claimed (and answered as replays) by the next host

    def _answer_loop(self) -> None:
        while True:
            item = self._answers.get()
            if item is None:
                return
            try:
                self._answer(*item)
            except redis.RedisError as exc:  # unacknowledged: claimed and applied again (a replay) later
                log.warning("answers not sent", extra={"stream": self.stream, "error": str(exc)})
            except Exception:  # noqa: BLE001 - the answer thread must outlive one bad batch
                log.exception("answering a batch failed", extra={"stream": self.stream})

    def _answer(self, asked: list[tuple[bytes, dict, Any]], done: list[bytes]) -> None:
        """Wait for the actor's answers (after its commit), send them, and acknowledge, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        answer_deadline = time.monotonic() + HOST_ANSWER_TIMEOUT_S
        for entry_id, fields, future in asked:
            try:
                value, ok = future.get(timeout=max(0.0, answer_deadline - time.monotonic())), True
            except (pykka.Timeout, pykka.ActorDeadError):
                continue  # left pending, claimed again later
            except Exception as exc:  # noqa: BLE001 - an error is an answer too
                value, ok = exc, False
            done.append(entry_id)
            self._queue_answer(pipe, fields, value, ok)
        if done:
            pipe.xack(self.stream, GROUP, *done)
        try:
            pipe.execute()
        finally:
            with self._in_flight_lock:
                self._in_flight.difference_update(entry_id for entry_id, _, _ in asked)

    def _queue_answer(self, pipe: Any, fields: dict, value: Any, ok: bool) -> None:
        reply_to = fields.get(b"r")
        if not reply_to:
            if not ok:
                log.error("told message refused", extra={"stream": self.stream, "error": str(value)})
            return
        if int(fields.get(b"d", b"0")) < self.clock_ms():
            self.expired += 1  # applied, but the caller gave up: no answer
            return
        try:
            body = wire.encode(value) if ok else wire.encode_error(value)
        except WalletError as exc:
            body, ok = wire.encode_error(exc), False
        reply = {"c": fields.get(b"c", b""), "ok": "1" if ok else "0", "v": body}
        lock_key = fields.get(b"lk")
        if lock_key and not lock_key.startswith(self._lock_prefix):
            # Not a front's in-flight mark: a host deletes nothing else, whatever an entry names (the gate
            # still holds its mark without `rl` and releases it itself).
            log.warning("handed lock outside the in-flight marks ignored", extra={"stream": self.stream})
            lock_key = None
        if ok and lock_key:  # before the reply in the same pipeline: released by the time it is read
            # EVAL, not a registered script: in a pipeline redis-py would send SCRIPT EXISTS first (a round
            # trip), and a script cache lost in between (restart) would fail the release but not the reply.
            pipe.eval(RELEASE_SCRIPT, 1, lock_key, fields.get(b"lt", b""))
            reply["rl"] = "1"
        pipe.xadd(reply_to, reply, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
