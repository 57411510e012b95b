"""Several signing processes for large batches of OCSP records (signer role only).

One token session signs on one core, and a session may not be shared between threads (SoftHSM
crashes), so a burst — an incident re-signing the answers of hundreds of thousands of
certificates — is spread over ``ocsp.sign_processes`` child processes of the signer, each with
its own session on the CA token, opened with the signer's own PIN file. They sign what the
signer hands them (record headers: status and times; they build the ResponseData beside the
signature) with the responder key named, and nothing else; they hold no store connection and
listen on nothing. Started on the first large batch ("spawn":
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

from cryptography.hazmat.primitives.serialization import Encoding

log = logging.getLogger(__name__)
_DER = Encoding.DER

_WORKER: dict[Any, Any] = {}        # in a child process: its Hsm session, CaStates by key


def _open(home: str) -> None:
    from pki.config import Config
    from pki.hsm import Hsm

    config = Config.load(Path(home))
    c = config.hsm
    _WORKER["hsm"] = Hsm(c.module, c.token_label, config.read_secret(c.user_pin_file),
                         config.softhsm_conf_path())


def _sign(state_key: tuple[str, bytes, bytes, bytes], label: str,
          headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Complete records: each header with the responder's signature over its ResponseData
    (built here, beside the signature, so the signer's own thread only stores)."""
    import datetime as dt

    from cryptography import x509

    from pki.ocsp import records as rec

    state = _WORKER.get(state_key)
    if state is None:
        slug, issuer_der, responder_der, algorithm = state_key
        state = rec.CaState(0, slug, x509.load_der_x509_certificate(issuer_der), responder_der,
                            algorithm, dt.datetime.max.replace(tzinfo=dt.UTC),
                            signer=_KeySigner(_WORKER["hsm"].key(label)))
        _WORKER[state_key] = state
    return [state.sign(serial, header) for serial, header in headers]


class _KeySigner:
    """``records.TbsSigning`` over an HSM key of this process's session."""

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding

        from pki.hsm import HsmRsaKey

        self._key = key
        self._rsa = isinstance(key, HsmRsaKey)
        self._args: tuple[Any, ...] = ((padding.PKCS1v15(), hashes.SHA256()) if self._rsa
                                       else (ec.ECDSA(hashes.SHA256()),))

    def sign(self, tbs: bytes) -> bytes:
        return bytes(self._key.sign(tbs, *self._args))


class SignPool:
    """``processes`` signing children, started on first use."""

    def __init__(self, home: Path, processes: int) -> None:
        self.home = home
        self.processes = processes
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.broken = False
        self.signed = 0                 # records the children signed

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_open, initargs=(str(self.home),))
                log.info("OCSP signing pool: %d processes", self.processes)
            return self._executor

    def submit(self, state: Any, label: str, headers: dict[bytes, bytes]
               ) -> list[concurrent.futures.Future[Any]]:
        """Start signing the records ``headers`` (serial -> header) of ``state`` (a
        ``records.CaState``) with the responder key ``label``, split over the processes."""
        pool = self._pool()
        key = (state.slug, state.issuer.public_bytes(_DER), state.responder_der,
               state.algorithm)
        items = list(headers.items())
        size = -(-len(items) // self.processes)
        return [pool.submit(_sign, key, label, items[i:i + size])
                for i in range(0, len(items), size)]

    def gather(self, futures: list[concurrent.futures.Future[Any]]) -> list[bytes]:
        """The complete records, in order (raises BrokenProcessPool if a child died)."""
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
