"""Several signing processes for large batches of OCSP records (signer role only).

One token session signs on one core, and a session may not be shared between threads (SoftHSM
crashes), so a burst — an incident re-signing the answers of hundreds of thousands of
certificates — is spread over ``ocsp.sign_processes`` child processes of the signer, each with
its own session on the CA token, opened with the signer's own PIN file. They sign what the
signer hands them (to-be-signed ResponseData, a responder key label) and nothing else; they
hold no store connection and listen on nothing. Started on the first large batch ("spawn":
a forked child would share the parent's PKCS#11 session), stopped with the signer.

The per-process globals below are the worker side: one session per child process.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}        # in a child process: its Hsm session


def _open(home: str) -> None:
    from pki.config import Config
    from pki.hsm import Hsm

    config = Config.load(Path(home))
    c = config.hsm
    _WORKER["hsm"] = Hsm(c.module, c.token_label, config.read_secret(c.user_pin_file),
                         config.softhsm_conf_path())


def _sign(label: str, tbs_list: list[bytes]) -> list[bytes]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    from pki.hsm import HsmRsaKey

    key = _WORKER["hsm"].key(label)
    if isinstance(key, HsmRsaKey):
        return [key.sign(tbs, padding.PKCS1v15(), hashes.SHA256()) for tbs in tbs_list]
    return [key.sign(tbs, ec.ECDSA(hashes.SHA256())) for tbs in tbs_list]


class SignPool:
    """``processes`` signing children, started on first use."""

    def __init__(self, home: Path, processes: int) -> None:
        self.home = home
        self.processes = processes
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.broken = False
        self.signed = 0                 # signatures the children returned

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_open, initargs=(str(self.home),))
                log.info("OCSP signing pool: %d processes", self.processes)
            return self._executor

    def submit(self, label: str, tbs_list: list[bytes]) -> list[concurrent.futures.Future[Any]]:
        """Start signing ``tbs_list`` with the key ``label``, split over the processes."""
        pool = self._pool()
        size = -(-len(tbs_list) // self.processes)
        return [pool.submit(_sign, label, tbs_list[i:i + size])
                for i in range(0, len(tbs_list), size)]

    def gather(self, futures: list[concurrent.futures.Future[Any]]) -> list[bytes]:
        """The signatures, in order (raises BrokenProcessPool if a child died)."""
        out: list[bytes] = []
        for future in futures:
            out.extend(future.result())
        self.signed += len(out)
        return out

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None


__all__ = ["BrokenProcessPool", "SignPool"]
