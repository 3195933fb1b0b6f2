"""Webhooks: operator-configured endpoints (`wallet webhooks add URL`) receive every event of the outbox
(storage/events.py), signed, retried, in order per account; and the same events go to the Redis stream
`<prefix>:events` (`wallet:events` by default) when Redis is configured. The logic, without threads: the
notifier actor (actors/notifier.py) calls `Dispatcher.run_once` on a timer.

One round:
1. fan-out: events not yet fanned out (oldest first, bounded) get one delivery row per active endpoint, and
   are marked, in one transaction. Delivery ids therefore follow the order events were committed in.
2. deliver: per (endpoint, account) only the oldest undelivered delivery is attempted, and only once due: a
   failing event blocks the later events of its account at that endpoint, and nothing else. Attempts to
   different (endpoint, account) pairs run in parallel (bounded). A 2xx answer is delivered; anything else
   (another status, a timeout, a refused connection) is retried after 1 s, 2 s, 4 s, ... up to an hour
   apart, for three days from the event; then the delivery is abandoned (logged, visible to operators) and
   the account's next event goes. Every attempt is a row of the delivery log.
3. publish: events not yet in the Redis stream are added (XADD, oldest first), then marked.

At least once: a crash between a receiver's 2xx and the row's update sends the event again, with the same id.

Signature (as Stripe's): header `Wallet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`;
`verify_signature` is what a receiver does. Time is integer milliseconds from a clock the caller passes.

Secrets at rest: each endpoint's secret is sealed under the key ring (storage/sealed_secrets.py: AES-GCM under the
master key, bound to the endpoint's id and URL, the key's version in `secret_key_version`); `wallet keys rotate`
re-encrypts it under a new master key. The dispatcher opens a secret when it first signs for the endpoint and
keeps it in memory (a secret never changes, only its sealing); it is never logged. A row from before migration
0033 holds its secret in plaintext in `secret` until `seal_plaintext_secrets` (run at the service's start and
by `wallet keys rotate`) seals it and clears the plaintext in one conditional UPDATE.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlparse

import peewee
from cryptography.exceptions import InvalidTag

from core.errors import ConfigError, ValidationError
from core.keys import KeyRing
from core.limits import (
    EVENT_STREAM_MAXLEN, WEBHOOK_BACKOFF_FIRST_MS, WEBHOOK_BACKOFF_MAX_MS, WEBHOOK_BATCH, WEBHOOK_PARALLEL,
    WEBHOOK_RETRY_FOR_MS, WEBHOOK_SIGNATURE_TOLERANCE_S, WEBHOOK_TIMEOUT_S, WEBHOOK_URL_MAX_LEN,
)
from storage import sql
from storage.events import Event, event_body
from storage.models import BaseModel, now_ms
from storage.sealed_secrets import WEBHOOK, secret_column

log = logging.getLogger(__name__)

PENDING, DELIVERED, ABANDONED = "pending", "delivered", "abandoned"
SIGNATURE_HEADER = "Wallet-Signature"
DELIVERY_COLUMNS = ("endpoint_id", "event_pk", "account_id", "status", "attempts", "next_attempt_at", "created_at")


class WebhookEndpoint(BaseModel):
    id = peewee.BigAutoField()
    url = peewee.CharField(max_length=2000)
    secret = peewee.CharField(max_length=80, null=True)  # legacy plaintext (before 0033): NULL once sealed
    secret_sealed = peewee.BlobField(null=True)  # nonce || AES-GCM(master key, secret, aad=id and url)
    secret_key_version = peewee.SmallIntegerField(null=True)
    created_at = peewee.BigIntegerField(default=now_ms)
    disabled_at = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "webhook_endpoint"


class WebhookDelivery(BaseModel):
    id = peewee.BigAutoField()
    endpoint_id = peewee.BigIntegerField()
    event_pk = peewee.BigIntegerField()  # event.id
    account_id = peewee.BigIntegerField()  # the event's account, 0 for none: deliveries are ordered per account
    status = peewee.CharField(max_length=16)  # pending | delivered | abandoned
    attempts = peewee.IntegerField(default=0)
    next_attempt_at = peewee.BigIntegerField()
    created_at = peewee.BigIntegerField(default=now_ms)
    delivered_at = peewee.BigIntegerField(null=True)
    last_status = peewee.IntegerField(null=True)
    last_error = peewee.CharField(max_length=255, null=True)

    class Meta:
        table_name = "webhook_delivery"


class WebhookAttempt(BaseModel):
    id = peewee.BigAutoField()
    delivery_id = peewee.BigIntegerField(index=True)
    at_ms = peewee.BigIntegerField()
    status_code = peewee.IntegerField(null=True)
    error = peewee.CharField(max_length=255, null=True)
    duration_ms = peewee.IntegerField()

    class Meta:
        table_name = "webhook_attempt"


WEBHOOK_MODELS = (WebhookEndpoint, WebhookDelivery, WebhookAttempt)


# -- endpoints (operators) -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EndpointView:
    id: int
    url: str
    created_at: int
    disabled: bool
    pending: int
    delivered: int
    abandoned: int


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or len(url) > WEBHOOK_URL_MAX_LEN:
        raise ValidationError(f"a webhook URL is http(s)://host[:port]/path, at most {WEBHOOK_URL_MAX_LEN} characters")
    return url


def add_endpoint(url: str, ring: KeyRing, secret: str | None = None) -> tuple[int, str]:
    """A new endpoint (it receives the events recorded from now on), its secret sealed under the ring's current
    master key; returns (id, signing secret) — the only time the secret leaves the service."""
    check_url(url)
    secret = secret or "whsec_" + secrets.token_hex(24)
    column = secret_column(WEBHOOK)
    with WebhookEndpoint._meta.database.atomic():  # the id is in the associated data: insert, then seal
        endpoint_id = WebhookEndpoint.insert(url=url, created_at=now_ms()).execute()
        sealed, version = column.seal(ring, secret, (endpoint_id, url))
        WebhookEndpoint.update(secret_sealed=sealed, secret_key_version=version).where(
            WebhookEndpoint.id == endpoint_id).execute()
    return endpoint_id, secret


def seal_plaintext_secrets(ring: KeyRing) -> int:
    """Seal every secret still in plaintext (rows from before migration 0033) and clear the plaintext, each row
    in one conditional UPDATE (a row sealed meanwhile by another process is left alone); returns the rows
    sealed. Rows are few (one per endpoint), so one transaction."""
    column = secret_column(WEBHOOK)
    sealed_count = 0
    with WebhookEndpoint._meta.database.atomic():
        for row in WebhookEndpoint.select().where(WebhookEndpoint.secret.is_null(False)):
            sealed, version = column.seal(ring, row.secret, (row.id, row.url))
            sealed_count += (WebhookEndpoint.update(secret_sealed=sealed, secret_key_version=version, secret=None)
                             .where((WebhookEndpoint.id == row.id) & (WebhookEndpoint.secret == row.secret)
                                    & WebhookEndpoint.secret_sealed.is_null()).execute())
    return sealed_count


def open_secret(ring: KeyRing | None, endpoint_id: int, url: str, sealed: bytes | None, version: int | None,
                plaintext: str | None) -> str:
    """An endpoint's signing secret from its row's columns (a legacy plaintext one as it is)."""
    if sealed is None:
        if plaintext is None:
            raise ConfigError(f"webhook endpoint {endpoint_id} has no signing secret")
        return plaintext
    if ring is None:
        raise ConfigError(f"webhook endpoint {endpoint_id}'s secret is sealed: WALLET_MASTER_KEY is needed")
    return secret_column(WEBHOOK).open(ring, sealed, version, (endpoint_id, url))


def disable_endpoint(endpoint_id: int) -> bool:
    return bool(WebhookEndpoint.update(disabled_at=now_ms())
                .where((WebhookEndpoint.id == endpoint_id) & WebhookEndpoint.disabled_at.is_null()).execute())


def list_endpoints() -> list[EndpointView]:
    counts: dict[tuple[int, str], int] = {}
    for endpoint_id, status, count in (WebhookDelivery.select(WebhookDelivery.endpoint_id, WebhookDelivery.status,
                                                              peewee.fn.COUNT(WebhookDelivery.id))
                                       .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status).tuples()):
        counts[(endpoint_id, status)] = count
    return [EndpointView(row.id, row.url, row.created_at, row.disabled_at is not None,
                         counts.get((row.id, PENDING), 0), counts.get((row.id, DELIVERED), 0),
                         counts.get((row.id, ABANDONED), 0))
            for row in WebhookEndpoint.select().order_by(WebhookEndpoint.id)]


@dataclasses.dataclass(frozen=True)
class DeliveryView:
    """One delivery as operators see it (`wallet webhooks deliveries`, and the admin API)."""

    id: int
    endpoint_id: int
    event_id: str
    kind: str
    account_id: int | None
    status: str
    attempts: int
    next_attempt_at: int | None
    delivered_at: int | None
    last_status: int | None
    last_error: str | None


def delivery_log(limit: int = 50, endpoint_id: int | None = None, status: str | None = None,
                 before_id: int | None = None) -> list[DeliveryView]:
    """Deliveries newest first (the function the admin API calls); `before_id` pages on."""
    query = (WebhookDelivery.select(WebhookDelivery, Event.event_id, Event.kind, Event.account_id)
             .join(Event, on=(Event.id == WebhookDelivery.event_pk)))
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if before_id is not None:
        query = query.where(WebhookDelivery.id < before_id)
    rows = query.order_by(WebhookDelivery.id.desc()).limit(max(1, min(limit, 1000))).objects()
    return [DeliveryView(r.id, r.endpoint_id, r.event_id, r.kind, r.account_id, r.status, r.attempts,
                         r.next_attempt_at if r.status == PENDING else None, r.delivered_at, r.last_status,
                         r.last_error) for r in rows]


def attempts_of(delivery_id: int) -> list[WebhookAttempt]:
    return list(WebhookAttempt.select().where(WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.id))


# -- signing ------------------------------------------------------------------------------------------------


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """The Wallet-Signature header value."""
    digest = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={digest}"


def verify_signature(header: str, body: bytes, secret: str, now_s: int,
                     tolerance_s: int = WEBHOOK_SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver checks: a v1 signature of this body under the secret, with a timestamp near its clock."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp_s = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now_s - timestamp_s) > tolerance_s:
        return False
    expected = sign(secret, timestamp_s, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff_ms(attempts: int) -> int:
    """How long after its `attempts`-th failed attempt a delivery is tried again: doubling, bounded."""
    return min(WEBHOOK_BACKOFF_FIRST_MS * 2 ** min(max(attempts - 1, 0), 32), WEBHOOK_BACKOFF_MAX_MS)


# -- the dispatcher -------------------------------------------------------------------------------------------


class Post(Protocol):
    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """POST and return the HTTP status; raise for no answer (refused, timed out, ...)."""
        ...


class Publish(Protocol):
    def __call__(self, entries: Sequence[dict[str, str]]) -> None:
        """Append these entries to the event stream, in order (raise if not done)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Due:
    delivery_id: int
    endpoint_id: int
    url: str
    sealed: bytes | None = dataclasses.field(repr=False)
    key_version: int | None
    plaintext: str | None = dataclasses.field(repr=False)
    attempts: int
    event_created_at: int
    body: bytes
    event_id: str
    kind: str


@dataclasses.dataclass
class RoundReport:
    fanned_out: int = 0
    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    abandoned: int = 0
    published: int = 0

    @property
    def busy(self) -> bool:
        """A full batch somewhere: more may wait, so the next round should come at once."""
        return self.fanned_out >= WEBHOOK_BATCH or self.published >= WEBHOOK_BATCH


@dataclasses.dataclass
class DispatchStats:
    rounds: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    abandoned: int = 0
    published: int = 0


class Dispatcher:
    def __init__(self, db: peewee.Database, post: Post, clock_ms: Callable[[], int] = now_ms,
                 publish: Publish | None = None, parallel: int = WEBHOOK_PARALLEL,
                 timeout_s: float = WEBHOOK_TIMEOUT_S, ring: KeyRing | None = None) -> None:
        self.db = db
        self.ring = ring
        self._secrets: dict[int, str] = {}  # endpoint id -> its opened signing secret (never logged)
        self.post = post
        self.clock_ms = clock_ms
        self.publish = publish
        self.parallel = parallel
        self.timeout_s = timeout_s
        self.stats = DispatchStats()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="webhook")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run_once(self) -> RoundReport:
        report = RoundReport()
        report.fanned_out = self.fan_out()
        self.deliver_due(report)
        if self.publish is not None:
            report.published = self.publish_new()
        self.stats.rounds += 1
        return report

    # -- 1. fan-out -------------------------------------------------------------------------------------------
    def fan_out(self) -> int:
        now = self.clock_ms()
        with self.db.atomic():
            events = list(Event.select(Event.id, Event.account_id).where(Event.fanned_at.is_null())
                          .order_by(Event.id).limit(WEBHOOK_BATCH).tuples())
            if not events:
                return 0
            endpoints = [e for (e,) in WebhookEndpoint.select(WebhookEndpoint.id)
                         .where(WebhookEndpoint.disabled_at.is_null()).order_by(WebhookEndpoint.id).tuples()]
            rows = [(endpoint, pk, account or 0, PENDING, 0, now, now) for pk, account in events for endpoint in endpoints]
            sql.insert_many(self.db, "webhook_delivery", DELIVERY_COLUMNS, rows)
            sql.execute_in(self.db, f"UPDATE event SET fanned_at = {self.db.param} WHERE id", (now,),
                           [pk for pk, _ in events])
        return len(events)

    # -- 2. delivery ------------------------------------------------------------------------------------------
    def due(self, now: int, limit: int) -> list[_Due]:
        """The oldest pending delivery of each (endpoint, account), if it is due."""
        heads = [head for (head,) in WebhookDelivery.select(peewee.fn.MIN(WebhookDelivery.id))
                 .where(WebhookDelivery.status == PENDING)
                 .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.account_id).tuples()]
        if not heads:
            return []
        rows = (WebhookDelivery.select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookEndpoint.url,
                                       WebhookEndpoint.secret_sealed, WebhookEndpoint.secret_key_version,
                                       WebhookEndpoint.secret, WebhookDelivery.attempts, Event.created_at,
                                       Event.event_id, Event.kind, Event.account_id, Event.payload)
                .join(WebhookEndpoint, on=(WebhookEndpoint.id == WebhookDelivery.endpoint_id))
                .join(Event, on=(Event.id == WebhookDelivery.event_pk), src=WebhookDelivery)
                .where(WebhookDelivery.id.in_(heads[:10 * limit]) & (WebhookDelivery.next_attempt_at <= now))
                .order_by(WebhookDelivery.id).limit(limit).tuples())
        return [_Due(d_id, endpoint_id, url, sealed, version, plaintext, attempts, created,
                     event_body(event_id, kind, account, created, payload), event_id, kind)
                for d_id, endpoint_id, url, sealed, version, plaintext, attempts, created, event_id, kind, account,
                payload in rows]

    def secret_of(self, due: _Due) -> str:
        """The endpoint's signing secret, opened once per endpoint: a rotation re-seals it, never changes it."""
        secret = self._secrets.get(due.endpoint_id)
        if secret is None:
            secret = open_secret(self.ring, due.endpoint_id, due.url, due.sealed, due.key_version, due.plaintext)
            self._secrets[due.endpoint_id] = secret
        return secret

    def deliver_due(self, report: RoundReport) -> None:
        now = self.clock_ms()
        due = self.due(now, WEBHOOK_BATCH)
        for start in range(0, len(due), self.parallel):
            part = due[start:start + self.parallel]
            outcomes = list(self._pool.map(self._attempt, part))
            self._record(part, outcomes, report)

    def _attempt(self, due: _Due) -> tuple[int | None, str | None, int, int]:
        """(status, error, when, duration ms) of one POST."""
        at = self.clock_ms()
        started = time.monotonic()
        try:
            secret = self.secret_of(due)
        except (ConfigError, KeyError, InvalidTag) as exc:  # not sent unsigned: retried once the ring opens it
            detail = exc.detail if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            return None, f"signing secret does not open: {detail}"[:255], at, 0
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, at // 1000, due.body),
                   "Wallet-Event-Id": due.event_id, "Wallet-Event-Kind": due.kind, "User-Agent": "wallet-webhooks/1"}
        try:
            status, error = self.post(due.url, due.body, headers, self.timeout_s), None
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is a failed attempt
            status, error = None, f"{type(exc).__name__}: {exc}"[:255]
        return status, error, at, int((time.monotonic() - started) * 1000)

    def _record(self, part: Sequence[_Due], outcomes: Sequence[tuple[int | None, str | None, int, int]],
                report: RoundReport) -> None:
        now = self.clock_ms()
        with self.db.atomic():
            for due, (status, error, at, duration_ms) in zip(part, outcomes):
                report.attempted += 1
                WebhookAttempt.insert(delivery_id=due.delivery_id, at_ms=at, status_code=status, error=error,
                                      duration_ms=duration_ms).execute()
                attempts = due.attempts + 1
                where = (WebhookDelivery.id == due.delivery_id) & (WebhookDelivery.status == PENDING)
                if status is not None and 200 <= status < 300:
                    WebhookDelivery.update(status=DELIVERED, attempts=attempts, delivered_at=now, last_status=status,
                                           last_error=None).where(where).execute()
                    report.delivered += 1
                    self.stats.delivered += 1
                    continue
                error = error or f"HTTP {status}"
                self.stats.failed_attempts += 1
                if now - due.event_created_at >= WEBHOOK_RETRY_FOR_MS:
                    WebhookDelivery.update(status=ABANDONED, attempts=attempts, last_status=status,
                                           last_error=error).where(where).execute()
                    report.abandoned += 1
                    self.stats.abandoned += 1
                    log.error("webhook delivery abandoned after its retry window", extra={
                        "delivery_id": due.delivery_id, "endpoint_id": due.endpoint_id, "event_id": due.event_id,
                        "attempts": attempts, "error": error})
                    continue
                WebhookDelivery.update(attempts=attempts, next_attempt_at=now + backoff_ms(attempts),
                                       last_status=status, last_error=error).where(where).execute()
                report.failed += 1
                log.warning("webhook delivery failed; retried later", extra={
                    "delivery_id": due.delivery_id, "endpoint_id": due.endpoint_id, "event_id": due.event_id,
                    "attempts": attempts, "retry_in_ms": backoff_ms(attempts), "error": error})

    # -- 3. the Redis stream ------------------------------------------------------------------------------------
    def publish_new(self) -> int:
        rows = list(Event.select(Event.id, Event.event_id, Event.kind, Event.account_id, Event.created_at,
                                 Event.payload).where(Event.published_at.is_null())
                    .order_by(Event.id).limit(WEBHOOK_BATCH).tuples())
        if not rows:
            return 0
        entries = [{"id": event_id, "kind": kind, "account_id": "" if account is None else str(account),
                    "created_at": str(created), "data": payload}
                   for _, event_id, kind, account, created, payload in rows]
        try:
            self.publish(entries)
        except Exception as exc:  # noqa: BLE001 - Redis down: the rows stay unpublished and go next round
            log.warning("could not publish events to the Redis stream; retried", extra={"error": str(exc)})
            return 0
        sql.execute_in(self.db, f"UPDATE event SET published_at = {self.db.param} WHERE id", (self.clock_ms(),),
                       [row[0] for row in rows])
        self.stats.published += len(rows)
        return len(rows)


def redis_publisher(client: Any, stream: str) -> Publish:
    """XADD each entry to `stream` (trimmed to about EVENT_STREAM_MAXLEN), in one pipeline."""

    def publish(entries: Sequence[dict[str, str]]) -> None:
        pipe = client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(stream, entry, maxlen=EVENT_STREAM_MAXLEN, approximate=True)
        pipe.execute()

    return publish
