"""Everything in accounts that writes: one function per use case, each leaving an audit event."""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone
from django.utils.text import slugify
from rest_framework.exceptions import PermissionDenied, ValidationError

from accounts.audit import audit_record
from accounts.keys import MIN_PROVIDED_KEY_LENGTH, digest_api_key, display_prefix, generate_api_key
from accounts.models import ApiKey, Membership, Organization, User
from accounts.roles import Role
from accounts.selectors import may_manage_account
from portal.errors import Conflict
from tokens.services import pool_ensure_default


@transaction.atomic
def organization_create(*, name: str, slug: str = "", actor: User | None, ip: str | None = None) -> Organization:
    slug = slug or slugify(name)[:64]
    if not slug:
        raise ValidationError({"slug": ["Give a slug made of letters, digits or dashes."]})
    if Organization.objects.filter(slug=slug).exists():
        raise Conflict(f"An organization with slug '{slug}' already exists.")
    organization = Organization(name=name, slug=slug)
    organization.full_clean()
    organization.save()
    audit_record(organization=organization, actor=actor, action="organization.created", target=organization, ip=ip)
    pool_ensure_default(organization)
    return organization


@transaction.atomic
def user_create(
    *,
    organization: Organization,
    username: str,
    email: str = "",
    full_name: str = "",
    role: str = Role.USER,
    password: str | None = None,
    is_superuser: bool = False,
    raw_key: str | None = None,
    actor: User | None,
    ip: str | None = None,
) -> tuple[Membership, str]:
    """Create a user with a membership and a first API key; returns the membership and the raw key."""
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": ["A user with that username already exists."]})
    user = User(
        username=username, email=email, full_name=full_name, is_superuser=is_superuser, is_staff=is_superuser
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    try:
        user.save()
    except IntegrityError:  # a concurrent create of the same username
        raise ValidationError({"username": ["A user with that username already exists."]}) from None
    membership = Membership.objects.create(user=user, organization=organization, role=role)
    audit_record(
        organization=organization, actor=actor, action="user.created", target=user, ip=ip, data={"role": role}
    )
    _, raw_key = api_key_create(membership=membership, name="default", raw_key=raw_key, actor=actor, ip=ip)
    return membership, raw_key


@transaction.atomic
def user_update(
    *,
    membership: Membership,
    actor: User | None,
    ip: str | None = None,
    email: str | None = None,
    full_name: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
) -> Membership:
    user = membership.user
    _ensure_may_manage(actor, user)
    changed_user_fields = {
        field: value
        for field, value in {"email": email, "full_name": full_name}.items()
        if value is not None and value != getattr(user, field)
    }
    if changed_user_fields and not (actor and actor.is_superuser) and _belongs_elsewhere(membership):
        # Name and email belong to the person, not to one organization: no tenant's admin changes them for all.
        raise Conflict("This user belongs to other organizations too; only a superuser may change their name or email.")
    for field, value in changed_user_fields.items():
        setattr(user, field, value)
    if changed_user_fields:
        user.full_clean(exclude=["password"])
        user.save(update_fields=list(changed_user_fields))
        audit_record(
            organization=membership.organization, actor=actor, action="user.updated", target=user, ip=ip,
            data={"fields": sorted(changed_user_fields)},
        )
    if role is not None and role != membership.role:
        if membership.role == Role.ADMIN:
            _ensure_another_admin_remains(membership)
        old_role, membership.role = membership.role, role
        membership.save(update_fields=["role"])
        audit_record(
            organization=membership.organization, actor=actor, action="user.role_changed", target=user, ip=ip,
            data={"from": old_role, "to": role},
        )
    if is_active is not None and is_active != membership.is_active:
        if is_active:
            membership.is_active = True
            membership.save(update_fields=["is_active"])
            audit_record(
                organization=membership.organization, actor=actor, action="user.reactivated", target=user, ip=ip
            )
        else:
            user_deactivate(membership=membership, actor=actor, ip=ip)
    return membership


@transaction.atomic
def user_deactivate(*, membership: Membership, actor: User | None, ip: str | None = None) -> Membership:
    """Deactivate, never delete: leases and audit history keep pointing at the user."""
    _ensure_may_manage(actor, membership.user)
    if not membership.is_active:
        return membership
    if membership.role == Role.ADMIN:
        _ensure_another_admin_remains(membership)
    membership.is_active = False
    membership.save(update_fields=["is_active"])
    audit_record(
        organization=membership.organization, actor=actor, action="user.deactivated", target=membership.user, ip=ip
    )
    return membership


@transaction.atomic
def superuser_membership_ensure(*, organization: Organization, actor: User, ip: str | None = None) -> Membership:
    """A platform superuser steps into an organization to work in it (the dashboard's organization switcher):
    an active admin membership, made or brought back, and audited, so the organization sees who came in."""
    if not actor.is_superuser:
        raise PermissionDenied("Only platform superusers step into other organizations.")
    membership, created = Membership.objects.get_or_create(
        user=actor, organization=organization, defaults={"role": Role.ADMIN}
    )
    if created or not membership.is_active:
        membership.is_active = True
        membership.save(update_fields=["is_active"])
        audit_record(
            organization=organization, actor=actor, action="user.superuser_joined", target=actor, ip=ip,
            data={"role": membership.role},
        )
    return membership


def _ensure_may_manage(actor: User | None, user: User) -> None:
    """The services check the superuser rule again, whatever lookup brought the target here."""
    if not may_manage_account(actor, user):
        raise Http404()


def _belongs_elsewhere(membership: Membership) -> bool:
    return Membership.objects.filter(user_id=membership.user_id).exclude(organization_id=membership.organization_id).exists()


def _ensure_another_admin_remains(membership: Membership) -> None:
    others = (
        Membership.objects.select_for_update()
        .filter(organization=membership.organization, role=Role.ADMIN, is_active=True, user__is_active=True)
        .exclude(pk=membership.pk)
    )
    if not others.exists():
        raise Conflict("This is the organization's last active admin; make another admin first.")


@transaction.atomic
def api_key_create(
    *,
    membership: Membership,
    name: str = "",
    expires_at: datetime | None = None,
    pool=None,
    raw_key: str | None = None,
    actor: User | None,
    ip: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with the raw string, which is never stored and never shown again."""
    _ensure_may_manage(actor, membership.user)
    if raw_key is not None and len(raw_key) < MIN_PROVIDED_KEY_LENGTH:
        raise ValidationError({"api_key": [f"A provided key needs at least {MIN_PROVIDED_KEY_LENGTH} characters."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": ["The expiry must lie in the future."]})
    raw_key = raw_key or generate_api_key()
    api_key = ApiKey.objects.create(
        membership=membership,
        name=name,
        prefix=display_prefix(raw_key),
        digest=digest_api_key(raw_key),
        expires_at=expires_at,
        pool=pool,
    )
    audit_record(
        organization=membership.organization, actor=actor, action="api_key.created", target=api_key, ip=ip,
        data={"owner": membership.user.username, **({"pool": pool.name} if pool else {})},
    )
    return api_key, raw_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User | None, ip: str | None = None) -> ApiKey:
    _ensure_may_manage(actor, api_key.membership.user)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(
            organization=api_key.membership.organization, actor=actor, action="api_key.revoked", target=api_key,
            ip=ip, data={"owner": api_key.membership.user.username},
        )
    return api_key


def api_key_touch(*, api_key: ApiKey, now: datetime | None = None, interval_seconds: int = 60) -> None:
    """Record use at most once per interval: one conditional UPDATE, skipped entirely while fresh."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=interval_seconds)
    if api_key.last_used_at is not None and api_key.last_used_at > stale_before:
        return
    # Conditional, so concurrent requests on several workers write once between them.
    ApiKey.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale_before), pk=api_key.pk).update(
        last_used_at=now
    )
    api_key.last_used_at = now


DEFAULT_ORGANIZATION_SLUG = "default"
BOOTSTRAP_ADMIN_USERNAME = "admin"


@dataclass(frozen=True)
class BootstrapResult:
    created: bool
    organization: Organization
    username: str
    password: str | None = None  # only when just created
    api_key: str | None = None  # only when just created or just registered from the environment


@transaction.atomic
def portal_bootstrap(*, admin_password: str | None = None, admin_api_key: str | None = None) -> BootstrapResult:
    """First start: the default organization and its superuser admin. Later starts change nothing,
    except registering a newly provided admin API key, so a container can rotate it by environment."""
    existing = Membership.objects.select_related("organization", "user").filter(
        user__is_superuser=True, role=Role.ADMIN
    ).order_by("id").first()
    if existing is not None:
        registered = None
        if admin_api_key and not ApiKey.objects.filter(digest=digest_api_key(admin_api_key)).exists():
            api_key_create(membership=existing, name="from PORTAL_ADMIN_API_KEY", raw_key=admin_api_key, actor=None)
            registered = admin_api_key
        return BootstrapResult(False, existing.organization, existing.user.username, api_key=registered)

    organization = Organization.objects.filter(slug=DEFAULT_ORGANIZATION_SLUG).first() or organization_create(
        name="Default", slug=DEFAULT_ORGANIZATION_SLUG, actor=None
    )
    password = admin_password or secrets.token_urlsafe(18)
    membership, raw_key = user_create(
        organization=organization,
        username=BOOTSTRAP_ADMIN_USERNAME,
        role=Role.ADMIN,
        password=password,
        is_superuser=True,
        raw_key=admin_api_key,
        actor=None,
    )
    return BootstrapResult(True, organization, membership.user.username, password=password, api_key=raw_key)
