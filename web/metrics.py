"""Prometheus metrics: request counts and latencies by endpoint and status (recorded per request), and
the actors' state (shard queue depths and batch sizes, address pool) asked for at scrape time.

Each app has its own registry, so several apps (tests) never clash over metric names.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

import peewee

from core import messages as m
from core.errors import WalletError
from actors.router import Router
from treasury import reconcile
from web.blockwatch import SCRAPE_ASK_TIMEOUT_S, blockwatch_metrics

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ActorCollector:
    """Asks every shard for GetStats and the allocator for PoolStatus when Prometheus scrapes."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("wallet_shard_up", "1 if the shard answered the scrape", labels=["shard"])
        gauges = {
            "queue_depth": GaugeMetricFamily("wallet_shard_queue_depth", "Messages waiting in the shard's mailbox",
                                             labels=["shard"]),
            "last_batch_size": GaugeMetricFamily("wallet_shard_last_batch_size",
                                                 "Commands in the shard's last group commit", labels=["shard"]),
            "batches": GaugeMetricFamily("wallet_shard_batches", "Group commits since the shard started",
                                         labels=["shard"]),
            "accounts": GaugeMetricFamily("wallet_shard_accounts", "User accounts bound to the shard",
                                          labels=["shard"]),
            "outbox_undelivered": GaugeMetricFamily("wallet_shard_outbox_undelivered",
                                                    "Cross-shard credits not yet acknowledged", labels=["shard"]),
        }
        for shard in range(self.router.shard_count):
            try:
                stats = self.router.ask_shard(shard, m.GetStats(), timeout=SCRAPE_ASK_TIMEOUT_S)
            except WalletError:
                up.add_metric([str(shard)], 0)
                continue
            up.add_metric([str(shard)], 1)
            for name, family in gauges.items():
                family.add_metric([str(shard)], getattr(stats, name))
        yield up
        yield from gauges.values()
        yield from self._pool()
        yield from blockwatch_metrics(self.router)
        yield from self._treasury()

    def _treasury(self) -> Iterator[Metric]:
        """The signer's treasury moves and the hot wallet's low marks (treasury/sweeps.py); nothing without a
        signer (no chain configured)."""
        if self.router.actor("signer") is None:
            return
        try:
            stats: m.SignerStats = self.router.ask_actor("signer", m.GetStats(), timeout=SCRAPE_ASK_TIMEOUT_S)
        except WalletError:
            return
        yield GaugeMetricFamily("wallet_sweeps_signed", "Treasury sweeps signed since start", value=stats.sweeps_signed)
        yield GaugeMetricFamily("wallet_sweeps_confirmed", "Treasury moves final since start",
                                value=stats.sweeps_confirmed)
        yield GaugeMetricFamily("wallet_cold_moves_signed", "Moves to cold storage signed since start",
                                value=stats.cold_signed)
        yield GaugeMetricFamily("wallet_treasury_flagged", "Treasury moves flagged for an operator since start",
                                value=stats.treasury_flagged)
        low = GaugeMetricFamily("wallet_hot_wallet_low", "1 if the hot wallet holds less of the asset than "
                                "WALLET_HOT_LOW: refill it", labels=["asset"])
        for asset in stats.hot_low:
            low.add_metric([asset], 1)
        yield low

    def _pool(self) -> Iterator[Metric]:
        try:
            status = self.router.ask_actor("allocator", m.PoolStatus(), timeout=SCRAPE_ASK_TIMEOUT_S)
        except WalletError:
            return
        yield GaugeMetricFamily("wallet_pool_remaining", "Unassigned deposit addresses", value=status.remaining)
        yield GaugeMetricFamily("wallet_pool_total", "Generated deposit addresses", value=status.total)
        yield GaugeMetricFamily("wallet_pool_low", "1 if the pool is below its low watermark", value=int(status.low))


class ExposureCollector:
    """What each chain node exposes, from the probe at start (chain/exposure.py); nothing before it ran."""

    def __init__(self, system: Any) -> None:
        self.system = system

    def collect(self) -> Iterator[Metric]:
        reports = getattr(self.system, "node_exposure", None)
        if reports is None:
            return
        exposed = GaugeMetricFamily("wallet_chain_node_exposed", "1 if the node holds unlocked accounts or serves "
                                    "personal/admin/miner/anvil/hardhat methods", labels=["node"])
        unknown = GaugeMetricFamily("wallet_chain_node_exposure_unknown", "1 if some exposure probes got no answer",
                                    labels=["node"])
        for report in reports:
            exposed.add_metric([report.url_label], int(report.exposed))
            unknown.add_metric([report.url_label], int(not report.complete))
        yield exposed
        yield unknown


class ReconciliationCollector:
    """The last reconciliation (treasury/reconcile.py), from the database: any process can serve it. A drift
    is alerted on `wallet_reconcile_drift != 0` (base units) or `wallet_reconcile_clean == 0`."""

    def collect(self) -> Iterator[Metric]:
        try:
            report = reconcile.last_report()
        except peewee.PeeweeException:
            return
        if report is None:
            return
        drift = GaugeMetricFamily("wallet_reconcile_drift", "Holdings minus what the ledger explains, base units, at "
                                  "the last reconciliation", labels=["asset"])
        for line in report["lines"]:
            drift.add_metric([line["asset"]], float(int(line["drift"])))
        yield drift
        yield GaugeMetricFamily("wallet_reconcile_clean", "1 if the last reconciliation found no drift",
                                value=int(report["clean"]))
        yield GaugeMetricFamily("wallet_reconcile_block", "Block height of the last reconciliation",
                                value=report["block_number"])
        yield GaugeMetricFamily("wallet_reconcile_timestamp_seconds", "When the last reconciliation ran",
                                value=report["created_at"] / 1000)


class Metrics:
    def __init__(self, router: Router, system: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("wallet_http_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("wallet_http_request_duration_seconds", "HTTP request latency",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry.register(ActorCollector(router))
        self.registry.register(ReconciliationCollector())
        if system is not None:
            self.registry.register(ExposureCollector(system))

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        # The children of a label set, looked up once: `labels()` validates and locks on every call. The set
        # is bounded (endpoint names, not paths; methods and statuses Flask answers).
        children = self._children.get((endpoint, method, status))
        if children is None:
            children = self._children.setdefault((endpoint, method, status), (
                self.requests.labels(endpoint, method, str(status)), self.latency.labels(endpoint, method)))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
