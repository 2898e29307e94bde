import re
from datetime import UTC, datetime

from rest_framework import serializers

from accounts.keys import SHOWN_ONCE_HEADERS
from portal.db import MAX_ROW_ID
from portal.serializers import InputSerializer, SharedInputSerializer, StrictSerializer
from tokens.models import HFToken, Strategy, TokenEvent, TokenPool
from tokens.policy import ErrorType, Status
from tokens.selectors import USAGE_GROUPS

# --- Client contract (hf_token_utils) -----------------------------------------------------------


TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{8,512}")  # what an HTTP Authorization header can carry


class ProvisionInput(SharedInputSerializer):
    pool = serializers.SlugField(max_length=64, required=False, default="")
    client_name = serializers.CharField(max_length=100, required=False, default="")


class ProvisionOutput(serializers.Serializer):
    token = serializers.CharField(help_text="The Hugging Face token to use for this call.")
    token_id = serializers.CharField(help_text="Send it back in the report.")
    lease_id = serializers.IntegerField()
    pool = serializers.CharField()
    expires_at = serializers.DateTimeField(help_text="Report before this, or the lease expires unreported.")


class ReportInput(SharedInputSerializer):
    """Lenient on purpose: the helper may add fields, and a report should never be lost to a stray key."""

    token_id = serializers.IntegerField(min_value=1, max_value=MAX_ROW_ID)
    status = serializers.ChoiceField(choices=["success", "error"])
    error = serializers.CharField(required=False, allow_blank=True, allow_null=True, default="", trim_whitespace=False)
    error_type = serializers.CharField(required=False, allow_blank=True, allow_null=True, default=None, max_length=64)
    client_name = serializers.CharField(required=False, allow_blank=True, allow_null=True, default="")
    lease_id = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1, max_value=MAX_ROW_ID)


class ReportOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    token_status = serializers.ChoiceField(choices=Status.CHOICES)
    lease_id = serializers.IntegerField(allow_null=True)
    duplicate = serializers.BooleanField(help_text="True when this lease had already been reported: nothing changed.")


# The answers themselves, shared by the DRF views (tokens.api) and the bare front door (portal.lease_door).


def provision_answer(grant, pool: TokenPool) -> dict:
    payload = {
        "token": grant.secret,
        "token_id": str(grant.token.pk),
        "lease_id": grant.lease.pk,
        "pool": pool.name,
        "expires_at": grant.lease.expires_at,
    }
    return _PROVISION_OUTPUT.to_representation(payload)


_PROVISION_OUTPUT = ProvisionOutput()  # shared, as SharedInputSerializer's checkers are: rendering keeps no state


PROVISION_HEADERS = SHOWN_ONCE_HEADERS  # the body holds a secret: no cache anywhere may keep it


def report_arguments(data: dict) -> dict:
    """ReportInput's validated data as services.report_outcome's keyword arguments."""
    return {
        "token_id": data["token_id"],
        "success": data["status"] == "success",
        "error": data["error"] or "",
        "error_type": data["error_type"] or None,
        "client_name": data["client_name"] or "",
        "lease_id": data["lease_id"],
    }


def report_answer(result) -> dict:
    return {
        "ok": True,
        "token_status": result.token.status,
        "lease_id": result.lease.pk if result.lease else None,
        "duplicate": result.duplicate,
    }


# --- Pools ---------------------------------------------------------------------------------------


class PoolOutput(serializers.ModelSerializer):
    token_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = TokenPool
        fields = [
            "id", "name", "description", "strategy", "lease_ttl_seconds", "credits_stages_seconds",
            "rate_limit_base_seconds", "rate_limit_max_seconds", "breaker_threshold", "breaker_cooldown_seconds",
            "token_count", "created_at",
        ]


class PoolInput(StrictSerializer):
    name = serializers.SlugField(max_length=64)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    strategy = serializers.ChoiceField(choices=Strategy.choices, required=False)
    lease_ttl_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, required=False)
    credits_stages_seconds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=31 * 86400), max_length=10, required=False,
        help_text="Quarantine lengths for credits_exceeded, stage by stage; after the last, until the monthly reset.",
    )
    rate_limit_base_seconds = serializers.IntegerField(min_value=1, max_value=86400, required=False)
    rate_limit_max_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, required=False)
    breaker_threshold = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    breaker_cooldown_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, required=False)


class PoolUpdateInput(PoolInput):
    name = serializers.SlugField(max_length=64, required=False)


# --- Tokens --------------------------------------------------------------------------------------


class TokenOutput(serializers.ModelSerializer):
    """A token as anyone may see it: never the secret, only its last 4 characters."""

    pool = serializers.CharField(source="pool.name")

    class Meta:
        model = HFToken
        fields = [
            "id", "label", "last4", "pool", "weight", "max_concurrent_leases", "status", "available_at",
            "quarantine_stage", "consecutive_failures", "active_leases", "lease_count", "success_count",
            "error_count", "last_leased_at", "last_error", "last_error_type", "last_error_at", "hf_username",
            "hf_token_role", "validated_at", "created_at",
        ]


class TokenEventOutput(serializers.ModelSerializer):
    class Meta:
        model = TokenEvent
        fields = ["created_at", "from_status", "to_status", "reason", "actor_username"]


class TokenDetailOutput(TokenOutput):
    events = TokenEventOutput(many=True)

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "events"]


class TokenCreateInput(StrictSerializer):
    token = serializers.RegexField(
        r"^[\x21-\x7e]{8,512}$", help_text="The Hugging Face token (hf_…).",
        error_messages={"invalid": "A token is 8 to 512 printable ASCII characters without spaces."},
    )
    label = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    pool = serializers.SlugField(max_length=64, required=False, default="")
    weight = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=1)
    max_concurrent_leases = serializers.IntegerField(min_value=1, max_value=100000, required=False, allow_null=True, default=None)


class TokenUpdateInput(StrictSerializer):
    label = serializers.CharField(max_length=100, required=False)
    weight = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    max_concurrent_leases = serializers.IntegerField(min_value=1, max_value=100000, required=False, allow_null=True)


class TokenImportInput(StrictSerializer):
    tokens = serializers.ListField(
        child=serializers.CharField(max_length=512, allow_blank=True), required=False, max_length=10000
    )
    text = serializers.CharField(required=False, allow_blank=True, max_length=2_000_000, help_text="One token a line.")
    pool = serializers.SlugField(max_length=64, required=False, default="")
    label_prefix = serializers.CharField(max_length=80, required=False, default="", allow_blank=True)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if "tokens" not in attrs and "text" not in attrs:
            raise serializers.ValidationError("Send `tokens` (a list) or `text` (one token a line).")
        lines = [*attrs.pop("tokens", []), *attrs.pop("text", "").splitlines()]
        attrs["secrets"] = [line.strip() for line in lines if line.strip()]
        bad = [i + 1 for i, secret in enumerate(attrs["secrets"]) if not TOKEN_PATTERN.fullmatch(secret)]
        if bad:
            raise serializers.ValidationError(f"Entries {bad[:10]} are not tokens (8+ characters, no spaces).")
        return attrs


class TokenBriefOutput(serializers.ModelSerializer):
    class Meta:
        model = HFToken
        fields = ["id", "label", "last4", "status"]


class TokenImportOutput(serializers.Serializer):
    added = TokenBriefOutput(many=True)
    duplicates = serializers.ListField(child=serializers.CharField(), help_text="Last 4 characters of each duplicate.")


class TokenFilterInput(InputSerializer):
    pool = serializers.SlugField(max_length=64, required=False, default="")
    status = serializers.ChoiceField(choices=Status.CHOICES, required=False, default="")


class TokenCreateQuery(InputSerializer):
    validate = serializers.BooleanField(required=False, default=False)


# --- Usage ---------------------------------------------------------------------------------------


USAGE_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
USAGE_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class UsageInput(InputSerializer):
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    group_by = serializers.ChoiceField(choices=USAGE_GROUPS, default="day")

    def validate(self, attrs):
        for name in ("since", "until"):
            if name in attrs and not USAGE_EARLIEST <= attrs[name] <= USAGE_LATEST:
                raise serializers.ValidationError({name: ["Give a time between the years 2000 and 9000."]})
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["`until` must come after `since`."]})
        return attrs


class UsageRowOutput(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    leases = serializers.IntegerField()
    successes = serializers.IntegerField()
    errors = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    expired = serializers.IntegerField()
    open = serializers.IntegerField()
    errors_by_type = serializers.DictField(child=serializers.IntegerField())


class UsageOutput(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    group_by = serializers.CharField()
    rows = UsageRowOutput(many=True)
    error_types = serializers.ListField(child=serializers.CharField(), default=list(ErrorType.ALL))
