"""Idempotency keys for money-moving requests.

The op id is derived from (account, key), so a retry reaches the shard with the same op id and the shard
answers the first result (it stores op id, content fingerprint and result in the same transaction as the
money). The in-flight lock only turns a concurrent duplicate into a clear 409 instead of a race; the
shard's unique op id is what makes a duplicate harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import threading
from typing import Iterator

import flask
import redis

from web.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing
from wallet.errors import OperationInProgress, Unavailable

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_KEY_RE = re.compile(KEY_PATTERN)

# Compare-and-delete: release only the lock we hold (it may have expired and been taken by another).
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


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
