"""The HTTP server shell: app factory, error mapping, body limits, metrics, uvicorn runner."""

from __future__ import annotations

from .app import Service, create_app
from .http import DEFAULT_MAX_BODY, error_response, read_body
from .metrics import Counter, Gauge, Registry
from .runner import ServiceFactory, StartupFailed, run_event_loop, running, serve, uvicorn_config

__all__ = [
    "DEFAULT_MAX_BODY",
    "Counter",
    "Gauge",
    "Registry",
    "Service",
    "ServiceFactory",
    "StartupFailed",
    "create_app",
    "error_response",
    "read_body",
    "run_event_loop",
    "running",
    "serve",
    "uvicorn_config",
]
