"""The gateway's Prometheus metrics, on a registry of its own (never the process-global one)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from genservice.replies.database import Pool
from genservice.replies.listener import ListenerHub


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.open_streams = Gauge(
            "gateway_open_streams", "Event streams open now, by route", ["route"], registry=registry
        )
        self.replies_started = Counter(
            "gateway_replies_started", "Replies started through POST /v1/replies", registry=registry
        )
        self.resumes = Counter(
            "gateway_resumes", "Streams opened on GET /v1/messages/{id}/events", ["from_start"], registry=registry
        )
        self.streams_ended_early = Counter(
            "gateway_streams_ended_early",
            "Streams ended before their `finished` event, by reason",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter("gateway_errors", "Error responses, by code", ["code"], registry=registry)
        self.owner_follows = Counter(
            "gateway_owner_follows",
            "Follows of a live reply tried on its owner, by outcome: finished there; not_started (unreachable) or"
            " failed_midway, both continued through Postgres; slow_start: read Postgres while the owner was slow"
            " to start, and moved to it when it answered",
            ["outcome"],
            registry=registry,
        )
        self.owner_streams = Gauge(
            "gateway_owner_streams",
            "WatchReply streams open now on live replies' owners, each shared by this process's followers of one reply",
            registry=registry,
        )


class HubCollector(Collector):
    """What the process's one LISTEN connection sees, read from the hub at scrape time."""

    def __init__(self, hub: ListenerHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "gateway_listener_notices", "Notifications received on the LISTEN connection", self._hub.notices_received
        )
        yield CounterMetricFamily(
            "gateway_listener_notices_dropped",
            "Payloads on the channel that were not a valid notice, logged and dropped",
            self._hub.notices_dropped,
        )
        yield GaugeMetricFamily(
            "gateway_listener_connected", "1 while the LISTEN connection is up", 1 if self._hub.connected else 0
        )
        yield GaugeMetricFamily(
            "gateway_listener_healthy",
            "0 when the listener keeps failing on something unexpected",
            int(self._hub.healthy),
        )
        yield GaugeMetricFamily(
            "gateway_listener_subscriptions", "Streams subscribed to notifications", self._hub.subscription_count
        )
        yield SummaryMetricFamily(
            "gateway_notification_lag_seconds",
            "From a NOTIFY being written (before its commit) to its arrival at this gateway",
            count_value=self._hub.lag_count,
            sum_value=self._hub.lag_seconds_sum,
        )


class PoolCollector(Collector):
    """The Postgres pool's checkouts and waits, read from the pool at scrape time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        stats = self._pool.get_stats()
        yield CounterMetricFamily(
            "gateway_db_checkouts", "Connections lent out by the Postgres pool", stats.get("requests_num", 0)
        )
        yield CounterMetricFamily(
            "gateway_db_checkout_waits",
            "Checkouts that waited for a connection (every one was lent out)",
            stats.get("requests_queued", 0),
        )
