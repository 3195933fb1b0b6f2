"""Passwords, sessions, the pay-password memo and rate limits.

- Passwords and pay passwords are hashed with argon2id at OWASP's first recommended setting
  (m=19 MiB, t=2, p=1: about 30 ms on this class of machine), at most HASH_RUNNING_MAX at once (HashSlots).
- A login returns an opaque random bearer token; only its SHA-256 is stored (web_session), with an
  expiry, and it can be revoked. Resolved sessions are cached in this process until they expire or are
  revoked here (`wallet serve --role all` is the only front of its database).
- A transfer needs the pay password, but a ~30 ms argon2 verify per transfer would cap a 2-core box at
  ~60 transfers/s. So the first correct pay password of a session is verified with argon2id and remembered
  as HMAC(per-process secret, token hash || pay password) until the session ends; later transfers compare
  HMACs in constant time. Only wrong pay passwords reach argon2 again, and those are rate-limited.
- Cluster gates (several fronts): a logout, a revocation or a new (pay) password happens at one gate, and
  the others hold their own caches. So there a cached session and a pay-password memo are trusted for
  FRONT_RECHECK_MS after they were last checked against the database, then checked again (the session's
  row; the stored pay-password hash, compared with the one the memo was proved against: no argon2). A
  change made at one gate holds at every gate within that bound.
- Login and pay-password attempts are counted per account and per client IP before any password is checked
  (Redis INCR with a TTL when configured, in-process under a lock otherwise): over the limit the request is
  refused with 429 and Retry-After; a correct password gives its attempt back. A login with a device token
  of the account (issued by an earlier login) is counted on that device alone, so strangers' failures
  never lock the owner out of a known device (README, "Security and deployment").
- Registrations are counted per client IP whether or not they succeed (each costs two argon2 hashes and
  creates an account), with the same counters; their 429 says "too many registrations".
- Each limit's count and window can be set with WALLET_RATE_LIMITS (Config.rate_limits); the client IP is
  the peer's, or X-Forwarded-For's through WALLET_TRUSTED_PROXIES hops (web/app.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from typing import Callable, Iterator

import argon2
import redis

from storage import sql
from storage.models import now_ms
from web.errors import InvalidToken, RateLimited, TokenExpired, Unauthorized
from web.models import WebSession
from web.schemas import DEVICE_TOKEN_PATTERN
from core.config import RATE_LIMIT_NAMES
from core.errors import ConfigError, Unavailable
from core.limits import (
    DEVICE_TOKEN_TTL_S, HASH_RUNNING_MAX, HASH_WAIT_S, HASH_WAITING_MAX, LOCAL_COUNTERS_MAX, PAY_MEMO_MAX,
    SESSION_CACHE_MAX,
)

HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16,
                               type=argon2.Type.ID)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


class HashSlots:
    """At most `running` argon2 computations at once (each takes ~30 ms of a core and 19 MiB), `waiting` more
    queued for at most `wait_s`; beyond that the request is refused (503, retry) instead of tying up the view
    threads: a burst of admitted logins for many accounts from many addresses cannot take every thread."""

    def __init__(self, running: int = HASH_RUNNING_MAX, waiting: int = HASH_WAITING_MAX,
                 wait_s: float = HASH_WAIT_S) -> None:
        self._slots = threading.BoundedSemaphore(running)
        self._waiting_max = waiting
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self.peak_running = 0  # for tests and metrics: the most computations seen at once

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._waiting >= self._waiting_max:
                raise Unavailable("too many password checks at once; retry shortly")
            self._waiting += 1
        try:
            acquired = self._slots.acquire(timeout=self._wait_s)
        finally:
            with self._lock:
                self._waiting -= 1
        if not acquired:
            raise Unavailable("too many password checks at once; retry shortly")
        with self._lock:
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()


HASH_SLOTS = HashSlots()  # one per process: the bound is about this machine's cores and memory


def hash_secret(secret: str) -> str:
    with HASH_SLOTS.slot():
        return HASHER.hash(secret)


def verify_secret(stored_hash: str | None, secret: str) -> bool:
    """Constant work whether or not the account exists: a missing hash is checked against a dummy."""
    dummy = _dummy_hash() if stored_hash is None else None  # computed once, outside the slot it would need
    with HASH_SLOTS.slot():
        try:
            return HASHER.verify(stored_hash or dummy, secret) and stored_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


@functools.cache
def _dummy_hash() -> str:
    return HASHER.hash(secrets.token_hex(16))  # once per process, outside HASH_SLOTS


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def rfc3339(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# -- sessions --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    account_id: int
    expires_at_ms: int


class Sessions:
    """Sessions by token hash, cached. `recheck_ms` (cluster gates): a cached session older than this is read
    again, so a revocation made at another gate holds here too. Expiry is on `clock()` (wall, integer ms, as
    stored); the age of a cached entry on `ages()` (monotonic ms: a wall clock stepped back must not make
    entries look young)."""

    def __init__(self, ttl_s: int, recheck_ms: int | None = None, clock: Callable[[], int] = now_ms,
                 ages: Callable[[], int] | None = None) -> None:
        assert recheck_ms is None or recheck_ms >= 1
        self.ttl_s = ttl_s
        self.recheck_ms = recheck_ms
        self._clock = clock
        self._ages = ages or monotonic_ms
        self._cache: collections.OrderedDict[str, tuple[Session, int]] = collections.OrderedDict()  # -> checked at
        self._lock = threading.Lock()
        self._revocations = 0  # counted, so a read that a revocation overtook is not cached (see _load)

    def create(self, account_id: int) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(token_hash(token), account_id, now + self.ttl_s * 1000)
        WebSession.insert(token_hash=session.token_hash, account_id=account_id, created_at=now,
                          expires_at=session.expires_at_ms).execute()
        self._remember(session)
        return token, session

    def resolve(self, authorization: str | None) -> Session:
        """The live session of an `Authorization: Bearer <token>` header, or an Unauthorized error."""
        if not authorization:
            raise Unauthorized("send Authorization: Bearer <token> (from POST /api/v1/sessions)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not _TOKEN_RE.match(token):
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        digest = token_hash(token)
        cached = self._cache.get(digest)
        if cached is not None and (self.recheck_ms is None or self._ages() - cached[1] < self.recheck_ms):
            session = cached[0]
        else:
            session = self._load(digest)
        if session.expires_at_ms <= self._clock():
            self._forget(digest)
            raise TokenExpired("the session has expired; log in again")
        return session

    def purge_expired(self, account_id: int) -> None:
        """Drop the account's expired rows at each login, so the table holds only live sessions (and
        revoked ones until their expiry)."""
        expired = (WebSession.account_id == account_id) & (WebSession.expires_at <= now_ms())
        WebSession.delete().where(expired).execute()

    def revoke(self, session: Session) -> None:
        WebSession.update(revoked_at=now_ms()).where(
            (WebSession.token_hash == session.token_hash) & WebSession.revoked_at.is_null()).execute()
        self._revoked(session.token_hash)

    def revoke_all(self, account_id: int, keep: str | None = None) -> list[str]:
        """Revoke every live session of an account but `keep` (a token hash); returns the revoked hashes."""
        live = (WebSession.account_id == account_id) & WebSession.revoked_at.is_null()
        if keep is not None:
            live &= WebSession.token_hash != keep
        digests = [d for (d,) in WebSession.select(WebSession.token_hash).where(live).tuples()]
        if digests:
            WebSession.update(revoked_at=now_ms()).where(live & WebSession.token_hash.in_(digests)).execute()
        for digest in digests:
            self._revoked(digest)
        return digests

    def _load(self, digest: str) -> Session:
        # A revocation here between the read and the cache write would otherwise be undone by the write:
        # the revoked session cached until it expires. So what was read before any revocation since is
        # answered but not cached (the next request reads again).
        revocations_seen = self._revocations
        # Hand-written: cluster gates read every cached session again each FRONT_RECHECK_MS.
        row = sql.query_one(WebSession._meta.database, _SESSION_SQL, (digest,))
        if row is None or row[2] is not None:
            self._forget(digest)
            raise InvalidToken("the token is unknown or was revoked")
        session = Session(digest, row[0], row[1])
        if session.expires_at_ms > self._clock():
            self._remember(session, revocations_seen)
        return session

    def _remember(self, session: Session, revocations_seen: int | None = None) -> None:
        with self._lock:
            if revocations_seen is not None and revocations_seen != self._revocations:
                return
            self._cache[session.token_hash] = (session, self._ages())
            while len(self._cache) > SESSION_CACHE_MAX:
                self._cache.popitem(last=False)

    def _forget(self, digest: str) -> None:
        with self._lock:
            self._cache.pop(digest, None)

    def _revoked(self, digest: str) -> None:
        with self._lock:
            self._revocations += 1
            self._cache.pop(digest, None)


_SESSION_SQL = "SELECT account_id, expires_at, revoked_at FROM web_session WHERE token_hash = {p}"


class PayPasswordMemo:
    """Remembers that a session proved its pay password, as an HMAC under a per-process secret.

    The memo never leaves this process, so a random key is enough; a restart only costs one more
    argon2 verify per session. `recheck_ms` (cluster gates): a memo older than this holds only while the
    account's stored hash is still the one it was proved against (another gate may have changed it);
    `stored_hash()` reads it. Expiry is on `clock()` (wall ms), a memo's age on `ages()` (monotonic ms)."""

    def __init__(self, recheck_ms: int | None = None, clock: Callable[[], int] = now_ms,
                 ages: Callable[[], int] | None = None) -> None:
        assert recheck_ms is None or recheck_ms >= 1
        self.recheck_ms = recheck_ms
        self._clock = clock
        self._ages = ages or monotonic_ms
        self._key = secrets.token_bytes(32)
        # token hash -> (digest, session expiry ms, tag of the stored hash, checked at ms)
        self._memo: dict[str, tuple[bytes, int, bytes, int]] = {}
        self._lock = threading.Lock()
        self._forgets = 0  # counted, so a proof that a forget overtook is not remembered (see remember)

    def _digest(self, session: Session, pay_password: str) -> bytes:
        message = session.token_hash.encode() + b"\x00" + pay_password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _tag(self, stored_hash: str | None) -> bytes:
        return hmac.new(self._key, (stored_hash or "").encode(), hashlib.sha256).digest()

    def matches(self, session: Session, pay_password: str, stored_hash: Callable[[], str | None]) -> bool:
        entry = self._memo.get(session.token_hash)
        if (entry is None or entry[1] <= self._clock()
                or not hmac.compare_digest(entry[0], self._digest(session, pay_password))):
            return False
        if self.recheck_ms is None:
            return True
        age_now = self._ages()
        if age_now - entry[3] < self.recheck_ms:
            return True
        if not hmac.compare_digest(entry[2], self._tag(stored_hash())):
            self.forget(session)
            return False
        with self._lock:  # only if it is still that entry: a `forget` meanwhile (a change here) stands
            if self._memo.get(session.token_hash) is entry:
                self._memo[session.token_hash] = (*entry[:3], age_now)
        return True

    def generation(self) -> int:
        """Read before the stored hash that a proof checks against; give it to `remember`."""
        return self._forgets

    def remember(self, session: Session, pay_password: str, stored_hash: str | None, generation: int) -> None:
        """Remember a proof unless a `forget` came after `generation` was read: a pay-password change or
        logout during the ~30 ms argon2 verify must not be undone by this write."""
        with self._lock:
            if generation != self._forgets:
                return
            if len(self._memo) >= PAY_MEMO_MAX:
                self._prune()
            self._memo[session.token_hash] = (self._digest(session, pay_password), session.expires_at_ms,
                                              self._tag(stored_hash), self._ages())

    def forget(self, session: Session) -> None:
        with self._lock:
            self._forgets += 1
            self._memo.pop(session.token_hash, None)

    def _prune(self) -> None:
        now = self._clock()
        for digest in [d for d, (_, expires, _, _) in self._memo.items() if expires <= now]:
            del self._memo[digest]
        while len(self._memo) >= PAY_MEMO_MAX:  # all live: drop the oldest; they fall back to argon2
            del self._memo[next(iter(self._memo))]


# -- rate limits -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limit:
    name: str  # e.g. "login:account"
    max_failures: int  # what is counted (failures or attempts) per window, at most
    window_s: int
    counts: str = "failed attempts"  # what is counted, as the 429 says it

    def refusal(self, retry_after_s: int) -> RateLimited:
        return RateLimited(f"too many {self.counts} ({self.name}); retry later", retry_after_s)


@dataclasses.dataclass(frozen=True)
class Limits:
    """The abuse limits and their defaults; `WALLET_RATE_LIMITS` overrides count and window by name."""

    login_account: Limit = Limit("login:account", 5, 900)  # from clients without a device token of the account
    login_ip: Limit = Limit("login:ip", 20, 900)
    login_device: Limit = Limit("login:device", 5, 900)  # from one known device (DeviceTokens)
    pay_account: Limit = Limit("pay:account", 5, 900)
    pay_ip: Limit = Limit("pay:ip", 20, 900)
    register_ip: Limit = Limit("register:ip", 20, 900, counts="registrations")  # attempts, not failures
    refused_account: Limit = Limit("refused:account", 20, 900, counts="refused money requests")
    # Account security (web/account_security.py, web/totp.py): wrong current passwords when changing it, wrong
    # recovery codes (per username and per client IP), wrong TOTP codes.
    password_account: Limit = Limit("password:account", 5, 900)
    password_ip: Limit = Limit("password:ip", 20, 900)
    recovery_account: Limit = Limit("recovery:account", 5, 900)
    recovery_ip: Limit = Limit("recovery:ip", 20, 900)
    totp_account: Limit = Limit("totp:account", 5, 900)

    @classmethod
    def overridden(cls, rate_limits: tuple[tuple[str, int, int], ...]) -> Limits:
        """The defaults with (name, count, window_s) overrides (Config.rate_limits, validated there)."""
        limits = cls()
        by_name = limits.by_name()
        for name, count, window_s in rate_limits:
            if name not in by_name:
                raise ConfigError(f"unknown rate limit {name!r}; known: {', '.join(by_name)}")
            attribute, default = by_name[name]
            limits = dataclasses.replace(limits, **{attribute: dataclasses.replace(
                default, max_failures=count, window_s=window_s)})
        return limits

    def by_name(self) -> dict[str, tuple[str, Limit]]:
        """limit name -> (attribute, limit)"""
        limits = ((field.name, getattr(self, field.name)) for field in dataclasses.fields(self))
        return {limit.name: (attribute, limit) for attribute, limit in limits}


# The configuration validates WALLET_RATE_LIMITS against these names: the two lists are one.
assert tuple(Limits().by_name()) == RATE_LIMIT_NAMES


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


_FORGIVE_SCRIPT = """
local count = tonumber(redis.call('get', KEYS[1]) or '0')
if count > 0 then return redis.call('decr', KEYS[1]) end
return 0
"""


class FailureCounter:
    """Fixed-window counters: Redis (shared by every front) or in-process, under a lock.

    Count first: `admit` adds the attempt to every counter in one atomic step and refuses it if any count
    is then over its limit, so of 100 concurrent attempts at most `max_failures` are let through to the
    password check, whatever their timing. An attempt that turns out well is `forgive`n (its count given
    back) or `reset`; one that fails stays counted. A window starts at its first attempt and is not
    extended by later ones. The in-process windows run on `clock` (integer milliseconds)."""

    def __init__(self, client: redis.Redis | None, prefix: str, clock: Callable[[], int] = monotonic_ms) -> None:
        self._redis = client
        self._prefix = f"{prefix}:ratelimit:"
        self._clock = clock
        self._local: dict[str, tuple[int, int]] = {}  # key -> (count, window end ms on `clock`)
        self._refused: dict[str, int] = {}  # key -> window end ms on `clock`: over its limit until then
        self._lock = threading.Lock()
        self._forgive = client.register_script(_FORGIVE_SCRIPT) if client is not None else None

    def admit(self, checks: list[tuple[Limit, str]]) -> None:
        """Count one attempt against every (limit, subject); RateLimited if any is now over its limit. One
        Redis round trip (a MULTI) for all."""
        keys = [self._key(limit, subject) for limit, subject in checks]
        counts = self._increment([(key, limit.window_s) for key, (limit, _) in zip(keys, checks)])
        for key, (limit, _), (count, retry_after_s) in zip(keys, checks, counts):
            if count > limit.max_failures:
                self._remember_refused(key, retry_after_s)
                raise limit.refusal(retry_after_s)

    def refused_lately(self, checks: list[tuple[Limit, str]]) -> None:
        """RateLimited if `admit` refused one of these here and its window has not ended: no Redis round trip,
        so a path that is usually under its limit (every transfer) pays a dictionary lookup for it."""
        if not self._refused:
            return
        now = self._clock()
        for limit, subject in checks:
            until = self._refused.get(self._key(limit, subject))
            if until is not None and until > now:
                raise limit.refusal(_seconds(until - now))

    def check(self, checks: list[tuple[Limit, str]]) -> None:
        """Raise RateLimited if any (limit, subject) has reached its limit, counting nothing."""
        counts = self._read([self._key(limit, subject) for limit, subject in checks])
        for (limit, _), (count, retry_after_s) in zip(checks, counts):
            if count >= limit.max_failures:
                raise limit.refusal(retry_after_s)

    def forgive(self, checks: list[tuple[Limit, str]]) -> None:
        """Give back one admitted attempt on every (limit, subject) (never below zero): it went well."""
        keys = [self._key(limit, subject) for limit, subject in checks]
        if self._redis is None:
            with self._lock:
                for key in keys:
                    count, ends = self._local.get(key, (0, 0))
                    if count > 0:
                        self._local[key] = (count - 1, ends)
            return
        try:
            for key in keys:
                self._forgive(keys=[key])
        except redis.RedisError:
            pass  # the attempt stays counted until its window ends: stricter, never looser

    def reset(self, limit: Limit, subject: str) -> None:
        key = self._key(limit, subject)
        if self._redis is None:
            with self._lock:
                self._local.pop(key, None)
            return
        try:
            self._redis.delete(key)
        except redis.RedisError:
            pass  # the window expires by itself

    def _remember_refused(self, key: str, retry_after_s: int) -> None:
        now = self._clock()
        with self._lock:
            self._refused[key] = now + retry_after_s * 1000
            if len(self._refused) > LOCAL_COUNTERS_MAX:
                self._refused = {k: until for k, until in self._refused.items() if until > now}

    def _key(self, limit: Limit, subject: str) -> str:
        # Hash the subject: usernames and IPs stay out of Redis key names (and any dump of them).
        return self._prefix + limit.name + ":" + hashlib.sha256(subject.encode()).hexdigest()[:32]

    def _read(self, keys: list[str]) -> list[tuple[int, int]]:
        """(attempts counted, seconds until the window ends) per key."""
        if self._redis is None:
            now = self._clock()
            with self._lock:
                return [self._read_local(key, now) for key in keys]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = pipe.execute()
        except redis.RedisError:
            raise Unavailable("the rate limiter is unavailable; retry later") from None
        return [(int(raw or 0), _seconds(pttl)) for raw, pttl in zip(replies[::2], replies[1::2])]

    def _read_local(self, key: str, now: int) -> tuple[int, int]:
        count, ends = self._local.get(key, (0, 0))
        return (count, _seconds(ends - now)) if ends > now else (0, 0)

    def _increment(self, keyed: list[tuple[str, int]]) -> list[tuple[int, int]]:
        """Add one to each (key, window_s); (new count, seconds until its window ends) per key."""
        if self._redis is None:
            with self._lock:
                now = self._clock()
                counts = []
                for key, window_s in keyed:
                    count, ends = self._local.get(key, (0, 0))
                    if ends <= now:
                        count, ends = 0, now + window_s * 1000
                    self._local[key] = (count + 1, ends)
                    counts.append((count + 1, _seconds(ends - now)))
                if len(self._local) > LOCAL_COUNTERS_MAX:
                    self._local = {k: v for k, v in self._local.items() if v[1] > now}
            return counts
        try:
            pipe = self._redis.pipeline(transaction=True)
            for key, window_s in keyed:
                pipe.set(key, 0, px=window_s * 1000, nx=True)
                pipe.incr(key)
                pipe.pttl(key)
            replies = pipe.execute()
        except redis.RedisError:
            raise Unavailable("the rate limiter is unavailable; retry later") from None
        return [(int(count), _seconds(pttl)) for count, pttl in zip(replies[1::3], replies[2::3])]


def _seconds(ms: int) -> int:
    """Whole seconds a client should wait, at least one (a PTTL of -1/-2 means no window: one second)."""
    return max(1, -(-int(ms) // 1000))


# -- known devices ---------------------------------------------------------------------------------


class DeviceTokens:
    """Device tokens (OWASP's "device cookies" against lockout): a successful login returns one, bound to the
    username; a later login that presents it is counted on that device's own limit (`login:device`), not with
    strangers' failures (`login:account`, `login:ip`), so nobody can lock an owner out of a device they
    logged in from before. A token is `<issued at, s>.<nonce>.<mac>`, the MAC an HMAC-SHA256 of the username,
    the time and the nonce under a key derived from the master key (tokens survive restarts; checking one
    needs no query), valid for DEVICE_TOKEN_TTL_S."""

    def __init__(self, master_key: bytes | None, clock_s: Callable[[], int] = lambda: int(time.time())) -> None:
        seed = master_key or secrets.token_bytes(32)  # no master key (tests): tokens live as long as the process
        self._key = hmac.new(seed, b"wallet device tokens v1", hashlib.sha256).digest()
        self._clock_s = clock_s

    def issue(self, username: str) -> str:
        body = f"{self._clock_s()}.{secrets.token_hex(12)}"
        return body + "." + self._mac(username, body)

    def device_of(self, token: str | None, username: str) -> str | None:
        """The device id (its nonce) if `token` is a live token of `username`, else None."""
        if not token or not _DEVICE_TOKEN_RE.match(token):
            return None
        body, _, mac = token.rpartition(".")
        issued, nonce = body.split(".")
        if not hmac.compare_digest(mac, self._mac(username, body)):
            return None
        if not 0 <= self._clock_s() - int(issued) <= DEVICE_TOKEN_TTL_S:
            return None
        return nonce

    def _mac(self, username: str, body: str) -> str:
        return hmac.new(self._key, f"{username}\x00{body}".encode(), hashlib.sha256).hexdigest()[:32]


_DEVICE_TOKEN_RE = re.compile(DEVICE_TOKEN_PATTERN)
