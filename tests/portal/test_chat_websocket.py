"""The chat websocket, /ws/chat/ (issue "Streaming chat").

A. In process: channels' WebsocketCommunicator against portal.asgi.application, with the stand-in upstream
   (the `standin` fixture) as Hugging Face, on the test database.
B. Through the live daphne (`live_portal` / `live_org`) with the `websockets` client: a separate process with
   its own database, so everything there is made through the REST API.
"""

import asyncio
import contextlib
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey
from accounts.roles import Role
from portal.asgi import application
from tokens import relay
from tokens import services as token_services
from tokens.models import HFToken, Lease, Outcome
from tokens.policy import Status
from tokens.standin import LINGER_SECONDS

in_process = pytest.mark.django_db(transaction=True)

GOOD_SECRET = "hf_ws_good_token_0001_abcdefghijkl"
SECOND_GOOD_SECRET = "hf_ws_good_token_0002_mnopqrstuvwx"
CREDITS_SECRET = "hf_ws_credits_token_0003_abcdefghijkl"
INVALID_SECRET = "hf_ws_invalid_token_0004_abcdefghijkl"
DROP_SECRET = "hf_ws_drop_token_0005_abcdefghijkl"
ALL_SECRETS = [GOOD_SECRET, SECOND_GOOD_SECRET, CREDITS_SECRET, INVALID_SECRET, DROP_SECRET]

TIMEOUT = 5


def echo_of(text: str, max_tokens: int) -> str:
    """What the stand-in answers: "Echo:" and the last user message, word by word, cut at max_tokens."""
    words = ["Echo:", *text.split()]
    return " ".join((words * (max_tokens // len(words) + 1))[:max_tokens])


def request_frame(request_id: str, text: str = "hi there", *, max_tokens: int = 3, model: str = "standin/echo", **extra):
    return {
        "type": "chat.request",
        "id": request_id,
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        **extra,
    }


class ChatSocket:
    """A WebsocketCommunicator on /ws/chat/ that keeps the raw text of every frame the server sent."""

    def __init__(self, headers):
        self.communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        self.raw_frames: list[str] = []

    async def connect(self):
        return await self.communicator.connect(timeout=TIMEOUT)

    async def send(self, frame) -> None:
        await self.communicator.send_json_to(frame)

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = TIMEOUT) -> dict:
        text = await self.communicator.receive_from(timeout=timeout)
        self.raw_frames.append(text)
        return json.loads(text)

    async def receive_nothing(self, timeout: float = 0.2) -> bool:
        return await self.communicator.receive_nothing(timeout=timeout)

    async def until_done(self, *request_ids: str, timeout: float = TIMEOUT) -> dict[str, list[dict]]:
        """Every frame until each of the requests got its chat.end or chat.error, grouped by id."""
        frames: dict[str, list[dict]] = {request_id: [] for request_id in request_ids}
        pending = set(request_ids)
        while pending:
            frame = await self.receive(timeout=timeout)
            assert frame.get("id") in frames, f"a frame for an unexpected request: {frame}"
            frames[frame["id"]].append(frame)
            if frame["type"] in ("chat.end", "chat.error"):
                pending.discard(frame["id"])
        return frames

    async def chat(self, frame: dict, timeout: float = TIMEOUT) -> list[dict]:
        await self.send(frame)
        return (await self.until_done(frame["id"], timeout=timeout))[frame["id"]]

    async def close(self) -> None:
        if not self.communicator.future.cancelled():  # a receive that timed out already cancelled it
            await self.communicator.disconnect(timeout=TIMEOUT)
        await relay.reports_settled()  # no write may still be running when the test database is flushed


@contextlib.asynccontextmanager
async def chat_socket(headers, *, expect_accepted: bool = True):
    socket = ChatSocket(headers)
    try:
        if expect_accepted:
            connected, detail = await socket.connect()
            assert connected, f"handshake refused with close code {detail}"
        yield socket
    finally:
        await socket.close()


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + key.encode())]


def assert_streamed(frames: list[dict], request_id: str, expected_text: str) -> tuple[dict, dict]:
    """start, one or more deltas, end; the deltas spell expected_text. Returns (start, end)."""
    kinds = [frame["type"] for frame in frames]
    assert kinds[0] == "chat.start", frames
    assert kinds[-1] == "chat.end", frames
    assert set(kinds[1:-1]) == {"chat.delta"}, frames
    assert all(frame["id"] == request_id for frame in frames)
    assert "".join(frame["content"] for frame in frames[1:-1]) == expected_text
    return frames[0], frames[-1]


def assert_no_secret(raw_frames: list[str]) -> None:
    assert raw_frames, "no frame was received at all"
    for text in raw_frames:
        for secret in ALL_SECRETS:
            assert secret not in text, f"a frame carries the token secret …{secret[-4:]}: {text}"


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def user_key(organization, make_member) -> str:
    return make_member(organization, Role.USER)[1]


@pytest.fixture
def good_token(organization, make_token) -> HFToken:
    return make_token(organization, secret=GOOD_SECRET, label="good token")


@pytest.fixture
def session_cookie():
    """session_cookie(user) -> a dashboard session id, logged in as by the login page."""

    def make(user) -> bytes:
        client = Client()
        client.force_login(user)
        name = django_settings.SESSION_COOKIE_NAME
        return f"{name}={client.cookies[name].value}".encode()

    return make


def _reload(token: HFToken) -> HFToken:
    return HFToken.objects.get(pk=token.pk)


reload_token = sync_to_async(_reload)


@sync_to_async
def _leases_of(token: HFToken) -> list[Lease]:
    return list(Lease.objects.filter(token=token).order_by("id"))


async def leases_of(token: HFToken, settle_seconds: float = 2.0) -> list[Lease]:
    """The token's leases once none is open: a success is written just after the client hears chat.end."""
    deadline = asyncio.get_running_loop().time() + settle_seconds
    while True:
        leases = await _leases_of(token)
        if all(lease.outcome for lease in leases) or asyncio.get_running_loop().time() > deadline:
            return leases
        await asyncio.sleep(0.02)


# --- A. handshake ---------------------------------------------------------------------------------------


@in_process
async def test_bearer_handshake_without_origin_is_accepted(user_key):
    socket = ChatSocket(bearer(user_key))  # no Origin header, as programs send
    try:
        connected, _ = await socket.connect()
        assert connected is True
    finally:
        await socket.close()


@in_process
async def test_handshake_without_credentials_is_refused_as_unauthenticated():
    socket = ChatSocket([(b"origin", b"http://localhost")])
    try:
        assert await socket.connect() == (False, 4401)
    finally:
        await socket.close()


@in_process
@pytest.mark.parametrize(
    "authorization",
    [b"Bearer pk_this_key_does_not_exist_0123456789", b"Bearer", b"Bearer two parts"],
    ids=["unknown-key", "no-key", "malformed"],
)
async def test_handshake_with_a_bad_bearer_key_is_refused_as_unauthenticated(organization, authorization):
    socket = ChatSocket([(b"authorization", authorization)])
    try:
        assert await socket.connect() == (False, 4401)
    finally:
        await socket.close()


@in_process
async def test_viewer_key_handshake_is_refused_as_forbidden(organization, make_member):
    _, viewer_key = await sync_to_async(make_member)(organization, Role.VIEWER)
    socket = ChatSocket(bearer(viewer_key))
    try:
        assert await socket.connect() == (False, 4403)
    finally:
        await socket.close()


@in_process
async def test_revoked_key_handshake_is_refused_as_unauthenticated(organization, make_member):
    membership, key = await sync_to_async(make_member)(organization, Role.USER)
    await sync_to_async(lambda: ApiKey.objects.filter(membership=membership).update(revoked_at=timezone.now()))()
    socket = ChatSocket(bearer(key))
    try:
        assert await socket.connect() == (False, 4401)
    finally:
        await socket.close()


# --- A. session-authenticated handshakes (the dashboard's chat page) -----------------------------------


@in_process
async def test_session_handshake_from_an_allowed_origin_is_accepted_and_chats(
    standin, organization, make_member, good_token, session_cookie
):
    membership, _ = await sync_to_async(make_member)(organization, Role.USER)
    headers = [(b"cookie", await sync_to_async(session_cookie)(membership.user)), (b"origin", b"http://localhost")]
    async with chat_socket(headers) as socket:
        frames = await socket.chat(request_frame("s1", "from the dashboard", max_tokens=4))
        start, end = assert_streamed(frames, "s1", "Echo: from the dashboard")
        assert start["token_label"] == "good token"
        assert end["finish_reason"] == "length"


@in_process
@pytest.mark.parametrize(
    "origin", [b"http://evil.example", b"https://localhost.evil.example", b"null"], ids=["evil", "lookalike", "null"]
)
async def test_session_handshake_from_a_foreign_origin_is_refused(organization, make_member, session_cookie, origin):
    membership, _ = await sync_to_async(make_member)(organization, Role.USER)
    socket = ChatSocket([(b"cookie", await sync_to_async(session_cookie)(membership.user)), (b"origin", origin)])
    try:
        connected, code = await socket.connect()
        assert connected is False
        assert code == 4403
    finally:
        await socket.close()


@in_process
async def test_session_handshake_without_origin_is_refused(organization, make_member, session_cookie):
    membership, _ = await sync_to_async(make_member)(organization, Role.USER)
    socket = ChatSocket([(b"cookie", await sync_to_async(session_cookie)(membership.user))])
    try:
        connected, code = await socket.connect()
        assert connected is False
        assert code == 4403
    finally:
        await socket.close()


@in_process
async def test_viewer_session_from_an_allowed_origin_is_refused_as_forbidden(organization, make_member, session_cookie):
    membership, _ = await sync_to_async(make_member)(organization, Role.VIEWER)
    socket = ChatSocket([(b"cookie", await sync_to_async(session_cookie)(membership.user)), (b"origin", b"http://localhost")])
    try:
        assert await socket.connect() == (False, 4403)
    finally:
        await socket.close()


@in_process
async def test_session_of_a_deactivated_organization_is_refused(organization, make_member, session_cookie):
    membership, key = await sync_to_async(make_member)(organization, Role.USER)
    cookie = await sync_to_async(session_cookie)(membership.user)
    await sync_to_async(lambda: type(organization).objects.filter(pk=organization.pk).update(is_active=False))()

    by_key = ChatSocket(bearer(key))
    try:
        assert await by_key.connect() == (False, 4403)  # the Bearer path refuses it
    finally:
        await by_key.close()
    by_session = ChatSocket([(b"cookie", cookie), (b"origin", b"http://localhost")])
    try:
        connected, _ = await by_session.connect()
        assert connected is False
    finally:
        await by_session.close()


# --- A. chatting ----------------------------------------------------------------------------------------


@in_process
async def test_a_chat_request_streams_start_deltas_and_end_with_usage(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        frames = await socket.chat(request_frame("r1", "hi there", max_tokens=3))
        assert await socket.receive_nothing()
    start, end = assert_streamed(frames, "r1", "Echo: hi there")
    assert start == {"type": "chat.start", "id": "r1", "token_id": good_token.pk, "token_label": "good token"}
    deltas = [frame["content"] for frame in frames[1:-1]]
    # Streamed, not one answer: the first word leaves alone, at once; words that arrived together may share one.
    assert deltas[0] == "Echo:" and len(deltas) >= 2
    assert end["finish_reason"] == "length"
    assert end["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    [lease] = await leases_of(good_token)
    assert lease.outcome == Outcome.SUCCESS
    assert (await reload_token(good_token)).success_count == 1


@in_process
async def test_two_requests_one_after_another_on_the_same_connection(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        first = await socket.chat(request_frame("first", "hi there", max_tokens=3))
        second = await socket.chat(request_frame("second", "good bye now", max_tokens=4))
    assert_streamed(first, "first", "Echo: hi there")
    assert_streamed(second, "second", "Echo: good bye now")
    assert [lease.outcome for lease in await leases_of(good_token)] == [Outcome.SUCCESS, Outcome.SUCCESS]


@in_process
async def test_optional_fields_and_a_named_pool_are_accepted(standin, organization, user_key, make_token):
    await sync_to_async(token_services.pool_create)(organization=organization, name="team", actor=None)
    await sync_to_async(make_token)(organization, secret=SECOND_GOOD_SECRET, pool="team", label="team token")
    async with chat_socket(bearer(user_key)) as socket:
        frames = await socket.chat(request_frame("p1", "pooled", max_tokens=2, temperature=0.5, top_p=0.9, pool="team"))
    start, _ = assert_streamed(frames, "p1", "Echo: pooled")
    assert start["token_label"] == "team token"


@in_process
async def test_a_request_for_an_unknown_pool_gets_a_chat_error_and_the_connection_stays_open(
    standin, user_key, good_token
):
    async with chat_socket(bearer(user_key)) as socket:
        [error] = await socket.chat(request_frame("nopool", pool="no-such-pool"))
        assert error["type"] == "chat.error"
        assert error["id"] == "nopool"
        assert "no-such-pool" in error["error"]
        frames = await socket.chat(request_frame("after", "hi there", max_tokens=3))
    assert_streamed(frames, "after", "Echo: hi there")


@in_process
async def test_a_request_for_an_unknown_pool_is_typed_not_found_as_on_the_other_endpoints(
    standin, user_key, good_token
):
    async with chat_socket(bearer(user_key)) as socket:
        [error] = await socket.chat(request_frame("nopool", pool="no-such-pool"))
    assert error["error_type"] == "not_found"


@in_process
async def test_a_non_json_frame_gets_a_validation_error_and_the_connection_keeps_working(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send_text("this is not json {")
        error = await socket.receive()
        assert error["type"] == "chat.error"
        assert error["error_type"] == "validation"
        assert error["id"] is None
        assert isinstance(error["error"], str) and error["error"]
        assert await socket.receive_nothing()

        frames = await socket.chat(request_frame("after", "still here", max_tokens=3))
    assert_streamed(frames, "after", "Echo: still here")


INVALID_FRAMES = {
    "not-an-object": ([1, 2, 3], None),
    "missing-id": ({k: v for k, v in request_frame("x").items() if k != "id"}, None),
    "empty-id": (request_frame(""), None),
    "numeric-id": ({**request_frame("x"), "id": 7}, None),
    "bad-type": ({**request_frame("bad-type"), "type": "chat.whatever"}, "bad-type"),
    "missing-type": ({k: v for k, v in request_frame("no-type").items() if k != "type"}, "no-type"),
    "missing-model": ({k: v for k, v in request_frame("no-model").items() if k != "model"}, "no-model"),
    "messages-not-a-list": ({**request_frame("not-list"), "messages": "hello"}, "not-list"),
    "empty-messages": ({**request_frame("empty"), "messages": []}, "empty"),
    "message-bad-role": ({**request_frame("role"), "messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    "max-tokens-negative": (request_frame("neg", max_tokens=-1), "neg"),
    "temperature-too-high": (request_frame("hot", temperature=5), "hot"),
}


@in_process
@pytest.mark.parametrize("frame, echoed_id", list(INVALID_FRAMES.values()), ids=list(INVALID_FRAMES))
async def test_an_invalid_frame_gets_a_validation_error_with_its_id_and_the_connection_stays_open(
    standin, user_key, good_token, frame, echoed_id
):
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send(frame)
        error = await socket.receive()
        assert error["type"] == "chat.error"
        assert error["error_type"] == "validation"
        assert error["id"] == echoed_id
        assert isinstance(error["error"], str) and error["error"]
        assert await socket.receive_nothing()  # nothing was streamed for it

        frames = await socket.chat(request_frame("good", "hi there", max_tokens=3))
    assert_streamed(frames, "good", "Echo: hi there")
    assert len(await leases_of(good_token)) == 1  # only the good request leased a token


@in_process
async def test_rotation_past_a_token_out_of_credits(standin, organization, user_key, make_token):
    # Added first, so the least-recently-leased order tries it first.
    credits = await sync_to_async(make_token)(organization, secret=CREDITS_SECRET, label="broke token")
    good = await sync_to_async(make_token)(organization, secret=GOOD_SECRET, label="good token")
    async with chat_socket(bearer(user_key)) as socket:
        frames = await socket.chat(request_frame("rot", "hi there", max_tokens=3))
    start, end = assert_streamed(frames, "rot", "Echo: hi there")  # no chat.error reaches the client
    assert start["token_id"] == good.pk
    assert start["token_label"] == "good token"
    assert end["finish_reason"] == "length"
    credits = await reload_token(credits)
    assert credits.status == Status.QUARANTINED
    assert credits.last_error_type == "credits_exceeded"
    [credits_lease] = await leases_of(credits)
    assert credits_lease.outcome == Outcome.ERROR
    assert (await reload_token(good)).status == Status.ACTIVE
    assert_no_secret(socket.raw_frames)


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        ("invalid", Status.INVALID, "invalid_credentials"),  # upstream 401
        ("credits", Status.QUARANTINED, "credits_exceeded"),  # 402
        ("ratelimit", Status.COOLING, "rate_limited"),  # 429
        ("error500", Status.ACTIVE, "server_error"),  # 500: one failure does not yet take it out
        ("slow", Status.ACTIVE, "timeout"),  # no first byte within PORTAL_UPSTREAM_READ_TIMEOUT
    ],
)
@in_process
async def test_each_upstream_failure_before_the_first_byte_is_reported_and_the_next_token_answers(
    standin, organization, user_key, make_token, settings, kind, status, error_type
):
    settings.PORTAL_UPSTREAM_READ_TIMEOUT = 0.3  # the stand-in's slow tokens wait seconds
    failing = await sync_to_async(make_token)(organization, secret=f"hf_ws_{kind}_token_abcdefghijkl", label="failing")
    good = await sync_to_async(make_token)(organization, secret=GOOD_SECRET, label="good token")
    async with chat_socket(bearer(user_key)) as socket:
        frames = await socket.chat(request_frame("f", "hi there", max_tokens=3))
    start, _ = assert_streamed(frames, "f", "Echo: hi there")
    assert start["token_id"] == good.pk
    [lease] = await leases_of(failing)
    assert (lease.outcome, lease.error_type) == (Outcome.ERROR, error_type)
    assert (await reload_token(failing)).status == status
    assert_no_secret(socket.raw_frames)


@in_process
async def test_when_every_token_fails_the_client_gets_one_chat_error(standin, organization, user_key, make_token):
    await sync_to_async(make_token)(organization, secret=INVALID_SECRET, label="revoked token")
    async with chat_socket(bearer(user_key)) as socket:
        frames = await socket.chat(request_frame("none", "hi there"))
        assert await socket.receive_nothing()
    [error] = frames
    assert error["type"] == "chat.error"
    assert error["error_type"] == "invalid_credentials"
    assert error["error"]
    assert_no_secret(socket.raw_frames)


@in_process
async def test_a_stream_dropped_mid_answer_ends_with_a_connection_error_after_its_deltas(
    standin, organization, user_key, make_token
):
    drop = await sync_to_async(make_token)(organization, secret=DROP_SECRET, label="flaky token")
    async with chat_socket(bearer(user_key)) as socket:
        frames = await socket.chat(request_frame("drop", "one two three four five six", max_tokens=7))
        assert await socket.receive_nothing()
    kinds = [frame["type"] for frame in frames]
    assert kinds[0] == "chat.start" and kinds[-1] == "chat.error" and set(kinds[1:-1]) == {"chat.delta"}
    assert "".join(frame["content"] for frame in frames[1:-1]) == "Echo: one two"  # 3 chunks, then the drop
    assert frames[-1]["error_type"] == "connection_error"
    assert frames[-1]["error"]
    assert_no_secret(socket.raw_frames)
    [lease] = await leases_of(drop)  # mid-stream: no other token is tried
    assert lease.outcome == Outcome.ERROR
    assert lease.error_type == "connection_error"


@in_process
async def test_cancel_ends_the_stream_at_once_and_records_the_lease_as_cancelled(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send(request_frame("long", "tell me a long story", max_tokens=50, model="standin/slow-echo"))
        assert (await socket.receive())["type"] == "chat.start"
        deltas = [await socket.receive(), await socket.receive()]
        assert [frame["type"] for frame in deltas] == ["chat.delta", "chat.delta"]

        cancelled_at = time.monotonic()
        await socket.send({"type": "chat.cancel", "id": "long"})
        rest = (await socket.until_done("long", timeout=3))["long"]
        elapsed = time.monotonic() - cancelled_at

        # The whole answer takes 5 s (50 chunks, one per 100 ms): the cancel cut it short.
        assert elapsed < 1.5
        assert rest[-1] == {"type": "chat.end", "id": "long", "finish_reason": "cancelled", "usage": None}
        assert all(frame["type"] == "chat.delta" for frame in rest[:-1])
        assert len(deltas) + len(rest) - 1 < 50
        assert await socket.receive_nothing(0.3)  # nothing more for the cancelled request

        # The connection carries on.
        after = await socket.chat(request_frame("next", "hi there", max_tokens=3))
    assert_streamed(after, "next", "Echo: hi there")

    cancelled_lease, next_lease = await leases_of(good_token)
    assert cancelled_lease.outcome == Outcome.CANCELLED
    assert cancelled_lease.error_type == ""
    assert next_lease.outcome == Outcome.SUCCESS
    token = await reload_token(good_token)
    assert token.status == Status.ACTIVE  # not blamed
    assert token.error_count == 0
    assert token.active_leases == 0


@in_process
async def test_cancel_of_an_unknown_request_changes_nothing(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send({"type": "chat.cancel", "id": "never-sent"})
        assert await socket.receive_nothing()
        frames = await socket.chat(request_frame("ok", "hi there", max_tokens=3))
    assert_streamed(frames, "ok", "Echo: hi there")


@in_process
async def test_a_client_that_goes_away_mid_stream_leaves_a_cancelled_lease(standin, user_key, good_token):
    socket = ChatSocket(bearer(user_key))
    try:
        assert (await socket.connect())[0]
        await socket.send(request_frame("gone", "tell me a long story", max_tokens=50, model="standin/slow-echo"))
        assert (await socket.receive())["type"] == "chat.start"
    finally:
        await socket.close()
    [lease] = await leases_of(good_token)
    assert lease.outcome == Outcome.CANCELLED
    token = await reload_token(good_token)
    assert token.status == Status.ACTIVE
    assert token.active_leases == 0


@in_process
@pytest.mark.parametrize(
    "limit",
    ["PORTAL_MAX_CONCURRENT_REQUESTS", "PORTAL_ORG_MAX_CONCURRENT_REQUESTS", "PORTAL_KEY_MAX_CONCURRENT_REQUESTS"],
    ids=["per-worker", "per-organization", "per-key"],
)
async def test_a_request_over_the_concurrency_limit_is_refused_as_overloaded(
    standin, settings, user_key, good_token, limit
):
    setattr(settings, limit, 1)
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send(request_frame("a", "one two", max_tokens=10, model="standin/slow-echo"))
        first = [await socket.receive()]
        assert first[0]["type"] == "chat.start"  # "a" holds the only permit now

        await socket.send(request_frame("b", "three four", max_tokens=10, model="standin/slow-echo"))
        frames = await socket.until_done("a", "b")
        first += frames["a"]

        [refused] = frames["b"]
        assert refused["type"] == "chat.error"
        assert refused["error_type"] == "overloaded"
        assert refused["error"]
        _, end = assert_streamed(first, "a", echo_of("one two", 10))
        assert end["finish_reason"] == "length"

        # The permit comes back when "a" ends.
        again = await socket.chat(request_frame("c", "hi there", max_tokens=3))
    assert_streamed(again, "c", "Echo: hi there")
    assert len(await leases_of(good_token)) == 2  # the refused request never leased a token


@in_process
async def test_a_request_id_still_streaming_cannot_be_reused(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send(request_frame("same", "one two", max_tokens=8, model="standin/slow-echo"))
        assert (await socket.receive())["type"] == "chat.start"
        await socket.send(request_frame("same", "again", max_tokens=2))
        frames = []
        while not frames or frames[-1]["type"] != "chat.end":
            frames.append(await socket.receive())
    errors = [frame for frame in frames if frame["type"] == "chat.error"]
    assert len(errors) == 1
    assert errors[0]["id"] == "same"
    assert errors[0]["error_type"] == "validation"
    deltas = "".join(frame["content"] for frame in frames if frame["type"] == "chat.delta")
    assert deltas == echo_of("one two", 8)  # the first answer ran on untouched
    assert frames[-1]["finish_reason"] == "length"


@in_process
async def test_no_frame_carries_a_token_secret(standin, organization, user_key, make_token):
    await sync_to_async(make_token)(organization, secret=CREDITS_SECRET, label="broke")
    await sync_to_async(make_token)(organization, secret=GOOD_SECRET, label="good")
    await sync_to_async(token_services.pool_create)(organization=organization, name="broken", actor=None)
    await sync_to_async(make_token)(organization, secret=INVALID_SECRET, pool="broken", label="revoked")
    async with chat_socket(bearer(user_key)) as socket:
        ok = await socket.chat(request_frame("ok", "what is my token", max_tokens=5))
        failed = await socket.chat(request_frame("ko", "hi", pool="broken"))
        await socket.send_text("{oops")
        await socket.receive()
    assert ok[-1]["type"] == "chat.end"
    assert failed[-1]["type"] == "chat.error"
    assert_no_secret(socket.raw_frames)


# --- B. through the live daphne -------------------------------------------------------------------------


def live_ws_url(live_org) -> str:
    return live_org.url.replace("http://", "ws://", 1) + "/ws/chat/"


def add_live_token(live_org, secret: str, label: str) -> dict:
    response = live_org.admin.post("/admin/tokens", json={"token": secret, "label": label})
    assert response.status_code == 201, response.text
    return response.json()


def live_until_done(websocket, request_id: str) -> list[dict]:
    frames = []
    while not frames or frames[-1]["type"] not in ("chat.end", "chat.error"):
        frame = json.loads(websocket.recv(timeout=TIMEOUT))
        assert frame["id"] == request_id, frame
        frames.append(frame)
    return frames


def test_live_portal_streams_a_chat_request_over_a_real_websocket(live_org):
    from websockets.sync.client import connect

    token = add_live_token(live_org, "hf_live_ws_good_0001_abcdefghijkl", "live good")
    with connect(
        live_ws_url(live_org), additional_headers={"Authorization": f"Bearer {live_org.user_key}"}, open_timeout=TIMEOUT
    ) as websocket:
        websocket.send(json.dumps(request_frame("live-1", "hello from afar", max_tokens=4)))
        frames = live_until_done(websocket, "live-1")
    start, end = assert_streamed(frames, "live-1", "Echo: hello from afar")
    assert start["token_id"] == token["id"]
    assert start["token_label"] == "live good"
    assert end["finish_reason"] == "length"
    assert end["usage"]["completion_tokens"] == 4
    assert all("hf_live_ws_good_0001_abcdefghijkl" not in json.dumps(frame) for frame in frames)


def test_live_portal_answers_a_bad_frame_then_a_good_one_on_the_same_connection(live_org):
    from websockets.sync.client import connect

    add_live_token(live_org, "hf_live_ws_good_0002_abcdefghijkl", "live good")
    with connect(
        live_ws_url(live_org), additional_headers={"Authorization": f"Bearer {live_org.user_key}"}, open_timeout=TIMEOUT
    ) as websocket:
        websocket.send("not json at all")
        error = json.loads(websocket.recv(timeout=TIMEOUT))
        assert error["type"] == "chat.error"
        assert error["error_type"] == "validation"

        websocket.send(json.dumps({**request_frame("live-bad"), "messages": []}))
        error = json.loads(websocket.recv(timeout=TIMEOUT))
        assert (error["type"], error["id"], error["error_type"]) == ("chat.error", "live-bad", "validation")

        websocket.send(json.dumps(request_frame("live-good", "hi there", max_tokens=3)))
        frames = live_until_done(websocket, "live-good")
    assert_streamed(frames, "live-good", "Echo: hi there")


def test_live_portal_refuses_a_handshake_without_credentials(live_org):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        with connect(live_ws_url(live_org), open_timeout=TIMEOUT):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin, accepted",
    [("http://localhost:8000", True), ("http://localhost:9999", False), ("https://localhost:8000", True), ("null", False)],
)
async def test_a_session_socket_must_come_from_this_very_host_and_port(organization, make_member, origin, accepted):
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from portal.asgi import application

    membership, _ = await sync_to_async(make_member)(organization, Role.USER)
    browser = Client()
    await sync_to_async(browser.force_login)(membership.user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"cookie", cookie), (b"host", b"localhost:8000"), (b"origin", origin.encode())]
    )
    connected, _ = await communicator.connect()
    await communicator.disconnect()

    assert connected is accepted


@in_process
async def test_a_database_that_is_down_is_a_clear_chat_error_and_the_socket_stays(standin, user_key, good_token, monkeypatch):
    from django.db import OperationalError

    async def database_gone(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setattr(relay, "_lease", database_gone)
        async with chat_socket(bearer(user_key)) as socket:
            [error] = await socket.chat(request_frame("down", "hi there"))
    assert (error["type"], error["error_type"], error["retry_after"]) == ("chat.error", "database_unavailable", 1)


@in_process
async def test_chat_end_comes_with_upstreams_done_and_a_stop_after_it_leaves_a_success(standin, organization, user_key, make_token):
    linger = await sync_to_async(make_token)(organization, secret="hf_ws_linger_token_0006_abcdefghijk", label="slow to end")
    async with chat_socket(bearer(user_key)) as socket:
        began = time.monotonic()
        frames = await socket.chat(request_frame("l1", "hi there", max_tokens=3))
        assert time.monotonic() - began < LINGER_SECONDS * 0.7  # upstream ends its body LINGER_SECONDS later
        await socket.send({"type": "chat.cancel", "id": "l1"})  # too late to cancel anything
        assert await socket.receive_nothing()
    assert_streamed(frames, "l1", "Echo: hi there")
    [lease] = await leases_of(linger, settle_seconds=LINGER_SECONDS + 3)
    assert lease.outcome == Outcome.SUCCESS
