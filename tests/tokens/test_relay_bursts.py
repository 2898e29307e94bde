"""How the relay passes on upstream chunks that arrive in a burst (tokens.relay._arrived_together): the first
leaves at once and alone, the rest of the burst together; a failure while reading still ends the stream; and
a stream closed early stops reading upstream."""

import asyncio

import httpx
import pytest

from tokens import relay
from tokens.relay import _arrived_together


def upstream(bursts: list[list[bytes]], then: Exception | None = None, read: list | None = None):
    """Chunks as httpx hands them over: one at a time, those of one network read with no wait in between."""

    async def pieces():
        try:
            for burst in bursts:
                for piece in burst:
                    if read is not None:
                        read.append(piece)
                    yield piece
                await asyncio.sleep(0.01)  # the next network read
            if then is not None:
                raise then
        finally:
            if read is not None:
                read.append("closed")

    return pieces()


async def test_the_first_chunk_leaves_alone_and_the_rest_of_a_burst_together():
    passed_on = [piece async for piece in _arrived_together(upstream([[b"a", b"b", b"c"], [b"d", b"e"], [b"f"]]))]
    assert passed_on == [b"a", b"bc", b"de", b"f"]


async def test_a_read_that_fails_ends_the_stream_with_its_error_after_what_arrived_before_it():
    passed_on = []
    with pytest.raises(httpx.ReadError):
        async for piece in _arrived_together(upstream([[b"a", b"b"]], then=httpx.ReadError("dropped"))):
            passed_on.append(piece)
    assert passed_on == [b"a", b"b"]


async def test_closing_the_stream_early_stops_reading_upstream_at_once():
    read = []
    together = _arrived_together(upstream([[b"a"], [b"b"], [b"c"]], read=read))
    assert await anext(together) == b"a"
    await together.aclose()
    assert read[-1] == "closed" and b"c" not in read
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []


async def test_a_failure_the_reader_met_ahead_does_not_replace_a_close():
    together = _arrived_together(upstream([[b"a"], [b"b"]], then=httpx.ReadError("reset")))
    assert await anext(together) == b"a"
    await asyncio.sleep(0.1)  # the reader reads on and meets the reset; nobody has asked for it yet
    await together.aclose()  # a consumer that stopped (an upstream error event, a client gone): no ReadError


async def test_a_failure_the_reader_meets_does_not_replace_a_cancellation_in_the_same_moment():
    consumer = None

    async def pieces():
        yield b"a"
        await asyncio.sleep(0.05)
        consumer.cancel()  # the client goes away in the very turn the upstream connection resets
        raise httpx.ReadError("reset")

    async def consume():
        async for _ in _arrived_together(pieces()):
            pass

    consumer = asyncio.ensure_future(consume())
    with pytest.raises(asyncio.CancelledError):
        await consumer


async def test_cookies_set_upstream_are_never_sent_with_a_later_request(monkeypatch):
    cookies_seen = []

    def upstream_server(request: httpx.Request) -> httpx.Response:
        cookies_seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=tenant-a-secret"}, content=b"{}")

    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream_server))
    monkeypatch.setattr(relay, "upstream_client", lambda: client)
    for tenant in ("a", "b"):  # chat and /proxy/hf both go upstream through relay._sent
        async with relay._sent("GET", "https://router.example/api/whoami-v2", content=b"", headers={"Authorization": f"Bearer hf_{tenant}"}) as response:
            assert response.status_code == 200
    assert cookies_seen == [None, None]
