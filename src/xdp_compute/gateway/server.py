"""Run the gateway: REST (uvicorn) and gRPC in one event loop."""

from __future__ import annotations

import asyncio

import uvicorn

from xdp_compute.config import Settings
from xdp_compute.gateway.app import create_app
from xdp_compute.gateway.observability import configure_logging
from xdp_compute.gateway.tls import uvicorn_tls


def run_gateway(settings: Settings) -> None:
    configure_logging(settings.log_format)  # JSON lines with request ids (or text), uvicorn's included
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning", log_config=None,
                            lifespan="on", timeout_graceful_shutdown=3, **uvicorn_tls(settings))
    server = uvicorn.Server(config)
    asyncio.run(server.serve())
