"""Which names the server answers to (the Host header): a guard against DNS rebinding.

A web page on a name its author controls can point that name at 127.0.0.1 once loaded (DNS
rebinding): the browser then takes the local server for the page's own origin and lets the page
read its answers, which only a token would stop. Those requests still carry the page's name in
Host, so answering only the names that mean this server
(localhost, the address it listens on, `--allowed-host`) refuses them. Clients that are not
browsers can send any Host; the check is not an access control for them (that is `--token`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .errors import error_body

WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})


def host_name(header: str) -> str | None:
    """The name in a Host header, lower case, without port or final dot; None if malformed.

    'Example.org.:8000' -> 'example.org', '[::1]:8000' -> '::1'.
    """
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal
        name, bracket, port = header[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
        return name
    name, colon, port = header.partition(":")
    if colon and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """The Host names a server bound to `bound` answers, with `extra` names ('*': any).

    Always: localhost (and names under .localhost, which browsers keep on this machine) and
    loopback addresses. Bound to one address: that address or name too. Bound to every address
    (0.0.0.0, ::): any IP address (a page whose origin is an address is this server's own
    origin, not a rebound name) and this machine's host name.
    """

    def __init__(self, bound: str, extra: Iterable[str] = ()) -> None:
        extra = [name.strip().lower().rstrip(".") for name in extra]
        self.any = "*" in extra
        self.every_address = bound in WILDCARD_ADDRESSES
        names = {"localhost", *extra, (host_name(bound) or bound).lower()}
        if self.every_address:
            names.add(socket.gethostname().lower())
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        if self.any or header is None:  # no Host at all: HTTP/1.0, never a browser
            return True
        name = host_name(header)
        if name is None:
            return False
        if name in self.names or name.endswith(".localhost"):
            return True
        address = _ip(name)
        return address is not None and (address.is_loopback or self.every_address)


def add_host_check(app: FastAPI, policy: HostPolicy) -> None:
    """Answer 403 `host_not_allowed` to a request whose Host is not one of `policy`'s."""

    @app.middleware("http")
    async def check_host(request: Request, call_next: Any) -> Response:
        given = request.headers.get("host")
        if policy.allows(given):
            return await call_next(request)
        message = (
            f"this server does not answer to the name {given!r} (a guard against DNS "
            "rebinding); its operator can add it with --allowed-host"
        )
        request_id = getattr(request.state, "request_id", None)
        return JSONResponse(error_body("host_not_allowed", message, request_id), status_code=403)
