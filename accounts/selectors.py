"""Everything in accounts that reads. Tenant-owned reads take the organization first."""

from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import ApiKey, AuditEvent, Membership, Organization, User
from portal.db import unique_or_none


def api_key_by_digest(digest: str) -> ApiKey | None:
    return unique_or_none(
        ApiKey.objects.select_related("membership__user", "membership__organization", "pool").filter(digest=digest)
    )


def membership_list(organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("user__username")


def membership_get(organization: Organization, user_id) -> Membership:
    """The user's membership in this organization; another organization's user is simply not found."""
    return get_object_or_404(membership_list(organization), user_id=user_id)


def may_manage_account(actor: User | None, user: User) -> bool:
    """Superusers are above organizations: only a superuser, or the portal itself (no actor), acts on a
    superuser's account (keys, role, name, email, password, active flag). `_managed_by` is the same rule
    as a filter."""
    return actor is None or actor.is_superuser or not user.is_superuser


def _managed_by(actor: User | None, user_field: str) -> Q:
    return Q() if actor is None or actor.is_superuser else ~Q(**{f"{user_field}__is_superuser": True})


def membership_to_manage(organization: Organization, user_id, *, actor: User | None) -> Membership:
    """The membership `actor` is about to act on; a superuser's is not found for anyone but a superuser."""
    return get_object_or_404(membership_list(organization).filter(_managed_by(actor, "user")), user_id=user_id)


def active_memberships_of(user: User) -> QuerySet[Membership]:
    """The organizations a user may act in: their active memberships of active organizations."""
    return Membership.objects.select_related("organization", "user").filter(
        user=user, is_active=True, organization__is_active=True
    )


def membership_for_user(user: User, organization_id=None) -> Membership | None:
    """The membership a session acts through: the chosen organization, else the user's first active one."""
    memberships = active_memberships_of(user)
    if organization_id is not None:
        chosen = memberships.filter(organization_id=organization_id).first()
        if chosen is not None:
            return chosen
    return memberships.order_by("id").first()


def api_key_list(organization: Organization, *, actor: User | None, user: User | None = None) -> QuerySet[ApiKey]:
    """The organization's keys `actor` may see and revoke (a superuser's only for superusers), or `user`'s."""
    keys = ApiKey.objects.filter(_managed_by(actor, "membership__user"), membership__organization=organization)
    keys = keys.select_related("membership__user", "pool")
    if user is not None:
        keys = keys.filter(membership__user=user)
    return keys


def api_key_get(organization: Organization, key_id, *, actor: User | None, user: User | None = None) -> ApiKey:
    return get_object_or_404(api_key_list(organization, actor=actor, user=user), pk=key_id)


def audit_event_list(organization: Organization, *, action: str = "", actor: str = "") -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(organization=organization)
    if action:
        # "user" matches user.created, user.role_changed, …; a full name matches exactly.
        events = events.filter(action=action) if "." in action else events.filter(action__startswith=f"{action}.")
    if actor:
        is_id = actor.isascii() and actor.isdigit() and len(actor) <= 18  # beyond that no id exists (64 bits)
        events = events.filter(actor_id=int(actor)) if is_id else events.filter(actor_username=actor)
    return events.order_by("-created_at", "-id")


def organization_list() -> QuerySet[Organization]:
    return Organization.objects.all()


def organization_by_slug(slug: str) -> Organization | None:
    return unique_or_none(Organization.objects.filter(slug=slug))
