"""A TCP proxy on 127.0.0.1 that a test or benchmark cuts and restores: an outage on demand.

``start_cuttable_proxy(url)`` forwards every connection to the server at ``url``. ``cut()``
resets the connections open now and every new one (it accepts them and resets them at once, so
each attempt to reach the server is counted in ``stats``); ``freeze()`` keeps every connection
open but passes nothing either way (a server that hangs); ``restore()`` forwards again. The
server behind it keeps running, so what the client sees is exactly an unreachable endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit


@dataclass
class ProxyStats:
    """Connections the proxy accepted: in all, and while it was cut (attempts that failed)."""

    connections: int = 0
    while_cut: int = 0


class CuttableProxy:
    """A proxy in front of one server; see the module doc. Use as a context manager."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._parts = parts
        self.stats = ProxyStats()
        self.cut_now = False
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._ready = threading.Event()
        self._port = 0
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="cuttable-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        """The upstream URL with the proxy's address (path kept)."""
        return urlunsplit(self._parts._replace(netloc=f"127.0.0.1:{self._port}"))

    def cut(self) -> None:
        """Reset every open connection, and every new one until :meth:`restore`."""
        self._call(self._cut)

    def freeze(self) -> None:
        """Keep connections open but pass no byte until :meth:`restore`."""
        self._call(self._flowing.clear)

    def restore(self) -> None:
        """Forward connections again (after a cut or a freeze)."""
        self._call(self._restore)

    def close(self) -> None:
        """Stop the proxy."""
        if self._loop.is_closed():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----- on the proxy's loop ------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self._flowing.set()
        self._port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _call(self, function: Callable[[], object]) -> None:
        async def run() -> None:
            result = function()
            if asyncio.iscoroutine(result):
                await result

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _cut(self) -> None:
        self.cut_now = True
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()

    def _restore(self) -> None:
        self.cut_now = False
        self._flowing.set()

    async def _shutdown(self) -> None:
        for writer in list(self._open):
            _reset(writer)
        if self._server is not None:
            self._server.close()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.cut_now:
            self.stats.while_cut += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                self._open.discard(side)
                with contextlib.suppress(Exception):
                    side.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # frozen: hold the bytes
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (what a client of a killed server meets)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def start_cuttable_proxy(upstream_url: str) -> CuttableProxy:
    """A proxy on a free port in front of ``upstream_url``, forwarding until cut."""
    return CuttableProxy(upstream_url)
