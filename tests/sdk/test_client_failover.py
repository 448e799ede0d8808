"""The SDK's failover between gateway replicas' URLs (issue #18), against a real gateway app
served by uvicorn on a loopback port, behind a refused port and a stalled one."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from xdp_compute import AsyncClient, Client
from xdp_compute import errors as E


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connecting is refused


@pytest.fixture
def live_gateway(services: Any) -> Iterator[tuple[str, str]]:
    """(URL, analyst token) of the gateway app served on a free loopback port."""
    import uvicorn

    from xdp_compute.gateway.app import create_app

    token = services.store.create_principal("analyst", "ann", "CN-FJ")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(services.settings, services), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", token
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_a_refused_replica_is_skipped_for_any_call(live_gateway: tuple[str, str]) -> None:
    url, token = live_gateway
    dead = f"http://127.0.0.1:{_refused_port()}"
    with Client(f"{dead},{url}", token) as c:
        assert c.me().name == "ann"
        assert c.url == url  # later calls go straight to the replica that answered
        assert c.me().name == "ann"
    with Client([dead, url], token) as c:  # a list works too
        assert c.me().name == "ann"


def test_every_replica_down_is_gateway_unreachable() -> None:
    urls = [f"http://127.0.0.1:{_refused_port()}" for _ in range(2)]
    with Client(urls, "tok") as c, pytest.raises(E.GatewayUnreachable):
        c.me()


def test_a_stalled_replica_is_left_only_by_calls_safe_to_repeat(stalled_port: int,
                                                                 live_gateway: tuple[str, str]) -> None:
    url, token = live_gateway
    stalled = f"http://127.0.0.1:{stalled_port}"
    with Client([stalled, url], token, timeout=0.5) as c:
        assert c.me().name == "ann"  # a GET is repeated on the next replica
    with Client([stalled, url], token, timeout=0.5) as c, pytest.raises(E.GatewayTimeout):
        # A submission without an idempotency key may have run: it is not repeated elsewhere.
        c.submit_query("SELECT COUNT(*) AS n FROM patients", epsilon=0.1)
    with Client([stalled, url], token, timeout=0.5) as c, pytest.raises(E.NotFound):
        # With a key it is repeated: the next replica answers (here: no such dataset).
        c.submit_query("SELECT COUNT(*) AS n FROM patients", epsilon=0.1, idempotency_key="k1")


def test_the_async_client_fails_over_too(live_gateway: tuple[str, str]) -> None:
    url, token = live_gateway

    async def run() -> str:
        async with AsyncClient([f"http://127.0.0.1:{_refused_port()}", url], token) as c:
            return (await c.me()).name

    assert asyncio.run(run()) == "ann"
