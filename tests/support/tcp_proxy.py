"""A TCP proxy on 127.0.0.1 that can be cut or stalled: a second address for the same service
(broker, Redis, Salesforce), whose connections the test can drop at once (like a node that dies)
or leave open while nothing goes through in either direction (a network partition), without
touching the service."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.accepted = 0
        self._flowing = asyncio.Event()  # new connections
        self._flowing.set()
        self._links: set[asyncio.Event] = set()  # one per connection: forwarding or held
        self._cut = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set() or any(not link.is_set() for link in self._links)

    def stall(self, *, new_connections: bool = True) -> None:
        """A partition: every connection stays open, nothing is forwarded either way, not even
        a close; a new connection is accepted and gets no further (a SYN lost in the void).
        `new_connections=False`: only the connections open now hang (a dead keep-alive
        connection), new ones go through."""
        if new_connections:
            self._flowing.clear()
        for link in self._links:
            link.clear()

    def resume(self) -> None:
        """The partition heals: what was held goes through, in order."""
        self._flowing.set()
        for link in self._links:
            link.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._flowing.wait()
        if self._cut:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except (OSError, TimeoutError):
            writer.close()
            return
        self._writers |= {writer, up_writer}
        link = asyncio.Event()
        link.set()
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)
        self._links.discard(link)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await link.wait()
                data = await reader.read(65536)
                await link.wait()  # what arrives during a stall is held, an EOF too
                if not data:
                    return
                writer.write(data)
                await writer.drain()

    async def cut(self) -> None:
        """Stop listening and reset every connection through the proxy (a stall ends)."""
        self._cut = True
        self.resume()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
