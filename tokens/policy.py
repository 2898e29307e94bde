"""The quarantine rules, as pure functions: current state + report + now -> new state.

No database, no clock of its own: services read the token, ask these functions
and save what they return, so every rule is testable with plain values.
"""

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus


class Status:
    ACTIVE = "active"
    COOLING = "cooling"
    QUARANTINED = "quarantined"
    INVALID = "invalid"
    DISABLED = "disabled"

    CHOICES = [(s, s) for s in (ACTIVE, COOLING, QUARANTINED, INVALID, DISABLED)]
    # Out of rotation only until their available_at passes.
    TIMED = frozenset({COOLING, QUARANTINED})


class ErrorType:
    INVALID_CREDENTIALS = "invalid_credentials"
    CREDITS_EXCEEDED = "credits_exceeded"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    SERVER_ERROR = "server_error"
    UNKNOWN = "unknown"
    # The request's own fault (an upstream 4xx other than 401, 402 and 429: a bad body, an unknown model):
    # recorded, but the token is not blamed.
    VALIDATION = "validation"

    ALL = (
        INVALID_CREDENTIALS, CREDITS_EXCEEDED, RATE_LIMITED, TIMEOUT, CONNECTION_ERROR, SERVER_ERROR, UNKNOWN, VALIDATION
    )
    # Faults of the path, not of the token: only a run of them trips the breaker.
    TRANSIENT = frozenset({TIMEOUT, CONNECTION_ERROR, SERVER_ERROR, UNKNOWN})


def error_type_for_status(status: int) -> str | None:
    """What an upstream HTTP error status says about the token; None when it is the request's own fault.
    Hugging Face answers 402 only when credits or a payment method are missing, so every 402 is
    credits_exceeded, with or without the monthly-credits sentence."""
    if status == 401:
        return ErrorType.INVALID_CREDENTIALS
    if status == 402:
        return ErrorType.CREDITS_EXCEEDED
    if status == 429:
        return ErrorType.RATE_LIMITED
    if status == 408:  # the server gave up waiting: the path's trouble, as a timeout
        return ErrorType.TIMEOUT
    if status >= 500:
        return ErrorType.SERVER_ERROR
    return None


CREDITS_SENTENCE = "exceeded your monthly included credits"
# The HTTP status as each client words it; the first one in the text counts (a quoted body comes after it).
_STATUS_IN_TEXT = re.compile(
    r"\b(?:client|server) error '(\d{3}) "  # httpx's raise_for_status, so huggingface_hub >= 1.0
    r"|(?<![\w.])(\d{3}) (?:client|server) error\b"  # requests' raise_for_status, so huggingface_hub < 1.0
    r"|\berror code: (\d{3})\b"  # the openai SDK
    r"|\b(?:http|status(?: code)?)[ :=]+(\d{3})\b"  # "HTTP 429", "status code: 429"
    # huggingface_hub's BadRequestError names no status: "Bad request:" (or "Bad request for commit endpoint:")
    # then the server's message. The colon keeps out prose such as our own "Bad request."
    r"|(?<![\w.])(?P<bad_request>bad request(?: for [\w.-]+ endpoint)?:)"
    # a bare status with its own reason phrase ("429 Too Many Requests", "401: Unauthorized")
    r"|(?<![\w.])("
    + "|".join(f"{status.value}(?=:? {re.escape(status.phrase)}\\b)" for status in HTTPStatus if status.value >= 400)
    + ")",
    re.IGNORECASE,
)


# The sentences that say the credentials were refused when no status is given: the router's 401 body
# ("Invalid credentials in Authorization header"), huggingface_hub's whoami 401 ("Invalid user token."),
# "invalid token". "invalid token" must end its phrase, so "invalid token_id" or "invalid tokens in the
# prompt" are not read as a refused credential; "invalid_credentials" (an error_type, maybe about a portal
# key) is not either.
_INVALID_CREDENTIALS_IN_TEXT = re.compile(
    r"(?<![\w-])invalid (?:credentials(?![\w-])"
    r"|(?:(?:user|access|api|auth|bearer|hf) )?token(?=[ \t]*(?:[.,;:!)\]\"'\r\n]|$)))",
    re.IGNORECASE,
)


def status_in_error(error: str) -> int | None:
    """The HTTP status a client's error message names, in any client's wording; None when it names none."""
    found = _STATUS_IN_TEXT.search(error)
    if not found:
        return None
    if found.group("bad_request"):
        return HTTPStatus.BAD_REQUEST.value
    return int(next(group for group in found.groups() if group))


def classify_error(error: str | None) -> str:
    """The kind of a failure a client reported as text (hf_token_utils sends no error_type for today's
    huggingface_hub wording). In this order:

    1. the router's credits sentence, whatever precedes it: `credits_exceeded`;
    2. the HTTP status in any client's wording (huggingface_hub's "Bad request:" counts as 400), read as
       the relay reads upstream statuses (error_type_for_status; a 4xx it does not blame on the token is
       `validation`);
    3. a sentence refusing the credentials without a status ("Invalid credentials in Authorization
       header", "Invalid user token.", "invalid token"): `invalid_credentials`;
    4. hf_token_utils' words for failures without a status: timeout, then connection;
    5. rate-limit words.

    Anything else is unknown."""
    text = error or ""
    lowered = text.lower()
    if CREDITS_SENTENCE in lowered:
        return ErrorType.CREDITS_EXCEEDED
    status = status_in_error(text)
    if status is not None and status >= 400:
        # A 4xx the relay would not blame on the token is the request's fault here too, whatever words follow.
        return error_type_for_status(status) or ErrorType.VALIDATION
    if _INVALID_CREDENTIALS_IN_TEXT.search(text):
        return ErrorType.INVALID_CREDENTIALS
    if "timeout" in lowered or "timed out" in lowered:
        return ErrorType.TIMEOUT
    # Any case: httpx says "Connection refused", the openai SDK "Connection error."
    if "connection" in lowered:
        return ErrorType.CONNECTION_ERROR
    if "rate limit" in lowered or "too many requests" in lowered:
        return ErrorType.RATE_LIMITED
    return ErrorType.UNKNOWN


@dataclass(frozen=True)
class QuarantinePolicy:
    """Per-pool settings; the defaults are docs/quarantine.md's table."""

    credits_stages_seconds: tuple[int, ...] = (3600, 6 * 3600, 24 * 3600)
    rate_limit_base_seconds: int = 60
    rate_limit_max_seconds: int = 15 * 60
    breaker_threshold: int = 3
    breaker_cooldown_seconds: int = 5 * 60


@dataclass(frozen=True)
class TokenState:
    status: str = Status.ACTIVE
    available_at: datetime | None = None
    quarantine_stage: int = 0
    consecutive_failures: int = 0
    rate_limit_streak: int = 0


@dataclass(frozen=True)
class Transition:
    state: TokenState
    reason: str = ""  # set when the status changed, for the token's event history
    changed: bool = field(default=False)


def first_of_next_month(now: datetime) -> datetime:
    """00:00 UTC on the 1st of next month, when Hugging Face resets monthly credits."""
    now = now.astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def quarantine_until(stage: int, now: datetime, policy: QuarantinePolicy) -> datetime:
    """End of the credits quarantine for stage 1, 2, …: the configured steps, then the monthly reset."""
    if stage <= len(policy.credits_stages_seconds):
        return now + timedelta(seconds=policy.credits_stages_seconds[stage - 1])
    return first_of_next_month(now)


def is_due(state: TokenState, now: datetime) -> bool:
    """A cooling or quarantined token whose time is up."""
    return state.status in Status.TIMED and (state.available_at is None or state.available_at <= now)


def release_if_due(state: TokenState, now: datetime) -> TokenState:
    """A timed-out token is active again; its quarantine stage stays until a success proves it recovered."""
    if is_due(state, now):
        return replace(state, status=Status.ACTIVE, available_at=None)
    return state


def next_state(
    state: TokenState, *, success: bool, error_type: str | None, now: datetime, policy: QuarantinePolicy
) -> Transition:
    """Apply one report. Late reports about a token already out of rotation never extend or escalate it."""
    before = state
    state = release_if_due(state, now)
    if state.status in (Status.DISABLED, Status.INVALID):
        # Out of rotation by a person or by validation; reports do not move it.
        return Transition(state, changed=state != before)

    if success:
        recovered = replace(state, consecutive_failures=0, rate_limit_streak=0)
        if state.status == Status.ACTIVE:
            recovered = replace(recovered, quarantine_stage=0)
        return _transition(before, recovered, "")

    if error_type == ErrorType.INVALID_CREDENTIALS:
        return _transition(
            before,
            replace(state, status=Status.INVALID, available_at=None, consecutive_failures=state.consecutive_failures + 1),
            "invalid credentials reported (401): out of rotation until a validation succeeds",
        )

    if state.status in Status.TIMED:  # a late report about a token already cooling or quarantined
        return _transition(before, replace(state, consecutive_failures=state.consecutive_failures + 1), "")

    if error_type == ErrorType.CREDITS_EXCEEDED:
        stage = state.quarantine_stage + 1
        until = quarantine_until(stage, now, policy)
        return _transition(
            before,
            replace(state, status=Status.QUARANTINED, available_at=until, quarantine_stage=stage),
            f"monthly credits exceeded (402): quarantine stage {stage} until {until.isoformat()}",
        )

    if error_type == ErrorType.RATE_LIMITED:
        streak = state.rate_limit_streak + 1
        seconds = min(policy.rate_limit_base_seconds * 2 ** (streak - 1), policy.rate_limit_max_seconds)
        return _transition(
            before,
            replace(state, status=Status.COOLING, available_at=now + timedelta(seconds=seconds), rate_limit_streak=streak),
            f"rate limited (429): cooling {seconds} s",
        )

    failures = state.consecutive_failures + 1
    state = replace(state, consecutive_failures=failures)
    if failures >= policy.breaker_threshold:
        # The count is kept while cooling, so after the cooldown a single further failure trips it
        # again (half-open); a success resets it.
        cooldown = policy.breaker_cooldown_seconds
        return _transition(
            before,
            replace(state, status=Status.COOLING, available_at=now + timedelta(seconds=cooldown)),
            f"{failures} consecutive {error_type or 'unknown'} errors: circuit open, cooling {cooldown} s",
        )
    return _transition(before, state, "")


def _transition(before: TokenState, after: TokenState, reason: str) -> Transition:
    if after.status != before.status and not reason:
        reason = f"{before.status} -> {after.status}"
    return Transition(after, reason=reason if after.status != before.status else "", changed=after != before)
