"""The labelling app's guards: what every request passes before a route sees it, and CSRF tokens.

:class:`RequestGuard` is one ASGI middleware that, in this order:

1. On a loopback bind without an access token, accepts only requests whose ``Host`` header
   names a loopback address (``localhost``, ``127.0.0.1``, ``[::1]``): a web page on another
   site cannot reach the app through DNS rebinding.
2. With an access token (required for any other bind), accepts only requests that carry it:
   ``Authorization: Bearer T``, the ``prefenv_access`` cookie, or ``?access=T`` on a GET (which
   then sets the cookie, so a browser opened on a printed link keeps working).
3. Reads the request body, refusing it with 413 when ``Content-Length`` or the bytes actually
   received pass the limit, before any route parses it; the route then reads the buffered body.
4. Adds security headers to every response (no referrer: links carry tokens; a strict content
   security policy: the page loads only its own scripts, styles and media).

A refused request gets a JSON ``{"error": message}`` (an HTML page when a browser asks for one)
and never reaches a route, so nothing is written. :class:`CsrfTokens` makes the per-annotator
CSRF tokens the routes check on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ACCESS_COOKIE",
    "ANNOTATOR_COOKIE",
    "CSRF_HEADER",
    "CsrfTokens",
    "RequestGuard",
    "error_page",
    "is_loopback",
    "refusal",
]

ACCESS_COOKIE = "prefenv_access"
"""Cookie holding the server's access token (set by a GET carrying ``?access=T``)."""
ANNOTATOR_COOKIE = "prefenv_annotator"
"""Cookie holding the annotator's own token (set by ``/a/{token}``)."""
CSRF_HEADER = "x-csrf-token"
COOKIE_MAX_AGE = 30 * 24 * 3600
"""Seconds a browser keeps the cookies: an annotator comes back over several days."""

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; media-src 'self'; script-src 'self'; "
        b"style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8765`` -> ``::1``, ``a:80`` -> ``a``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def refusal(request_headers: Headers, status: int, message: str) -> Response:
    """A refused request's response: an HTML page for a browser, else ``{"error": message}``."""
    if "text/html" in request_headers.get("accept", ""):
        return HTMLResponse(_error_page(status, message), status_code=status)
    return JSONResponse({"error": message}, status_code=status)


def _error_page(status: int, message: str, extra: str = "") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>prefenv label: '
        f'{status}</title><link rel="stylesheet" href="/static/label.css"></head><body>'
        f'<main class="notice"><h1>{status}</h1><p class="error">{html.escape(message)}</p>'
        f"{extra}</main></body></html>"
    )


def error_page(status: int, message: str, extra_html: str = "") -> HTMLResponse:
    """An HTML error page with ``message`` (escaped) and trusted ``extra_html`` below it."""
    return HTMLResponse(_error_page(status, message, extra_html), status_code=status)


class CsrfTokens:
    """Per-annotator CSRF tokens: ``HMAC-SHA256(server secret, annotator name)``, hex.

    The secret is random per server process, so a restart invalidates the tokens: the page
    takes the new one from its next ``/api/next``.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def token(self, annotator: str) -> str:
        return hmac.new(self._secret, annotator.encode(), hashlib.sha256).hexdigest()

    def check(self, annotator: str, given: str | None) -> bool:
        """Whether ``given`` is ``annotator``'s token (constant-time comparison)."""
        return given is not None and hmac.compare_digest(
            self.token(annotator).encode(), given.encode()
        )


Refuse = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestGuard:
    """ASGI middleware applying the checks of the module docstring to every HTTP request.

    Args:
        app: the application behind the guard.
        access_token: the token every request must carry, or None (then only loopback
            ``Host`` headers are accepted).
        max_body_bytes: the largest request body accepted.
    """

    def __init__(self, app: ASGIApp, *, access_token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.access_token = access_token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._problem(scope, headers)
        if problem is not None:
            await self._refuse(scope, receive, send, headers, *problem)
            return
        body = await self._read_body(headers, receive)
        if body is None:
            message = (f"request body over the {self.max_body_bytes}-byte limit: a label is a "
                       "few dozen bytes; send one label per request")  # fmt: skip
            await self._refuse(scope, receive, send, headers, 413, message)
            return
        await self.app(scope, _replay(body, receive), self._with_headers(scope, send))

    def _problem(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        """``(status, message)`` when the request may not go on, else None."""
        if self.access_token is None:
            host = _host_name(headers.get("host", ""))
            if not is_loopback(host):
                return 400, (
                    f"Host {host!r} is not a loopback name: this server is bound to loopback "
                    "without an access token; open it as http://127.0.0.1:PORT/ or start it "
                    "with --access-token"
                )
        elif not self._carries_token(scope, headers):
            return 401, (
                "missing or wrong access token: open the link `prefenv label` printed (it "
                "ends in ?access=...), or send the header 'Authorization: Bearer <token>'"
            )
        if len(headers.getlist("content-length")) > 1:
            return 400, "more than one Content-Length header: send one"
        return None

    def _carries_token(self, scope: Scope, headers: Headers) -> bool:
        assert self.access_token is not None
        expected = self.access_token.encode()
        scheme, _, given = headers.get("authorization", "").partition(" ")
        candidates = [given if scheme.lower() == "bearer" else None,
                      Request(scope).cookies.get(ACCESS_COOKIE), _query_access(scope)]  # fmt: skip
        return any(c is not None and hmac.compare_digest(c.encode(), expected) for c in candidates)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (declared or received)."""
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left; the route sees an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, status: int, text: str
    ) -> None:
        response = refusal(headers, status, text)
        response.headers["cache-control"] = "no-store"
        if status == 413:
            response.headers["connection"] = "close"  # the unread rest of the body is dropped
        await response(scope, receive, self._with_headers(scope, send))

    def _with_headers(self, scope: Scope, send: Send) -> Send:
        """``send`` that adds the security headers (and the access cookie, when given in the
        query) to the response."""
        extra = list(SECURITY_HEADERS)
        given = _query_access(scope)
        if (
            self.access_token is not None
            and given is not None
            and hmac.compare_digest(given.encode(), self.access_token.encode())
        ):
            # Lax, not Strict: a link clicked in another site's page (mail, chat) must still
            # reach the app; the annotator cookie, which POSTs need, stays Strict.
            cookie = (f"{ACCESS_COOKIE}={self.access_token}; Path=/; HttpOnly; SameSite=Lax; "
                      f"Max-Age={COOKIE_MAX_AGE}")  # fmt: skip
            extra.append((b"set-cookie", cookie.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return send_with_headers


def _query_access(scope: Scope) -> str | None:
    """The ``access`` query parameter of a GET request, else None."""
    if scope.get("method") != "GET":
        return None
    return QueryParams(scope.get("query_string", b"").decode("latin-1")).get("access")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
