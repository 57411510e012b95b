"""A bounded client load through the front: a fixed number of requests per thread, every failure
kept with its cause (an exception, a non-200 status, or a wrong answer)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# (method, path, body, content type, check of the answer's body -> error text or None)
Check = Callable[[bytes], str | None]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes | None
    content_type: str | None
    check: Check


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, error: str | None) -> None:
        with self.lock:
            self.sent += 1
            if error is None:
                self.ok += 1
            else:
                self.failures.append(error)


def _one(conn: http.client.HTTPConnection, call: Call) -> str | None:
    headers = {"Content-Type": call.content_type} if call.content_type else {}
    conn.request(call.method, call.path, body=call.body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        return f"{call.method} {call.path[:40]}: HTTP {resp.status} {data[:120]!r}"
    problem = call.check(data)
    return None if problem is None else f"{call.method} {call.path[:40]}: {problem}"


def run_load(host: str, port: int, calls: list[Call], *, threads: int, per_thread: int,
             pause: float, result: LoadResult, sources: list[str] | None = None) -> None:
    """``threads`` keep-alive clients, each sending ``per_thread`` calls (cycling ``calls``)
    with ``pause`` seconds between them, thread n from source address ``sources[n]`` when
    given (distinct clients, as the broker's per-client limits see them). A failed request is
    counted, never retried: what the front does not absorb, the client sees."""

    def worker(offset: int, source: str | None) -> None:
        def connect() -> http.client.HTTPConnection:
            return http.client.HTTPConnection(host, port, timeout=15, source_address=(
                (source, 0) if source else None))

        conn = connect()
        for i in range(per_thread):
            call = calls[(offset + i) % len(calls)]
            try:
                error = _one(conn, call)
            except (OSError, http.client.HTTPException) as exc:
                error = f"{call.method} {call.path[:40]}: {type(exc).__name__}: {exc}"
                conn.close()
                conn = connect()
            result.add(error)
            time.sleep(pause)
        conn.close()

    started = time.monotonic()
    pool = [threading.Thread(target=worker, name=f"load-{n}",
                             args=(n * 7, sources[n] if sources else None))
            for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    result.seconds = time.monotonic() - started
