"""Run the gateway: REST (uvicorn) and gRPC in one event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from xdp_compute.config import Settings
from xdp_compute.gateway.app import create_app
from xdp_compute.gateway.tls import uvicorn_tls


def run_gateway(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=3, **uvicorn_tls(settings))
    server = uvicorn.Server(config)
    asyncio.run(server.serve())
