from django.contrib.auth.validators import UnicodeUsernameValidator
from rest_framework import serializers

from accounts.models import ApiKey, AuditEvent, Membership, Organization
from accounts.roles import Role
from portal.serializers import InputSerializer, StrictSerializer


class OrganizationOutput(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "is_active", "created_at"]


class OrganizationCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=64, required=False, default="")


class UserOutput(serializers.ModelSerializer):
    """A user as seen through its membership in one organization."""

    id = serializers.IntegerField(source="user.id")
    username = serializers.CharField(source="user.username")
    email = serializers.CharField(source="user.email")  # may be blank, so not documented as format: email
    full_name = serializers.CharField(source="user.full_name")
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    date_joined = serializers.DateTimeField(source="user.date_joined")
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "full_name", "role", "organization", "is_active", "date_joined"]

    def get_is_active(self, membership: Membership) -> bool:
        return membership.is_active and membership.user.is_active


class UserCreatedOutput(UserOutput):
    api_key = serializers.CharField(help_text="Shown once: store it now, the portal keeps only a digest.")

    class Meta(UserOutput.Meta):
        fields = [*UserOutput.Meta.fields, "api_key"]


class UserCreateInput(StrictSerializer):
    username = serializers.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    full_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.USER)
    password = serializers.CharField(min_length=8, max_length=128, required=False, write_only=True)
    organization = serializers.SlugField(
        max_length=64, required=False, help_text="Superusers only: create the user in this organization."
    )


class UserUpdateInput(StrictSerializer):
    email = serializers.EmailField(required=False, allow_blank=True)
    full_name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    is_active = serializers.BooleanField(required=False)


class ApiKeyOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="membership.user.username")
    pool = serializers.CharField(source="pool.name", allow_null=True, default=None, help_text="The pool it is pinned to.")
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id", "name", "prefix", "user", "pool", "created_at", "expires_at", "revoked_at", "last_used_at",
            "is_active",
        ]

    def get_is_active(self, api_key: ApiKey) -> bool:
        return api_key.revoked_at is None and not api_key.is_expired()


class ApiKeyCreatedOutput(ApiKeyOutput):
    api_key = serializers.CharField(help_text="Shown once: store it now, the portal keeps only a digest.")

    class Meta(ApiKeyOutput.Meta):
        fields = [*ApiKeyOutput.Meta.fields, "api_key"]


class ApiKeyCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    pool = serializers.SlugField(
        max_length=64, required=False, default="", help_text="Pin the key to this pool: it then leases only from it."
    )


class AuditEventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_username")

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "target_type", "target_id", "target_repr", "data", "ip"]


class AuditFilterInput(InputSerializer):
    action = serializers.CharField(max_length=64, required=False, default="")
    actor = serializers.CharField(max_length=150, required=False, default="")


class RoleMatrixOutput(serializers.Serializer):
    roles = serializers.ListField(child=serializers.CharField())
    permissions = serializers.DictField(child=serializers.CharField())
    matrix = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class MeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()  # may be blank
    full_name = serializers.CharField()
    is_superuser = serializers.BooleanField()
    organization = OrganizationOutput()
    role = serializers.CharField()
    permissions = serializers.ListField(child=serializers.CharField())
    organizations = serializers.ListField(child=serializers.DictField())
