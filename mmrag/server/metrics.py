"""Prometheus metrics: request counts and latency histograms per endpoint (route template, not raw path)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

# Latency buckets from 5 ms (a cached thumbnail) to 10 s (a cold model load).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so that several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mmrag_http_requests_total", "HTTP requests", ["method", "endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("mmrag_http_request_duration_seconds", "HTTP request latency", ["method", "endpoint"],
                                 buckets=_BUCKETS, registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def recording_send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            # The route template keeps label cardinality bounded ("/api/points/{point_id}/image").
            endpoint = getattr(route, "path", None) or ("/mcp" if scope.get("path", "").startswith("/mcp") else "other")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - start)
