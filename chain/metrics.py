"""Prometheus families for a ChainClient's `metrics()` dict: which node is active, every node's head and
health, switches, requests and failed reads. A pure function of plain data, so the dict can travel in an
actor message and be turned into metrics by whoever serves the scrape. Nodes are labelled by their
redacted label (`#0 https://host`), never by a URL that may carry an API key."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def chain_metric_families(metrics: dict[str, Any]) -> list[Metric]:
    active = GaugeMetricFamily("wallet_chain_node_active", "1 for the node reads go to", labels=["node"])
    healthy = GaugeMetricFamily("wallet_chain_node_healthy", "1 if the node answered its last check and is not "
                                "cooling down after a failed read", labels=["node"])
    head = GaugeMetricFamily("wallet_chain_node_head", "Last head block number seen on the node", labels=["node"])
    for node in metrics["nodes"]:
        active.add_metric([node["label"]], int(node["label"] == metrics["active_label"]))
        healthy.add_metric([node["label"]], int(node["healthy"]))
        if node["head"] is not None:
            head.add_metric([node["label"]], node["head"])
    return [
        active, healthy, head,
        CounterMetricFamily("wallet_chain_node_switches", "Changes of the active node", value=metrics["switch_count"]),
        CounterMetricFamily("wallet_chain_rpc_requests", "HTTP requests sent to nodes", value=metrics["requests"]),
        CounterMetricFamily("wallet_chain_read_failures", "Reads that failed after their retries (each one made "
                            "the client leave that node)", value=metrics["failures"]),
    ]
