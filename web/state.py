"""What the front holds for its lifetime (no money, no balances): the router to the actors, the asset
list, sessions, the pay-password memo, failure counters, in-flight idempotency locks and metrics.

Views reach it with `front()`; tests reach it through `app.extensions["wallet"]`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import flask
import redis

from core.config import Config
from core.money import AssetRegistry
from actors.router import Router
from web.fees import WithdrawalFees
from core.limits import FRONT_RECHECK_MS, INFLIGHT_MARGIN_MS
from web.idempotency import InFlight, LocalMarks, RefusalIndex
from web.metrics import Metrics
from web.security import DeviceTokens, FailureCounter, Limits, PayPasswordMemo, Session, Sessions


class Services(Protocol):
    """What the front needs of a started actor system (app.system.ActorSystem): web/ sits below app/, so it
    names the shape, not the class."""

    config: Config
    assets: AssetRegistry
    router: Router | None
    redis: redis.Redis | None
    failed: str | None
    front_marks: LocalMarks | None  # set when this process is the only front of its database


    def is_ready(self) -> dict[str, bool]: ...

    @property
    def uses_etcd(self) -> bool: ...  # cluster mode with membership in etcd

    def cluster_map(self) -> list[dict] | None: ...


@dataclasses.dataclass
class Front:
    system: Services
    config: Config
    router: Router
    assets: AssetRegistry
    sessions: Sessions
    pay_memo: PayPasswordMemo
    failures: FailureCounter
    inflight: InFlight
    refusals: RefusalIndex
    metrics: Metrics
    withdrawal_fees: WithdrawalFees
    devices: DeviceTokens
    limits: Limits = dataclasses.field(default_factory=Limits)

    @classmethod
    def build(cls, system: Services, config: Config) -> Front:
        if system.router is None:
            raise RuntimeError("start the actor system before creating the app")
        # An in-flight mark outlives a request by a margin, then expires by itself: after a crash a retry waits
        # at most this long (a longer request, past the mark, is still applied once: the shard's op id).
        inflight_ttl_ms = int(config.ask_timeout_s * 1000) + INFLIGHT_MARGIN_MS
        # Cluster gates (no process-local marks): other gates may revoke, change or record what this one
        # caches, so caches are checked against the database again after FRONT_RECHECK_MS.
        shared = system.front_marks is None
        recheck_ms = FRONT_RECHECK_MS if shared else None
        return cls(system=system, config=config, router=system.router, assets=system.assets,
                   sessions=Sessions(config.session_ttl_s, recheck_ms), pay_memo=PayPasswordMemo(recheck_ms),
                   failures=FailureCounter(system.redis, config.redis_prefix),
                   inflight=InFlight(system.redis, config.redis_prefix, inflight_ttl_ms, local=system.front_marks),
                   refusals=RefusalIndex(config.idempotency_retention_s, shared=shared),
                   metrics=Metrics(system.router, system), devices=DeviceTokens(config.master_key),
                   withdrawal_fees=WithdrawalFees(config, system.assets),
                   limits=Limits.overridden(config.rate_limits))


def front() -> Front:
    return flask.current_app.extensions["wallet"]


def current_session() -> Session:
    """The authenticated session of this request (set by the auth hook before any non-public view)."""
    return flask.g.session
