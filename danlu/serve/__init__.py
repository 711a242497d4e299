"""The inference server: ``danlu serve`` — FastAPI + uvicorn, micro-batched ONNX Runtime (or torch),
API keys, limits, Prometheus metrics, drift and hot swap — and a Python client.

The client and the settings import without the server's libraries; the server parts (FastAPI,
uvicorn, prometheus-client, ONNX Runtime) load on first use.

Example:
    >>> from danlu.serve import Client, ServeSettings
    >>> ServeSettings(models=("wine@production",)).loopback
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from danlu.serve._client import (
    AuthError,
    Client,
    InvalidRequestError,
    ModelNotFoundError,
    ServerError,
)
from danlu.serve._needs import SERVING_BASE, ServingNeeds, serving_needs, serving_requirements
from danlu.serve._types import Canary, QueueFull, RequestError, ServeSettings

if TYPE_CHECKING:
    from danlu.serve._app import create_app
    from danlu.serve._auth import route_scopes
    from danlu.serve._metrics import ServeMetrics
    from danlu.serve._pool import ModelPool
    from danlu.serve._server import app_factory, build_app, serve

__all__ = [
    "AuthError",
    "Canary",
    "Client",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ModelPool",
    "QueueFull",
    "RequestError",
    "SERVING_BASE",
    "ServeMetrics",
    "ServeSettings",
    "ServerError",
    "ServingNeeds",
    "app_factory",
    "build_app",
    "create_app",
    "route_scopes",
    "serve",
    "serving_needs",
    "serving_requirements",
]

_LAZY = {
    "create_app": "danlu.serve._app",
    "route_scopes": "danlu.serve._auth",
    "ServeMetrics": "danlu.serve._metrics",
    "ModelPool": "danlu.serve._pool",
    "app_factory": "danlu.serve._server",
    "build_app": "danlu.serve._server",
    "serve": "danlu.serve._server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'danlu.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
