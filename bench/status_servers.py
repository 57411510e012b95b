"""The status role's OCSP handler under two servers: the project's asyncio server and uvicorn.

    .venv/bin/python bench/status_servers.py [--count 100000] [--duration 10] [--rounds 3]

Issue #12 keeps pki/http/server.py for the status role only if it is ahead of a well-kept ASGI
server serving the same handler on the same machine in the same run. Both sides here run the
*same* handler object graph as `cps-admin serve --role status`: ``OcspEndpoint`` over an
``OcspMirror`` of the store (records pre-signed by a running `serve --role signer`), each in
its own process:

  asyncio  — pki.http.server.serve (what the status role runs; stdlib asyncio loop);
  uvicorn  — uvicorn with httptools and its default loop (uvloop when installed), through the
             ASGI adapter below (a few lines: read the body, call the handler, send).

wrk drives both with bench/wrk/ocsp_mix.lua (1,000 distinct requests: good, revoked, unknown),
rounds interleaved, medians printed side by side.
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # bench/ is sys.path[0] when run as a script
import ocsp as ocsp_bench  # the request mix and answer checks of bench/ocsp.py

SERVERS = ("asyncio", "uvicorn")


# --- the handler, built exactly as pki.roles.status builds it ------------------------------
def status_handler(home: Path) -> tuple[Any, Any]:
    from pki.config import Config
    from pki.crl.reader import StoreCas
    from pki.ocsp.endpoint import OcspEndpoint
    from pki.ocsp.mirror import OcspMirror, SignerClient
    from pki.roles import signer_socket
    from pki.store.db import Store

    config = Config.load(home)
    store = Store(config.effective_db_url(None))
    mirror = OcspMirror(store, StoreCas(config, store),
                        signer=SignerClient(signer_socket(home)))
    endpoint = OcspEndpoint(mirror, executor=ThreadPoolExecutor(max_workers=8))
    mirror.start()
    if not mirror.ready.wait(600):
        raise SystemExit("error: the OCSP mirror did not load in 600 s")
    return endpoint, mirror


# --- the ASGI adapter -------------------------------------------------------------------------
def asgi(handler: Any) -> Any:
    """The pki.http handler as an ASGI app (HTTP only; /health answered here as the asyncio
    server answers it)."""
    from pki.http import Request, Response
    from pki.http.server import Prebuilt

    parsed: dict[bytes, list[tuple[bytes, bytes]]] = {}   # Prebuilt header blocks, split once

    def header_list(response: Response) -> list[tuple[bytes, bytes]]:
        if type(response) is Prebuilt:
            found = parsed.get(response.fields)
            if found is None:
                found = [tuple(line.split(b": ", 1)) for line in   # type: ignore[misc]
                         response.fields.split(b"\r\n") if line]
                if len(parsed) > 4096:
                    parsed.clear()
                parsed[response.fields] = found
            return found
        return [(b"content-type", response.content_type.encode()),
                (b"content-length", str(len(response.body)).encode()),
                *((k.encode(), v.encode()) for k, v in response.headers)]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Request(scope["method"], scope["path"], scope["query_string"].decode(),
                          {k.decode("latin-1"): v.decode("latin-1")
                           for k, v in scope["headers"]}, body)
        if request.path == "/health":
            result: Any = Response(200, b'{"status":"ok"}', "application/json")
        else:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                result = Response(404, b"not found\n")
        await send({"type": "http.response.start", "status": result.status,
                    "headers": header_list(result)})
        await send({"type": "http.response.body", "body": result.body})

    return app


def serve_child(kind: str, home: Path, port: int) -> None:
    endpoint, mirror = status_handler(home)
    if kind == "asyncio":
        from pki.http.server import serve
        serve("127.0.0.1", port, [endpoint], None, readiness=[mirror.ready.is_set])
        return
    import uvicorn
    uvicorn.run(asgi(endpoint), host="127.0.0.1", port=port, http="httptools",
                lifespan="off", access_log=False, log_level="warning")


def loop_name(kind: str) -> str:
    if kind == "asyncio":
        return "stdlib asyncio loop"
    try:
        import uvloop  # noqa: F401
        return "httptools, uvloop (uvicorn's default loop)"
    except ImportError:
        return "httptools, stdlib asyncio loop"


REVOKED = 0.01                      # of the population, as bench/ocsp.py's default


# --- the run ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (default 1: on a 2-CPU machine one core drives, "
                             "the other serves)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve[0], Path(args.serve[1]), int(args.serve[2]))
        return
    ocsp_bench.check_population(args.count, REVOKED)

    from pki.ca.authority import Authority
    from pki.ca.hierarchy import init_home
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="status-servers-"))
    home = tmp / "home"
    init_home(home, key_type="p256")
    auth = Authority.open(home)
    serials = harness.populate_store(auth, args.count, REVOKED)
    requests = ocsp_bench.mix(serials, auth.issuing_ca("PERSONNES").certificate)
    auth.close()
    hexfile = tmp / "requests.hex"
    hexfile.write_text("".join(der.hex() + "\n" for _, der in requests))
    signer = harness.start_role(home, "signer", tmp / "signer.log")
    children: dict[str, Any] = {}
    try:
        harness.wait_until(lambda: harness.unix_healthy(home / "run" / "signer.sock"), signer,
                           tmp / "signer.log", "signer", timeout=1800)
        urls = {}
        for kind in SERVERS:
            port = harness.free_port()
            log = tmp / f"{kind}.log"
            children[kind] = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, str(home), str(port)],
                stdout=log.open("ab"), stderr=subprocess.STDOUT,
                env=harness.env(), start_new_session=True)
            urls[kind] = f"http://127.0.0.1:{port}"
            harness.wait_until(lambda url=urls[kind]: harness.healthy(url), children[kind],
                               log, kind, timeout=600)
            ocsp_bench.check_answers(urls[kind] + "/ocsp", requests)   # also warms unknowns
        print(f"{args.count} certificates; the same OcspEndpoint(OcspMirror) handler in both; "
              f"every one of the {len(requests)} requests checked on both", flush=True)
        script = harness.WRK_DIR / "ocsp_mix.lua"

        def run(kind: str, duration: int) -> dict[str, float]:
            return harness.wrk(urls[kind], script=script, script_args=(str(hexfile),),
                               threads=args.threads, connections=args.connections,
                               duration=duration)

        for kind in SERVERS:
            run(kind, 2)                                             # warm-up
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in SERVERS}
        for _ in range(args.rounds):
            for kind in SERVERS:
                runs[kind].append(run(kind, args.duration))
        print()
        print(f"{'server':10s} {'responses/s':>12s} {'p50 ms':>8s} {'p99 ms':>8s} "
              f"{'errors':>7s} {'RSS MiB':>8s}  rounds")
        medians = {}
        for kind in SERVERS:
            m = medians[kind] = harness.median(runs[kind])
            rss = harness.tree_kib(children[kind].pid) / 1024
            print(f"{kind:10s} {m['rate']:12.0f} {m['p50']:8.2f} {m['p99']:8.2f} "
                  f"{m['non2xx'] + m['errors']:7.0f} {rss:8.0f}  "
                  + ", ".join(f"{r['rate']:.0f}" for r in runs[kind]))
        for kind in SERVERS:
            print(f"  {kind}: {loop_name(kind)}")
        ratio = medians["asyncio"]["rate"] / medians["uvicorn"]["rate"]
        print(f"asyncio/uvicorn: {ratio:.2f}x -> "
              + ("the project's server is ahead" if ratio > 1 else "uvicorn is ahead"))
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s x {args.rounds} "
              f"rounds each, interleaved; total {time.monotonic() - t0:.0f} s")
    finally:
        for proc in (*children.values(), signer):
            harness.stop(proc)


if __name__ == "__main__":
    main()
