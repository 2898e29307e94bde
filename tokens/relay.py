"""The chat relay: one async engine behind the websocket and the OpenAI-compatible SSE endpoint.

stream_chat() leases a token, streams `POST {HF_INFERENCE_BASE_URL}/chat/completions` with the process's
shared httpx.AsyncClient, and yields events as upstream chunks arrive; a request with `"stream": false`
(OpenAI's default) gets one Completed event with upstream's JSON instead. Before the first chunk, a token
that fails (401, 402, 429, 5xx, timeout, connection) is reported with its error type, so the quarantine
policy applies, and the next token is tried. After the first chunk a failure ends the stream with an
error event. A consumer that stops early (client gone, cancel) closes the upstream stream at once and
the lease is recorded as cancelled. Chunks are passed on as the bytes upstream sent.
"""

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import httpx
from django.conf import settings

from portal.db import on_loop_when_free, submit_soon
from portal.errors import DATABASE_DOWN, database_unavailable
from portal.redact import redact_secrets
from tokens import services
from tokens.chat import chat_body_bytes
from tokens.models import TokenPool
from tokens.policy import ErrorType, error_type_for_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    token_id: int
    token_label: str


@dataclass(frozen=True)
class Chunk:
    data: bytes  # one SSE `data:` payload exactly as upstream sent it (a chat.completion.chunk)
    content: str
    finish_reason: str | None = None
    usage: dict | None = None


@dataclass(frozen=True)
class Chunks:
    """The chunks that arrived together in one read from upstream, in order. They are passed on together
    (one write, one frame): nothing waits for anything that has not arrived yet."""

    items: tuple[Chunk, ...]
    last: bool = False  # upstream's [DONE] came with them: the answer is complete (its report follows)

    @property
    def content(self) -> str:
        return "".join(chunk.content for chunk in self.items)


@dataclass(frozen=True)
class Completed:
    """A non-streaming answer: the whole chat.completion body as upstream sent it."""

    body: bytes
    content: str
    finish_reason: str | None
    usage: dict | None


@dataclass(frozen=True)
class Failed:
    message: str
    error_type: str
    status: int = 502  # the HTTP status when nothing was streamed yet
    retry_after: int | None = None
    headers: dict = field(default_factory=dict)


RelayEvent = Started | Chunks | Completed | Failed


class _UpstreamFailure(Exception):
    def __init__(self, error_type: str, message: str, status: int = 502, blame_token: bool = True):
        super().__init__(message)
        self.error_type, self.message, self.status, self.blame_token = error_type, message, status, blame_token


# httpcore walks every connection of a pool on each request and each release (checking idle ones for a
# closed socket, and counting idle ones per idle one), so one pool of n kept-alive connections costs O(n²)
# per request at high concurrency. Requests take turns over a few smaller pools instead.
_POOLS_PER_PROCESS = 8
_clients: dict = {}
_turns = itertools.count()


def upstream_client() -> httpx.AsyncClient:
    """The process's shared AsyncClients (per event loop) take turns: their kept-alive connections are what
    make relaying cheap."""
    loop = asyncio.get_running_loop()
    clients = _clients.get(loop)
    if clients is None or any(client.is_closed for client in clients):
        _clients.clear()  # a client is bound to its loop; daphne has one, tests start many
        clients = _clients[loop] = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(
                    settings.PORTAL_UPSTREAM_READ_TIMEOUT, connect=settings.PORTAL_UPSTREAM_CONNECT_TIMEOUT
                ),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                verify=_tls_context(),
            )
            for _ in range(_POOLS_PER_PROCESS)
        ]
    return clients[next(_turns) % _POOLS_PER_PROCESS]


@functools.cache
def _tls_context():
    """One TLS context for all the clients, built as httpx builds its own (certifi, SSL_CERT_FILE): each
    client loading the CA bundle again made a worker's first relayed request wait 0.4 s."""
    return httpx.create_ssl_context()


def _upstream_message(body: bytes, status: int) -> str:
    try:
        payload = json.loads(body)
        message = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(message, dict):  # OpenAI style {"error": {"message": …}}
            message = message.get("message")
        if message:
            return f"{status}: {str(message)[:300]}"
    except ValueError:
        pass
    return f"{status}: {body[:300].decode('utf-8', 'replace')}"


async def _arrived_together(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`pieces` as they arrive, those that arrived together joined. httpx hands over one HTTP chunk at a time,
    and those of one network read (a burst from upstream) without waiting in between: forwarded one by one,
    each paid the whole way to the client's socket, and the first left only when the last was through. A
    reader task takes them as they come; each time this generator runs again, it passes on all taken since."""
    arrived: list[bytes] = []
    more = asyncio.Event()

    async def read() -> None:
        first = True
        try:
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    arrived.append(piece)
                    more.set()
                    if first:  # the client waits for the first most: it leaves at once, alone
                        first = False
                        await asyncio.sleep(0)
        finally:
            more.set()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            if not arrived and not reader.done():
                more.clear()
                await more.wait()
            if arrived:
                together = b"".join(arrived)
                arrived.clear()
                yield together
            elif reader.done():
                reader.result()  # raises what ended the reading, if anything did
                return
    finally:
        # Not `await reader`: it would raise the reader's own failure (it reads ahead) in place of whatever
        # ends this generator (an upstream error event, a cancellation, a close).
        reader.cancel()
        await asyncio.wait({reader})
        if not reader.cancelled():
            reader.exception()  # retrieved: the failure that matters was raised above, or did not matter


async def _sse_payloads(response: httpx.Response) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of an SSE stream, as soon as their events are complete: those that arrived
    together in one list."""
    buffer = b""
    async with contextlib.aclosing(_arrived_together(response.aiter_raw())) as pieces:
        async for piece in pieces:
            # Events may end in CRLF pairs too; normalising the joined buffer also catches a pair split across reads.
            buffer = (buffer + piece).replace(b"\r\n", b"\n")
            payloads = []
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                event, buffer = buffer[:end], buffer[end + 2 :]
                payloads += [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if payloads:
                yield payloads


# How long the relay reads on after upstream's [DONE] for the end of its body: well under daphne's
# --application-close-timeout (10 s), after which daphne cancels what a finished response left running.
END_OF_BODY_SECONDS = 2.0

_report = on_loop_when_free(services.report_outcome)
_lease = on_loop_when_free(services.lease_token)


def stream_chat(*, organization, user, api_key, pool: TokenPool, request: dict) -> AsyncIterator[RelayEvent]:
    """Relay one chat request; see the module docstring. `request` is the OpenAI-style body."""
    url = f"{settings.HF_INFERENCE_BASE_URL}/chat/completions"

    sent_body = chat_body_bytes(request)
    headers = {"Content-Type": "application/json"}

    async def attempt(grant: services.LeaseGrant) -> AsyncIterator[RelayEvent]:
        async with _sent("POST", url, content=sent_body, headers={**headers, "Authorization": f"Bearer {grant.secret}"}) as response:
            if response.status_code != 200:
                status = response.status_code
                message = _upstream_message(await response.aread(), status)
                error_type = error_type_for_status(status)
                if error_type is None:
                    raise _UpstreamFailure("validation", message, status, blame_token=False)
                raise _UpstreamFailure(error_type, message)
            if not request.get("stream"):
                body = await response.aread()
                completion = _json_object(body)
                choice = (completion.get("choices") or [{}])[0] or {}
                yield Started(grant.token.pk, grant.token.label)
                content = (choice.get("message") or {}).get("content") or ""
                yield Completed(body, content, choice.get("finish_reason"), completion.get("usage"))
                return
            started = done = False
            async with contextlib.aclosing(_sse_payloads(response)) as batches:
                async for payloads in batches:
                    batch = []
                    for payload in payloads:
                        if payload == b"[DONE]":
                            done = True
                            break
                        chunk = _json_object(payload)
                        if chunk.get("error"):
                            if batch:
                                yield Chunks(tuple(batch))
                            raise _UpstreamFailure(chunk.get("error_type") or ErrorType.UNKNOWN, str(chunk["error"])[:300])
                        if not started:
                            yield Started(grant.token.pk, grant.token.label)
                            started = True
                        choice = (chunk.get("choices") or [{}])[0] or {}
                        content = (choice.get("delta") or {}).get("content") or ""
                        batch.append(Chunk(payload, content, choice.get("finish_reason"), chunk.get("usage")))
                    if batch or done:
                        yield Chunks(tuple(batch), last=done)
                    if done:
                        break
                if done:
                    # Read on to the end of the body (it follows at once): a response left unfinished costs its
                    # keep-alive connection, and the next request a new one. The answer is complete: an upstream
                    # that is slow to end it, or fails meanwhile, only loses its connection.
                    with contextlib.suppress(TimeoutError, httpx.HTTPError):
                        async with asyncio.timeout(END_OF_BODY_SECONDS):
                            async for _ in batches:
                                pass
                    return
            # The body ended without [DONE]: upstream went away mid-answer.
            raise _UpstreamFailure(ErrorType.CONNECTION_ERROR, "upstream closed the stream before [DONE]")

    return _with_rotation(organization=organization, user=user, api_key=api_key, pool=pool, attempt=attempt)


USER_AGENT = "hf-token-portal"


@contextlib.asynccontextmanager
async def _sent(method: str, url: str, *, content: bytes, headers: dict) -> AsyncIterator[httpx.Response]:
    """The upstream response as soon as its head is in, closed on the way out. The request goes straight to
    the transport the shared client would use (its connection pool, or the environment's proxy for `url`;
    `_transport_for_url` is httpx's own lookup, hence the pinned httpx range): the client's own layers
    (redirects, auth, event hooks, cookies) cost a quarter of a millisecond per request, none is wanted
    here, and its cookie jar would carry cookies upstream set on one tenant's request into every other's."""
    client = upstream_client()
    request_headers = httpx.Headers(headers)
    request_headers.setdefault("User-Agent", USER_AGENT)
    request = httpx.Request(method, url, content=content, headers=request_headers, extensions={"timeout": client.timeout.as_dict()})
    response = await client._transport_for_url(request.url).handle_async_request(request)
    try:
        yield response
    finally:
        await response.aclose()


def _json_object(data: bytes) -> dict:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


async def _with_rotation(*, organization, user, api_key, pool: TokenPool, attempt) -> AsyncIterator:
    """Lease a token and pass on what `attempt(grant)` yields, then report how it went. A token that fails
    before anything was passed on is reported with its error type and the next one is tried; a failure
    after that, or one that is the request's own, ends the relay with a Failed event."""
    last_failure: Failed | None = None
    for _ in range(max(1, settings.PORTAL_UPSTREAM_ATTEMPTS)):
        try:
            grant = await _lease(organization=organization, pool=pool, user=user, api_key=api_key, client_name="relay")
        except services.NoTokenAvailable as exc:
            yield last_failure or Failed(str(exc.detail), exc.error_type, exc.status_code, retry_after=exc.wait)
            return
        except DATABASE_DOWN as exc:
            down = database_unavailable(exc)
            yield Failed(str(down.detail), down.error_type, down.status_code, retry_after=down.wait)
            return
        report = {"organization": organization, "token_id": grant.token.pk, "lease_id": grant.lease.pk, "user": user}
        started = answered = False
        try:
            # aclosing: when our consumer stops, the attempt (and its upstream stream) closes at once.
            async with contextlib.aclosing(attempt(grant)) as events:
                async for event in events:
                    started = True
                    answered = answered or getattr(event, "last", False)
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            # The client went away or cancelled: not the token's fault. After the whole answer was passed on
            # (the stop came while upstream's body was being read to its end), it is a success. Shielded: the
            # caller is cancelling us.
            outcome = {"success": True} if answered else {"success": False, "cancelled": True}
            await asyncio.shield(_report_or_keep_trying(**report, **outcome))
            raise
        except Exception as exc:
            failure = _failure_from(exc)
        else:
            # The answer is complete: the client hears [DONE] (or chat.end) while the success is written.
            _report_in_background({**report, "success": True})
            return
        await _report_or_keep_trying(
            **report, success=False, error=failure.message, error_type=failure.error_type, blame_token=failure.blame_token
        )
        last_failure = Failed(redact_secrets(failure.message, grant.secret), failure.error_type, failure.status)
        if started or not failure.blame_token:
            # Mid-stream, or the request itself was refused: another token would not help.
            yield last_failure
            return
    yield last_failure


# Reports written in the background: futures queued on the database threads, and tasks waiting to retry
# one that found the database down. Held so none is collected before it has run.
_reports_in_flight: set = set()
# How long a report waits for a database that is down (restarting, failing over) before it is given up:
# about six minutes, pause by pause. A lease whose report is given up ends by its TTL, as expired.
REPORT_RETRY_PAUSES = (0.5, 1, 2, 4, 8, 15, 30, 60, 60, 60, 60, 60)


async def _report_or_keep_trying(**report) -> None:
    """Report now; if the database is down, keep trying in the background: an outcome is never dropped."""
    try:
        await _report(**report)
    except DATABASE_DOWN:
        _keep_trying(report)


def _report_in_background(report: dict) -> None:
    """Write the report once the answer's last bytes are on their way, and go on: on the loop when
    SQLite's writer is free, else queued on a database thread, where (unlike awaiting it) it costs the
    event loop no wake-up when the write is done; at one request at a time, that wake-up was a visible
    share of a relayed chat's CPU."""
    loop = asyncio.get_running_loop()
    queued = submit_soon(services.report_outcome, **report)
    _reports_in_flight.add(queued)
    queued.add_done_callback(lambda done: _background_report_done(done, loop, report))


def _background_report_done(done, loop: asyncio.AbstractEventLoop, report: dict) -> None:
    """Where it was written, or failed to be: on the loop, or on a database thread."""
    failure = None if done.cancelled() else done.exception()
    if isinstance(failure, DATABASE_DOWN) and loop.is_running():
        try:
            loop.call_soon_threadsafe(_keep_trying, report, done)  # in flight until the retry replaces it
            return
        except RuntimeError:  # the loop closed meanwhile: nothing will retry it
            pass
    _reports_in_flight.discard(done)
    if failure is not None:
        # The lease stays open and ends by its TTL, as expired: logged, because that is not what happened.
        logger.error("could not record a relayed lease's outcome", exc_info=failure)


def _keep_trying(report: dict, replacing=None) -> None:
    task = asyncio.get_running_loop().create_task(_report_until_recorded(report))
    _reports_in_flight.add(task)
    _reports_in_flight.discard(replacing)
    task.add_done_callback(_retry_done)


async def _report_until_recorded(report: dict) -> None:
    last_failure = None
    for pause in REPORT_RETRY_PAUSES:
        await asyncio.sleep(pause)
        try:
            return await _report(**report)
        except DATABASE_DOWN as exc:
            last_failure = exc
    raise RuntimeError(f"the database stayed unavailable for {sum(REPORT_RETRY_PAUSES)} s") from last_failure


def _retry_done(task: asyncio.Task) -> None:
    _reports_in_flight.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("could not record a relayed lease's outcome", exc_info=task.exception())


async def reports_settled() -> None:
    """Wait until every report written in the background is written (a shutdown, a test's end)."""
    loop = asyncio.get_running_loop()
    while True:
        waiting = []
        for item in list(_reports_in_flight):
            if isinstance(item, Future):  # queued on a database thread
                waiting.append(asyncio.wrap_future(item))
            elif item.get_loop() is loop:  # a retry after an outage, on this loop
                waiting.append(item)
            elif not item.get_loop().is_running():
                # A retry left on an event loop that has stopped (a shutdown, a test's loop): it will not run.
                _reports_in_flight.discard(item)
                logger.error("could not record a relayed lease's outcome: its retry's event loop stopped")
        if not waiting:
            return
        await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0)  # a retry handed over by a database thread runs, and takes its future's place
        for stranded in [item for item in _reports_in_flight if isinstance(item, Future) and item.done()]:
            # Its retry was handed to an event loop that stopped before running it.
            _reports_in_flight.discard(stranded)
            logger.error("could not record a relayed lease's outcome: its retry's event loop stopped")


def _failure_from(exc: Exception) -> _UpstreamFailure:
    """What went wrong, and whether it was the token's fault."""
    if isinstance(exc, _UpstreamFailure):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return _UpstreamFailure(ErrorType.TIMEOUT, f"upstream timed out ({type(exc).__name__})", 504)
    if isinstance(exc, httpx.TransportError):
        return _UpstreamFailure(ErrorType.CONNECTION_ERROR, f"upstream connection failed ({type(exc).__name__})")
    if isinstance(exc, UnicodeError):  # a request header no HTTP line can carry
        return _UpstreamFailure("validation", "the request has a header that is not ASCII", 400, blame_token=False)
    if isinstance(exc, ValueError):  # JSON that is not JSON, or not the shape of a chat completion
        return _UpstreamFailure(ErrorType.UNKNOWN, "upstream answered something that is not a chat completion")
    logger.exception("relay failed")  # a bug of ours: never the token's fault, and never an open lease
    return _UpstreamFailure("server_error", f"the relay failed ({type(exc).__name__})", 500, blame_token=False)


_models_cache: tuple[float, list[str]] = (0.0, [])


async def upstream_models() -> list[str]:
    """The model ids the upstream lists (the HF router lists them without a token), cached for 5 minutes."""
    global _models_cache
    fetched_at, names = _models_cache
    if time.monotonic() - fetched_at < 300 and names:
        return names
    try:
        response = await upstream_client().get(f"{settings.HF_INFERENCE_BASE_URL}/models", timeout=10)
        names = [entry["id"] for entry in response.json().get("data", []) if isinstance(entry, dict) and "id" in entry]
    except (httpx.HTTPError, ValueError, AttributeError, TypeError):
        return names  # the last good list, or none
    _models_cache = (time.monotonic(), names)
    return names


@dataclass(frozen=True)
class ProxyHead:
    status: int
    headers: list[tuple[str, str]]


_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "content-length", "authorization", "cookie", "x-portal-pool",
}


def proxy_stream(
    *, organization, user, api_key, pool: TokenPool, method: str, path: str, query: str, headers: dict, body: bytes
) -> AsyncIterator[ProxyHead | bytes | Failed]:
    """Relay any request to the Hugging Face router with only the credentials swapped: a ProxyHead, then
    the body as it arrives. Token failures before the answer starts are reported and retried like chat."""
    url = f"{settings.PORTAL_PROXY_BASE_URL}/{path}" + (f"?{query}" if query else "")
    forwarded = {name: value for name, value in headers.items() if name.lower() not in _HOP_BY_HOP}

    async def attempt(grant: services.LeaseGrant) -> AsyncIterator[ProxyHead | bytes]:
        async with _sent(method, url, content=body, headers={**forwarded, "Authorization": f"Bearer {grant.secret}"}) as response:
            error_type = error_type_for_status(response.status_code)
            if error_type is not None:
                message = _upstream_message(await response.aread(), response.status_code)
                raise _UpstreamFailure(error_type, message, response.status_code)
            yield ProxyHead(response.status_code, [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP])
            async for piece in response.aiter_raw():
                yield piece

    return _with_rotation(organization=organization, user=user, api_key=api_key, pool=pool, attempt=attempt)
