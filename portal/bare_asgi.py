"""Just enough HTTP for an endpoint served as a bare ASGI app in front of Django (the hot paths: chat, lease,
report): read the body within a limit, answer JSON or a stream, stop the work when the client hangs up, and
do what Django's middleware would have done before any view (a Host outside ALLOWED_HOSTS refused, plain
HTTP redirected under PORTAL_HTTPS) and after it (the same security headers)."""

import asyncio
import contextlib
import json
import logging

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from rest_framework import exceptions

from accounts.authentication import BEARER_CHALLENGE
from portal.errors import DATABASE_DOWN, PortalError, database_unavailable, describe_api_exception, error_payload

logger = logging.getLogger(__name__)

def _security_headers(secure: bool) -> list[tuple[bytes, bytes]]:
    """What Django's SecurityMiddleware, XFrameOptionsMiddleware and the portal's CSP middleware add."""
    headers = {
        "x-content-type-options": "nosniff" if settings.SECURE_CONTENT_TYPE_NOSNIFF else "",
        "referrer-policy": settings.SECURE_REFERRER_POLICY or "",
        "cross-origin-opener-policy": settings.SECURE_CROSS_ORIGIN_OPENER_POLICY or "",
        "x-frame-options": settings.X_FRAME_OPTIONS or "",
        "content-security-policy": settings.CONTENT_SECURITY_POLICY or "",
    }
    if secure and settings.SECURE_HSTS_SECONDS:
        headers["strict-transport-security"] = f"max-age={settings.SECURE_HSTS_SECONDS}" + (
            "; includeSubDomains" if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS else ""
        ) + ("; preload" if settings.SECURE_HSTS_PRELOAD else "")
    return [(name.encode(), value.encode("latin-1")) for name, value in headers.items() if value]


def checked_like_django(app):
    """`app`, behind the refusals Django's middleware makes before any view sees a request."""

    async def checked(scope, receive, send):
        exchange = AsgiExchange(scope, receive, send)
        if not exchange.host_allowed():
            return await exchange.send_json(error_payload("Bad request.", "bad_request"), 400)
        if settings.SECURE_SSL_REDIRECT and not exchange.is_secure():
            query = scope.get("query_string", b"").decode("latin-1")
            location = f"https://{settings.SECURE_SSL_HOST or exchange.host()}{scope['path']}" + (f"?{query}" if query else "")
            return await exchange.send_bytes(b"", "text/plain", 301, {"Location": location})
        await app(scope, receive, send)

    return checked


class ClientGone(Exception):
    """The client disconnected before it finished sending its request."""


class PayloadTooLarge(PortalError):
    status_code = 413
    error_type = "payload_too_large"


class AsgiExchange:
    def __init__(self, scope, receive, send):
        self.scope, self.receive, self._send = scope, receive, send
        self.started = self.finished = False
        self.content_type = ""

    def header(self, name: str) -> str:
        """A request header by its lower-case name ("" when absent), as Latin-1 like Django reads it."""
        wanted = name.encode("latin-1")
        for key, value in self.scope["headers"]:
            if key == wanted:
                return value.decode("latin-1")
        return ""

    def host(self) -> str:
        forwarded = settings.USE_X_FORWARDED_HOST and self.header("x-forwarded-host")
        if forwarded:
            return forwarded.split(",")[-1].strip()
        if host := self.header("host"):
            return host
        server_host, server_port = self.scope.get("server") or ("", None)
        return f"{server_host}:{server_port}" if server_port else server_host

    def host_allowed(self) -> bool:
        domain, _ = split_domain_port(self.host())
        allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
        return bool(domain) and validate_host(domain, allowed)

    def is_secure(self) -> bool:
        if settings.SECURE_PROXY_SSL_HEADER:
            name, secure_value = settings.SECURE_PROXY_SSL_HEADER
            forwarded = self.header(name.removeprefix("HTTP_").lower().replace("_", "-"))
            return forwarded.split(",", 1)[0].strip() == secure_value
        return self.scope.get("scheme") == "https"

    async def read_body(self, limit: int | None) -> bytes:
        declared = self.header("content-length")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        parts, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            part = message.get("body", b"")
            size += len(part)
            if limit is not None and size > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
            parts.append(part)
            if not message.get("more_body"):
                return b"".join(parts)

    async def start(self, status: int, content_type: str, headers: dict | None = None) -> None:
        raw = [(b"content-type", content_type.encode()), *_security_headers(self.is_secure())]
        raw += [(name.lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in (headers or {}).items()]
        self.started, self.content_type = True, content_type
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def body(self, data: bytes, more: bool = True) -> None:
        self.finished = not more
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def send_bytes(self, data: bytes, content_type: str, status: int = 200, headers: dict | None = None) -> None:
        await self.start(status, content_type, {**(headers or {}), "Content-Length": len(data)})
        await self.body(data, more=False)

    async def send_json(self, payload: dict, status: int, headers: dict | None = None) -> None:
        await self.send_bytes(json.dumps(payload).encode(), "application/json", status, headers)

    async def send_method_not_allowed(self, allowed: str) -> None:
        """405, as DRF words it; `allowed` is the Allow header ("POST", "GET, OPTIONS")."""
        refusal = error_payload(f'Method "{self.scope["method"]}" not allowed.', "method_not_allowed")
        await self.send_json(refusal, 405, {"Allow": allowed})

    async def send_refusal(self, exc: Exception) -> None:
        """An API exception, or a database that is down, answered as a DRF view would have answered it."""
        refusal = database_unavailable(exc) if isinstance(exc, DATABASE_DOWN) else exc
        if isinstance(refusal, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            refusal.auth_header = BEARER_CHALLENGE
        payload, headers = describe_api_exception(refusal)
        await self.send_json(payload, refusal.status_code, headers)

    async def until_disconnected(self, work) -> None:
        """Run `work` (the whole answer) to its end, or cancel it the moment the client hangs up. A bug in
        it is logged, never shown: a JSON 500 when nothing was sent yet; once a stream has started, its
        last event says server_error and the response ends, so the client is not left waiting."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self._disconnect())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for running in (task, watcher):
                running.cancel()
            results = await asyncio.gather(task, watcher, return_exceptions=True)
        failure = results[0]
        if isinstance(failure, Exception):
            logger.error("%s %s failed", self.scope["method"], self.scope["path"], exc_info=failure)
            with contextlib.suppress(Exception):
                await self._end_after_failure()

    async def _end_after_failure(self) -> None:
        payload = error_payload("Internal server error.", "server_error")
        if not self.started:
            await self.send_json(payload, 500)
        elif not self.finished:
            event = b"data: " + json.dumps(payload).encode() + b"\n\n"
            await self.body(event if self.content_type == "text/event-stream" else b"", more=False)

    async def _disconnect(self) -> None:
        """Returns when the client hangs up before its answer is complete. Once it is, the work left (the
        relay reading upstream to its end, reporting) is not the client's to cancel: daphne says
        http.disconnect as soon as a response is finished."""
        while (await self.receive())["type"] != "http.disconnect" or self.finished:
            if self.finished:
                await asyncio.Future()  # until the work ends and until_disconnected cancels this
