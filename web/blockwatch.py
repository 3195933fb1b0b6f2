"""BlockWatch's state for operations: its GetStats, asked at scrape time, as Prometheus metrics (/metrics)
and as a readiness check (/readyz fails while the scan lags the head by more than scan_lag_max_blocks).
"""

from __future__ import annotations

from typing import Iterator, get_args

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import messages as m
from core.errors import WalletError
from actors.router import Router
from web.schemas import DepositStatus
from core.limits import SCRAPE_ASK_TIMEOUT_S



def blockwatch_stats(router: Router, detailed: bool = True) -> m.WatcherStats | None:
    """BlockWatch's GetStats, or None if it is not configured (no WALLET_RPC_URLS) or does not answer."""
    if router.actor("blockwatch") is None:
        return None
    try:
        return router.ask_actor("blockwatch", m.GetStats(detailed), timeout=SCRAPE_ASK_TIMEOUT_S)
    except WalletError:
        return None


def blockwatch_readiness(router: Router) -> dict[str, bool]:
    """{"chain_scan": ok} when BlockWatch runs: it answers, reaches a node, and lags the head by at most
    WALLET scan_lag_max_blocks. Empty when there is no chain to watch."""
    if router.actor("blockwatch") is None:
        return {}
    stats = blockwatch_stats(router, detailed=False)
    return {"chain_scan": bool(stats and stats.ready)}


def blockwatch_metrics(router: Router) -> Iterator[Metric]:
    stats = blockwatch_stats(router)
    if stats is None:
        return
    yield GaugeMetricFamily("wallet_chain_scan_tip", "Last block whose deposits are recorded",
                            value=stats.tip if stats.tip is not None else -1)
    yield GaugeMetricFamily("wallet_chain_scan_lag_blocks", "Head of the active node minus the scan tip",
                            value=stats.scan_lag_blocks if stats.scan_lag_blocks is not None else -1)
    yield GaugeMetricFamily("wallet_chain_scan_blocks_per_second", "Blocks recorded per second (last 10 s)",
                            value=stats.blocks_per_s)
    heads = GaugeMetricFamily("wallet_chain_node_head", "Head block per node", labels=["node"])
    healthy = GaugeMetricFamily("wallet_chain_node_healthy", "1 if the node answers", labels=["node"])
    for node in stats.nodes:
        heads.add_metric([node.label], node.head if node.head is not None else -1)
        healthy.add_metric([node.label], int(node.healthy))
    yield heads
    yield healthy
    counters = {
        "blocks_scanned": "Blocks recorded since start",
        "reorgs": "Chain reorganisations followed since start",
        "deposits_recorded": "Deposits recorded (or seen again) since start",
        "deposits_credited": "Deposits credited since start",
        "reorged_after_credit": "Credited deposits reorged out since start (each is an alert)",
        "credits_refused": "Deposit credits refused for good by a shard since start (status credit_failed)",
        "step_errors": "Scan steps abandoned (node or database errors) since start",
        "node_switches": "Switches of the active chain node since start",
    }
    for name, help_text in counters.items():
        yield CounterMetricFamily(f"wallet_chain_{name}", help_text, value=getattr(stats, name))
    yield GaugeMetricFamily("wallet_chain_reorg_depth_max", "Deepest reorg seen since start",
                            value=stats.reorg_depth_max)
    yield GaugeMetricFamily("wallet_chain_reorg_depth_last", "Depth of the last reorg",
                            value=stats.reorg_depth_last)
    by_status = GaugeMetricFamily("wallet_deposits", "Deposits by status", labels=["status"])
    for status in get_args(DepositStatus):
        by_status.add_metric([status], stats.deposits_with_status(status))
    yield by_status
