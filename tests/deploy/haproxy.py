"""The HAProxy configuration of a replicated deployment (the test's, and docs/deployment.md's).

One frontend; OCSP, CRLs and CA certificates go to the status replicas, the patient space to the
patient replicas, everything else to the broker replicas. ``/metrics`` is refused at the front
(operators scrape each replica directly).

Why each setting: a replica that dies mid-request must cost the client nothing.
- ``option httpchk GET /health`` with a short ``inter``/``fall``: a dead or starting replica
  leaves the rotation within ~0.5 s;
- ``retry-on all-retryable-errors`` + ``retries 3``: a request that met a dead replica before
  the checks noticed (connection refused, reset, empty answer, 502/503/504) is sent again;
- ``option redispatch 1``: every retry goes to another server, not the dead one again;
- ``option http-buffer-request``: HAProxy waits for the whole request (headers and body)
  before choosing a server, so a POST can always be replayed. Without it, a POST whose server
  died after accepting the connection was sometimes neither retried nor answered: HAProxy
  closed the client's keep-alive connection silently (its "client must retry" path), and
  nothing was logged — 5 to 7 lost requests in 12,000 under CPU pressure (tests/deploy,
  10 kill cycles); none in 26,400 with it.
Every request routed here is safe to repeat: OCSP and CRL fetches are reads, a challenge is a
fresh random value, and a login consumes its challenge atomically (a replay is refused, never
double-counted).
"""

from __future__ import annotations

from collections.abc import Sequence

Address = tuple[str, int]

STATUS_PATHS = ("/ocsp", "/crl/", "/ca/")   # /ocsp also prefixes GET /ocsp/<base64>
PATIENT_PATHS = ("/patient/", "/espace")


def _servers(name: str, addresses: Sequence[Address]) -> list[str]:
    return [f"    server {name}{i} {host}:{port}" for i, (host, port) in
            enumerate(addresses, start=1)]


def haproxy_config(bind: Address, status: Sequence[Address], broker: Sequence[Address],
                   patient: Sequence[Address] = (), *, check_inter_ms: int = 200,
                   log_stdout: bool = False) -> str:
    """The configuration text; ``patient`` may be empty (no patient backend). ``log_stdout``
    logs every request to standard output (HAProxy run in the foreground, as the test does)."""
    lines = [
        "global",
        "    maxconn 4096",
        *(["    log stdout format raw local0"] if log_stdout else []),
        "",
        "defaults",
        "    mode http",
        *(["    log global", "    option httplog"] if log_stdout else []),
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 5s",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        "    retries 3",
        "    retry-on all-retryable-errors",
        "    option redispatch 1",
        "    option http-buffer-request",
        f"    default-server check inter {check_inter_ms}ms fastinter {check_inter_ms // 2}ms "
        f"downinter {check_inter_ms * 2}ms fall 2 rise 2",
        "",
        "frontend cps",
        f"    bind {bind[0]}:{bind[1]}",
        "    option forwardfor",
        "    http-request deny deny_status 404 if { path_beg /metrics }",
        "    acl status_path path_beg " + " ".join(STATUS_PATHS),
        "    use_backend status if status_path",
    ]
    if patient:
        lines += ["    acl patient_path path_beg " + " ".join(PATIENT_PATHS),
                  "    use_backend patient if patient_path"]
    lines += ["    default_backend broker", "",
              "backend status", "    balance roundrobin", *_servers("status", status), "",
              "backend broker", "    balance roundrobin", *_servers("broker", broker)]
    if patient:
        lines += ["", "backend patient", "    balance roundrobin",
                  *_servers("patient", patient)]
    return "\n".join(lines) + "\n"
