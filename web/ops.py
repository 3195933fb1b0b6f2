"""Operations endpoints, outside /api/v1. The public API listener serves liveness only (`bp`); readiness
and Prometheus metrics tell users per shard, the pool's size, login failure rates and actor names, so
they are served on the operations listener (`internal`, WALLET_OPS_HTTP, loopback by default), with
liveness again (web/app.py create_ops_app, app/serve.py)."""

from __future__ import annotations

import logging

import flask
import redis

from storage.db import database_proxy
from web.auth import public
from web.blockwatch import blockwatch_readiness
from web.errors import problem
from web.io import respond
from web.schemas import Health, Readiness
from web.state import front

log = logging.getLogger(__name__)

bp = flask.Blueprint("ops", __name__)
internal = flask.Blueprint("ops_internal", __name__)


@bp.get("/healthz")
@internal.get("/healthz")
@public
def healthz():
    """The process serves HTTP. Says nothing about its dependencies (that is /readyz)."""
    return respond(Health(status="ok"))


@internal.get("/readyz")
@public
def readyz():
    """Ready to take traffic: the database answers, Redis answers (if configured), every actor answers."""
    state = front()
    checks = {"database": _database_ok()}
    if state.system.redis is not None:
        checks["redis"] = _redis_ok(state.system.redis)
    checks.update({f"actor:{name}": ok for name, ok in state.system.is_ready().items()})
    checks.update(blockwatch_readiness(state.router))
    if state.system.failed is not None:
        checks["supervisor"] = False
    warnings = [r.describe() for r in state.system.node_exposure or () if r.exposed or not r.complete]
    cluster = state.system.cluster_map()
    if state.system.uses_etcd and cluster is None:
        # Not a failed check: running owners keep their shards and gates route by stream name without etcd.
        warnings.append("etcd unreachable: no shard moves until it is back")
    if all(checks.values()):
        return respond(Readiness(status="ready", checks=checks, warnings=warnings, cluster=cluster))
    failing = sorted(name for name, ok in checks.items() if not ok)
    return problem(503, "not_ready", f"not ready: {', '.join(failing)}", checks=checks, warnings=warnings,
                   cluster=cluster)


@internal.get("/metrics")
@public
def metrics():
    body, content_type = front().metrics.render()
    return flask.Response(body, mimetype=None, content_type=content_type)


def _database_ok() -> bool:
    try:
        database_proxy.obj.execute_sql("SELECT 1").fetchone()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason goes to the log
        log.warning("readiness: database check failed", exc_info=True)
        return False


def _redis_ok(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        log.warning("readiness: redis check failed", exc_info=True)
        return False
