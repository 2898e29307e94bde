"""Role permissions for DRF views. A request acts through one membership: its API key's, or the session's."""

from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from accounts import selectors
from accounts.models import ApiKey, Membership
from accounts.roles import ROLE_PERMISSIONS, SUPERUSER_PERMISSION, Role

SESSION_ORGANIZATION_KEY = "organization_id"


def request_membership(request) -> Membership | None:
    """The membership the request acts through, resolved once per request."""
    if not hasattr(request, "_portal_membership"):
        membership = None
        if isinstance(request.auth, ApiKey):
            membership = request.auth.membership
        elif request.user is not None and request.user.is_authenticated:
            membership = selectors.membership_for_user(
                request.user, request.session.get(SESSION_ORGANIZATION_KEY)
            )
        request._portal_membership = membership
    return request._portal_membership


def membership_permissions(membership: Membership) -> list[str]:
    """Everything the membership may do. A platform superuser acts as an admin inside any organization
    it works in, and manages organizations besides."""
    if membership.user.is_superuser:
        return [*sorted(ROLE_PERMISSIONS[Role.ADMIN]), SUPERUSER_PERMISSION]
    return sorted(ROLE_PERMISSIONS[membership.role])


def membership_has(membership: Membership | None, perm: str) -> bool:
    return membership is not None and perm in membership_permissions(membership)


def require(perm: str) -> type[BasePermission]:
    """A DRF permission class that lets through requests whose membership holds `perm`."""

    class RequirePermission(BasePermission):
        message = f"Your role does not allow this ({perm})."

        def has_permission(self, request, view):
            if request.user is None or not request.user.is_authenticated:
                raise exceptions.NotAuthenticated()
            return membership_has(request_membership(request), perm)

    RequirePermission.__name__ = f"Require_{perm.replace('.', '_')}"
    return RequirePermission
