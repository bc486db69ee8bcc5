"""Which names a request may reach this server by: a web page cannot drive a server bound to loopback.

A server on 127.0.0.1 trusts whoever reaches its port, and without credentials any web page the user opens can reach
it two ways:
- DNS rebinding: the page's own name (evil.example) is made to resolve to 127.0.0.1 after it loaded, so the browser
  sends the page's requests here as same-origin and lets it read the answers (prompts, images, the job list); its
  requests say ``Host: evil.example``.
- A cross-site request that needs no preflight (a form's POST): it cannot read the answer, but POST
  /sdapi/v1/interrupt or /sdapi/v1/skip with no body ends the user's job; its request says ``Origin: https://evil.example``.
So a server bound to loopback answers only requests whose Host, and Origin where a browser sent one, name loopback
(localhost, *.localhost, 127.0.0.0/8, ::1) or a name the operator allowed (``--allowed-hosts``: the name a reverse proxy
on this machine is reached by, when it passes that name on, as Caddy does and nginx with ``proxy_set_header Host
$host``). A server bound beyond loopback (``--host 0.0.0.0``) is reached by names sdopt cannot know, so it checks only
where ``--allowed-hosts`` is given; its protection is ``--api-key``. Jupyter's server does the same
(``allow_remote_access``). Clients that are not browsers send their Host as the URL they were given and no Origin.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Callable
from urllib.parse import urlsplit

ANY_HOST = "*"


def host_name(netloc: str) -> str:
    """The name in a Host header or an origin's netloc: without the port and an IPv6 address's brackets, lowercased,
    without a fully qualified name's final dot."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):  # [::1]:7860
        address, _, rest = netloc[1:].partition("]")
        # only a port may follow the brackets: "[::1].evil.example" is no loopback address, whatever it names
        return address if rest == "" or rest.startswith(":") else netloc
    if netloc.count(":") == 1:  # name:port (an IPv6 address without brackets has several)
        netloc = netloc.partition(":")[0]
    return netloc.rstrip(".")


def is_loopback(name: str) -> bool:
    """localhost and its subdomains (browsers resolve them to loopback themselves: RFC 6761), or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_allowed_hosts(names: tuple[str, ...]) -> None:
    """--allowed-hosts holds names (example.com, 10.0.0.5, [fd00::5]) or *: a URL, a name with a port or a wildcard
    (*.example.com: no Host carries a *) would never match."""
    from sdopt.errors import SdoptError

    for name in names:
        # An IPv6 address may come in brackets, as the address bar shows it
        bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        # "null" is the Origin of every sandboxed frame and file:// page: allowing it would let any of them in
        if name != ANY_HOST and (not host_name(name) or name.lower() == "null" or any(c in bare for c in "/@ *[]")
                                 or host_name(name) != bare.lower().rstrip(".")):
            raise SdoptError(f"--allowed-hosts {name!r}: give host names as a browser's address bar shows them, each in "
                             "full, without a scheme or port (sd.example.com, 10.0.0.5, [fd00::5]), or * alone for any")


class HostGuard:
    """403 for a request whose Host, or Origin, names neither loopback nor an allowed name (ASGI middleware)."""

    def __init__(self, app, allowed: frozenset[str], bound: str, error_body: Callable[[dict, int, str], dict]):
        self.app, self.allowed, self.bound, self.error_body = app, allowed, bound, error_body

    def _admits(self, name: str) -> bool:
        return is_loopback(name) or name in self.allowed

    def _admits_origin(self, origin: str, hosts: list[str]) -> bool:
        """A page of this server's own origin (the Origin names the Host the request was sent to: localhost:7860 from
        http://localhost:7860/), or of an allowed name. A page on another loopback port (a local dev server on
        localhost:3000) is another site: no preflight stops its form POST to /sdapi/v1/interrupt. "null" (a sandboxed
        frame, a file:// page) is a browser's page that is not this server's either."""
        try:
            netloc = urlsplit(origin).netloc.strip().lower()  # "" for "null"
        except ValueError:  # "http://[::1": no browser sends it
            return False
        return bool(netloc) and (any(netloc == host.strip().lower() for host in hosts) or host_name(netloc) in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Each Host and Origin the request carries, not the last one only: Starlette's request.headers reads the first.
        sent = [(field, raw.decode("latin-1")) for field, raw in scope.get("headers") or () if field in (b"host", b"origin")]
        hosts = [value for field, value in sent if field == b"host"]
        for field, value in sent:
            # An HTTP/1.0 client may send no Host: it is no browser (they all send one), so nothing to guard against.
            if value and not (self._admits(host_name(value)) if field == b"host" else self._admits_origin(value, hosts)):
                return await self._refuse(scope, send, f"{field.decode().capitalize()} {value!r}")
        return await self.app(scope, receive, send)

    async def _refuse(self, scope, send, what: str):
        allowed = ", ".join(["loopback (localhost, 127.0.0.1, ::1)", *sorted(self.allowed)])
        message = (f"this server answers requests addressed to {allowed} only, and this one came with {what}: a web page "
                   f"on another site cannot use a server on {self.bound} (DNS rebinding, cross-site requests). Behind a reverse "
                   "proxy that passes its own name, start sdopt serve with --allowed-hosts NAME (docs/serve.md)")
        body = json.dumps(self.error_body(scope, 403, message)).encode()  # the shape of the API the request's route is of
        await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
