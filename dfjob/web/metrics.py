"""`/metrics`: Prometheus text, every value read from the database on each scrape
(`dfjob.metrics_queries`), through a custom collector in a registry of its own."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dfjob import metrics_queries as queries
from dfjob.web import health
from dfjob.web.app import context

blueprint = Blueprint("metrics", __name__)


class DatabaseCollector(Collector):
    """Reads every figure when scraped; keeps nothing between scrapes."""

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("dfjob_jobs", "Jobs by queue and status.", labels=["queue", "status"])
        for (queue, status), count in sorted(queries.jobs_by_queue_and_status().items()):
            jobs.add_metric([queue, status], count)
        yield jobs
        oldest = GaugeMetricFamily(
            "dfjob_queue_oldest_ready_seconds", "How long the oldest ready job has waited.", labels=["queue"]
        )
        for queue, seconds in sorted(queries.oldest_ready_seconds().items()):
            oldest.add_metric([queue], seconds)
        yield oldest
        runs = CounterMetricFamily(
            "dfjob_runs", "Finished runs by data flow and status, pruned ones included.", labels=["data_flow", "status"]
        )
        for (flow, status), count in sorted(queries.run_totals().items()):
            runs.add_metric([flow, status], count)
        yield runs
        durations = HistogramMetricFamily(
            "dfjob_run_duration_seconds", "Durations of the finished runs kept in history.", labels=["queue"]
        )
        for histogram in queries.run_durations():
            buckets = [(f"{bound:g}", count) for bound, count in histogram.buckets]
            buckets.append(("+Inf", histogram.count))
            durations.add_metric([histogram.queue], buckets, histogram.sum_seconds)
        yield durations
        workers = GaugeMetricFamily("dfjob_workers", "Worker records by state.", labels=["state"])
        for state, count in sorted(queries.workers_by_state().items()):
            workers.add_metric([state], count)
        yield workers
        last = queries.last_heartbeat_at()
        heartbeat = GaugeMetricFamily(
            "dfjob_last_heartbeat_timestamp_seconds", "When the last heartbeat ran (Unix time; 0: never)."
        )
        heartbeat.add_metric([], last.timestamp() if last is not None else 0.0)
        yield heartbeat


_registry = CollectorRegistry(auto_describe=False)
_registry.register(DatabaseCollector())


@blueprint.get("/metrics")
def metrics() -> Response:
    context().access.require_read()
    health.require_schema()
    return Response(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
