"""Who is looking at a dashboard page, in which organization, and what they may do there.

Every page goes through `dashboard_view(perm)`: a logged-in session, an active membership (the organization
chosen in the session, else the first one) and the role permission the page needs. The same Perm matrix as
the REST API decides, so a hidden button and a refused POST never disagree.
"""

from dataclasses import dataclass
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import render
from rest_framework import exceptions

from accounts import selectors
from accounts.models import Membership, Organization, User
from accounts.permissions import SESSION_ORGANIZATION_KEY, membership_permissions
from accounts.roles import SUPERUSER_PERMISSION, Perm
from portal.errors import describe_api_exception

# Template names for the permissions: `can.manage_tokens`, `can.chat`, … (the Perm attribute, lower-cased).
PERM_NAMES = {
    value: name.lower() for name, value in vars(Perm).items() if name.isupper() and isinstance(value, str)
}
PERM_NAMES[SUPERUSER_PERMISSION] = "manage_organizations"


@dataclass(frozen=True)
class Viewer:
    """The request's membership, resolved once: views read `request.viewer`."""

    membership: Membership
    permissions: frozenset[str]

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    @property
    def user(self) -> User:
        return self.membership.user

    def may(self, perm: str) -> bool:
        return perm in self.permissions

    @property
    def can(self) -> dict[str, bool]:
        return {name: perm in self.permissions for perm, name in PERM_NAMES.items()}


def viewer_for(request) -> Viewer | None:
    if not hasattr(request, "_dashboard_viewer"):
        viewer = None
        user = getattr(request, "user", None)  # DRF's pages (API docs) may have none
        if user is not None and user.is_authenticated:
            membership = selectors.membership_for_user(request.user, request.session.get(SESSION_ORGANIZATION_KEY))
            if membership is not None:
                viewer = Viewer(membership, frozenset(membership_permissions(membership)))
        request._dashboard_viewer = viewer
    return request._dashboard_viewer


def dashboard_view(perm: str = Perm.VIEW_DASHBOARD, *, post_perm: str | None = None):
    """Login, membership and role for a page. `post_perm` is what a POST to the same view needs."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            viewer = viewer_for(request)
            if viewer is None:
                return render(request, "dashboard/no_organization.html", status=403)
            needed = post_perm if post_perm and request.method == "POST" else perm
            if not viewer.may(needed):
                raise PermissionDenied(f"Your role does not allow this ({needed}).")
            request.viewer = viewer
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def audit_of(request) -> dict:
    """Keyword arguments every writing service takes to record who did it and from where."""
    return {"actor": request.user, "ip": request.META.get("REMOTE_ADDR") or None}


def error_text(exc: Exception) -> str:
    """A service's refusal in plain words, for a message on the page."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, exceptions.APIException):
        return describe_api_exception(exc)[0]["error"]
    return str(exc)


SERVICE_ERRORS = (exceptions.APIException, DjangoValidationError)
