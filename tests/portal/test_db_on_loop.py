"""Short writes on the event loop (portal.db.on_loop_when_free, SQLite): a lease and a report run right on
the loop when this process's SQLite writer is free. The loop never waits for the database: work that would
wait, or needs the ORM, starts over on the database thread, and nothing is ever written twice."""

import asyncio
import logging
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.roles import Role
from portal import db, live
from tokens import services
from tokens.models import HFToken, Lease, Outcome, TokenEvent, TokenPool, UsageCounter
from tokens.policy import Status

pytestmark = pytest.mark.django_db(transaction=True)  # the loop has a connection of its own
sqlite_only = pytest.mark.skipif(not db._SQLITE, reason="the event loop's own connection is SQLite's; PostgreSQL writes on its threads")


@pytest.fixture
def loop_connection():
    """The loop's connection open (it opens on a database thread the first time it is wanted), and the
    lease path's once-a-second sweep of overdue leases, which runs on the thread, just done."""
    db._open_loop_db_soon()
    for _ in range(100):
        if db._loop_db is not None:
            break
        threading.Event().wait(0.02)
    assert db._loop_db is not None
    services.leases_expire_overdue(now=timezone.now(), force=True)
    yield
    db._close_loop_db()


@pytest.fixture
def holder(organization, make_member):
    return make_member(organization, Role.USER)[0].user


def where_it_ran(func):
    """func, noting on which thread each call ran and whether it used the loop's connection."""
    calls = []

    def noted(**kwargs):
        calls.append((threading.current_thread() is threading.main_thread(), db._on_loop.get() is not None))
        return func(**kwargs)

    return noted, calls


def usage(organization, metric: str) -> int:
    return sum(UsageCounter.objects.filter(organization=organization, dimension="pool", metric=metric).values_list("count", flat=True))


@sqlite_only
def test_a_lease_and_its_report_run_on_the_loop_and_are_written(loop_connection, organization, holder, make_token):
    token = make_token(organization, secret="hf_on_the_loop_abcdefghijklmnop")
    pool = TokenPool.objects.get(organization=organization, name="default")
    lease_token, lease_calls = where_it_ran(services.lease_token)
    report_outcome, report_calls = where_it_ran(services.report_outcome)

    async def lease_and_report():
        grant = await db.on_loop_when_free(lease_token)(organization=organization, pool=pool, user=holder)
        await db.on_loop_when_free(report_outcome)(
            organization=organization, token_id=grant.token.pk, lease_id=grant.lease.pk, user=holder, success=True
        )
        return grant

    grant = asyncio.run(lease_and_report())
    assert lease_calls == [(True, True)] and report_calls == [(True, True)]  # on the loop, nowhere else
    assert grant.secret == "hf_on_the_loop_abcdefghijklmnop"
    token.refresh_from_db()
    assert (token.lease_count, token.active_leases, token.success_count) == (1, 0, 1)
    assert Lease.objects.get(pk=grant.lease.pk).outcome == Outcome.SUCCESS
    assert usage(organization, "leases") == 1 and usage(organization, Outcome.SUCCESS) == 1


@sqlite_only
def test_a_busy_writer_sends_the_lease_to_the_database_thread_and_the_loop_goes_on(loop_connection, organization, holder, make_token):
    make_token(organization)
    pool = TokenPool.objects.get(organization=organization, name="default")
    lease_token, calls = where_it_ran(services.lease_token)
    busy, release = threading.Event(), threading.Event()

    def another_writer():  # this process's database thread, say, in the middle of a bulk import
        with db._sqlite_writer:
            busy.set()
            release.wait(5)

    async def lease_while_busy():
        leasing = asyncio.ensure_future(db.on_loop_when_free(lease_token)(organization=organization, pool=pool, user=holder))
        ticks = 0
        while not leasing.done() and ticks < 5:
            await asyncio.sleep(0.02)  # the loop keeps serving others meanwhile
            ticks += 1
        release.set()
        return await leasing, ticks

    threading.Thread(target=another_writer, daemon=True).start()
    assert busy.wait(5)
    grant, ticks = asyncio.run(lease_while_busy())
    assert ticks == 5  # the lease waited for the writer, the loop did not
    assert calls == [(False, False)]  # on the database thread
    assert Lease.objects.filter(pk=grant.lease.pk, reported_at=None).exists()


@sqlite_only
def test_a_lease_that_needs_the_orm_starts_over_on_the_thread_and_is_written_once(loop_connection, organization, holder, make_token):
    """A quarantined token whose time is up goes back into rotation as it is leased: its status event is
    written with the ORM, so the lease is rolled back on the loop and made again on the thread."""
    token = make_token(organization)
    HFToken.objects.filter(pk=token.pk).update(status=Status.QUARANTINED, available_at=timezone.now() - timedelta(seconds=1))
    pool = TokenPool.objects.get(organization=organization, name="default")
    lease_token, calls = where_it_ran(services.lease_token)

    grant = asyncio.run(db.on_loop_when_free(lease_token)(organization=organization, pool=pool, user=holder))
    assert calls == [(True, True), (False, False)]
    token.refresh_from_db()
    assert (token.status, token.lease_count, token.active_leases) == (Status.ACTIVE, 1, 1)
    assert list(Lease.objects.values_list("pk", flat=True)) == [grant.lease.pk]
    assert TokenEvent.objects.filter(token=token, from_status=Status.QUARANTINED, to_status=Status.ACTIVE).count() == 1
    assert usage(organization, "leases") == 1


@sqlite_only
def test_an_empty_pool_answers_with_when_a_token_returns(loop_connection, organization, holder, make_token):
    token = make_token(organization)
    HFToken.objects.filter(pk=token.pk).update(status=Status.COOLING, available_at=timezone.now() + timedelta(seconds=30))
    pool = TokenPool.objects.get(organization=organization, name="default")

    with pytest.raises(services.NoTokenAvailable) as refused:
        asyncio.run(db.on_loop_when_free(services.lease_token)(organization=organization, pool=pool, user=holder))
    assert 28 <= refused.value.wait <= 30
    assert not Lease.objects.exists()


@sqlite_only
def test_a_failure_after_the_commit_is_logged_and_the_lease_not_made_again(loop_connection, organization, holder, make_token, monkeypatch, caplog):
    token = make_token(organization)
    pool = TokenPool.objects.get(organization=organization, name="default")
    monkeypatch.setattr(live, "notify", lambda *args, **kwargs: 1 / 0)  # the dashboards' notice, after the commit

    with caplog.at_level(logging.ERROR, logger="portal.db"):
        grant = asyncio.run(db.on_loop_when_free(services.lease_token)(organization=organization, pool=pool, user=holder))
    token.refresh_from_db()
    assert token.lease_count == 1 and list(Lease.objects.values_list("pk", flat=True)) == [grant.lease.pk]
    assert any("on-commit callback failed" in record.getMessage() for record in caplog.records)


@pytest.mark.skipif(db._SQLITE, reason="on SQLite the lease runs on the loop (the tests above)")
def test_on_postgresql_a_lease_runs_on_a_database_thread(organization, holder, make_token):
    make_token(organization)
    pool = TokenPool.objects.get(organization=organization, name="default")
    lease_token, calls = where_it_ran(services.lease_token)
    for _ in range(2):  # the first call would open the loop's connection, if there were one
        asyncio.run(db.on_loop_when_free(lease_token)(organization=organization, pool=pool, user=holder))
    assert calls == [(False, False), (False, False)]
    assert db._loop_db is None
