"""The quarantine rules as pure functions: plain states and frozen clock values, no database, no real clock."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tokens.policy import (
    ErrorType,
    QuarantinePolicy,
    Status,
    TokenState,
    classify_error,
    first_of_next_month,
    next_state,
)

UTC = UTC
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
POLICY = QuarantinePolicy()
TRANSIENT = [ErrorType.TIMEOUT, ErrorType.CONNECTION_ERROR, ErrorType.SERVER_ERROR, ErrorType.UNKNOWN]


def fail(state: TokenState, error_type: str | None, at: datetime, policy: QuarantinePolicy = POLICY) -> TokenState:
    return next_state(state, success=False, error_type=error_type, now=at, policy=policy).state


def succeed(state: TokenState, at: datetime, policy: QuarantinePolicy = POLICY) -> TokenState:
    return next_state(state, success=True, error_type=None, now=at, policy=policy).state


def is_out_of_rotation(state: TokenState, at: datetime) -> bool:
    return state.status != Status.ACTIVE and not (
        state.status in Status.TIMED and state.available_at is not None and state.available_at <= at
    )


# --- classify_error: the credits sentence, then the HTTP status in any wording, then the helper's words --
# What each client really says is tested in tests/tokens/test_client_contract.py, raised by the clients
# themselves; these cases pin the rules and their order.

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc) You have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("401 Client Error: Unauthorized for url: https://router.huggingface.co/v1/chat/completions", "invalid_credentials"),
        (CREDITS_402, "credits_exceeded"),
        # Hugging Face answers 402 only for missing credits or payment: every 402 is credits_exceeded.
        ("402 Client Error: Payment Required for url: https://router.huggingface.co/v1", "credits_exceeded"),
        ("You have exceeded your monthly included credits for Inference Providers.", "credits_exceeded"),
        ("HTTPSConnectionPool(host='router.huggingface.co', port=443): Read timed out. (read timeout=30)", "timeout"),
        ("ReadTimeout: The read operation TIMED OUT", "timeout"),
        ("httpx.ConnectTimeout", "timeout"),
        ("Failed to establish a new connection: [Errno 111] refused", "connection_error"),
        ("[Errno 111] Connection refused", "connection_error"),
        ("429 Client Error: Too Many Requests for url: https://router.huggingface.co/v1", "rate_limited"),
        ("Rate limit reached. Please retry later.", "rate_limited"),
        ("500 Server Error: Internal Server Error for url: https://router.huggingface.co/v1", "server_error"),
        ("upstream said 503: Service Unavailable", "server_error"),
        ("HTTP 429", "rate_limited"),
        ("status code: 401", "invalid_credentials"),
        # A 4xx the relay would not blame on the token: the request's own fault.
        ("404 Client Error: Not Found for url: https://router.huggingface.co/v1", "validation"),
        ("Client error '422 Unprocessable Entity' for url 'http://x/v1/chat/completions'", "validation"),
        # huggingface_hub's BadRequestError names no status (with or without the server's message).
        ("Bad request:", "validation"),
        ("Bad request:\nModel standin/none is not supported", "validation"),
        ("Bad request for commit endpoint:\nInvalid path", "validation"),
        # Sentences that refuse the credentials without a status: the router's 401 body, whoami's 401.
        ("Invalid credentials in Authorization header", "invalid_credentials"),
        ("Invalid user token.", "invalid_credentials"),
        ("Invalid user token. The token from HF_TOKEN environment variable is invalid.", "invalid_credentials"),
        ("invalid token", "invalid_credentials"),
        ("Invalid access token: hf_***", "invalid_credentials"),
        ("Invalid token\nsee https://huggingface.co/settings/tokens", "invalid_credentials"),
        # ... and words that only look like them.
        ("invalid token_id", "unknown"),
        ("Invalid token id 17", "unknown"),
        ("invalid tokens in the prompt", "unknown"),
        ("invalid tokenizer config", "unknown"),
        ("error_type invalid_credentials from the portal", "unknown"),
        ("Bad request.", "unknown"),
        ("badrequest: nothing", "unknown"),
        # Numbers that are not a status in any client's wording.
        ("4010 tokens over the limit 401", "unknown"),
        ("Request ID: Root=1-429abc", "unknown"),
        ("something odd happened", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_classify_error_names_the_kind_of_failure(error, expected):
    assert classify_error(error) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # The status comes before the words: the client had an answer, whatever else the text says.
        ("401 Client Error: Unauthorized (read timeout=30, connection reset)", "invalid_credentials"),
        ("429 Client Error while opening connection", "rate_limited"),
        ("429 Client Error: upstream timeout", "rate_limited"),
        ("Server error '504 Gateway Timeout' for url", "server_error"),
        # The credits sentence comes before everything, the status included.
        (CREDITS_402 + " connection timed out", "credits_exceeded"),
        ("Error code: 400 - You have exceeded your monthly included credits", "credits_exceeded"),
        # A status the relay does not blame on the token wins over words that would.
        ("Error code: 400 - {'error': 'rate limit of the prompt template exceeded'}", "validation"),
        ("Client error '422 Unprocessable Entity': connection field missing", "validation"),
        ("Client error '408 Request Timeout' for url", "timeout"),
        # huggingface_hub's "Bad request:" is a status: it wins over words in the server's message.
        ("Bad request:\nInvalid credentials in Authorization header", "validation"),
        ("Bad request:\nupstream connection timed out", "validation"),
        # A status wins over a sentence refusing the credentials; that sentence wins over the helper's words.
        ("Client error '403 Forbidden': invalid token.", "validation"),
        ("Invalid credentials in Authorization header (connection reset, read timed out)", "invalid_credentials"),
        # timeout before connection: "connection timed out" is a timeout.
        ("connection timed out", "timeout"),
        ("too many requests on this connection", "connection_error"),
    ],
)
def test_classify_error_applies_its_rules_in_order(error, expected):
    assert classify_error(error) == expected


# --- first_of_next_month --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2025, 3, 10, 12, 0, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)),
        (datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)),
        # Exactly at a reset, the next one is a month away, not now.
        (datetime(2025, 3, 1, 0, 0, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)),
        (datetime(2025, 12, 15, 8, 30, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
        (datetime(2024, 12, 31, 23, 59, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_first_of_next_month_is_midnight_utc_on_the_next_first(now, expected):
    assert first_of_next_month(now) == expected
    assert first_of_next_month(now).utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Still January in UTC (22:00 on the 31st), already February in Moscow.
        (datetime(2025, 2, 1, 1, 0, tzinfo=timezone(timedelta(hours=3))), datetime(2025, 2, 1, tzinfo=UTC)),
        # Still January in New York, already February in UTC.
        (datetime(2025, 1, 31, 21, 0, tzinfo=timezone(timedelta(hours=-5))), datetime(2025, 3, 1, tzinfo=UTC)),
        # New Year's Eve in New York is already the new year in UTC.
        (datetime(2024, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))), datetime(2025, 2, 1, tzinfo=UTC)),
    ],
)
def test_first_of_next_month_counts_months_in_utc_whatever_the_input_zone(now, expected):
    result = first_of_next_month(now)
    assert result == expected
    assert result.utcoffset() == timedelta(0)
    assert result.hour == result.minute == result.second == 0 and result.day == 1


# --- invalid credentials --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        TokenState(),
        TokenState(status=Status.COOLING, available_at=NOW + timedelta(minutes=1), rate_limit_streak=1),
        TokenState(status=Status.QUARANTINED, available_at=NOW + timedelta(hours=6), quarantine_stage=2),
    ],
    ids=["active", "cooling", "quarantined"],
)
def test_invalid_credentials_make_the_token_invalid_with_no_return_time(state):
    transition = next_state(state, success=False, error_type=ErrorType.INVALID_CREDENTIALS, now=NOW, policy=POLICY)

    assert transition.state.status == Status.INVALID
    assert transition.state.available_at is None
    assert transition.changed
    assert transition.reason


def test_an_invalid_token_does_not_come_back_by_itself():
    state = fail(TokenState(), ErrorType.INVALID_CREDENTIALS, NOW)

    much_later = NOW + timedelta(days=400)
    assert is_out_of_rotation(succeed(state, much_later), much_later)


# --- credits exceeded: 1 h, 6 h, 24 h, then the monthly reset -------------------------------------


def test_credits_exceeded_quarantines_in_stages_up_to_the_monthly_reset():
    state, at = TokenState(), NOW
    expected_lengths = [timedelta(hours=1), timedelta(hours=6), timedelta(hours=24)]

    for stage, length in enumerate(expected_lengths, start=1):
        state = fail(state, ErrorType.CREDITS_EXCEEDED, at)
        assert state.status == Status.QUARANTINED
        assert state.quarantine_stage == stage
        assert state.available_at == at + length
        assert is_out_of_rotation(state, at + length - timedelta(seconds=1))
        at = state.available_at  # released: the next lease meets the same 402 again

    state = fail(state, ErrorType.CREDITS_EXCEEDED, at)
    assert state.status == Status.QUARANTINED
    assert state.available_at == datetime(2025, 4, 1, tzinfo=UTC)

    # Still no credits after the reset: the monthly quarantine again, never shorter.
    at = state.available_at
    state = fail(state, ErrorType.CREDITS_EXCEEDED, at)
    assert state.available_at == datetime(2025, 5, 1, tzinfo=UTC)


def test_the_fourth_credits_quarantine_in_december_lasts_until_january_first():
    state = TokenState(status=Status.QUARANTINED, available_at=datetime(2025, 12, 20, tzinfo=UTC), quarantine_stage=3)

    state = fail(state, ErrorType.CREDITS_EXCEEDED, datetime(2025, 12, 20, 9, 0, tzinfo=UTC))

    assert state.status == Status.QUARANTINED
    assert state.available_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_a_success_after_release_resets_the_credits_stage():
    state = fail(TokenState(), ErrorType.CREDITS_EXCEEDED, NOW)
    state = fail(state, ErrorType.CREDITS_EXCEEDED, state.available_at)  # stage 2, 6 h
    released_at = state.available_at + timedelta(minutes=1)

    state = succeed(state, released_at)
    assert state.status == Status.ACTIVE
    assert state.quarantine_stage == 0

    state = fail(state, ErrorType.CREDITS_EXCEEDED, released_at + timedelta(minutes=5))
    assert state.quarantine_stage == 1
    assert state.available_at == released_at + timedelta(minutes=5, hours=1)


def test_without_a_success_in_between_the_stage_keeps_climbing_after_release():
    state = fail(TokenState(), ErrorType.CREDITS_EXCEEDED, NOW)
    release = state.available_at

    state = fail(state, ErrorType.CREDITS_EXCEEDED, release + timedelta(minutes=10))

    assert state.quarantine_stage == 2
    assert state.available_at == release + timedelta(minutes=10, hours=6)


def test_a_late_credits_report_while_quarantined_neither_escalates_nor_extends():
    quarantined = fail(TokenState(), ErrorType.CREDITS_EXCEEDED, NOW)

    later = NOW + timedelta(minutes=59)
    transition = next_state(quarantined, success=False, error_type=ErrorType.CREDITS_EXCEEDED, now=later, policy=POLICY)

    assert transition.state.status == Status.QUARANTINED
    assert transition.state.quarantine_stage == 1
    assert transition.state.available_at == NOW + timedelta(hours=1)
    assert transition.reason == ""


# --- rate limited: 60 s doubling up to 15 min -----------------------------------------------------


def test_rate_limits_cool_the_token_for_60_s_doubling_up_to_15_minutes():
    state, at = TokenState(), NOW
    cooling_seconds = []
    for _ in range(7):
        state = fail(state, ErrorType.RATE_LIMITED, at)
        assert state.status == Status.COOLING
        cooling_seconds.append((state.available_at - at).total_seconds())
        at = state.available_at  # back in rotation, and rate limited again

    assert cooling_seconds == [60, 120, 240, 480, 900, 900, 900]


def test_a_success_resets_the_rate_limit_backoff():
    state = fail(TokenState(), ErrorType.RATE_LIMITED, NOW)
    state = fail(state, ErrorType.RATE_LIMITED, state.available_at)  # 120 s
    back = state.available_at

    state = succeed(state, back)
    state = fail(state, ErrorType.RATE_LIMITED, back + timedelta(seconds=1))

    assert state.available_at == back + timedelta(seconds=61)


def test_late_rate_limit_reports_while_cooling_do_not_stack_up():
    state = fail(TokenState(), ErrorType.RATE_LIMITED, NOW)
    for seconds in (1, 2, 3):
        state = fail(state, ErrorType.RATE_LIMITED, NOW + timedelta(seconds=seconds))

    assert state.available_at == NOW + timedelta(seconds=60)


# --- transient errors: the circuit breaker --------------------------------------------------------


@pytest.mark.parametrize("error_type", [*TRANSIENT, None])
def test_a_single_transient_error_never_takes_the_token_out(error_type):
    transition = next_state(TokenState(), success=False, error_type=error_type, now=NOW, policy=POLICY)

    assert transition.state.status == Status.ACTIVE
    assert transition.state.available_at is None
    assert transition.reason == ""


@pytest.mark.parametrize("error_type", TRANSIENT)
def test_three_consecutive_transient_errors_open_the_breaker_for_5_minutes(error_type):
    state = fail(TokenState(), error_type, NOW)
    state = fail(state, error_type, NOW + timedelta(seconds=1))
    assert state.status == Status.ACTIVE

    state = fail(state, error_type, NOW + timedelta(seconds=2))

    assert state.status == Status.COOLING
    assert state.available_at == NOW + timedelta(seconds=2, minutes=5)


def test_different_transient_errors_count_together():
    state = fail(TokenState(), ErrorType.TIMEOUT, NOW)
    state = fail(state, ErrorType.CONNECTION_ERROR, NOW)
    state = fail(state, ErrorType.SERVER_ERROR, NOW)

    assert state.status == Status.COOLING


def test_a_success_resets_the_consecutive_failures():
    state = fail(TokenState(), ErrorType.TIMEOUT, NOW)
    state = fail(state, ErrorType.TIMEOUT, NOW)
    state = succeed(state, NOW)
    assert state.consecutive_failures == 0

    state = fail(state, ErrorType.TIMEOUT, NOW)
    state = fail(state, ErrorType.TIMEOUT, NOW)

    assert state.status == Status.ACTIVE


def test_after_the_breaker_cooldown_one_more_failure_reopens_it():
    state = TokenState()
    for _ in range(3):
        state = fail(state, ErrorType.SERVER_ERROR, NOW)
    cooldown_over = NOW + timedelta(minutes=5)

    state = fail(state, ErrorType.SERVER_ERROR, cooldown_over + timedelta(seconds=1))

    assert state.status == Status.COOLING
    assert state.available_at == cooldown_over + timedelta(seconds=1, minutes=5)


def test_a_success_after_the_breaker_cooldown_closes_it_for_good():
    state = TokenState()
    for _ in range(3):
        state = fail(state, ErrorType.SERVER_ERROR, NOW)
    cooldown_over = NOW + timedelta(minutes=5)

    state = succeed(state, cooldown_over)
    state = fail(state, ErrorType.SERVER_ERROR, cooldown_over + timedelta(seconds=1))

    assert state.status == Status.ACTIVE


def test_a_success_while_the_breaker_is_open_also_prevents_the_half_open_trip():
    state = TokenState()
    for _ in range(3):
        state = fail(state, ErrorType.TIMEOUT, NOW)
    state = succeed(state, NOW + timedelta(minutes=1))  # a lease taken before the trip came back fine

    state = fail(state, ErrorType.TIMEOUT, NOW + timedelta(minutes=6))

    assert state.status == Status.ACTIVE


def test_transient_reports_while_the_breaker_is_open_do_not_extend_the_cooldown():
    state = TokenState()
    for _ in range(3):
        state = fail(state, ErrorType.TIMEOUT, NOW)

    state = fail(state, ErrorType.TIMEOUT, NOW + timedelta(minutes=4))

    assert state.available_at == NOW + timedelta(minutes=5)


# --- tokens out of rotation by a person or by validation ------------------------------------------

ALL_REPORTS = [(False, error_type) for error_type in ErrorType.ALL] + [(True, None)]


@pytest.mark.parametrize("status", [Status.DISABLED, Status.INVALID])
@pytest.mark.parametrize(("success", "error_type"), ALL_REPORTS, ids=[e or "success" for _, e in ALL_REPORTS])
def test_disabled_and_invalid_tokens_do_not_move_on_reports(status, success, error_type):
    state = TokenState(status=status, consecutive_failures=2, quarantine_stage=1, rate_limit_streak=1)

    transition = next_state(state, success=success, error_type=error_type, now=NOW, policy=POLICY)

    assert transition.state.status == status
    assert transition.state.available_at is None
    assert not transition.changed


# --- timed states end on their own --------------------------------------------------------------


def test_a_report_after_the_cooldown_finds_the_token_active_again():
    cooling = TokenState(status=Status.COOLING, available_at=NOW, rate_limit_streak=1)

    transition = next_state(cooling, success=True, error_type=None, now=NOW + timedelta(seconds=1), policy=POLICY)

    assert transition.state.status == Status.ACTIVE
    assert transition.state.available_at is None
    assert transition.changed


# --- a pool's own policy is honoured --------------------------------------------------------------

CUSTOM = QuarantinePolicy(
    credits_stages_seconds=(10, 20),
    rate_limit_base_seconds=5,
    rate_limit_max_seconds=12,
    breaker_threshold=2,
    breaker_cooldown_seconds=7,
)


def test_a_pools_own_credits_stages_are_used_before_the_monthly_reset():
    state = fail(TokenState(), ErrorType.CREDITS_EXCEEDED, NOW, CUSTOM)
    assert state.available_at == NOW + timedelta(seconds=10)
    state = fail(state, ErrorType.CREDITS_EXCEEDED, state.available_at, CUSTOM)
    assert state.available_at == NOW + timedelta(seconds=30)

    state = fail(state, ErrorType.CREDITS_EXCEEDED, state.available_at, CUSTOM)

    assert state.available_at == datetime(2025, 4, 1, tzinfo=UTC)


def test_a_pools_own_rate_limit_and_breaker_settings_are_used():
    state, at, seconds = TokenState(), NOW, []
    for _ in range(3):
        state = fail(state, ErrorType.RATE_LIMITED, at, CUSTOM)
        seconds.append((state.available_at - at).total_seconds())
        at = state.available_at
    assert seconds == [5, 10, 12]

    state = fail(TokenState(), ErrorType.TIMEOUT, NOW, CUSTOM)
    state = fail(state, ErrorType.TIMEOUT, NOW, CUSTOM)
    assert state.status == Status.COOLING
    assert state.available_at == NOW + timedelta(seconds=7)
