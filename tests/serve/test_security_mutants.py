"""The service's ASGI guards called directly: token, body limit, headers, Host and Origin.

Written to kill the mutants of ``histoscan/serve/security.py`` (scripts/mutants.py). Each guard
wraps a tiny ASGI app that records what reached it; the expected status, JSON body and headers
are written out here. No server, no TestClient, no model: each test takes milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from histoscan.serve.security import (
    PAGE_CSP,
    BodyLimitMiddleware,
    HostOriginMiddleware,
    PageHeadersMiddleware,
    TokenMiddleware,
    _hostname,
    _is_ip,
    normalise_origin,
    send_json_error,
)

CHALLENGE = (b"www-authenticate", b'Bearer realm="histoscan"')


class App:
    """Reads the whole body, then answers 200 ``ok`` with one header of its own."""

    def __init__(self, fail: Exception | None = None, start_first: bool = False) -> None:
        self.calls: list[dict] = []
        self.body = b""
        self.fail = fail
        self.start_first = start_first

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(scope)
        if self.start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["type"] == "http":
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        if self.fail is not None:
            raise self.fail
        if not self.start_first:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
            )
        await send({"type": "http.response.body", "body": b"ok"})


def run(guard, scope: dict, chunks: list[bytes] = (b"",), extra: list[dict] = ()) -> list[dict]:  # type: ignore[no-untyped-def]
    """Call ``guard`` with ``scope`` and a body in ``chunks``; the messages it sent."""
    sent: list[dict] = []
    messages = [*extra] + [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent


def http(path: str = "/v1/predict", headers: list[tuple[bytes, bytes]] = (), **kw) -> dict:  # type: ignore[no-untyped-def]
    return {"type": "http", "path": path, "headers": list(headers), **kw}


def error_of(sent: list[dict]) -> tuple[int, dict, list]:
    start, body = sent
    assert body["type"] == "http.response.body"
    return start["status"], json.loads(body["body"]), start["headers"]


def test_json_error_message() -> None:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(send_json_error(send, 418, "tea 'pot'", [(b"x-a", b"b")]))
    body = json.dumps({"error": "tea 'pot'"}).encode()
    assert sent == [
        {
            "type": "http.response.start",
            "status": 418,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-a", b"b"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]
    sent.clear()
    asyncio.run(send_json_error(send, 400, "x"))
    assert len(sent[0]["headers"]) == 2


@pytest.mark.parametrize(
    "value",
    ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer  s3cret ", "Bearer s3cret\t"],
)
def test_the_exact_token_passes(value: str) -> None:
    app = App()
    sent = run(TokenMiddleware(app, "s3cret"), http(headers=[(b"authorization", value.encode())]))
    assert len(app.calls) == 1 and sent[0]["status"] == 200


@pytest.mark.parametrize(
    "value",
    [
        "Bearer s3cretX",
        "Bearer s3cre",
        "Bearer S3CRET",
        "Basic s3cret",
        "Bearers3cret",
        "s3cret",
        "Bearer",
        "Bearer x s3cret",
        "Token s3cret",
    ],
)
def test_near_misses_are_refused(value: str) -> None:
    app = App()
    sent = run(TokenMiddleware(app, "s3cret"), http(headers=[(b"authorization", value.encode())]))
    assert app.calls == []
    status, body, headers = error_of(sent)
    assert (status, body) == (401, {"error": "invalid token"})
    assert CHALLENGE in headers


@pytest.mark.parametrize("headers", [[], [(b"authorization", b"")], [(b"x-other", b"Bearer t")]])
def test_a_missing_token_says_how_to_send_it(headers: list) -> None:
    app = App()
    status, body, sent_headers = error_of(run(TokenMiddleware(app, "t"), http("/v1", headers)))
    assert (status, body) == (401, {"error": "missing token: send 'Authorization: Bearer <token>'"})
    assert sent_headers[-1] == CHALLENGE and app.calls == []


def test_header_names_are_matched_in_any_case() -> None:
    app = App()
    run(TokenMiddleware(app, "t"), http(headers=[(b"x", b"y"), (b"Authorization", b"Bearer t")]))
    assert len(app.calls) == 1


@pytest.mark.parametrize("path", ["/", "/healthz", "/v1x", "/v2/v1", "/static/v1", "", "/V1"])
def test_open_paths_need_no_token(path: str) -> None:
    app = App()
    assert run(TokenMiddleware(app, "t"), http(path))[0]["status"] == 200
    assert len(app.calls) == 1


def test_protected_paths_and_other_scopes() -> None:
    for path in ("/v1", "/v1/", "/v1/model"):
        app = App()
        assert run(TokenMiddleware(app, "t"), http(path))[0]["status"] == 401
    app = App()
    run(TokenMiddleware(app, "t"), {"type": "lifespan"})
    run(TokenMiddleware(app, "t"), {"type": "websocket", "path": "/v1/ws", "headers": []})
    run(TokenMiddleware(app, "t"), {"type": "http", "headers": []})  # no path: the root
    status, body, _ = error_of(run(TokenMiddleware(App(), "t"), {"type": "http", "path": "/v1"}))
    assert (status, body["error"]) == (401, "missing token: send 'Authorization: Bearer <token>'")
    assert [c["type"] for c in app.calls] == ["lifespan", "websocket", "http"]


def test_body_limit_by_header() -> None:
    app = App()
    scope = http(headers=[(b"content-length", b"1048577")])
    status, body, _ = error_of(run(BodyLimitMiddleware(app, 2**20), scope))
    assert (status, body) == (
        413,
        {"error": "upload too large: the limit is 1 MB (--max-upload-mb)"},
    )
    assert app.calls == []
    scope = http(headers=[(b"content-length", b"1572865")])
    _, body, _ = error_of(run(BodyLimitMiddleware(app, 1536 * 1024), scope))
    assert body["error"] == "upload too large: the limit is 1.5 MB (--max-upload-mb)"


def test_body_at_the_limit_passes() -> None:
    app = App()
    scope = http(headers=[(b"content-length", b"10")])
    sent = run(BodyLimitMiddleware(app, 10), scope, [b"12345", b"67890"])
    assert sent[0]["status"] == 200 and app.body == b"1234567890"


@pytest.mark.parametrize("length", [None, b"abc", b"-5", b"3"])
def test_body_over_the_limit_while_streaming(length: bytes | None) -> None:
    app = App()
    headers = [(b"content-length", length)] if length is not None else []
    sent = run(BodyLimitMiddleware(app, 10), http(headers=headers), [b"123456", b"78901"])
    status, body, _ = error_of(sent)
    assert status == 413 and body["error"].startswith("upload too large: the limit is 9.53674e-06")
    assert len(app.calls) == 1


def test_what_the_app_answers_to_a_cut_off_body_is_replaced() -> None:
    class Catching(App):
        async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            try:
                await receive()
                await receive()
            except Exception:
                await send({"type": "http.response.start", "status": 400, "headers": []})
                await send({"type": "http.response.body", "body": b"bad"})

    sent = run(BodyLimitMiddleware(Catching(), 4), http(), [b"abc", b"de"])
    assert error_of(sent)[0] == 413


def test_disconnects_do_not_count_and_bugs_still_raise() -> None:
    app = App()
    extra = [{"type": "http.disconnect", "body": b"x" * 50}]
    sent = run(BodyLimitMiddleware(app, 5), http(), [b"abc"], extra=extra)
    assert sent[0]["status"] == 200
    with pytest.raises(RuntimeError, match="bug"):
        run(BodyLimitMiddleware(App(fail=RuntimeError("bug")), 100), http(), [b"abc"])


def test_a_started_answer_is_not_followed_by_a_second_one() -> None:
    sent = run(BodyLimitMiddleware(App(start_first=True), 3), http(), [b"ab", b"cd"])
    assert [m["type"] for m in sent] == ["http.response.start"]  # no 413 after a start


def test_body_limit_leaves_other_scopes_alone() -> None:
    app = App()
    run(BodyLimitMiddleware(app, 0), {"type": "lifespan", "headers": []})
    assert len(app.calls) == 1


CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/"])
def test_the_page_gets_a_strict_policy(path: str) -> None:
    assert PAGE_CSP == CSP
    start, body = run(PageHeadersMiddleware(App()), http(path))
    assert start["headers"] == [
        (b"x-app", b"1"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", CSP.encode()),
        (b"x-frame-options", b"DENY"),
    ]
    assert body == {"type": "http.response.body", "body": b"ok"}


@pytest.mark.parametrize("path", ["/v1/predict", "/staticx", "/docs", "//", ""])
def test_other_answers_get_the_basic_headers(path: str) -> None:
    start, _ = run(PageHeadersMiddleware(App()), http(path))
    assert start["headers"] == [
        (b"x-app", b"1"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


def test_headers_on_an_answer_without_headers_and_other_scopes() -> None:
    (start,) = run(PageHeadersMiddleware(App(start_first=True)), http("/docs"), [b""])[:1]
    assert start["headers"] == [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    app = App()
    run(PageHeadersMiddleware(app), {"type": "lifespan"})
    assert len(app.calls) == 1
    start, _ = run(PageHeadersMiddleware(App()), {"type": "http", "headers": []})  # no path
    assert start["headers"][-2:] == [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]

    class Bare(App):
        async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            await send({"type": "http.response.start", "status": 204})  # no headers key

    (start,) = run(PageHeadersMiddleware(Bare()), http("/"))
    assert start["headers"][0] == (b"x-content-type-options", b"nosniff")


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Example.org:8000", "example.org"),
        (" Host ", "host"),
        ("[::1]:80", "::1"),
        ("[FE80::1]", "fe80::1"),
        ("::1", "::1"),
        ("10.0.0.5:99", "10.0.0.5"),
        ("a:b:c", "a:b:c"),
    ],
)
def test_hostname(value: str, name: str) -> None:
    assert _hostname(value) == name


def test_is_ip() -> None:
    assert _is_ip("10.0.0.5") and _is_ip("::1")
    assert not _is_ip("example.org") and not _is_ip("")


def test_normalise_origin() -> None:
    assert normalise_origin(" HTTP://Host:8000/ ") == "http://host:8000"
    assert normalise_origin("https://App.example.org/path?q") == "https://app.example.org"
    for bad in ("ftp://x", "http://", "null", "example.org"):
        with pytest.raises(ValueError, match=r"^not an origin \(scheme://host\[:port\]\): "):
            normalise_origin(bad)


def guard(bind: str = "127.0.0.1", origins: tuple[str, ...] = ()) -> HostOriginMiddleware:
    return HostOriginMiddleware(App(), bind, origins)


def test_hosts_on_loopback() -> None:
    g = guard()
    assert not g.any_ip
    for host in ("localhost", "LOCALHOST:8000", "127.0.0.1:8000", "[::1]:8000", "::1"):
        assert g.host_allowed(host), host
    for host in ("evil.com", "10.0.0.5", "127.0.0.2", None, "", "localhost.evil.com"):
        assert not g.host_allowed(host), host
    assert "" not in guard("0.0.0.0").hosts and "" not in g.hosts


def test_hosts_on_a_named_bind_and_allowed_origins() -> None:
    g = guard("Server.LAN", ("https://App.Example.org:8443",))
    assert g.allow_origins == {"https://app.example.org:8443"}
    assert g.host_allowed("server.lan:8000") and g.host_allowed("app.example.org")
    assert not g.host_allowed("10.0.0.5") and not g.any_ip


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", ""])
def test_hosts_on_every_interface(bind: str) -> None:
    g = guard(bind)
    assert g.any_ip
    assert g.host_allowed("10.0.0.5:8000") and g.host_allowed("[fe80::1]:80")
    assert g.host_allowed(socket.gethostname().upper())
    assert g.host_allowed(socket.getfqdn())
    assert not g.host_allowed("evil.com")
    assert g.host_allowed("localhost:8000")  # the loopback names stay allowed


def test_origins() -> None:
    g = guard(origins=("https://app.example.org",))
    assert g.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000", "http")
    assert g.origin_allowed("HTTP://LOCALHOST:8000", " Localhost:8000 ", "http")
    assert not g.origin_allowed("https://127.0.0.1:8000", "127.0.0.1:8000", "http")
    assert not g.origin_allowed("http://127.0.0.1:9000", "127.0.0.1:8000", "http")
    assert g.origin_allowed("https://app.example.org", "127.0.0.1:8000", "http")
    assert not g.origin_allowed("null", "127.0.0.1:8000", "http")


def test_foreign_host_is_403_before_anything() -> None:
    g = guard()
    status, body, _ = error_of(run(g, http("/", [(b"host", b"evil.com")])))
    assert (status, body) == (
        403,
        {"error": "Host 'evil.com' is not served here; use http://127.0.0.1 or localhost"},
    )
    status, body, _ = error_of(run(g, http("/")))
    assert body["error"].startswith("Host None is not served here")
    ws = {"type": "websocket", "path": "/", "headers": [(b"host", b"evil.com")]}
    assert error_of(run(g, ws))[0] == 403
    assert g.app.calls == []
    run(g, {"type": "lifespan"})
    assert len(g.app.calls) == 1


def test_cross_site_origin_is_403() -> None:
    g = guard()
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://evil.com")]
    status, body, _ = error_of(run(g, http("/v1/predict", headers)))
    assert (status, body) == (
        403,
        {
            "error": "cross-site request from 'https://evil.com' refused; start the server with "
            "--allow-origin to allow a page on another origin"
        },
    )
    same = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]
    assert run(g, http("/", same))[0]["status"] == 200
    assert error_of(run(g, http("/", same, scheme="https")))[0] == 403
    secure = [(b"host", b"127.0.0.1:8000"), (b"origin", b"https://127.0.0.1:8000")]
    assert run(g, http("/", secure, scheme="https"))[0]["status"] == 200
    ws = {"type": "websocket", "path": "/", "headers": secure, "scheme": "wss"}
    assert run(g, ws)[0]["status"] == 200
    assert run(g, http("/", [(b"host", b"localhost")]))[0]["status"] == 200  # no Origin: no browser
