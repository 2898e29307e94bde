"""Credentials are never accepted in URLs: a query string carrying one is refused before anything reads it.

URLs end up in access logs, proxy logs, browser history and Referer headers, so a key sent there must be
treated as leaked, and the portal refuses the request (400 `credentials_in_url`) rather than let the habit
work. The refusal names no part of the query, and nothing here logs it.

Refused: a non-empty parameter named like a credential (api_key, key, token, access_token, …), any
value shaped like a portal key (pk_…) or a Hugging Face token (hf_…), and a path holding a portal key.
The refusal is logged without the path (Django would log it, and the path may be the secret).

KeysInUrlMiddleware covers every Django request; refuse_keys_in_url(app) wraps an ASGI app (HTTP and
websocket) for what is served before Django (portal.asgi).
"""

import logging
import re
from urllib.parse import parse_qsl, unquote

from portal.errors import error_payload, error_response

logger = logging.getLogger(__name__)

CREDENTIAL_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization", "bearer", "hf_token", "password"}
)
_SECRET_SHAPED = re.compile(r"(?:^|[^A-Za-z0-9])(?:pk|hf)_[A-Za-z0-9_\-]{16,}")
_PORTAL_KEY_SHAPED = re.compile(r"(?:^|[^A-Za-z0-9])pk_[A-Za-z0-9_\-]{16,}")
MESSAGE = "Credentials are not accepted in the URL: send your API key as `Authorization: Bearer <key>`."
ERROR_TYPE = "credentials_in_url"
CLOSE_CREDENTIALS_IN_URL = 4400


def has_credentials(query_string: str | bytes, path: str = "") -> bool:
    if path and _PORTAL_KEY_SHAPED.search(unquote(path)):
        return True
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if not query_string:
        return False
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if value and name.strip().lower() in CREDENTIAL_PARAMS:
            return True
        if _SECRET_SHAPED.search(value) or _SECRET_SHAPED.search(name):
            return True
    return False


class KeysInUrlMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if has_credentials(request.META.get("QUERY_STRING", ""), request.path):
            if self.is_async:
                return self._refuse_async(request)
            return self._refuse(request)
        return self.get_response(request)

    def _refuse(self, request):
        response = error_response(MESSAGE, ERROR_TYPE, 400)
        response._has_been_logged = True  # django.request would log the path, which may hold the key
        logger.warning("Refused a %s request with credentials in its URL", request.method)
        return response

    async def _refuse_async(self, request):
        return self._refuse(request)


def refuse_keys_in_url(app):
    """An ASGI wrapper: HTTP answers 400 JSON, a websocket handshake is closed (code 4400) before accept."""
    import json

    body = json.dumps(error_payload(MESSAGE, ERROR_TYPE)).encode()

    async def guarded(scope, receive, send):
        if scope["type"] in ("http", "websocket") and has_credentials(scope.get("query_string", b""), scope.get("path", "")):
            logger.warning("Refused a %s request with credentials in its URL", scope["type"])
            if scope["type"] == "http":
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            else:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": CLOSE_CREDENTIALS_IN_URL})
            return
        await app(scope, receive, send)

    return guarded
