"""The dashboard's forms: they check what a person typed; the services decide the rest."""

import re
from datetime import UTC, datetime, time, timedelta

from django import forms
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.utils import timezone

from accounts.roles import Role
from tokens.models import Strategy, TokenPool
from tokens.selectors import USAGE_GROUPS

TOKEN_RE = re.compile(r"[\x21-\x7e]{8,512}")  # what an HTTP Authorization header can carry, as the API checks


def pool_choices(organization) -> list[tuple[str, str]]:
    return [(pool.name, pool.name) for pool in TokenPool.objects.filter(organization=organization).order_by("name")]


class TokenAddForm(forms.Form):
    token = forms.CharField(
        max_length=512, strip=True, widget=forms.PasswordInput(attrs={"autocomplete": "off", "placeholder": "hf_…"}),
        help_text="Encrypted at rest; only its last 4 characters are shown again.",
    )
    label = forms.CharField(max_length=100, required=False)
    pool = forms.ChoiceField()
    weight = forms.IntegerField(min_value=1, max_value=1000, initial=1)
    max_concurrent_leases = forms.IntegerField(min_value=1, max_value=100000, required=False, label="Lease cap")
    validate = forms.BooleanField(required=False, initial=True, label="Validate with Hugging Face now")

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pool"].choices = pool_choices(organization)

    def clean_token(self):
        token = self.cleaned_data["token"]
        if not TOKEN_RE.fullmatch(token):
            raise forms.ValidationError("A token is 8 to 512 printable ASCII characters without spaces.")
        return token


class TokenImportForm(forms.Form):
    text = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "one token a line", "autocomplete": "off"}),
        max_length=2_000_000, label="Tokens",
    )
    pool = forms.ChoiceField()
    label_prefix = forms.CharField(max_length=80, required=False, help_text="Labels become prefix1, prefix2, …")

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pool"].choices = pool_choices(organization)

    def clean_text(self):
        secrets = [line.strip() for line in self.cleaned_data["text"].splitlines() if line.strip()]
        bad = [i + 1 for i, secret in enumerate(secrets) if not TOKEN_RE.fullmatch(secret)]
        if bad:
            raise forms.ValidationError(f"Lines {bad[:10]} are not tokens (8+ characters, no spaces).")
        if not secrets:
            raise forms.ValidationError("Paste at least one token.")
        if len(secrets) > 10000:
            raise forms.ValidationError("At most 10,000 tokens at once.")
        return secrets


class TokenUpdateForm(forms.Form):
    label = forms.CharField(max_length=100)
    weight = forms.IntegerField(min_value=1, max_value=1000)
    max_concurrent_leases = forms.IntegerField(min_value=1, max_value=100000, required=False, label="Lease cap")


class SecondsListField(forms.CharField):
    """Quarantine stages as '3600, 21600, 86400'."""

    def to_python(self, value):
        value = super().to_python(value)
        try:
            stages = [int(part) for part in re.split(r"[\s,]+", value.strip()) if part]
        except ValueError:
            raise forms.ValidationError("Whole seconds separated by commas, e.g. 3600, 21600, 86400.") from None
        if not stages or len(stages) > 10 or any(not 1 <= s <= 31 * 86400 for s in stages):
            raise forms.ValidationError("One to ten stages, each 1 s to 31 days.")
        return stages

    def prepare_value(self, value):
        return ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else value


class PoolForm(forms.Form):
    name = forms.SlugField(max_length=64)
    description = forms.CharField(max_length=200, required=False)
    strategy = forms.ChoiceField(choices=Strategy.choices, initial=Strategy.LEAST_RECENTLY_LEASED)
    lease_ttl_seconds = forms.IntegerField(min_value=1, max_value=7 * 86400, initial=600, label="Lease TTL (s)")
    credits_stages_seconds = SecondsListField(
        initial=[3600, 21600, 86400], label="Credits quarantine stages (s)",
        help_text="After the last stage: until 00:00 UTC on the 1st of next month.",
    )
    rate_limit_base_seconds = forms.IntegerField(min_value=1, max_value=86400, initial=60, label="Rate-limit cooling (s)")
    rate_limit_max_seconds = forms.IntegerField(min_value=1, max_value=7 * 86400, initial=900, label="Rate-limit cooling max (s)")
    breaker_threshold = forms.IntegerField(min_value=1, max_value=1000, initial=3, label="Breaker threshold (errors)")
    breaker_cooldown_seconds = forms.IntegerField(min_value=1, max_value=7 * 86400, initial=300, label="Breaker cooldown (s)")

    FIELDS = (
        "name", "description", "strategy", "lease_ttl_seconds", "credits_stages_seconds", "rate_limit_base_seconds",
        "rate_limit_max_seconds", "breaker_threshold", "breaker_cooldown_seconds",
    )

    @classmethod
    def for_pool(cls, pool: TokenPool, data=None) -> "PoolForm":
        form = cls(data, initial={name: getattr(pool, name) for name in cls.FIELDS}, prefix=f"pool-{pool.pk}")
        if pool.name == TokenPool.DEFAULT_NAME:
            form.fields["name"].disabled = True
        return form

    def changed_fields(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.changed_data}


class UserCreateForm(forms.Form):
    username = forms.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    email = forms.EmailField(required=False)
    full_name = forms.CharField(max_length=200, required=False)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.USER)
    password = forms.CharField(
        min_length=8, max_length=128, required=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="For the dashboard; leave empty for a key-only user.",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, required=False)
    owner = forms.TypedChoiceField(coerce=int, required=False, label="For user")
    pool = forms.ChoiceField(required=False, help_text="Pin the key to one pool (optional).")
    expires_on = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Expires on")

    def __init__(self, *args, organization, owners=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pool"].choices = [("", "any pool"), *pool_choices(organization)]
        if owners:
            self.fields["owner"].choices = owners
        else:
            del self.fields["owner"]

    def clean_expires_on(self):
        day = self.cleaned_data["expires_on"]
        if day is not None and day <= timezone.now().date():
            raise forms.ValidationError("The expiry must lie in the future.")
        return day

    def expires_at(self):
        day = self.cleaned_data.get("expires_on")
        return datetime.combine(day, time.min, tzinfo=UTC) if day else None


class UsageForm(forms.Form):
    group_by = forms.ChoiceField(choices=[(g, g) for g in USAGE_GROUPS], initial="day", required=False)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Inclusive: the whole day counts."
    )

    def clean(self):
        data = super().clean()
        for name in ("since", "until"):
            day = data.get(name)
            if day is not None and not 2000 <= day.year < 9000:
                self.add_error(name, "Give a day between the years 2000 and 9000.")
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", "The last day must not come before the first.")
        return data

    def window(self) -> tuple[datetime | None, datetime | None]:
        """The selector's since and until: whole UTC days, the last one included."""
        data = self.cleaned_data if self.is_valid() else {}
        since = datetime.combine(data["since"], time.min, tzinfo=UTC) if data.get("since") else None
        until = (
            datetime.combine(data["until"] + timedelta(days=1), time.min, tzinfo=UTC) if data.get("until") else None
        )
        return since, until

    @property
    def group_by_value(self) -> str:
        return (self.cleaned_data.get("group_by") if self.is_valid() else "") or "day"


class AuditFilterForm(forms.Form):
    actor = forms.CharField(max_length=150, required=False, help_text="Username or user id")
    action = forms.CharField(max_length=64, required=False, help_text="e.g. token or token.disabled")


class OrganizationCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=64, required=False)
