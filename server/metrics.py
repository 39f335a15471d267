"""Prometheus metrics, one registry per application (no module-level runtime state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    """The figures /metrics exposes; gauges are refreshed just before each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected_clients = Gauge(
            "vigil_connected_clients",
            "Socket.IO connections by namespace",
            ["namespace"],
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "vigil_active_sessions",
            "Sessions neither completed nor ended early",
            registry=self.registry,
        )
        self.sessions_by_phase = Gauge(
            "vigil_sessions", "Sessions by phase", ["phase"], registry=self.registry
        )
        self.relayed_tracks = Gauge(
            "vigil_relayed_tracks", "Viewer tracks fed by this node's relay", registry=self.registry
        )
        self.publishers = Gauge(
            "vigil_publishers", "Patients publishing media to this node", registry=self.registry
        )
        self.events_written = Counter(
            "vigil_events_written", "Session events committed", registry=self.registry
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
