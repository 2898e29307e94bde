from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts.models import ApiKey, AuditEvent, Membership, Organization, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    fieldsets = (*DjangoUserAdmin.fieldsets, ("Portal", {"fields": ("full_name",)}))
    list_display = ("username", "email", "full_name", "is_active", "is_superuser")


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "is_active", "created_at")
    search_fields = ("slug", "name")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "role", "is_active")
    list_filter = ("role", "organization")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # The digest is of no use to a person and is left out on purpose.
    list_display = ("prefix", "name", "membership", "created_at", "expires_at", "revoked_at", "last_used_at")
    fields = ("membership", "name", "prefix", "pool", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "organization", "actor_username", "action", "target_repr", "ip")
    list_filter = ("action",)
