"""A ``pki.http`` server in its own process, for tests that measure the process (descriptors,
RSS, log lines) and for wrk runs: ``python -m tests.httpd.app PORT_FILE [--nofile N]``.

It serves ``/health`` (built in), ``/echo`` (the body's length), ``/host`` (the Host seen) and
writes its port to PORT_FILE once listening. ``--nofile`` lowers RLIMIT_NOFILE first, as a
small production limit would be.
"""

from __future__ import annotations

import argparse
import logging
import resource
import threading
from pathlib import Path

from pki.http import Request, Response


def echo(req: Request) -> Response | None:
    if req.path == "/host":
        return Response(200, req.headers.get("host", "").encode("latin-1"))
    if req.path != "/echo":
        return None
    return Response(200, b"%d\n" % len(req.body))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--nofile", type=int, default=0)
    parser.add_argument("--max-connections", type=int, default=None,
                        help="an explicit cap (above the limit: the EMFILE path is reached)")
    args = parser.parse_args()
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import asyncio

    from pki.http.server import HttpServer, Limits, run

    server = HttpServer([echo], limits=Limits(max_connections=args.max_connections))
    ready = threading.Event()

    async def go() -> None:
        task = asyncio.ensure_future(run(server, "127.0.0.1", 0, ready_event=ready))
        while not ready.is_set():
            await asyncio.sleep(0.01)
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_port))
        tmp.rename(args.port_file)
        await task

    asyncio.run(go())


if __name__ == "__main__":
    main()
