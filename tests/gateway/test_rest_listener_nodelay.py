"""The REST listener's accepted connections have TCP_NODELAY set (issue #13).

A listener made with protocol 0 gave accepted sockets protocol 0, and asyncio sets TCP_NODELAY
only on sockets whose protocol says TCP: Nagle's algorithm then held every response body until
the client's delayed ACK, ~40 ms per REST call. The check is on the socket option itself, the
way uvicorn's server accepts connections (asyncio ``start_server`` on the bound socket)."""

from __future__ import annotations

import asyncio
import socket

from xdp_compute.gateway.server import bind_listener


def test_accepted_rest_connections_have_tcp_nodelay() -> None:
    sock = bind_listener("127.0.0.1", 0, "REST", "XDP_PORT")
    assert sock.proto == socket.IPPROTO_TCP
    seen: list[int] = []

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            s = writer.get_extra_info("socket")
            seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        port = sock.getsockname()[1]
        async with server:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            w.close()

    asyncio.run(main())
    assert seen and seen[0] != 0
