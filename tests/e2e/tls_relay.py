"""A TCP relay on loopback for network-attacker tests: records (and optionally flips) the bytes it forwards."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class RelayConnection:
    opened: float
    closed: float | None = None
    up: bytearray = field(default_factory=bytearray)    # client (node) -> server (gateway)
    down: bytearray = field(default_factory=bytearray)  # server -> client
    flipped_at: float | None = None


class TcpRelay:
    """Listen on 127.0.0.1:<port>, forward every connection to ``target``; runs its own event loop thread.

    ``flip_down_at``: in each connection, XOR one bit of the server->client byte at that offset
    (counted in that connection's server->client stream) — a man in the middle changing data.
    """

    def __init__(self, target: tuple[str, int], flip_down_at: int | None = None) -> None:
        self.target, self.flip_down_at = target, flip_down_at
        self.connections: list[RelayConnection] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-relay")
        self._server: asyncio.base_events.Server | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def all_bytes(self) -> bytes:
        return b"".join(bytes(c.up) + bytes(c.down) for c in self.connections)

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for t in asyncio.all_tasks(self._loop):
                t.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RelayConnection(opened=time.monotonic())
        self.connections.append(conn)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            conn.closed = time.monotonic()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, buf: bytearray, flip: bool) -> None:
            try:
                while data := await src.read(65536):
                    if flip and self.flip_down_at is not None and conn.flipped_at is None \
                            and len(buf) <= self.flip_down_at < len(buf) + len(data):
                        i = self.flip_down_at - len(buf)
                        data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
                        conn.flipped_at = time.monotonic()
                    buf.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_w, conn.up, False), pipe(up_r, writer, conn.down, True))
        conn.closed = time.monotonic()
