"""Hostile frames on /ws/chat/: random values, random bytes, malformed JSON, huge frames and floods. Each
gets a chat.error and the connection keeps working: a good request afterwards still streams."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.portal.test_chat_websocket import (
    ChatSocket,
    assert_streamed,
    bearer,
    chat_socket,
    good_token,
    in_process,
    request_frame,
    user_key,
)

__all__ = ["good_token", "user_key"]  # fixtures this module uses from the websocket tests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
# Frames that look almost right: the keys the consumer reads, with values of any kind.
near_misses = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["chat.request", "chat.cancel", "chat.other"]) | json_values,
        "id": st.text(max_size=120) | json_values,
        "model": json_values,
        "messages": json_values,
        "max_tokens": json_values,
        "pool": json_values,
    },
)


async def assert_still_chats(socket: ChatSocket, request_id: str = "after") -> None:
    frames = await socket.chat(request_frame(request_id, "still here", max_tokens=2))
    assert_streamed(frames, request_id, "Echo: still")


@in_process
async def test_random_frames_each_get_a_validation_error_and_the_connection_keeps_working(standin, user_key, good_token):
    frames = []

    @settings(max_examples=60, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(json_values.map(json.dumps), near_misses.map(json.dumps), st.text(min_size=1, max_size=200)))
    def collect(frame):
        frames.append(frame)

    collect()
    async with chat_socket(bearer(user_key)) as socket:
        for frame in frames:
            try:
                parsed = json.loads(frame)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("type") == "chat.cancel":
                continue  # a cancel of nothing is answered with nothing
            await socket.send_text(frame)
            answer = await socket.receive()
            if answer["type"] == "chat.start":  # by chance a valid request: let it finish
                await socket.until_done(answer["id"])
                continue
            assert answer["type"] == "chat.error", (frame, answer)
            assert answer["error_type"] in ("validation", "not_found"), (frame, answer)
        await assert_still_chats(socket)


@in_process
async def test_bytes_frames_and_broken_utf8_are_answered_not_fatal(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        for data in (b"\xff\xfe\x00garbage", b"\x80" * 64, b"{\"type\": \"chat.request\""):
            await socket.communicator.send_to(bytes_data=data)
            answer = await socket.receive()
            assert (answer["type"], answer["error_type"]) == ("chat.error", "validation")
        await assert_still_chats(socket)


@in_process
async def test_a_huge_frame_is_refused_as_too_large_and_the_connection_stays(standin, user_key, good_token):
    huge = json.dumps(request_frame("huge", "x" * 3_000_000))
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send_text(huge)
        answer = await socket.receive()
        assert (answer["type"], answer["error_type"]) == ("chat.error", "payload_too_large")
        await assert_still_chats(socket)


@in_process
async def test_a_flood_of_bad_frames_is_answered_frame_by_frame(standin, user_key, good_token):
    async with chat_socket(bearer(user_key)) as socket:
        for n in range(500):
            await socket.send_text("not json" if n % 2 else '{"no": "id"}')
        answers = [await socket.receive() for _ in range(500)]
        assert {(a["type"], a["error_type"]) for a in answers} == {("chat.error", "validation")}
        await assert_still_chats(socket)


DEEP_REQUEST = json.dumps(request_frame("deep", tools=json.loads("[" * 200 + "]" * 200)))  # over the portal's 128 levels


@pytest.mark.parametrize(
    "frame", ["[]", "null", "1e999999", '{"id": "' + "i" * 101 + '", "type": "chat.request"}', "[" * 5000, DEEP_REQUEST]
)
@in_process
async def test_edge_frames(standin, user_key, good_token, frame):
    async with chat_socket(bearer(user_key)) as socket:
        await socket.send_text(frame)
        answer = await socket.receive()
        assert (answer["type"], answer["error_type"]) == ("chat.error", "validation")
        await assert_still_chats(socket)
