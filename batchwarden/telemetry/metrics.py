"""Prometheus metrics of one replica, on a registry of its own.

Names follow Prometheus conventions: base units, `_total` counters,
`_seconds` histograms, labels of low cardinality (never a job id). The
names in INTERFACE.md are a public contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from batchwarden import __version__

if TYPE_CHECKING:
    from batchwarden.store.records import PoolStats

# `_created` series double the count of series for no use on a dashboard.
disable_created_metrics()

FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.leader = Gauge(
            "batchwarden_leader", "1 if this replica leads, else 0", registry=registry
        )
        self.leader_term = Gauge(
            "batchwarden_leader_term",
            "the term this replica last held or saw",
            registry=registry,
        )
        self.lock_acquire = Histogram(
            "batchwarden_lock_acquire_seconds",
            "duration of each lock acquisition attempt",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.leadership_transitions = Counter(
            "batchwarden_leadership_transitions",
            "leadership gained or lost, by reason",
            ["reason"],
            registry=registry,
        )
        self.heartbeat = Histogram(
            "batchwarden_heartbeat_seconds",
            "duration of each heartbeat of the lock connection",
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.polls = Counter(
            "batchwarden_polls",
            "provider status polls, by outcome (success or failure)",
            ["outcome"],
            registry=registry,
        )
        self.items_ingested = Counter(
            "batchwarden_items_ingested",
            "item results stored, by item status",
            ["status"],
            registry=registry,
        )
        self.tokens = Counter(
            "batchwarden_tokens",
            "tokens reported in succeeded results, by model and kind",
            ["model", "kind"],
            registry=registry,
        )
        self.near_archive = Gauge(
            "batchwarden_results_near_archive",
            "ended provider batches whose results are not stored and will be"
            " archived by the provider within ARCHIVE_MARGIN",
            registry=registry,
        )
        self.callbacks = Counter(
            "batchwarden_callbacks",
            "callback delivery attempts, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.poll_cycle = Histogram(
            "batchwarden_poll_cycle_seconds",
            "duration of each poll cycle (read, retrieve all, write)",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.provider_request = Histogram(
            "batchwarden_provider_request_seconds",
            "duration of provider calls, by operation and outcome",
            ["operation", "outcome"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.jobs = Gauge(
            "batchwarden_jobs",
            "jobs by status, read from the database by the leader",
            ["status"],
            registry=registry,
        )
        self.oldest_job_age = Gauge(
            "batchwarden_oldest_job_age_seconds",
            "time since the oldest job in an open status last changed (leader)",
            ["status"],
            registry=registry,
        )
        self.job_transitions = Counter(
            "batchwarden_job_transitions",
            "job status changes made by the leader, by new status",
            ["status"],
            registry=registry,
        )
        self.callback_delivery = Histogram(
            "batchwarden_callback_delivery_seconds",
            "from a job's end to its callback's delivery",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.db_pool_size = Gauge(
            "batchwarden_db_pool_size",
            "database connections open",
            registry=registry,
        )
        self.db_pool_in_use = Gauge(
            "batchwarden_db_pool_in_use",
            "database connections in use",
            registry=registry,
        )
        self.db_pool_max = Gauge(
            "batchwarden_db_pool_max",
            "most database connections the pool opens",
            registry=registry,
        )
        self.channel_depth = Gauge(
            "batchwarden_channel_depth",
            "messages waiting in an actor channel",
            ["channel"],
            registry=registry,
        )
        self.channel_capacity = Gauge(
            "batchwarden_channel_capacity",
            "capacity of an actor channel",
            ["channel"],
            registry=registry,
        )
        Info("batchwarden_build", "version of this replica", registry=registry).info(
            {"version": __version__}
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch_pool(self, stats: Callable[[], PoolStats]) -> None:
        """Report the store's connection pool at each scrape."""
        self.db_pool_size.set_function(lambda: stats().size)
        self.db_pool_in_use.set_function(lambda: stats().in_use)
        self.db_pool_max.set_function(lambda: stats().max)

    def forget_jobs(self) -> None:
        """A follower reports no job census (the leader does)."""
        self.jobs.clear()
        self.oldest_job_age.clear()

    def watch_channel(self, name: str, channel) -> None:
        """Report a trio memory channel's depth at each scrape."""
        stats = channel.statistics
        self.channel_depth.labels(name).set_function(
            lambda: stats().current_buffer_used
        )
        self.channel_capacity.labels(name).set(stats().max_buffer_size)
