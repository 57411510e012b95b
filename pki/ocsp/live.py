"""``POST /ocsp-live``: the signer role's internal OCSP interface, for the status replicas.

Body: an OCSP request DER, as a client sent it to a replica. Answer: the OCSP response DER from
the signer's own ``OcspService`` (``lookup``, then ``sign_live`` for a LiveJob, in a small pool
bounded by ``MAX_PENDING_LIVE``: beyond it, tryLater), with ``X-OCSP-Kind``,
``X-OCSP-This-Update`` and ``X-OCSP-Next-Update`` so the replica can cache and label it.
Served on the signer's unix socket only (pki.roles.signer).

Live signatures are background HSM work (``pki.hsm.background``): the signer's status-change
pre-signing and CRLs take the HSM session before any queued live request, so a nonce flood
cannot delay a revocation (issue 13).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor

from pki.hsm import background
from pki.http import Request, Response
from pki.ocsp import response as resp
from pki.ocsp.endpoint import REQUEST_TYPE
from pki.ocsp.lookup import MAX_PENDING_LIVE, Answer, LiveJob
from pki.ocsp.mirror import KIND_HEADER, LIVE_PATH, NEXT_UPDATE_HEADER, THIS_UPDATE_HEADER
from pki.ocsp.service import OcspService

MAX_REQUEST = 64 * 1024


class LiveEndpoint:
    """The pki.http handler of ``POST /ocsp-live`` over a running OcspService."""

    def __init__(self, service: OcspService, *, threads: int = 2) -> None:
        self.service = service
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ocsp-live")

    def __call__(self, req: Request) -> Response | Awaitable[Response] | None:
        if req.path != LIVE_PATH:
            return None
        if req.method != "POST":
            return Response(405, b"use POST\n", headers=[("Allow", "POST")])
        ctype = req.headers.get("content-type", REQUEST_TYPE).split(";")[0].strip().lower()
        if ctype != REQUEST_TYPE or len(req.body) > MAX_REQUEST:
            return Response(400, b"an OCSP request, application/ocsp-request\n")
        service = self.service
        if not service.ready.is_set() or service.error is not None:
            return _reply(Answer(resp.TRY_LATER, "trylater"))
        found = service.lookup(req.body)
        if isinstance(found, LiveJob):
            return self._sign(found)
        return _reply(found)

    async def _sign(self, job: LiveJob) -> Response:
        service = self.service
        if service.live_pending >= MAX_PENDING_LIVE:
            return _reply(Answer(resp.TRY_LATER, "trylater"))
        service.live_pending += 1
        try:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.executor, _sign_in_background, service, job)
        except Exception:
            answer = Answer(resp.INTERNAL_ERROR, "internalerror")
        finally:
            service.live_pending -= 1
        return _reply(answer)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _sign_in_background(service: OcspService, job: LiveJob) -> Answer:
    with background():
        return service.sign_live(job)


def _reply(answer: Answer) -> Response:
    return Response(200, answer.body, "application/ocsp-response",
                    [(KIND_HEADER, answer.kind), (THIS_UPDATE_HEADER, str(answer.this_update)),
                     (NEXT_UPDATE_HEADER, str(answer.next_update)),
                     ("Cache-Control", "no-store")])
