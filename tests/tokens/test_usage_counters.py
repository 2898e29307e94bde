"""The hourly counters that make usage fast must say exactly what the lease table says."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.roles import Role
from tokens import selectors, services
from tokens.models import UsageCounter
from tokens.policy import ErrorType


@pytest.fixture
def busy_history(organization, make_member, make_token, django_capture_on_commit_callbacks):
    """Leases over three hours with every kind of ending, made through the real services."""
    with django_capture_on_commit_callbacks(execute=True):
        return _write_busy_history(organization, make_member, make_token)


def _write_busy_history(organization, make_member, make_token):
    alice, _ = make_member(organization, Role.USER, username="alice")
    bob, _ = make_member(organization, Role.USER, username="bob")
    pool = selectors.pool_by_name(organization, "default")
    for index in range(4):
        make_token(organization, label=f"t{index}")
    start = timezone.now().replace(minute=5, second=0, microsecond=0) - timedelta(hours=3)
    endings = ["success", "success", ErrorType.RATE_LIMITED, ErrorType.TIMEOUT, "cancelled", None]
    for index in range(24):
        now = start + timedelta(minutes=7 * index)
        user = (alice if index % 3 else bob).user
        grant = services.lease_token(organization=organization, pool=pool, user=user, now=now)
        ending = endings[index % len(endings)]
        if ending is None:
            continue  # left open
        services.report_outcome(
            organization=organization, token_id=grant.token.pk, lease_id=grant.lease.pk, user=user, now=now,
            success=ending == "success", cancelled=ending == "cancelled",
            error_type=None if ending in ("success", "cancelled") else ending,
        )
        # Keep every token eligible: the test is about counting, not quarantine.
        grant.token.__class__.objects.filter(pk=grant.token.pk).update(status="active", available_at=None)
    return start


@pytest.mark.parametrize("group_by", ["day", "token", "user", "pool"])
def test_counters_agree_with_counting_the_leases_one_by_one(busy_history, organization, group_by):
    since, until = busy_history - timedelta(hours=1), timezone.now() + timedelta(hours=1)
    from_counters = selectors.usage_summary(organization, since=since, until=until, group_by=group_by)

    # The per-user path counts raw leases; summed over both users it must give the same totals.
    leases_by_key = {}
    for member in organization.memberships.all():
        for row in selectors.usage_summary(organization, since=since, until=until, group_by=group_by, user=member.user):
            total = leases_by_key.setdefault(row["key"], {"leases": 0, "successes": 0, "errors": 0, "cancelled": 0, "open": 0})
            for field in total:
                total[field] += row[field]

    assert sum(row["leases"] for row in from_counters) == 24
    assert {row["key"]: {f: row[f] for f in ("leases", "successes", "errors", "cancelled", "open")} for row in from_counters} == leases_by_key


def test_rebuild_reproduces_the_incremental_counters(busy_history):
    incremental = sorted(UsageCounter.objects.values_list("dimension", "key_id", "hour", "metric", "count"))
    assert incremental, "the services wrote no counters"

    services.usage_counters_rebuild()

    assert sorted(UsageCounter.objects.values_list("dimension", "key_id", "hour", "metric", "count")) == incremental


def test_an_expired_lease_is_counted_as_expired(organization, make_member, make_token, django_capture_on_commit_callbacks):
    member, _ = make_member(organization, Role.USER)
    make_token(organization)
    pool = selectors.pool_by_name(organization, "default")
    leased_at = timezone.now() - timedelta(hours=1)
    with django_capture_on_commit_callbacks(execute=True):
        services.lease_token(organization=organization, pool=pool, user=member.user, now=leased_at)
        services.leases_expire_overdue(now=timezone.now(), force=True)

    (row,) = selectors.usage_summary(organization, since=leased_at, until=timezone.now(), group_by="pool")
    assert (row["leases"], row["expired"], row["open"]) == (1, 1, 0)


def test_a_late_report_moves_the_lease_from_expired_to_its_outcome_in_usage(
    organization, make_member, make_token, django_capture_on_commit_callbacks
):
    member, _ = make_member(organization, Role.USER)
    token = make_token(organization)
    pool = selectors.pool_by_name(organization, "default")
    leased_at = timezone.now() - timedelta(hours=1)
    with django_capture_on_commit_callbacks(execute=True):
        grant = services.lease_token(organization=organization, pool=pool, user=member.user, now=leased_at)
        services.leases_expire_overdue(now=timezone.now(), force=True)
    with django_capture_on_commit_callbacks(execute=True):
        services.report_outcome(
            organization=organization, token_id=token.pk, lease_id=grant.lease.pk, user=member.user,
            success=False, error_type=ErrorType.CREDITS_EXCEEDED,
        )

    (row,) = selectors.usage_summary(organization, since=leased_at, until=timezone.now(), group_by="token")
    assert (row["leases"], row["expired"], row["errors"], row["errors_by_type"]["credits_exceeded"]) == (1, 0, 1, 1)
    incremental = sorted(UsageCounter.objects.exclude(count=0).values_list("dimension", "key_id", "hour", "metric", "count"))
    services.usage_counters_rebuild()
    assert sorted(UsageCounter.objects.values_list("dimension", "key_id", "hour", "metric", "count")) == incremental


class UsageDatabase:
    """Two leases with no usage counted yet, and a database that can go away for the usage upserts only.
    Retries of kept counts are listed in `retries` as (pause, retry number), for the test to run itself."""

    def __init__(self, leases, monkeypatch):
        self.leases, self.monkeypatch, self.retries = leases, monkeypatch, []
        self.upsert = services._upsert_usage
        monkeypatch.setattr(services, "_retry_usage_later", lambda pause, number: self.retries.append((pause, number)))
        monkeypatch.setattr(services, "_usage_retry_pending", False)

    def gone(self, gone: bool) -> None:
        from django.db import OperationalError

        def database_gone(counts):
            raise OperationalError("server closed the connection unexpectedly")

        self.monkeypatch.setattr(services, "_upsert_usage", database_gone if gone else self.upsert)

    @staticmethod
    def counts() -> dict:
        return {(row.dimension, row.metric): row.count for row in UsageCounter.objects.all()}


@pytest.fixture
def usage_database(organization, make_member, make_token, monkeypatch) -> UsageDatabase:
    member, _ = make_member(organization, Role.USER)
    make_token(organization)
    pool = selectors.pool_by_name(organization, "default")
    leases = [services.lease_token(organization=organization, pool=pool, user=member.user).lease for _ in range(2)]
    UsageCounter.objects.all().delete()  # only what the test counts
    return UsageDatabase(leases, monkeypatch)


def test_counts_whose_upsert_finds_the_database_gone_are_added_with_the_next_ones(usage_database):
    """PostgreSQL counts after the commit; a database gone in that instant must not lose the counts."""
    first, second = usage_database.leases
    usage_database.gone(True)
    services._upsert_usage_after_commit(services._usage_counts(first, ["leases"], 1))
    assert not UsageCounter.objects.exists()
    usage_database.gone(False)
    services._upsert_usage_after_commit(services._usage_counts(second, ["leases"], 1))
    assert usage_database.counts() == {("token", "leases"): 2, ("user", "leases"): 2, ("pool", "leases"): 2}
    assert services._usage_backlog == {}


def test_counts_kept_for_a_database_that_was_gone_are_written_by_a_retry_when_no_next_ones_come(usage_database):
    lease, _ = usage_database.leases
    retries = usage_database.retries
    usage_database.gone(True)
    services._upsert_usage_after_commit(services._usage_counts(lease, ["leases"], 1))
    services._upsert_usage_after_commit(services._usage_counts(lease, ["success"], 1))
    assert retries == [(1, 1)]  # one retry scheduled, however many counts wait
    services._retry_usage_backlog(1)  # still gone: the next retry waits longer
    assert retries == [(1, 1), (2, 2)]
    usage_database.gone(False)
    services._retry_usage_backlog(2)

    assert usage_database.counts() == {(dimension, metric): 1 for dimension in ("token", "user", "pool") for metric in ("leases", "success")}
    assert services._usage_backlog == {} and retries == [(1, 1), (2, 2)]
