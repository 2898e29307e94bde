from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiKey, Organization
from tokens.policy import QuarantinePolicy, Status, TokenState


class Strategy(models.TextChoices):
    LEAST_RECENTLY_LEASED = "least_recently_leased", "Least recently leased"
    WEIGHTED_RANDOM = "weighted_random", "Weighted random"
    FEWEST_RECENT_ERRORS = "fewest_recent_errors", "Fewest recent errors"


def default_credits_stages() -> list[int]:
    return list(QuarantinePolicy().credits_stages_seconds)


class TokenPool(models.Model):
    DEFAULT_NAME = "default"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="pools")
    name = models.SlugField(max_length=64)
    description = models.CharField(max_length=200, blank=True)
    strategy = models.CharField(max_length=32, choices=Strategy.choices, default=Strategy.LEAST_RECENTLY_LEASED)
    lease_ttl_seconds = models.PositiveIntegerField(default=600, validators=[MinValueValidator(1)])
    # Quarantine policy (see tokens.policy.QuarantinePolicy and the table in docs/quarantine.md).
    credits_stages_seconds = models.JSONField(default=default_credits_stages)
    rate_limit_base_seconds = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1)])
    rate_limit_max_seconds = models.PositiveIntegerField(default=900, validators=[MinValueValidator(1)])
    breaker_threshold = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    breaker_cooldown_seconds = models.PositiveIntegerField(default=300, validators=[MinValueValidator(1)])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="unique_pool_name")]

    def __str__(self) -> str:
        return self.name

    def quarantine_policy(self) -> QuarantinePolicy:
        return QuarantinePolicy(
            credits_stages_seconds=tuple(self.credits_stages_seconds),
            rate_limit_base_seconds=self.rate_limit_base_seconds,
            rate_limit_max_seconds=self.rate_limit_max_seconds,
            breaker_threshold=self.breaker_threshold,
            breaker_cooldown_seconds=self.breaker_cooldown_seconds,
        )


class HFToken(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="hf_tokens")
    pool = models.ForeignKey(TokenPool, on_delete=models.PROTECT, related_name="tokens")
    label = models.CharField(max_length=100)
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    max_concurrent_leases = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    # The secret: Fernet ciphertext, a digest of organization id + secret to find duplicates, and the last
    # 4 characters to show.
    secret_encrypted = models.TextField()
    secret_fingerprint = models.CharField(max_length=64)
    last4 = models.CharField(max_length=4)

    status = models.CharField(max_length=16, choices=Status.CHOICES, default=Status.ACTIVE)
    available_at = models.DateTimeField(null=True, blank=True)
    quarantine_stage = models.PositiveSmallIntegerField(default=0)
    consecutive_failures = models.PositiveIntegerField(default=0)
    rate_limit_streak = models.PositiveSmallIntegerField(default=0)
    # Open leases, kept on the row so a concurrent-lease limit is checked under the row's lock.
    active_leases = models.PositiveIntegerField(default=0)

    lease_count = models.PositiveBigIntegerField(default=0)
    success_count = models.PositiveBigIntegerField(default=0)
    error_count = models.PositiveBigIntegerField(default=0)
    last_leased_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_error_type = models.CharField(max_length=32, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    hf_username = models.CharField(max_length=100, blank=True)
    hf_token_role = models.CharField(max_length=32, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # No join in the default order: a row lock (select_for_update) must never reach the pool row.
        ordering = ["label", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "secret_fingerprint"], name="unique_token_secret"),
        ]
        indexes = [models.Index(fields=["pool", "status", "last_leased_at"], name="token_pool_status_lru")]

    def __str__(self) -> str:
        return f"{self.label} (…{self.last4})"

    def policy_state(self) -> TokenState:
        return TokenState(
            status=self.status,
            available_at=self.available_at,
            quarantine_stage=self.quarantine_stage,
            consecutive_failures=self.consecutive_failures,
            rate_limit_streak=self.rate_limit_streak,
        )

    def apply_policy_state(self, state: TokenState) -> list[str]:
        """Copy a policy state onto the row; returns the changed field names for save(update_fields=…)."""
        changed = []
        for name in ("status", "available_at", "quarantine_stage", "consecutive_failures", "rate_limit_streak"):
            if getattr(self, name) != getattr(state, name):
                setattr(self, name, getattr(state, name))
                changed.append(name)
        return changed


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    ERROR = "error", "Error"
    CANCELLED = "cancelled", "Cancelled"  # the client went away: not the token's fault
    EXPIRED = "expired", "Expired"  # never reported within the lease TTL


class Lease(models.Model):
    ERROR_TEXT_LIMIT = 500

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="leases")
    pool = models.ForeignKey(TokenPool, on_delete=models.SET_NULL, null=True, related_name="+")
    token = models.ForeignKey(HFToken, on_delete=models.SET_NULL, null=True, related_name="leases")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    client_name = models.CharField(max_length=100, blank=True)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    reported_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)
    error_type = models.CharField(max_length=32, blank=True)
    error = models.CharField(max_length=ERROR_TEXT_LIMIT, blank=True)

    class Meta:
        ordering = ["-leased_at", "-id"]
        indexes = [
            # Usage reports: a range of one organization's leases, covering the grouped columns.
            models.Index(
                fields=["organization", "leased_at", "token", "user", "pool", "outcome", "error_type"],
                name="lease_usage_covering",
            ),
            # Open leases: matching a report to its lease and expiring the forgotten ones.
            models.Index(
                fields=["token", "expires_at"], name="lease_open_by_token", condition=Q(reported_at__isnull=True)
            ),
            models.Index(fields=["expires_at"], name="lease_open_by_expiry", condition=Q(reported_at__isnull=True)),
            # The fewest-recent-errors strategy counts each candidate's leases of the last hour.
            models.Index(fields=["token", "leased_at"], name="lease_token_time"),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} of {self.token_id}"


class TokenEvent(models.Model):
    """Every status change of a token, with its reason."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    token = models.ForeignKey(HFToken, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    from_status = models.CharField(max_length=16)
    to_status = models.CharField(max_length=16)
    reason = models.CharField(max_length=300)
    actor_username = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["token", "-created_at"], name="token_event_history")]


class UsageCounter(models.Model):
    """Hourly counts per token, user and pool, kept as leases open and close, so usage reports read a few
    thousand rows instead of scanning millions of leases. One row per (dimension, key, hour, metric);
    metrics are `leases`, the outcomes, and `error:<type>`. Keys are plain ids so history outlives rows."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    dimension = models.CharField(max_length=8)  # token | user | pool
    key_id = models.BigIntegerField()
    hour = models.DateTimeField()
    metric = models.CharField(max_length=40)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "dimension", "hour", "key_id", "metric"], name="usage_counter_bucket"
            )
        ]
