"""Idempotency keys for money-moving requests.

The op id is derived from (account, key), so a retry reaches the shard with the same op id and the shard
answers the first result (it stores op id, content fingerprint and result in the same transaction as the
money). The in-flight lock only turns a concurrent duplicate into a clear 409 instead of a race; the
shard's unique op id is what makes a duplicate harmless.

The shard remembers only operations it applied. A request refused for a business reason (insufficient
funds, unknown recipient, ...) is recorded by the front (idempotency_failure), inside the in-flight mark:
a retry with the same body gets the same problem even if it would now succeed, another body gets 422.
What is not a decision about the operation is not recorded: an invalid request, authentication and
pay-password failures, and 503s (nothing was decided: the retry must be able to apply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
import threading
from typing import Iterator

import flask
import peewee
import redis

from web.errors import PROBLEM_MIMETYPE, IdempotencyKeyInvalid, IdempotencyKeyMissing, problem_body
from web.models import IdempotencyFailure
from core.errors import (
    AccountOnHold, BalanceOverflow, InsufficientFunds, OperationConflict, OperationInProgress, SelfTransfer,
    Unavailable, UnknownAccount, UnknownAsset, WalletError,
)

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_KEY_RE = re.compile(KEY_PATTERN)

# Compare-and-delete: release only the lock we hold (it may have expired and been taken by another).
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# Refusals decided by the request and the ledger: the same key must keep getting them.
RECORDED_ERRORS = (InsufficientFunds, BalanceOverflow, UnknownAccount, UnknownAsset, SelfTransfer, AccountOnHold)


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


class RefusalIndex:
    """Which (account, key) pairs have a recorded refusal, held in memory so that the success path of a
    money request needs no database query: looking the table up on every transfer cost the HTTP front a
    third of its transfer throughput (docs/BENCHMARKS.md). Loaded once from the table, then kept current
    by this process's own records. Sound because the front runs in the one process that hosts the actors
    (`wallet serve`); a front in several processes must share it (e.g. a Redis set) instead."""

    def __init__(self) -> None:
        self._keys: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._loaded = False

    def may_have(self, attempt: Attempt) -> bool:
        if not self._loaded:
            self._load()
        return (attempt.account_id, attempt.key_hash) in self._keys

    def add(self, attempt: Attempt) -> None:
        with self._lock:
            self._keys.add((attempt.account_id, attempt.key_hash))

    def _load(self) -> None:
        rows = IdempotencyFailure.select(IdempotencyFailure.account_id, IdempotencyFailure.key_hash).tuples()
        with self._lock:
            if not self._loaded:
                self._keys.update(rows)
                self._loaded = True


def recorded_failure(attempt: Attempt, index: RefusalIndex) -> flask.Response | None:
    """The problem first answered under this key, if it was refused; 422 if the content differs now."""
    if not index.may_have(attempt):
        return None
    row = (IdempotencyFailure.select(IdempotencyFailure.fingerprint, IdempotencyFailure.status,
                                     IdempotencyFailure.problem)
           .where((IdempotencyFailure.account_id == attempt.account_id)
                  & (IdempotencyFailure.key_hash == attempt.key_hash))
           .first())
    if row is None:
        return None
    if row.fingerprint != attempt.fingerprint:
        raise OperationConflict(f"this {HEADER} was used with different content")
    return flask.Response(row.problem, status=row.status, mimetype=PROBLEM_MIMETYPE)


@contextlib.contextmanager
def recording_failures(attempt: Attempt, index: RefusalIndex) -> Iterator[None]:
    """Record a business refusal raised inside, then let it propagate to the error handler. If the record
    cannot be written the client gets a 503 instead (and may retry), never an unrecorded refusal."""
    try:
        yield
    except RECORDED_ERRORS as exc:
        _record(attempt, exc)
        index.add(attempt)
        raise


def _record(attempt: Attempt, exc: WalletError) -> None:
    try:
        IdempotencyFailure.insert(account_id=attempt.account_id, key_hash=attempt.key_hash,
                                  fingerprint=attempt.fingerprint, status=exc.status,
                                  problem=problem_body(exc.status, exc.code, exc.detail)).execute()
    except peewee.IntegrityError:
        pass  # recorded already (by a duplicate whose in-flight mark had expired): the first record stands


class InFlight:
    """Marks op ids being processed: Redis SET NX with a TTL (shared by every front), or an in-process set."""

    def __init__(self, client: redis.Redis | None, prefix: str, ttl_s: int) -> None:
        self._redis = client
        self._prefix = f"{prefix}:inflight:"
        self._ttl_s = ttl_s
        self._local: set[str] = set()
        self._lock = threading.Lock()
        self._release = client.register_script(_RELEASE_SCRIPT) if client is not None else None

    @contextlib.contextmanager
    def hold(self, op_id: str) -> Iterator[None]:
        if self._redis is None:
            with self._hold_local(op_id):
                yield
        else:
            with self._hold_redis(op_id):
                yield

    @contextlib.contextmanager
    def _hold_local(self, op_id: str) -> Iterator[None]:
        with self._lock:
            if op_id in self._local:
                raise OperationInProgress("a request with this Idempotency-Key is in progress; retry later")
            self._local.add(op_id)
        try:
            yield
        finally:
            with self._lock:
                self._local.discard(op_id)

    @contextlib.contextmanager
    def _hold_redis(self, op_id: str) -> Iterator[None]:
        key, token = self._prefix + op_id, secrets.token_hex(8)
        try:
            acquired = self._redis.set(key, token, nx=True, ex=self._ttl_s)
        except redis.RedisError:
            raise Unavailable("the idempotency store is unavailable; retry with the same key") from None
        if not acquired:
            raise OperationInProgress("a request with this Idempotency-Key is in progress; retry later")
        try:
            yield
        finally:
            try:
                self._release(keys=[key], args=[token])
            except redis.RedisError:
                pass  # the TTL frees it; the shard's op id keeps the operation single either way
