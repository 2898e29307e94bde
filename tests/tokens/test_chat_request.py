"""What the chat front doors accept: OpenAI's request body, checked field by field, passed on untouched."""

import pytest
from rest_framework import exceptions

from portal.parsers import load_json
from tokens.chat import parse_chat_request

GOOD = {"model": "standin/echo", "messages": [{"role": "user", "content": "hi"}]}


def test_a_good_request_passes_on_every_field_but_the_pool_and_asks_for_one_answer_by_default():
    body, pool = parse_chat_request({**GOOD, "pool": "fast-lane", "seed": 7, "tools": [{"type": "function"}]})

    assert pool == "fast-lane"
    # OpenAI's default, sent upstream explicitly: no "stream" means one chat.completion.
    assert body == {**GOOD, "seed": 7, "tools": [{"type": "function"}], "stream": False}


@pytest.mark.parametrize("stream", [True, False])
def test_an_explicit_stream_is_passed_on(stream):
    assert parse_chat_request({**GOOD, "stream": stream})[0]["stream"] is stream


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": 12}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
        ({"messages": ["hi"]}, "messages"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"stream": "yes"}, "stream"),
        ({"pool": "../etc"}, "pool"),
        ({"pool": 5}, "pool"),
    ],
)
def test_each_bad_field_is_named_in_the_error(change, field):
    with pytest.raises(exceptions.ValidationError) as refused:
        parse_chat_request({**GOOD, **change})

    assert list(refused.value.detail) == [field]


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(exceptions.ValidationError):
        parse_chat_request([GOOD])


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1e999}',  # reads as infinity
        '{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',  # half a surrogate pair: not Unicode text
    ],
)
def test_what_json_cannot_carry_upstream_is_refused_before_any_token_is_leased(raw):
    with pytest.raises(exceptions.ValidationError):
        parse_chat_request(load_json(raw))
