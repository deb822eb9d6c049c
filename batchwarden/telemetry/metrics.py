"""Prometheus metrics of one replica, on a registry of its own.

Names follow Prometheus conventions: base units, `_total` counters,
`_seconds` histograms, labels of low cardinality (never a job id). The
names in INTERFACE.md are a public contract.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from batchwarden import __version__

FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


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
        self.callbacks = Counter(
            "batchwarden_callbacks",
            "callback delivery attempts, by outcome",
            ["outcome"],
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

    def watch_channel(self, name: str, channel) -> None:
        """Report a trio memory channel's depth at each scrape."""
        stats = channel.statistics
        self.channel_depth.labels(name).set_function(
            lambda: stats().current_buffer_used
        )
        self.channel_capacity.labels(name).set(stats().max_buffer_size)
