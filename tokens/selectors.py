"""Everything in tokens that reads. Every function takes the organization (or a pool of it) first."""

import math
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta

from django.db.models import Count, F, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.shortcuts import get_object_or_404
from django.utils import timezone

from accounts.models import Organization, User
from portal.db import unique_or_none
from tokens.models import HFToken, Lease, Outcome, TokenEvent, TokenPool, UsageCounter
from tokens.policy import ErrorType, Status


def pool_list(organization: Organization) -> QuerySet[TokenPool]:
    return TokenPool.objects.filter(organization=organization).annotate(token_count=Count("tokens"))


def pool_get(organization: Organization, pool_id) -> TokenPool:
    return get_object_or_404(pool_list(organization), pk=pool_id)


def pool_by_name(organization: Organization, name: str) -> TokenPool | None:
    return unique_or_none(TokenPool.objects.filter(organization=organization, name=name))


def token_list(organization: Organization, *, pool: str = "", status: str = "") -> QuerySet[HFToken]:
    tokens = HFToken.objects.filter(organization=organization).select_related("pool").order_by("pool__name", "label", "id")
    if pool:
        tokens = tokens.filter(pool__name=pool)
    if status:
        tokens = tokens.filter(status=status)
    return tokens


def token_get(organization: Organization, token_id) -> HFToken:
    return get_object_or_404(token_list(organization), pk=token_id)


def token_events(organization: Organization, token: HFToken, *, limit: int = 50) -> list[TokenEvent]:
    return list(TokenEvent.objects.filter(organization=organization, token=token).order_by("-created_at", "-id")[:limit])


def seconds_until_token_returns(pool: TokenPool, now: datetime) -> int | None:
    """Whole seconds until some token of the pool can be leased again by itself; None if none will."""
    soonest_release = HFToken.objects.filter(pool=pool, status__in=Status.TIMED, available_at__gt=now).aggregate(
        at=Min("available_at")
    )["at"]
    soonest_lease_end = Lease.objects.filter(
        Q(token__status=Status.ACTIVE) | Q(token__status__in=Status.TIMED, token__available_at__lte=now),
        token__pool=pool,
        token__max_concurrent_leases__isnull=False,
        token__active_leases__gte=F("token__max_concurrent_leases"),
        reported_at__isnull=True,
    ).aggregate(at=Min("expires_at"))["at"]
    candidates = [at for at in (soonest_release, soonest_lease_end) if at is not None]
    if not candidates:
        return None
    return max(1, math.ceil((min(candidates) - now).total_seconds()))


def lease_for_report(token: HFToken, *, api_key=None, user=None) -> Lease | None:
    """The lease a report without lease_id is about: the oldest open one of this key (or user) on this
    token, else its most recent expired one (a report that came too late)."""
    leases = Lease.objects.filter(token=token)
    leases = leases.filter(api_key=api_key) if api_key is not None else leases.filter(user=user)
    open_lease = leases.filter(reported_at__isnull=True).order_by("leased_at", "id").first()
    return open_lease or leases.filter(outcome=Outcome.EXPIRED).order_by("-leased_at", "-id").first()


def overdue_leases(now: datetime, *, limit: int = 500) -> list[Lease]:
    return list(
        Lease.objects.filter(reported_at__isnull=True, expires_at__lte=now).only(
            "id", "organization_id", "token_id", "user_id", "pool_id", "leased_at"
        )[:limit]
    )


USAGE_GROUPS = ("day", "token", "user", "pool")


def usage_window(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """Usage is counted per hour: widen the window outward to whole hours."""
    floor = since.replace(minute=0, second=0, microsecond=0)
    ceiling = until.replace(minute=0, second=0, microsecond=0)
    return floor, ceiling if ceiling == until else ceiling + timedelta(hours=1)


USAGE_DEFAULT_DAYS = 30


def usage_report(
    organization: Organization, *, since: datetime | None = None, until: datetime | None = None, group_by: str,
    user: User | None = None,
) -> dict:
    """The usage answer: the window actually counted (default: the last 30 days, widened to whole hours)
    and a row per group."""
    until = until or timezone.now()
    since = since or until - timedelta(days=USAGE_DEFAULT_DAYS)
    rows = usage_summary(organization, since=since, until=until, group_by=group_by, user=user)
    since, until = usage_window(since, until)
    return {"since": since, "until": until, "group_by": group_by, "rows": rows}


def usage_summary(
    organization: Organization, *, since: datetime, until: datetime, group_by: str, user: User | None = None
) -> list[dict]:
    """Leases, outcomes and errors by type per group over whole hours. The organization's totals come from
    the hourly counters (fast at any number of leases); one user's own usage is counted from their leases."""
    since, until = usage_window(since, until)
    if user is None:
        tallies = _tallies_from_counters(organization, since, until, group_by)
    else:
        tallies = _tallies_from_leases(organization, since, until, group_by, user)
    labels = _usage_labels(organization, group_by, list(tallies)) if group_by != "day" else {}
    return [_usage_row(key, labels, tally) for key, tally in sorted(tallies.items(), key=lambda item: str(item[0]))]


def _tallies_from_counters(organization, since, until, group_by) -> dict:
    dimension = "pool" if group_by == "day" else group_by  # every lease has exactly one pool: days sum over pools
    counters = UsageCounter.objects.filter(organization=organization, dimension=dimension, hour__gte=since, hour__lt=until)
    tallies: dict = defaultdict(Counter)
    if group_by == "day":
        for hour, metric, count in counters.values_list("hour", "metric").annotate(n=Sum("count")):
            tallies[hour.date()][metric] += count
    else:
        for key_id, metric, count in counters.values_list("key_id", "metric").annotate(n=Sum("count")):
            tallies[key_id][metric] += count
    return tallies


def _tallies_from_leases(organization, since, until, group_by, user) -> dict:
    leases = Lease.objects.filter(organization=organization, user=user, leased_at__gte=since, leased_at__lt=until)
    key = {"day": "day", "token": "token_id", "user": "user_id", "pool": "pool_id"}[group_by]
    if group_by == "day":
        leases = leases.annotate(day=TruncDate("leased_at"))
    tallies: dict = defaultdict(Counter)
    for group, outcome, error_type, count in leases.values_list(key, "outcome", "error_type").annotate(n=Count("id")):
        tally = tallies[group if group is not None else 0]
        tally["leases"] += count
        if outcome:
            tally[outcome] += count
        if outcome == Outcome.ERROR:
            tally[f"error:{error_type}"] += count
    return tallies


def _usage_labels(organization: Organization, group_by: str, ids: list) -> dict:
    """Names for the grouped ids, fetched once instead of joined into the counting query."""
    if group_by == "token":
        return dict(HFToken.objects.filter(organization=organization, pk__in=ids).values_list("id", "label"))
    if group_by == "pool":
        return dict(TokenPool.objects.filter(organization=organization, pk__in=ids).values_list("id", "name"))
    return dict(User.objects.filter(pk__in=ids).values_list("id", "username"))


def _usage_row(key, labels: dict, tally: Counter) -> dict:
    closed = sum(tally[outcome] for outcome in Outcome.values)
    return {
        "key": str(key),
        "name": str(key) if isinstance(key, date) else labels.get(key, "(deleted)"),
        "leases": tally["leases"],
        "successes": tally[Outcome.SUCCESS],
        "errors": tally[Outcome.ERROR],
        "cancelled": tally[Outcome.CANCELLED],
        "expired": tally[Outcome.EXPIRED],
        "open": tally["leases"] - closed,
        "errors_by_type": {kind: tally[f"error:{kind}"] for kind in ErrorType.ALL},
    }
