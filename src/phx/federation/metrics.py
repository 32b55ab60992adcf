"""Federation metrics (Prometheus, through the app's :class:`~phx.server.metrics.Registry`).

Per destination (gauges refreshed from the database by the sender's poll, so every instance reports the
shared truth): backlog, age of the oldest queued message, consecutive failures, seconds until the next
full attempt. Counters are per process. Source domains are not used as labels on the receiving side: with
an open policy anyone could mint label values.
"""

from __future__ import annotations

from collections.abc import Sequence

from phx.server.metrics import Counter, Gauge, Registry

from .outbox_store import DestinationRow

__all__ = ["FederationMetrics"]


class FederationMetrics:
    def __init__(self, registry: Registry | None = None) -> None:
        r = registry if registry is not None else Registry()
        self.registry = r
        self.backlog: Gauge = r.gauge(
            "phx_federation_outbox_backlog", "Messages queued for a destination", ["destination"]
        )
        self.oldest_age: Gauge = r.gauge(
            "phx_federation_outbox_oldest_age_seconds",
            "Age of the oldest message queued for a destination (0 when empty)",
            ["destination"],
        )
        self.failures: Gauge = r.gauge(
            "phx_federation_destination_failures",
            "Consecutive failed delivery attempts to a destination",
            ["destination"],
        )
        self.backoff: Gauge = r.gauge(
            "phx_federation_destination_backoff_seconds",
            "Seconds until the next full delivery attempt to a destination (0: not backing off)",
            ["destination"],
        )
        self.sent: Counter = r.counter(
            "phx_federation_sent_total",
            "Messages a destination answered (accepted or duplicate)",
            ["destination"],
        )
        self.dropped: Counter = r.counter(
            "phx_federation_dropped_total",
            "Messages given up on: refused for good by the peer, or expired",
            ["destination", "reason"],
        )
        self.attempts: Counter = r.counter(
            "phx_federation_attempts_total", "Delivery attempts by outcome", ["destination", "outcome"]
        )
        self.received: Counter = r.counter(
            "phx_federation_received_total", "QS-to-QS frames received, by result", ["status"]
        )
        self.refused: Counter = r.counter(
            "phx_federation_refused_total",
            "QS-to-QS requests or frames refused, by reason (policy, signature, rate limit, ...)",
            ["reason"],
        )
        self.queue_deleted: Counter = r.counter(
            "phx_federation_queue_deleted_total", "QueueDeleted reports received from remote QSs"
        )

    def observe_destinations(self, rows: Sequence[DestinationRow], now: float) -> None:
        for row in rows:
            d = row.destination.value
            self.backlog.set(row.backlog, destination=d)
            age = 0.0 if row.oldest_created_at is None else max(0.0, now - row.oldest_created_at)
            self.oldest_age.set(age, destination=d)
            self.failures.set(row.failures, destination=d)
            self.backoff.set(max(0.0, row.retry_at_ms / 1000 - now), destination=d)
