"""An in-process ``pki.http`` server for tests: its own event loop in a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from pki.http.server import HttpServer


@dataclass
class Running:
    server: HttpServer
    loop: asyncio.AbstractEventLoop
    port: int
    stop: asyncio.Event
    thread: threading.Thread

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=10)


def run_server(server: HttpServer, port: int = 0) -> Running:
    """Start ``server`` on 127.0.0.1:``port`` (0: a free one) and return once it listens."""
    started = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()

        async def go() -> None:
            listener = await server.start("127.0.0.1", port)
            box.update(loop=loop, stop=stop, port=server.server_port)
            started.set()
            await stop.wait()
            server.close()
            listener.close()
            await listener.wait_closed()

        loop.run_until_complete(go())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(10), "test server did not start"
    return Running(server, box["loop"], int(box["port"]), box["stop"], thread)  # type: ignore[arg-type]
