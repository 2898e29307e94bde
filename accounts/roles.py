"""Roles and what each may do: the single source for permissions and docs/api.md's matrix."""

from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MANAGER = "manager", "Manager"
    USER = "user", "User"
    VIEWER = "viewer", "Viewer"


class Perm:
    VIEW_DASHBOARD = "dashboard.view"
    MANAGE_USERS = "users.manage"
    MANAGE_ALL_KEYS = "keys.manage_all"
    MANAGE_OWN_KEYS = "keys.manage_own"
    MANAGE_POOLS = "pools.manage"
    MANAGE_TOKENS = "tokens.manage"
    VIEW_TOKENS = "tokens.view"
    LEASE_TOKENS = "tokens.lease"
    CHAT = "chat.use"
    VIEW_ALL_USAGE = "usage.view_all"
    VIEW_AUDIT = "audit.view"


PERMISSION_DESCRIPTIONS = {
    Perm.VIEW_DASHBOARD: "read the dashboards",
    Perm.MANAGE_USERS: "create, change and deactivate the organization's users",
    Perm.MANAGE_ALL_KEYS: "create and revoke API keys of any user of the organization",
    Perm.MANAGE_OWN_KEYS: "create and revoke one's own API keys",
    Perm.MANAGE_POOLS: "create, change and delete token pools",
    Perm.MANAGE_TOKENS: "add, validate, enable, disable, release and delete HF tokens",
    Perm.VIEW_TOKENS: "list tokens (never their secrets) and their history",
    Perm.LEASE_TOKENS: "lease HF tokens and report outcomes",
    Perm.CHAT: "stream chat through the portal",
    Perm.VIEW_ALL_USAGE: "see everyone's usage in the organization",
    Perm.VIEW_AUDIT: "read the audit log",
}

_VIEWER = {Perm.VIEW_DASHBOARD, Perm.VIEW_TOKENS}
_USER = _VIEWER | {Perm.MANAGE_OWN_KEYS, Perm.LEASE_TOKENS, Perm.CHAT}
_MANAGER = _USER | {Perm.MANAGE_POOLS, Perm.MANAGE_TOKENS, Perm.VIEW_ALL_USAGE}
_ADMIN = _MANAGER | {Perm.MANAGE_USERS, Perm.MANAGE_ALL_KEYS, Perm.VIEW_AUDIT}

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.ADMIN: frozenset(_ADMIN),
    Role.MANAGER: frozenset(_MANAGER),
    Role.USER: frozenset(_USER),
    Role.VIEWER: frozenset(_VIEWER),
}

# Platform superusers manage organizations; inside an organization they act with their role there.
SUPERUSER_PERMISSION = "organizations.manage"
