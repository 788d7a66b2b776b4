"""Prometheus metrics for ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

SESSIONS = Gauge("lipsync_sessions", "Sessions currently open", registry=REGISTRY)
SESSIONS_TOTAL = Counter("lipsync_sessions_started", "Sessions started", registry=REGISTRY)
LOOP_LAG = Gauge("lipsync_event_loop_lag_seconds", "The event loop's worst lateness over the last 10 s (overload shows here first)", registry=REGISTRY)
FPS_OUT = Gauge("lipsync_fps_out", "Frames sent per second over the last second", ["session"], registry=REGISTRY)
FRAMES = Counter(
    "lipsync_frames",
    "Output slots by what filled them (generated, interpolated, repeated), slots not generated in time (dropped) and slots not sent (unsent)",
    ["backend", "kind"],
    registry=REGISTRY,
)
LATENCY_BUCKETS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
SERVER_LATENCY = Histogram(
    "lipsync_server_latency_seconds",
    "Newest audio sample a frame depends on -> frame handed to the encoder, plus the lookahead",
    ["backend"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BACKEND_TIME = Histogram(
    "lipsync_backend_seconds",
    "Backend time per generated frame",
    ["backend"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.5, 1.0),
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
