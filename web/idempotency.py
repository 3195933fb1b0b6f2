"""Idempotency keys for money-moving requests.

The op id is derived from (account, key), so a retry reaches the shard with the same op id and the shard
answers the first result (it stores op id, content fingerprint and result in the same transaction as the
money). The in-flight lock only turns a concurrent duplicate into a clear 409 instead of a race; the
shard's unique op id is what makes a duplicate harmless.

The shard remembers only operations it applied. A request refused for a business reason (insufficient
funds, unknown recipient, ...) is recorded by the front (idempotency_failure), inside the in-flight mark:
a retry with the same body gets the same problem even if it would now succeed, another body gets 422.
What is not a decision about the operation is not recorded: an invalid request, authentication and
pay-password failures, and 503s (nothing was decided: the retry must be able to apply). A record is kept
for a retention (WALLET_IDEMPOTENCY_RETENTION_S, 24 h by default): a retry after it is a new request, and
expired rows are purged in small batches from the request path.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from typing import Callable, Iterator

import flask
import peewee
import redis
from playhouse.pool import MaxConnectionsExceeded

from core.errors import (
    AccountOnHold, BalanceOverflow, BelowMinimum, DailyLimitExceeded, OwnAddress, ZeroAddress, InsufficientFunds, OperationConflict, OperationInProgress, SelfTransfer,
    Unavailable, UnknownAccount, UnknownAsset, WalletError,
)
from actors.transport import RELEASE_SCRIPT, HandedLock, StreamNames
from core.ids import unique_hex
from core.limits import INFLIGHT_MARGIN_MS, REFUSAL_KEYS_MAX, REFUSAL_PURGE_BACKLOG_EVERY_MS, REFUSAL_PURGE_BATCH, REFUSAL_PURGE_EVERY_MS
from storage import sql
from storage.models import now_ms
from web.errors import PROBLEM_MIMETYPE, IdempotencyKeyInvalid, IdempotencyKeyMissing, problem_body
from web.models import IdempotencyFailure

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_KEY_RE = re.compile(KEY_PATTERN)


# Refusals decided by the request and the ledger: the same key must keep getting them.
RECORDED_ERRORS = (InsufficientFunds, BalanceOverflow, UnknownAccount, UnknownAsset, SelfTransfer, AccountOnHold,
                   BelowMinimum, DailyLimitExceeded, OwnAddress, ZeroAddress)


def require_key() -> str:
    key = flask.request.headers.get(HEADER)
    if key is None or key == "":
        raise IdempotencyKeyMissing(f"the {HEADER} header is required: a unique value per operation, "
                                    "reused when retrying that operation")
    if not _KEY_RE.match(key):
        raise IdempotencyKeyInvalid(f"{HEADER} must be 1-128 characters of letters, digits, '.', '_', ':', '-'")
    return key


def op_id(prefix: str, account_id: int, key: str) -> str:
    """Deterministic op id of (account, key): at most 2 + 20 + 40 + 2 characters, within the 90 allowed."""
    return f"{prefix}:{account_id}:{hashlib.sha256(key.encode()).hexdigest()[:40]}"


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One money request as the failure record knows it: whose, under which key, with which content."""

    account_id: int
    key_hash: str
    fingerprint: str

    @classmethod
    def of(cls, prefix: str, account_id: int, key: str, fields: dict[str, str]) -> Attempt:
        """`fields` are the operation's own (never a password); canonical JSON, so key order is irrelevant."""
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return cls(account_id, hashlib.sha256(f"{prefix}:{key}".encode()).hexdigest(),
                   hashlib.sha256(canonical.encode()).hexdigest())


# Bounds of the refusal records: core/limits.py (REFUSAL_KEYS_MAX, REFUSAL_PURGE_*).


class RefusalIndex:
    """Which (account, key) pairs have a live refusal record, held in memory so that the success path of a
    money request needs no database query: looking the table up on every transfer cost the HTTP front a
    third of its transfer throughput (docs/BENCHMARKS.md). Loaded once from the table (records within the
    retention only, newest first, at most `keys_max`), then kept current by this process's own records.
    Sound where this process is the only front of its database (`wallet serve --role all`). Where other
    fronts may record refusals too (`shared`: cluster gates), what this one holds says nothing about theirs,
    so every attempt is looked up in the table, the one record they share.

    A record lives `retention_s` (WALLET_IDEMPOTENCY_RETENTION_S, 24 h by default): after that it is
    ignored, so a retry under its key is a new request, and its row is purged. Time is `clock()`, integer
    milliseconds, the same clock that stamps the rows."""

    def __init__(self, retention_s: int, clock: Callable[[], int] = now_ms, keys_max: int = REFUSAL_KEYS_MAX,
                 purge_batch: int = REFUSAL_PURGE_BATCH, shared: bool = False) -> None:
        assert retention_s >= 1 and keys_max >= 1 and purge_batch >= 1
        self.retention_ms = retention_s * 1000
        self.clock = clock
        self._keys_max = keys_max
        self._purge_batch = purge_batch
        self._keys: collections.OrderedDict[tuple[int, str], int] = collections.OrderedDict()  # -> created_at
        self._unheld_newest_ms: int | None = None  # the newest record not held in memory, if any
        self._lock = threading.Lock()
        self._loaded = False
        self._purge_due_ms: int | None = None  # None: at first use
        self._purging = threading.Lock()
        self.shared = shared

    def __len__(self) -> int:
        return len(self._keys)

    def cutoff_ms(self) -> int:
        """Records created before this instant have expired."""
        return self.clock() - self.retention_ms

    def may_have(self, attempt: Attempt) -> bool:
        """False only if no live refusal is recorded under this attempt's key."""
        if self.shared:
            return True  # another front may have recorded it: only the table knows
        if not self._loaded:
            self._load()
        cutoff = self.cutoff_ms()
        created = self._keys.get((attempt.account_id, attempt.key_hash))
        if created is not None:
            return created >= cutoff
        unheld = self._unheld_newest_ms
        return unheld is not None and unheld >= cutoff

    def add(self, attempt: Attempt, created_at_ms: int) -> None:
        if self.shared:
            return  # looked up in the table every time: nothing to hold
        key = (attempt.account_id, attempt.key_hash)
        with self._lock:
            self._keys.pop(key, None)
            self._keys[key] = created_at_ms
            self._trim()

    def purge_if_due(self) -> int:
        """Delete up to `purge_batch` expired rows if a purge is due; the number deleted. A failed purge is
        logged and waits for the next turn: it is housekeeping, not the request's business."""
        now = self.clock()
        if self._purge_due_ms is not None and now < self._purge_due_ms:
            return 0
        if not self._purging.acquire(blocking=False):
            return 0  # another request is purging
        try:
            self._purge_due_ms = now + REFUSAL_PURGE_EVERY_MS
            deleted = self._purge(now - self.retention_ms)
        except (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded) as exc:
            log.warning("purge of expired refusal records failed", extra={"error": type(exc).__name__})
            return 0
        finally:
            self._purging.release()
        if deleted >= self._purge_batch:
            self._purge_due_ms = now + REFUSAL_PURGE_BACKLOG_EVERY_MS
        return deleted

    def _purge(self, cutoff_ms: int) -> int:
        # Two bounded statements that both backends run alike (MariaDB refuses LIMIT in an IN subquery;
        # SQLite's DELETE ... LIMIT is a compile-time option): the oldest keys, then those rows.
        expired = IdempotencyFailure.created_at < cutoff_ms
        keys = list(IdempotencyFailure.select(IdempotencyFailure.account_id, IdempotencyFailure.key_hash)
                    .where(expired).order_by(IdempotencyFailure.created_at).limit(self._purge_batch).tuples())
        if not keys:
            return 0
        columns = peewee.Tuple(IdempotencyFailure.account_id, IdempotencyFailure.key_hash)
        return IdempotencyFailure.delete().where(expired & columns.in_(keys)).execute()

    def _load(self) -> None:
        cutoff = self.cutoff_ms()
        rows = list(IdempotencyFailure.select(IdempotencyFailure.account_id, IdempotencyFailure.key_hash,
                                              IdempotencyFailure.created_at)
                    .where(IdempotencyFailure.created_at >= cutoff)
                    .order_by(IdempotencyFailure.created_at.desc()).limit(self._keys_max + 1).tuples())
        with self._lock:
            if self._loaded:
                return
            recorded_here = self._keys
            self._keys = collections.OrderedDict(((account, key), created) for account, key, created in reversed(rows))
            self._keys.update(recorded_here)
            self._loaded = True
            self._trim()

    def _trim(self) -> None:
        """Drop expired keys (oldest first), then the oldest live ones beyond the bound, remembering the
        newest of those: until it expires, a key not held may still have a record. Under the lock."""
        cutoff = self.cutoff_ms()
        while self._keys and next(iter(self._keys.values())) < cutoff:
            self._keys.popitem(last=False)
        while len(self._keys) > self._keys_max:
            _, created = self._keys.popitem(last=False)
            self._unheld_newest_ms = max(created, self._unheld_newest_ms or created)


def recorded_failure(attempt: Attempt, index: RefusalIndex) -> flask.Response | None:
    """The problem first answered under this key, if it was refused within the retention; 422 if the
    content differs now."""
    index.purge_if_due()
    if not index.may_have(attempt):
        return None
    # Hand-written: cluster gates run this on every money request, and peewee's query building cost four
    # times the statement (docs/BENCHMARKS.md).
    row = sql.query_one(IdempotencyFailure._meta.database, _RECORDED_SQL,
                        (attempt.account_id, attempt.key_hash, index.cutoff_ms()))
    if row is None:
        return None
    fingerprint, status, problem = row
    if fingerprint != attempt.fingerprint:
        raise OperationConflict(f"this {HEADER} was used with different content")
    return flask.Response(problem, status=status, mimetype=PROBLEM_MIMETYPE)


_RECORDED_SQL = ("SELECT fingerprint, status, problem FROM idempotency_failure "
                 "WHERE account_id = {p} AND key_hash = {p} AND created_at >= {p} LIMIT 1")


@contextlib.contextmanager
def recording_failures(attempt: Attempt, index: RefusalIndex,
                       count_refusal: Callable[[], None] | None = None) -> Iterator[None]:
    """Record a business refusal raised inside, then let it propagate to the error handler. If the record
    cannot be written the client gets a 503 instead (and may retry), never an unrecorded refusal.

    `count_refusal` counts the refusal against the account's limit first (FailureCounter.admit, `refused:
    account`): over the limit it raises RateLimited and the refusal is not recorded (nothing was applied;
    a retry after the window is decided anew), so one account adds at most that many records a window."""
    try:
        yield
    except RECORDED_ERRORS as exc:
        if count_refusal is not None:
            count_refusal()
        index.add(attempt, _record(attempt, exc, index))
        raise


def _record(attempt: Attempt, exc: WalletError, index: RefusalIndex) -> int:
    """Write the refusal; its creation time. An expired record under the same key gives way (the request
    was a new one); a live one stands (a duplicate whose in-flight mark had expired wrote it first)."""
    created = index.clock()
    fields = dict(fingerprint=attempt.fingerprint, status=exc.status,
                  problem=problem_body(exc.status, exc.code, exc.detail), created_at=created)
    try:
        IdempotencyFailure.insert(account_id=attempt.account_id, key_hash=attempt.key_hash, **fields).execute()
    except peewee.IntegrityError:
        IdempotencyFailure.update(**fields).where(
            (IdempotencyFailure.account_id == attempt.account_id) & (IdempotencyFailure.key_hash == attempt.key_hash)
            & (IdempotencyFailure.created_at < created - index.retention_ms)).execute()
    return created


class LocalMarks:
    """In-flight op ids of one process: enough where this process is the only front of its database (the
    actor system's lock makes `wallet serve --role all` so), and far cheaper than two Redis round trips
    per request (a fifth of a transfer's time under the GIL)."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, op_id: str) -> Iterator[None]:
        with self._lock:
            if op_id in self._held:
                raise OperationInProgress("a request with this Idempotency-Key is in progress; retry later")
            self._held.add(op_id)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(op_id)


class InFlight:
    """Marks op ids being processed: in the process (`local`, when it is the only front of its database),
    else Redis SET NX with a TTL shared by every front, else (no Redis) a set of this front's own."""

    def __init__(self, client: redis.Redis | None, prefix: str, ttl_ms: int, local: LocalMarks | None = None) -> None:
        self._redis = client if local is None else None
        self._prefix = StreamNames(prefix).lock_prefix  # the only keys a shard's host releases
        self._ttl_ms = ttl_ms
        self._local = local if local is not None else LocalMarks()
        self._release = self._redis.register_script(RELEASE_SCRIPT) if self._redis is not None else None

    @contextlib.contextmanager
    def hold(self, op_id: str) -> Iterator[HandedLock | None]:
        """Yields the Redis mark, to hand to the shard's ask (router `lock=`): a shard in another process
        releases it with an ok answer, in the answer's own round trip; otherwise it is released here, after
        a refusal was recorded. None for a mark in this process."""
        if self._redis is None:
            with self._local.hold(op_id):
                yield None
        else:
            with self._hold_redis(op_id) as lock:
                yield lock

    @contextlib.contextmanager
    def _hold_redis(self, op_id: str) -> Iterator[HandedLock]:
        # The mark lives ask timeout + margin; the ask must be answered a margin before it lapses (the
        # margin is for recording a refusal), however long the work before the ask took.
        answer_by = time.monotonic() + (self._ttl_ms - INFLIGHT_MARGIN_MS) / 1000
        lock = HandedLock(self._prefix + op_id, unique_hex(), answer_by)
        try:
            acquired = self._redis.set(lock.key, lock.token, nx=True, px=self._ttl_ms)
        except redis.RedisError:
            raise Unavailable("the idempotency store is unavailable; retry with the same key") from None
        if not acquired:
            raise OperationInProgress("a request with this Idempotency-Key is in progress; retry later")
        try:
            yield lock
        finally:
            if not lock.released:
                try:
                    self._release(keys=[lock.key], args=[lock.token])
                except redis.RedisError:
                    pass  # the TTL frees it; the shard's op id keeps the operation single either way
