"""The client's address and scheme behind reverse proxies we were told to trust, and only them.

``trusted_proxies`` (login.json, CIDRs, none by default) names the peers whose
``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed. From such a peer the client is the
rightmost ``X-Forwarded-For`` address that is not itself a trusted proxy, and the scheme is what
the proxy says; from any other peer both headers are ignored (a client could write anything
there) and the peer is the client. Requests that arrived over https get HSTS on every answer.

Set on the patient app's WSGI environ, so ``request.remote_addr`` (sign-in throttling, audit) and
``request.is_secure`` (the ``Secure`` cookie, HSTS) follow. gunicorn applies the same list to its
own ``X-Forwarded-Proto`` handling (``cps_login.roles``), so the two never disagree.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pki.errors import ConfigError

HSTS = "max-age=31536000"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ConfigError(f"trusted_proxies: {value!r} is not an address or a network "
                              "(CIDR)") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    """The address ``text`` names (IPv4-mapped IPv6 as IPv4), or None."""
    text = text.strip()
    return _parsed(text) if len(text) <= 64 else None      # no address is longer


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Address | None:
    """Memoised (bounded in count, and in size by the caller): a server sees the same few
    peers, its proxies and its clients, request after request."""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    def __init__(self, app: WsgiApp, trusted: Sequence[str]) -> None:
        self._app = app
        self._networks = parse_networks(trusted)

    def _trusted(self, addr: Address | None) -> bool:
        return addr is not None and any(addr in net for net in self._networks)

    def client_and_scheme(self, environ: dict[str, Any]) -> tuple[str, str | None]:
        """(client address, scheme the proxy reports or None) for this request."""
        peer = str(environ.get("REMOTE_ADDR", ""))
        if not self._trusted(_address(peer)):
            return peer, None
        client = peer
        for hop in reversed(str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")):
            addr = _address(hop)
            if addr is None:
                break               # a hop we cannot read: keep the last one we could
            client = str(addr)
            if not self._trusted(addr):
                break
        protos = str(environ.get("HTTP_X_FORWARDED_PROTO", "")).split(",")
        proto = protos[-1].strip().lower()         # the nearest proxy's word
        return client, proto if proto in ("http", "https") else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        client, scheme = self.client_and_scheme(environ)
        environ["REMOTE_ADDR"] = client
        if scheme is not None:
            environ["wsgi.url_scheme"] = scheme
        if environ.get("wsgi.url_scheme") != "https":
            return self._app(environ, start_response)

        def with_hsts(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            if not any(k.lower() == "strict-transport-security" for k, _ in headers):
                headers.append(("Strict-Transport-Security", HSTS))
            return start_response(status, headers, *args)

        return self._app(environ, with_hsts)
