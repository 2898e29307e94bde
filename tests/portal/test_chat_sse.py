"""POST /v1/chat/completions and GET /v1/models against a real daphne, with the stand-in as Hugging Face.

Every test makes its own organization and tokens (live_org). What the stand-in does is chosen by the token:
"credits" 402, "invalid" 401, "ratelimit" 429, "error500" 500, "drop" stops after 3 chunks, "slow" answers
after 1 s (the live portal's upstream read timeout is 0.5 s). Model "standin/slow-echo" streams one chunk per
100 ms. Replies echo the last user message word by word, up to max_tokens.

After each test, every lease it opened must have an outcome, and no token secret may have appeared in
anything the portal answered.
"""

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import huggingface_hub
import openai
import pytest
from huggingface_hub import ChatCompletionOutput, InferenceClient
from huggingface_hub.errors import HfHubHTTPError, TextGenerationError
from openai.types.chat import ChatCompletion

from tests.conftest import LIVE_MAX_CONCURRENT
from tokens.standin import LINGER_SECONDS

PROMPT = "hello brave new world"
MESSAGES = [{"role": "user", "content": PROMPT}]


def expected_reply(prompt: str, max_tokens: int) -> str:
    """What the stand-in answers: "Echo:" and the prompt's words, repeated, max_tokens words in all."""
    words = ["Echo:", *prompt.split()]
    return " ".join((words * max_tokens)[:max_tokens])


@dataclass
class SseStream:
    status: int
    headers: httpx.Headers
    events: list = field(default_factory=list)  # parsed JSON payloads, or the string "[DONE]"
    times: list = field(default_factory=list)  # time.monotonic() when each event arrived
    raw: str = ""

    @property
    def chunks(self) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict) and "choices" in e]

    @property
    def text(self) -> str:
        return "".join((c["choices"][0]["delta"] or {}).get("content") or "" for c in self.chunks)

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict) and "error" in e]

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"


class LiveOrg:
    """live_org plus what these tests do with it; remembers every secret and every answer it saw."""

    def __init__(self, live_org):
        self.live = live_org
        self.url = live_org.url
        self.admin = live_org.admin
        self.user_key = live_org.user_key
        self.secrets: list[str] = []
        self.seen: list[str] = []  # every response body (and SSE event) a test received

    # --- tokens and usage (as the org admin) ---

    def add_token(self, kind: str = "ok", pool: str | None = None) -> int:
        secret = f"hf_standin_{kind}_{uuid.uuid4().hex}_abcd"
        body = {"token": secret, **({"pool": pool} if pool else {})}
        response = self.admin.post("/admin/tokens", json=body)
        assert response.status_code == 201, response.text
        self.secrets.append(secret)
        self.seen.append(response.text)
        return response.json()["id"]

    def token(self, token_id: int) -> dict:
        response = self.admin.get(f"/admin/tokens/{token_id}")
        assert response.status_code == 200, response.text
        self.seen.append(response.text)
        return response.json()

    def usage(self) -> dict[int, dict]:
        response = self.admin.get("/admin/usage", params={"group_by": "token"})
        assert response.status_code == 200, response.text
        return {int(row["key"]): row for row in response.json()["rows"]}

    def usage_when_settled(self, timeout: float = 3.0) -> dict[int, dict]:
        """Usage once no lease is open: reports are written right after the stream, so allow a short poll."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.usage()
            if all(row["open"] == 0 for row in rows.values()) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    # --- chat (as the org's user) ---

    def headers(self, key: str | None = None) -> dict:
        return {"Authorization": f"Bearer {key or self.user_key}"}

    def post(self, body, *, key: str | None = None, **kwargs) -> httpx.Response:
        response = httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=self.headers(key), timeout=20, **kwargs)
        self.seen.append(response.text)
        return response

    def stream(self, body: dict, *, key: str | None = None, stop_after: int | None = None) -> SseStream:
        """POST a chat request and read its SSE answer event by event (or only stop_after events, then hang up)."""
        body = {"model": "standin/echo", "messages": MESSAGES, "stream": True, **body}
        with httpx.Client(timeout=20) as client:
            with client.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=self.headers(key)) as response:
                result = SseStream(response.status_code, response.headers)
                if response.status_code != 200:
                    result.raw = response.read().decode()
                    self.seen.append(result.raw)
                    return result
                lines = []
                for line in response.iter_lines():
                    lines.append(line)
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    result.times.append(time.monotonic())
                    result.events.append(payload if payload == "[DONE]" else json.loads(payload))
                    if stop_after is not None and len(result.events) >= stop_after:
                        break  # leaving the blocks closes the response and the connection mid-stream
                result.raw = "\n".join(lines)
                self.seen.append(result.raw)
                return result

    def hf_client(self, **kwargs) -> InferenceClient:
        return InferenceClient(base_url=f"{self.url}/v1", api_key=self.user_key, **kwargs)

    def assert_no_secret_seen(self) -> None:
        for secret in self.secrets:
            for text in self.seen:
                assert secret not in text, f"a token secret appeared in an answer: {text[:300]}"
                assert secret[len("hf_standin_"):] not in text  # not even most of it


@pytest.fixture
def org(live_org):
    org = LiveOrg(live_org)
    yield org
    rows = org.usage_when_settled()
    assert [row for row in rows.values() if row["open"]] == [], "every lease ends with an outcome"
    org.assert_no_secret_seen()


def nonzero(counts: dict) -> dict:
    return {name: count for name, count in counts.items() if count}


def assert_tgi_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["error_type"] == error_type
    return body


# --- 1, 2: the SDKs people use, unchanged ---------------------------------------------------------


def test_huggingface_hub_streams_the_echo_word_by_word_and_ends_with_finish_reason(org):
    token_id = org.add_token()

    client = org.hf_client()  # keep it referenced: its streams close when it is garbage collected

    chunks = list(client.chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=7, stream=True))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Echo:", " hello", " brave", " new", " world", " Echo:", " hello"]
    assert "".join(pieces) == expected_reply(PROMPT, 7)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    rows = org.usage_when_settled()
    assert (rows[token_id]["leases"], rows[token_id]["successes"]) == (1, 1)


def test_huggingface_hub_without_streaming_gets_the_whole_message_and_usage(org):
    org.add_token()

    output = org.hf_client().chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=6, stream=False)

    assert output.choices[0].message.content == expected_reply(PROMPT, 6)
    assert output.choices[0].finish_reason == "length"
    assert output.usage.completion_tokens == 6
    assert output.usage.total_tokens == output.usage.prompt_tokens + 6


def test_a_non_streaming_answer_is_reported_as_a_success(org):
    token_id = org.add_token()

    response = org.post({"model": "standin/echo", "messages": MESSAGES, "max_tokens": 4, "stream": False})

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == expected_reply(PROMPT, 4)
    row = org.usage_when_settled()[token_id]
    assert (row["leases"], row["successes"], row["cancelled"], row["open"]) == (1, 1, 0, 0)
    assert org.token(token_id)["success_count"] == 1


def test_openai_sdk_streams(org):
    token_id = org.add_token()
    client = openai.OpenAI(base_url=f"{org.url}/v1", api_key=org.user_key, max_retries=0)

    stream = client.chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=5, stream=True)
    chunks = list(stream)

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_reply(PROMPT, 5)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert org.usage_when_settled()[token_id]["successes"] == 1


# --- 2b: no "stream" means one JSON answer, as OpenAI's API, TGI and the HF router answer ---------------


def test_a_request_without_stream_gets_one_chat_completion_as_json(org):
    token_id = org.add_token()

    response = org.post({"model": "standin/echo", "messages": MESSAGES, "max_tokens": 4})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    completion = response.json()
    assert completion["object"] == "chat.completion"
    message = completion["choices"][0]["message"]
    assert (message["role"], message["content"]) == ("assistant", expected_reply(PROMPT, 4))
    assert completion["choices"][0]["finish_reason"] == "length"
    row = org.usage_when_settled()[token_id]
    assert (row["leases"], row["successes"], row["open"]) == (1, 1, 0)


@pytest.mark.parametrize("sdk", ["openai", "huggingface_hub"])
def test_sdks_without_stream_get_a_completion_object_after_a_failing_token_is_rotated_past(org, sdk):
    bad = org.add_token("invalid")  # leased first: the stand-in answers it 401
    good = org.add_token("ok")

    if sdk == "openai":  # the SDK leaves "stream" out of the body unless it streams
        client = openai.OpenAI(base_url=f"{org.url}/v1", api_key=org.user_key, max_retries=0)
        completion = client.chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=5)
        assert isinstance(completion, ChatCompletion)
    else:
        completion = org.hf_client().chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=5)
        assert isinstance(completion, ChatCompletionOutput)
    org.seen.append(str(completion))

    assert completion.choices[0].message.content == expected_reply(PROMPT, 5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    bad_token = org.token(bad)
    assert (bad_token["status"], bad_token["last_error_type"], bad_token["error_count"]) == ("invalid", "invalid_credentials", 1)
    assert org.token(good)["success_count"] == 1
    rows = org.usage_when_settled()
    assert (rows[bad]["leases"], rows[bad]["errors"], nonzero(rows[bad]["errors_by_type"])) == (1, 1, {"invalid_credentials": 1})
    assert (rows[good]["leases"], rows[good]["successes"], rows[good]["open"]) == (1, 1, 0)


# --- 3: the wire format, and chunks arrive as they are made ---------------------------------------


def test_raw_sse_has_the_streaming_headers_and_data_lines_ending_with_done(org):
    org.add_token()

    result = org.stream({"max_tokens": 5})

    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"
    data_lines = [line for line in result.raw.split("\n") if line]
    assert all(line.startswith("data: ") for line in data_lines), data_lines
    assert data_lines[-1] == "data: [DONE]"
    assert result.done and result.errors == []
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in result.chunks)
    assert result.text == expected_reply(PROMPT, 5)
    assert result.chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_the_client_hears_done_at_once_though_upstream_ends_its_body_later_and_the_lease_is_a_success(org):
    token_id = org.add_token("linger")  # the stand-in ends the body LINGER_SECONDS after [DONE]

    began = time.monotonic()
    result = org.stream({"max_tokens": 3})  # reads to the end of the body, then hangs up

    assert result.done and result.text == expected_reply(PROMPT, 3)
    assert time.monotonic() - began < LINGER_SECONDS * 0.7
    # Hanging up after the answer cancels nothing: the relay reads upstream to its end, then reports.
    row = org.usage_when_settled(timeout=LINGER_SECONDS + 3)[token_id]
    assert (row["leases"], row["successes"], row["cancelled"], row["open"]) == (1, 1, 0, 0)


def test_an_upstream_connection_that_closes_after_done_is_not_the_tokens_fault(org):
    token_id = org.add_token("cutafterdone")  # the stand-in closes the connection after [DONE], body unfinished

    result = org.stream({"max_tokens": 3})

    assert result.done and result.errors == [] and result.text == expected_reply(PROMPT, 3)
    row = org.usage_when_settled()[token_id]
    assert (row["leases"], row["successes"], row["errors"], row["open"]) == (1, 1, 0, 0)
    assert org.token(token_id)["status"] == "active"


def test_chunks_are_relayed_as_they_arrive_not_all_at_once(org):
    org.add_token()
    started = time.monotonic()

    result = org.stream({"model": "standin/slow-echo", "max_tokens": 10})

    assert result.done and result.text == expected_reply(PROMPT, 10)
    first, last = result.times[0], result.times[-1]
    assert first - started < 0.6, "the first chunk comes at once"
    assert last - first >= 0.5, "the upstream makes one chunk per 100 ms; a buffered relay delivers them together"
    gaps = [b - a for a, b in zip(result.times, result.times[1:-1])]
    assert sum(gap > 0.03 for gap in gaps) >= 5, gaps


# --- 4: one bad token before the first byte: reported, and the next token answers ----------------


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "event_mentions"),
    [
        ("credits", "quarantined", "credits_exceeded", "402"),
        ("invalid", "invalid", "invalid_credentials", "401"),
        ("ratelimit", "cooling", "rate_limited", "429"),
        ("error500", "active", "server_error", None),
    ],
)
def test_a_failing_token_is_reported_and_the_next_one_answers(org, kind, status, error_type, event_mentions):
    bad = org.add_token(kind)
    good = org.add_token("ok")

    result = org.stream({"max_tokens": 3})

    assert result.status == 200
    assert result.done and result.text == expected_reply(PROMPT, 3)
    assert result.errors == []
    bad_token = org.token(bad)
    assert bad_token["status"] == status
    assert bad_token["error_count"] == 1
    assert bad_token["last_error_type"] == error_type
    status_events = [e for e in bad_token["events"] if e["to_status"] == status and e["from_status"] == "active"]
    if event_mentions:
        assert len(status_events) == 1 and event_mentions in status_events[0]["reason"], bad_token["events"]
    else:  # one transient error never takes a token out of rotation
        assert status_events == []
    assert org.token(good)["success_count"] == 1
    rows = org.usage_when_settled()
    assert (rows[bad]["leases"], rows[bad]["errors"], nonzero(rows[bad]["errors_by_type"])) == (1, 1, {error_type: 1})
    assert (rows[good]["leases"], rows[good]["successes"]) == (1, 1)


def test_no_more_than_three_attempts_per_request(org):
    bad = [org.add_token("error500") for _ in range(4)]
    good = org.add_token("ok")

    response = org.post({"model": "standin/echo", "messages": MESSAGES, "max_tokens": 3})

    assert_tgi_error(response, 502, "server_error")
    rows = org.usage_when_settled()
    assert sum(rows.get(token_id, {}).get("leases", 0) for token_id in bad) == 3
    assert good not in rows or rows[good]["leases"] == 0


# --- 5: nothing left to try ----------------------------------------------------------------------


def test_when_every_token_fails_the_error_comes_before_streaming_then_none_is_left(org):
    credits = org.add_token("credits")

    first = org.stream({"max_tokens": 3})

    assert first.status == 502
    assert first.headers["content-type"].startswith("application/json")
    body = json.loads(first.raw)
    assert body["error_type"] == "credits_exceeded"
    assert "exceeded your monthly included credits" in body["error"]
    assert org.token(credits)["status"] == "quarantined"

    second = org.post({"model": "standin/echo", "messages": MESSAGES, "max_tokens": 3})

    assert_tgi_error(second, 503, "no_token_available")
    assert 0 < int(second.headers["retry-after"]) <= 3600
    rows = org.usage_when_settled()
    assert (rows[credits]["leases"], rows[credits]["errors"]) == (1, 1), "the refused second request leased nothing"


def test_huggingface_hub_sees_the_error_before_streaming_as_an_http_error(org):
    org.add_token("invalid")

    client = org.hf_client()

    with pytest.raises(HfHubHTTPError) as caught:
        list(client.chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=3, stream=True))

    assert caught.value.response.status_code == 502
    assert caught.value.response.json()["error_type"] == "invalid_credentials"
    org.seen.append(str(caught.value))


# --- 6: a token whose first byte never comes in time ----------------------------------------------


def test_a_slow_token_times_out_and_the_next_one_answers(org):
    slow = org.add_token("slow")
    good = org.add_token("ok")
    started = time.monotonic()

    result = org.stream({"max_tokens": 3})

    assert result.done and result.text == expected_reply(PROMPT, 3)
    assert time.monotonic() - started < 0.95, "the relay gave up on the slow token after its read timeout (0.5 s)"
    slow_token = org.token(slow)
    assert slow_token["last_error_type"] == "timeout"
    assert slow_token["error_count"] == 1 and slow_token["status"] == "active"
    rows = org.usage_when_settled()
    assert nonzero(rows[slow]["errors_by_type"]) == {"timeout": 1}
    assert rows[good]["successes"] == 1


# --- 7: the upstream goes away mid-stream --------------------------------------------------------


def test_a_stream_dropped_mid_answer_ends_with_an_error_event_and_no_done(org):
    drop = org.add_token("drop")
    org.add_token("ok")  # must not be tried: once streaming, another token would repeat the answer

    result = org.stream({"max_tokens": 10})

    assert result.status == 200
    assert result.text == expected_reply(PROMPT, 3), "the stand-in sends 3 chunks before dropping"
    assert not result.done
    assert len(result.errors) == 1 and result.events[-1] is result.errors[0]
    assert set(result.errors[0]) == {"error", "error_type"}
    error_type = result.errors[0]["error_type"]
    assert error_type == "connection_error"
    rows = org.usage_when_settled()
    assert list(rows) == [drop], "only the dropping token was leased"
    assert (rows[drop]["leases"], rows[drop]["errors"], nonzero(rows[drop]["errors_by_type"])) == (1, 1, {error_type: 1})
    token = org.token(drop)
    assert (token["last_error_type"], token["status"]) == (error_type, "active")


def test_a_dropped_stream_is_reported_as_a_connection_error(org):
    drop = org.add_token("drop")

    result = org.stream({"max_tokens": 10})

    assert result.errors and result.errors[0]["error_type"] == "connection_error"
    assert nonzero(org.usage_when_settled()[drop]["errors_by_type"]) == {"connection_error": 1}


def test_huggingface_hub_raises_when_the_stream_is_dropped(org):
    drop = org.add_token("drop")
    received = []
    client = org.hf_client()

    with pytest.raises(TextGenerationError) as caught:
        for chunk in client.chat.completions.create(
            model="standin/echo", messages=MESSAGES, max_tokens=10, stream=True
        ):
            received.append(chunk.choices[0].delta.content)

    assert "".join(received) == expected_reply(PROMPT, 3)
    assert isinstance(caught.value, huggingface_hub.errors.UnknownError)  # error_type connection_error
    org.seen.append(str(caught.value))
    row = org.usage_when_settled()[drop]
    assert (row["errors"], row["open"]) == (1, 0)


# --- 8: the client hangs up ----------------------------------------------------------------------


def wait_for(predicate, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_a_client_that_hangs_up_mid_stream_cancels_the_lease_not_the_token(org):
    token_id = org.add_token()

    result = org.stream({"model": "standin/slow-echo", "max_tokens": 50}, stop_after=2)
    hung_up = time.monotonic()

    assert result.text == expected_reply(PROMPT, 2)
    row = wait_for(lambda: (r := org.usage().get(token_id)) and r["cancelled"] == 1 and r["open"] == 0 and r)
    assert row, org.usage()
    assert time.monotonic() - hung_up < 2.0, "recorded at once, not when the 5 s upstream answer would have ended"
    assert (row["leases"], row["successes"], row["errors"], row["cancelled"]) == (1, 0, 0, 1)
    token = org.token(token_id)
    assert (token["status"], token["error_count"], token["success_count"], token["active_leases"]) == ("active", 0, 0, 0)


def test_hung_up_streams_give_their_permits_back(org):
    org.add_token()

    for _ in range(LIVE_MAX_CONCURRENT + 1):
        org.stream({"model": "standin/slow-echo", "max_tokens": 50}, stop_after=1)
        time.sleep(0.1)

    after = org.stream({"max_tokens": 3})
    assert after.status == 200, after.raw
    assert after.done


# --- 9: backpressure ----------------------------------------------------------------------------


def test_over_the_worker_limit_a_request_is_refused_at_once_with_overloaded(org):
    for _ in range(3):
        org.add_token()
    first_chunk = threading.Barrier(LIVE_MAX_CONCURRENT + 1, timeout=15)
    results: list = [None] * LIVE_MAX_CONCURRENT

    def slow_stream(i: int) -> None:
        body = {"model": "standin/slow-echo", "messages": MESSAGES, "max_tokens": 40, "stream": True}
        events = []
        try:
            with httpx.stream("POST", f"{org.url}/v1/chat/completions", json=body, headers=org.headers(), timeout=20) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        events.append(line[5:].strip())
                        if len(events) == 1:
                            first_chunk.wait()
                results[i] = (r.status_code, events)
        except Exception as exc:  # noqa: BLE001 — reported by the main thread
            results[i] = exc
            first_chunk.abort()

    threads = [threading.Thread(target=slow_stream, args=(i,)) for i in range(LIVE_MAX_CONCURRENT)]
    for thread in threads:
        thread.start()
    try:
        first_chunk.wait()  # all of them are streaming now
    except threading.BrokenBarrierError:
        pytest.fail(f"not every stream started: {results}")

    started = time.monotonic()
    refused = org.post({"model": "standin/echo", "messages": MESSAGES, "max_tokens": 3, "stream": True})
    refused_in = time.monotonic() - started
    with pytest.raises(HfHubHTTPError) as caught:
        org.hf_client().chat.completions.create(model="standin/echo", messages=MESSAGES, max_tokens=3)
    streams_still_running = [thread.is_alive() for thread in threads]

    for thread in threads:
        thread.join(timeout=20)

    assert refused.status_code == 429
    assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert refused_in < 1.0
    # huggingface_hub's chat_completion maps HTTP errors with hf_raise_for_status only (no TGI error_type
    # mapping as text_generation has), so it raises HfHubHTTPError, not OverloadedError.
    assert caught.value.response.status_code == 429
    assert caught.value.response.json()["error_type"] == "overloaded"
    assert all(streams_still_running), "the refusals happened while the 8 streams were still going"
    for result in results:
        assert not isinstance(result, Exception), result
        status, events = result
        assert status == 200 and events[-1] == "[DONE]" and len(events) == 40 + 2  # 40 words, the last chunk, [DONE]

    again = org.stream({"max_tokens": 3})
    assert again.status == 200 and again.done


# --- 10: bad requests are answered in the TGI shape, never with a 500 -----------------------------


def test_bad_requests_get_tgi_shaped_errors(org):
    org.add_token()
    viewer = org.admin.post("/admin/users", json={"username": f"viewer-{uuid.uuid4().hex[:8]}", "role": "viewer"})
    assert viewer.status_code == 201, viewer.text
    good = {"model": "standin/echo", "messages": MESSAGES, "max_tokens": 3}
    url = f"{org.url}/v1/chat/completions"

    no_auth = httpx.post(url, json=good)
    assert_tgi_error(no_auth, 401, "authentication")
    wrong_key = httpx.post(url, json=good, headers={"Authorization": "Bearer pk_not_a_real_key_0123456789"})
    assert_tgi_error(wrong_key, 401, "authentication")
    assert_tgi_error(org.post(good, key=viewer.json()["api_key"]), 403, "permission_denied")

    not_json = httpx.post(url, content=b"{not json", headers={**org.headers(), "Content-Type": "application/json"})
    assert_tgi_error(not_json, 400, "validation")
    assert_tgi_error(org.post([good]), 400, "validation")
    empty = assert_tgi_error(org.post({**good, "messages": []}), 400, "validation")
    assert "messages" in empty["error"]
    no_model = assert_tgi_error(org.post({"messages": MESSAGES}), 400, "validation")
    assert "model" in no_model["error"]
    bad_role = assert_tgi_error(org.post({**good, "messages": [{"role": "wizard", "content": "hi"}]}), 400, "validation")
    assert "role" in bad_role["error"]
    unknown_pool = assert_tgi_error(org.post({**good, "pool": "no-such-pool"}), 404, "not_found")
    assert "no-such-pool" in unknown_pool["error"]
    unknown_pool_header = httpx.post(url, json=good, headers={**org.headers(), "X-Portal-Pool": "no-such-pool"})
    assert_tgi_error(unknown_pool_header, 404, "not_found")

    nan = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    assert_tgi_error(httpx.post(url, content=nan, headers=org.headers()), 400, "validation")

    assert org.usage_when_settled() == {}, "no bad request leased a token"


def test_a_wrong_method_is_a_tgi_shaped_405(org):
    response = httpx.get(f"{org.url}/v1/chat/completions", headers=org.headers())

    assert_tgi_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_an_over_large_body_is_refused_with_413_before_anything_is_leased(org):
    org.add_token()
    huge = {"model": "standin/echo", "messages": [{"role": "user", "content": "x" * 3_000_000}]}

    declared = org.post(huge)
    assert_tgi_error(declared, 413, "payload_too_large")

    def chunked():  # no Content-Length: the limit must hold while the body is read
        yield b'{"model": "standin/echo", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 100_000
        yield b'"}]}'

    undeclared = httpx.post(f"{org.url}/v1/chat/completions", content=chunked(), headers=org.headers(), timeout=20)
    assert_tgi_error(undeclared, 413, "payload_too_large")
    assert org.usage_when_settled() == {}


# --- 11: models ---------------------------------------------------------------------------------


def test_models_lists_the_upstream_models(org):
    response = httpx.get(f"{org.url}/v1/models", headers=org.headers())

    assert response.status_code == 200
    ids = [model["id"] for model in response.json()["data"]]
    assert "standin/echo" in ids and "standin/slow-echo" in ids
    assert_tgi_error(httpx.get(f"{org.url}/v1/models"), 401, "authentication")


def test_openai_sdk_lists_models(org):
    client = openai.OpenAI(base_url=f"{org.url}/v1", api_key=org.user_key, max_retries=0)

    assert "standin/echo" in [model.id for model in client.models.list()]


# --- 12: secrets never leave the portal ------------------------------------------------------------


def test_no_secret_appears_in_answers_errors_or_token_views(org):
    ids = [org.add_token(kind) for kind in ("credits", "invalid", "slow", "error500", "drop", "ok")]
    org.add_token("ok")

    answers = [org.stream({"max_tokens": 3}) for _ in range(4)]  # walks through the bad ones, then drop and ok
    whole = org.post({"model": "standin/echo", "messages": MESSAGES, "max_tokens": 3, "stream": False})
    for token_id in ids:
        org.token(token_id)
    listing = org.admin.get("/admin/tokens")
    org.seen.append(listing.text)
    org.seen.append(org.admin.get("/admin/usage", params={"group_by": "token"}).text)

    assert any(a.done for a in answers) and whole.status_code == 200, "requests got through"
    assert any(o["last_error"] for o in map(org.token, ids)), "some errors were recorded (and checked)"
    org.assert_no_secret_seen()
