"""Run the gateway: REST (uvicorn) and gRPC in one event loop; and the container's health probe.

Before anything listens, ``run_gateway`` checks what an operator can get wrong, each as one line
(an ``XdpError`` the CLI prints): the database (reachable, a SQLite directory that exists, the
schema this code expects; only a brand-new empty database is initialised), and both ports (a
port another process holds is an error — the REST socket is bound here, without SO_REUSEPORT,
and handed to uvicorn; the gRPC server is built with ``grpc.so_reuseport=0``).

``python -m xdp_compute.gateway.server healthcheck`` probes ``/healthz`` on the port the settings
name (XDP_HTTP_PORT, TLS from XDP_TLS_CERT/XDP_CLIENT_CA): the image's HEALTHCHECK, which so
follows the configured port instead of a number written into the Dockerfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

from xdp_compute.config import Settings, default_db_url, is_loopback
from xdp_compute.errors import XdpError


class GatewayStartFailed(XdpError):
    """The gateway could not start listening (a port in use, a socket that cannot be bound)."""

    status, slug, title = 503, "gateway-start-failed", "Gateway could not start"


def _addrinfo(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    h = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(h, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise GatewayStartFailed(f"cannot resolve listen address {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    return family, addr


def bind_listener(host: str, port: int, what: str, env: str) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; one line if the port is taken.

    SO_REUSEADDR only (restarts over TIME_WAIT); never SO_REUSEPORT, which would let a second
    gateway share the port with the first and split its connections.
    """
    family, addr = _addrinfo(host, port)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol says
    # TCP (they inherit the listener's). Without it Nagle held each response's body for the
    # client's delayed ACK: ~40 ms on every REST call (issue #13).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        reason = "already in use (another gateway?)" if e.errno in (98, 48) else (e.strerror or str(e))
        raise GatewayStartFailed(f"{what} port {host}:{port} {reason}; choose another with {env}") from None
    sock.set_inheritable(True)
    return sock


def prepare_database(settings: Settings) -> None:
    """Open the database once before serving: unreachable, missing directory, outdated schema ->
    one line (``DatabaseUnavailable`` / ``SchemaOutdated``); a brand-new one is initialised."""
    from pathlib import Path

    from xdp_compute.gateway.store import Store

    if settings.db_url == default_db_url():
        Path(".xdp").mkdir(exist_ok=True)  # the default location is the gateway's own to create
    Store.open(settings.db_url, create=True).close()


def run_gateway(settings: Settings) -> None:
    """Check the database and ports, then serve REST and gRPC until stopped."""
    import uvicorn

    from xdp_compute.gateway.app import create_app
    from xdp_compute.gateway.observability import configure_logging
    from xdp_compute.gateway.tls import uvicorn_tls

    configure_logging(settings.log_format)  # JSON lines with request ids (or text), uvicorn's included
    http_sock = bind_listener(settings.http_host, settings.http_port, "REST", "--http / XDP_HTTP_PORT")
    try:
        # The gRPC server binds inside the app's lifespan; find a taken port now, with one line.
        bind_listener(settings.grpc_host, settings.grpc_port, "gRPC", "--grpc / XDP_GRPC_PORT").close()
        prepare_database(settings)
        app = create_app(settings)
        config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                                log_config=None, lifespan="on", timeout_graceful_shutdown=3, **uvicorn_tls(settings))
        server = uvicorn.Server(config)
        asyncio.run(server.serve(sockets=[http_sock]))
    finally:
        http_sock.close()
    if not server.started:
        raise GatewayStartFailed("the gateway stopped while starting; the log above says why")


def healthcheck(settings: Settings, timeout: float = 3.0) -> str | None:
    """Probe the running gateway's ``/healthz`` where the settings say it listens; None when it
    answers 200, else one line saying what failed."""
    import ssl
    import urllib.error
    import urllib.request

    host = settings.http_host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    context = None
    scheme = "http"
    if settings.tls_cert:
        scheme = "https"
        # The deployment CA signs the gateway's certificate (SAN 127.0.0.1 and localhost).
        context = ssl.create_default_context(cafile=settings.client_ca)
    elif not is_loopback(host):
        return f"plaintext probe of {host} refused (no XDP_TLS_CERT)"
    url = f"{scheme}://{shown}:{settings.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return None if r.status == 200 else f"{url} answered {r.status}"
    except urllib.error.HTTPError as e:
        return f"{url} answered {e.code}"
    except (OSError, ValueError) as e:
        return f"{url} unreachable: {getattr(e, 'reason', None) or e}"


def main(argv: list[str] | None = None) -> int:
    """``python -m xdp_compute.gateway.server healthcheck``: exit 0 when healthy, 1 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["healthcheck"]:
        print("usage: python -m xdp_compute.gateway.server healthcheck", file=sys.stderr)
        return 2
    try:
        problem = healthcheck(Settings())
    except XdpError as e:
        problem = e.detail
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
