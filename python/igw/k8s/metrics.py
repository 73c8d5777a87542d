"""Prometheus view of the Kubernetes watches: synced or not, lists and failures per watch.

A collector that reads ``KubernetesDiscovery.status()`` at scrape time, so the watches keep no
metric objects of their own and nothing is global. Alert on
``increase(igw_kubernetes_watch_errors_total[5m]) > 0`` with ``igw_kubernetes_watch_synced == 0``
(the picker cannot see its pool: missing RBAC, API server unreachable).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from igw.k8s.discovery import KubernetesDiscovery


class WatchCollector(Collector):
    def __init__(self, discovery: KubernetesDiscovery) -> None:
        self.discovery = discovery

    def collect(self) -> Iterator[Metric]:
        synced = GaugeMetricFamily(
            "igw_kubernetes_watch_synced",
            "1 once the watched collection's first full list has been applied",
            labels=["watch"],
        )
        lists = CounterMetricFamily(
            "igw_kubernetes_watch_lists",
            "Full lists of the watched collection (the first, and one after each 410 Gone)",
            labels=["watch"],
        )
        errors = CounterMetricFamily(
            "igw_kubernetes_watch_errors",
            "Failed list or watch calls (retried with back-off)",
            labels=["watch"],
        )
        for name, state in self.discovery.status().items():
            synced.add_metric([name], 1.0 if state["synced"] else 0.0)
            lists.add_metric([name], float(state["lists"]))
            errors.add_metric([name], float(state["errors"]))
        yield synced
        yield lists
        yield errors
