"""Reads the dashboard needs beyond tokens.selectors and accounts.selectors: the overview's per-pool
figures. Each takes the organization first and reads the hourly usage counters (or, for one day of
leases, the covering lease index), never a scan of the whole lease table."""

from collections import Counter, defaultdict
from datetime import datetime, timedelta

from django.db.models import Count, Min, Sum
from django.utils import timezone

from accounts.models import Organization, User
from tokens.models import HFToken, Lease, Outcome, TokenPool, UsageCounter
from tokens.policy import ErrorType, Status

OVERVIEW_HOURS = 24
TOP_N = 5
STATUSES = [status for status, _ in Status.CHOICES]


def overview_hours(now: datetime) -> list[datetime]:
    """The last 24 whole hours, oldest first, ending with the current (partial) one."""
    current = now.replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=OVERVIEW_HOURS - 1 - i) for i in range(OVERVIEW_HOURS)]


def pool_overview(organization: Organization, *, now: datetime | None = None) -> list[dict]:
    """Per pool: tokens by status, the soonest timed status to end, leases and outcomes per hour over the
    last 24 hours, errors by type and the busiest tokens and users of those hours."""
    now = now or timezone.now()
    hours = overview_hours(now)
    pools = list(TokenPool.objects.filter(organization=organization).order_by("name"))

    by_status: dict[int, Counter] = defaultdict(Counter)
    for pool_id, status, n in (
        HFToken.objects.filter(organization=organization).values_list("pool_id", "status").annotate(n=Count("id"))
    ):
        by_status[pool_id][status] = n

    soonest: dict[int, HFToken] = {}
    for token in (
        HFToken.objects.filter(organization=organization, status__in=Status.TIMED, available_at__gt=now)
        .only("id", "pool_id", "label", "last4", "status", "available_at")
        .order_by("pool_id", "available_at")
    ):
        soonest.setdefault(token.pool_id, token)

    per_hour: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for key_id, hour, metric, n in (
        UsageCounter.objects.filter(organization=organization, dimension="pool", hour__gte=hours[0])
        .values_list("key_id", "hour", "metric")
        .annotate(n=Sum("count"))
    ):
        per_hour[key_id][metric][hour] += n

    top_tokens = _top_tokens(organization, hours[0])
    top_users = _top_users(organization, hours[0])

    overview = []
    for pool in pools:
        metrics = per_hour.get(pool.pk, {})
        series = {
            name: [metrics.get(metric, Counter())[hour] for hour in hours]
            for name, metric in (("leases", "leases"), ("successes", Outcome.SUCCESS), ("errors", Outcome.ERROR))
        }
        errors_by_type = {
            kind: sum(metrics.get(f"error:{kind}", Counter()).values()) for kind in ErrorType.ALL
        }
        counts = by_status.get(pool.pk, Counter())
        overview.append(
            {
                "pool": pool,
                "statuses": [(status, counts[status]) for status in STATUSES],
                "token_count": sum(counts.values()),
                "soonest": soonest.get(pool.pk),
                "totals": {name: sum(values) for name, values in series.items()},
                "chart": {"hours": [hour.isoformat() for hour in hours], **series},
                "errors_by_type": {kind: n for kind, n in errors_by_type.items() if n},
                "top_tokens": top_tokens.get(pool.pk, []),
                "top_users": top_users.get(pool.pk, []),
            }
        )
    return overview


def _top_tokens(organization: Organization, since: datetime) -> dict[int, list[dict]]:
    """The tokens with the most leases since `since`, per pool, from the hourly counters."""
    leases = Counter()
    errors = Counter()
    for key_id, metric, n in (
        UsageCounter.objects.filter(
            organization=organization, dimension="token", hour__gte=since, metric__in=["leases", Outcome.ERROR]
        )
        .values_list("key_id", "metric")
        .annotate(n=Sum("count"))
    ):
        (leases if metric == "leases" else errors)[key_id] += n
    tokens = {
        token.pk: token
        for token in HFToken.objects.filter(organization=organization, pk__in=list(leases)).only(
            "id", "pool_id", "label", "last4", "status"
        )
    }
    top: dict[int, list[dict]] = defaultdict(list)
    for token_id, n in leases.most_common():
        token = tokens.get(token_id)
        if token is not None and len(top[token.pool_id]) < TOP_N:
            top[token.pool_id].append({"token": token, "leases": n, "errors": errors[token_id]})
    return top


def _top_users(organization: Organization, since: datetime) -> dict[int, list[dict]]:
    """The users with the most leases since `since`, per pool: one day of leases, read through the
    covering usage index (organization, leased_at, …, user, pool)."""
    rows = (
        Lease.objects.filter(organization=organization, leased_at__gte=since)
        .values_list("pool_id", "user_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    per_pool: dict[int, Counter] = defaultdict(Counter)
    for pool_id, user_id, n in rows:
        if pool_id is not None and user_id is not None:
            per_pool[pool_id][user_id] += n
    user_ids = {user_id for counter in per_pool.values() for user_id in counter}
    names = dict(User.objects.filter(pk__in=user_ids).values_list("id", "username"))
    return {
        pool_id: [{"username": names.get(user_id, "(deleted)"), "leases": n} for user_id, n in counter.most_common(TOP_N)]
        for pool_id, counter in per_pool.items()
    }


def soonest_return(organization: Organization, *, now: datetime | None = None):
    """When the organization's next cooling or quarantined token comes back (None if none will)."""
    now = now or timezone.now()
    return HFToken.objects.filter(organization=organization, status__in=Status.TIMED, available_at__gt=now).aggregate(
        at=Min("available_at")
    )["at"]
