"""ASGI middleware that runs before any body is read: Host/Origin, token, upload size, headers.

Checking here rather than in a FastAPI dependency matters: dependencies run after the multipart
body has been parsed, so a client without the token could still make the server spool gigabytes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1"
# the page loads nothing from elsewhere; blob:/data: images are the thumbnails and Grad-CAMs
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)


async def send_json_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class TokenMiddleware:
    """Every ``/v1`` request needs ``Authorization: Bearer <token>``; 401 JSON otherwise."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        protected = path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
        if scope["type"] != "http" or not protected:
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Bearer realm="histoscan"')]
        auth = _header(scope, b"authorization")
        if not auth:
            await send_json_error(
                send, 401, "missing token: send 'Authorization: Bearer <token>'", challenge
            )
            return
        scheme, _, given = auth.partition(" ")
        given_bytes = given.strip().encode("utf-8", "replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, self.token):
            await send_json_error(send, 401, "invalid token", challenge)
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"upload too large: the limit is {self.max_bytes / 2**20:g} MB (--max-upload-mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_json_error(send, 413, self._message())
            return
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app answers to a cut-off body, the answer is 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await send_json_error(send, 413, self._message())


class PageHeadersMiddleware:
    """Security headers on every response; a strict content policy on the page and its files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_page = path == "/" or path.startswith("/static/")

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if is_page:
                    headers += [
                        (b"content-security-policy", PAGE_CSP.encode()),
                        (b"x-frame-options", b"DENY"),
                    ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, add_headers)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def _hostname(value: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.rsplit(":", 1)[0] if ":" in value else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def normalise_origin(origin: str) -> str:
    """'HTTP://Host:8000/' -> 'http://host:8000' (scheme://host[:port], nothing else)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


class HostOriginMiddleware:
    """Refuse requests whose Host or Origin is foreign, with 403 JSON, before reading a body.

    Host (against DNS rebinding): the bind address, ``localhost``/``127.0.0.1``/``::1``, the hosts
    of the allowed origins, and, when bound to all interfaces, any IP address (a rebinding attack
    needs a name). Origin (against cross-site POSTs from a page the user visits, token or not):
    absent (not a browser), the server's own origin (``scheme://`` + Host), or an allowed origin.
    """

    def __init__(self, app: ASGIApp, bind_host: str, allow_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allow_origins = {normalise_origin(o) for o in allow_origins}
        bind = _hostname(bind_host) if bind_host not in WILDCARD_BINDS else bind_host
        self.any_ip = bind in WILDCARD_BINDS
        self.hosts = (
            set(LOOPBACK_NAMES)
            | {bind}
            | {_hostname(urlsplit(o).netloc) for o in self.allow_origins}
        )
        if self.any_ip:
            import socket

            self.hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.hosts.discard("")

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        name = _hostname(host)
        return name in self.hosts or (self.any_ip and _is_ip(name))

    def origin_allowed(self, origin: str, host: str, scheme: str) -> bool:
        try:
            origin = normalise_origin(origin)
        except ValueError:
            return False  # "null" (sandboxed frames, file://) and anything malformed
        return origin in self.allow_origins or origin == f"{scheme}://{host.strip().lower()}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if not self.host_allowed(host):
            await send_json_error(
                send, 403, f"Host {host!r} is not served here; use http://127.0.0.1 or localhost"
            )
            return
        origin = _header(scope, b"origin")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        if origin is not None and not self.origin_allowed(origin, host or "", scheme):
            await send_json_error(
                send,
                403,
                f"cross-site request from {origin!r} refused; start the server with "
                "--allow-origin to allow a page on another origin",
            )
            return
        await self.app(scope, receive, send)
