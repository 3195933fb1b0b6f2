"""The system's health for staff: each shard's queue depth and batch sizes (GetStats → ShardStats), the chain
scan's lag per node (BlockWatch's WatcherStats), the address pool (PoolStatus), and the alerts these add up to.
Every ask is bounded by SCRAPE_ASK_TIMEOUT_S: a silent actor is an alert, never a hung page."""

from __future__ import annotations

import dataclasses

import flask

from core import messages as m
from core.errors import WalletError
from core.limits import SCRAPE_ASK_TIMEOUT_S
from storage import stafflog
from storage.db import database_proxy
from storage.fence import owners
from storage.models import Account, ReserveSnapshot
from treasury import reconcile
from web.blockwatch import blockwatch_stats
from web.console import auth
from web.console.blueprint import bp
from web.console.views_deposits import flagged_counts
from web.state import front


@dataclasses.dataclass(frozen=True)
class Alert:
    level: str  # "critical" | "warning"
    text: str


@bp.get("")  # /admin: no trailing-slash route (werkzeug would redirect /admin to it)
@auth.page
def index():
    return flask.redirect(flask.url_for("console.health"))


@bp.get("/health")
@auth.page
def health():
    state = front()
    router = state.router
    shard_replies = router.ask_shards([(s, m.GetStats(detailed=False)) for s in range(router.shard_count)],
                                      timeout=SCRAPE_ASK_TIMEOUT_S)
    shards = [(s, reply if isinstance(reply, m.ShardStats) else None, None if isinstance(reply, m.ShardStats)
               else str(reply)) for s, reply in enumerate(shard_replies)]
    chain_configured = router.actor("blockwatch") is not None
    watcher = blockwatch_stats(router) if chain_configured else None
    try:
        pool: m.PoolStatusReply | None = router.ask_actor("allocator", m.PoolStatus(), timeout=SCRAPE_ASK_TIMEOUT_S)
    except WalletError:
        pool = None
    flagged = flagged_counts()
    on_hold = Account.select().where((Account.kind == "user") & (Account.on_hold == True)).count()  # noqa: E712
    log_problems = stafflog.verify()
    reconciliation = reconcile.last_report()
    reserves = [r for r in (ReserveSnapshot.select().where(ReserveSnapshot.asset == asset.symbol)
                            .order_by(ReserveSnapshot.id.desc()).first() for asset in state.assets) if r is not None]
    cluster = _cluster(state.system)
    alerts = _alerts(state, shards, chain_configured, watcher, pool, flagged, on_hold, log_problems)
    alerts += _reconciliation_alerts(reconciliation) + _cluster_alerts(cluster)
    return flask.render_template("console/health.html", shards=shards, chain_configured=chain_configured,
                                 watcher=watcher, pool=pool, flagged=flagged, on_hold=on_hold, alerts=alerts,
                                 scan_lag_max=state.config.scan_lag_max_blocks, reconciliation=reconciliation,
                                 reserves=reserves, cluster=cluster)


@dataclasses.dataclass(frozen=True)
class ClusterView:
    mode: str  # "single" (role all), "static" (cluster without etcd), "etcd"
    members: list[dict] | None  # etcd's member list at the last heartbeat; None: no etcd, or it is away
    owners: list  # storage.fence.Owner rows: who holds each shard and singleton now


def _cluster(system) -> ClusterView:  # noqa: ANN001 - app.system.ActorSystem (web may not import app)
    """The cluster map (DESIGN.md "Cluster mode"): etcd's members (who should hold what) beside the fences in
    the database (who does). Role all has neither: one process owns everything under the system lock."""
    if not system.cluster:
        return ClusterView("single", None, [])
    mode = "etcd" if system.uses_etcd else "static"
    return ClusterView(mode, system.cluster_map(), owners(database_proxy.obj))


def _cluster_alerts(cluster: ClusterView) -> list[Alert]:
    if cluster.mode == "etcd" and cluster.members is None:
        return [Alert("warning", "etcd unreachable: no shard moves until it is back.")]
    return []


def _reconciliation_alerts(report: dict | None) -> list[Alert]:
    """The red line: any asset whose holdings differ from what the ledger explains at the last reconciliation."""
    if report is None:
        return []
    return [Alert("critical", f"Reconciliation drift at block {report['block_number']}: {line['asset']} holdings "
                              f"{line['holdings']} against {line['expected']} explained ({line['drift']} base units).")
            for line in report["lines"] if line["drift"] != "0"]


def _alerts(state, shards, chain_configured, watcher, pool, flagged, on_hold, log_problems) -> list[Alert]:  # noqa: ANN001
    alerts: list[Alert] = []
    if state.system.failed:
        alerts.append(Alert("critical", f"The actor system failed: {state.system.failed}"))
    for shard, stats, error in shards:
        if stats is None:
            alerts.append(Alert("critical", f"Shard {shard} does not answer: {error}"))
    if chain_configured and watcher is None:
        alerts.append(Alert("critical", "BlockWatch does not answer."))
    elif watcher is not None:
        if not watcher.connected:
            alerts.append(Alert("critical", "BlockWatch reaches no chain node."))
        elif watcher.scan_lag_blocks is not None and watcher.scan_lag_blocks > state.config.scan_lag_max_blocks:
            alerts.append(Alert("warning", f"The chain scan lags the head by {watcher.scan_lag_blocks} blocks."))
        for node in watcher.nodes:
            if not node.healthy:
                alerts.append(Alert("warning", f"Chain node {node.label} does not answer."))
    if pool is None:
        alerts.append(Alert("critical", "The allocator does not answer."))
    elif pool.low:
        alerts.append(Alert("warning", f"The deposit address pool is low: {pool.remaining} left."))
    for status, count in sorted(flagged.items()):
        alerts.append(Alert("critical" if status == "reorged_after_credit" else "warning",
                            f"{count} deposit(s) {status}: an operator decides."))
    if on_hold:
        alerts.append(Alert("warning", f"{on_hold} account(s) on hold."))
    for problem in log_problems[:5]:
        alerts.append(Alert("critical", problem))
    return alerts
