"""Everything in tokens that reads. Every function takes the organization (or a pool of it) first."""

import math
from datetime import datetime, timedelta

from django.db.models import Count, F, IntegerField, Min, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, TruncDate
from django.shortcuts import get_object_or_404

from accounts.models import Organization, User
from tokens.models import HFToken, Lease, Outcome, Strategy, TokenEvent, TokenPool
from tokens.policy import ErrorType, Status

RECENT_ERRORS_WINDOW = timedelta(hours=1)


def pool_list(organization: Organization) -> QuerySet[TokenPool]:
    return TokenPool.objects.filter(organization=organization).annotate(token_count=Count("tokens"))


def pool_get(organization: Organization, pool_id) -> TokenPool:
    return get_object_or_404(pool_list(organization), pk=pool_id)


def pool_by_name(organization: Organization, name: str) -> TokenPool | None:
    return TokenPool.objects.filter(organization=organization, name=name).first()


def token_list(organization: Organization, *, pool: str = "", status: str = "") -> QuerySet[HFToken]:
    tokens = HFToken.objects.filter(organization=organization).select_related("pool")
    if pool:
        tokens = tokens.filter(pool__name=pool)
    if status:
        tokens = tokens.filter(status=status)
    return tokens


def token_get(organization: Organization, token_id) -> HFToken:
    return get_object_or_404(token_list(organization), pk=token_id)


def token_events(organization: Organization, token: HFToken, *, limit: int = 50) -> list[TokenEvent]:
    return list(TokenEvent.objects.filter(organization=organization, token=token).order_by("-created_at", "-id")[:limit])


def eligible_tokens(pool: TokenPool, now: datetime) -> QuerySet[HFToken]:
    """Tokens a lease may take now: active, or cooling/quarantined with their time up, and below their lease cap."""
    return HFToken.objects.filter(pool=pool).filter(
        Q(status=Status.ACTIVE) | Q(status__in=Status.TIMED, available_at__lte=now),
        Q(max_concurrent_leases__isnull=True) | Q(active_leases__lt=F("max_concurrent_leases")),
    )


def in_strategy_order(tokens: QuerySet[HFToken], strategy: str, now: datetime) -> QuerySet[HFToken]:
    """Order candidates by the pool's strategy; least recently leased breaks ties so leases spread."""
    lru = (F("last_leased_at").asc(nulls_first=True), "id")
    if strategy == Strategy.FEWEST_RECENT_ERRORS:
        recent_errors = (
            Lease.objects.filter(token=OuterRef("pk"), outcome=Outcome.ERROR, leased_at__gte=now - RECENT_ERRORS_WINDOW)
            .values("token")
            .annotate(n=Count("id"))
            .values("n")
        )
        return tokens.annotate(
            recent_errors=Coalesce(Subquery(recent_errors, output_field=IntegerField()), Value(0))
        ).order_by("recent_errors", *lru)
    return tokens.order_by(*lru)


def seconds_until_token_returns(pool: TokenPool, now: datetime) -> int | None:
    """Whole seconds until some token of the pool can be leased again by itself; None if none will."""
    soonest_release = HFToken.objects.filter(pool=pool, status__in=Status.TIMED, available_at__gt=now).aggregate(
        at=Min("available_at")
    )["at"]
    soonest_lease_end = Lease.objects.filter(
        token__pool=pool,
        token__status=Status.ACTIVE,
        token__max_concurrent_leases__isnull=False,
        token__active_leases__gte=F("token__max_concurrent_leases"),
        reported_at__isnull=True,
    ).aggregate(at=Min("expires_at"))["at"]
    candidates = [at for at in (soonest_release, soonest_lease_end) if at is not None]
    if not candidates:
        return None
    return max(1, math.ceil((min(candidates) - now).total_seconds()))


def open_lease_for_report(token: HFToken, *, api_key=None, user=None) -> Lease | None:
    """The lease a report without lease_id is about: the oldest open one of this key (or user) on this token."""
    leases = Lease.objects.filter(token=token, reported_at__isnull=True)
    leases = leases.filter(api_key=api_key) if api_key is not None else leases.filter(user=user)
    return leases.order_by("leased_at", "id").first()


def overdue_leases(now: datetime, *, limit: int = 500) -> list[tuple[int, int | None]]:
    return list(
        Lease.objects.filter(reported_at__isnull=True, expires_at__lte=now).values_list("id", "token_id")[:limit]
    )


USAGE_GROUP_COLUMNS = {"token": "token_id", "user": "user_id", "pool": "pool_id", "day": "day"}


def usage_summary(
    organization: Organization, *, since: datetime, until: datetime, group_by: str, user=None
) -> list[dict]:
    """Leases, outcomes and errors by type per group, in one grouped query over the covering index."""
    leases = Lease.objects.filter(organization=organization, leased_at__gte=since, leased_at__lt=until)
    if user is not None:
        leases = leases.filter(user=user)
    key = USAGE_GROUP_COLUMNS[group_by]
    if group_by == "day":
        leases = leases.annotate(day=TruncDate("leased_at"))
    counts = {
        "leases": Count("id"),
        "successes": Count("id", filter=Q(outcome=Outcome.SUCCESS)),
        "errors": Count("id", filter=Q(outcome=Outcome.ERROR)),
        "cancelled": Count("id", filter=Q(outcome=Outcome.CANCELLED)),
        "expired": Count("id", filter=Q(outcome=Outcome.EXPIRED)),
        "open": Count("id", filter=Q(outcome="")),
    }
    by_type = {f"error_{kind}": Count("id", filter=Q(outcome=Outcome.ERROR, error_type=kind)) for kind in ErrorType.ALL}
    rows = leases.values(key).annotate(**counts, **by_type).order_by(key)
    labels = _usage_labels(organization, group_by, [row[key] for row in rows]) if group_by != "day" else {}
    return [_usage_row(row, key, labels) for row in rows]


def _usage_labels(organization: Organization, group_by: str, ids: list) -> dict:
    """Names for the grouped ids, fetched once instead of joined into the million-row scan."""
    if group_by == "token":
        return dict(HFToken.objects.filter(organization=organization, pk__in=ids).values_list("id", "label"))
    if group_by == "pool":
        return dict(TokenPool.objects.filter(organization=organization, pk__in=ids).values_list("id", "name"))
    return dict(User.objects.filter(pk__in=ids).values_list("id", "username"))


def _usage_row(row: dict, key: str, labels: dict) -> dict:
    group = row.pop(key)
    errors_by_type = {kind: row.pop(f"error_{kind}") for kind in ErrorType.ALL}
    name = str(group) if key == "day" else labels.get(group, "(deleted)" if group is None else str(group))
    return {"key": str(group) if group is not None else None, "name": name, **row, "errors_by_type": errors_by_type}
