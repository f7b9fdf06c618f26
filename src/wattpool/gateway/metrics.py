"""Prometheus metrics of the gateway (one registry per app, so tests stay isolated)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "wattpool_requests", "HTTP requests answered, by route and status.",
            ["route", "status"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "wattpool_requests_in_flight", "Inference requests being served now.",
            ["route"], registry=self.registry,
        )
        self.ttft = Histogram(
            "wattpool_time_to_first_token_seconds", "Time from request to first token.",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.latency = Histogram(
            "wattpool_request_duration_seconds", "Time from request to last byte.",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "wattpool_tokens", "Tokens served, by model and kind (prompt, completion).",
            ["model", "kind"], registry=self.registry,
        )
        # Gauges set from the UsageWriter's own counters at scrape time.
        self.usage_dropped = Gauge(
            "wattpool_usage_records_dropped",
            "Usage records dropped since start because the write buffer was full.",
            registry=self.registry,
        )
        self.limiter_failures = Gauge(
            "wattpool_limiter_unavailable",
            "Requests admitted without limits since start because the limiter (Redis) did "
            "not answer.", registry=self.registry,
        )
        self.stale_key_answers = Gauge(
            "wattpool_api_key_stale_answers",
            "API key checks answered from cache because the database did not answer.",
            registry=self.registry,
        )
        self.usage_pending = Gauge(
            "wattpool_usage_records_pending", "Usage records waiting to be written.",
            registry=self.registry,
        )
        self.continuations = Counter(
            "wattpool_stream_continuations", "Streams continued on another instance after "
            "their node failed mid-stream.", ["model"], registry=self.registry,
        )
        self.preemptions = Counter(
            "wattpool_preemptions", "Batch streams preempted for interactive work.",
            ["model"], registry=self.registry,
        )
        self.retries = Counter(
            "wattpool_dispatch_retries", "Requests moved to another instance before the "
            "first token.", ["model"], registry=self.registry,
        )

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, kept for the next request: ``labels`` checks, joins
        and locks on every call (1.3 us warm, several times that with the cold caches of a
        pool under load), and a request takes five. Label values here come from bounded
        sets (routes, statuses, models the registry knows)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[no-any-return]
