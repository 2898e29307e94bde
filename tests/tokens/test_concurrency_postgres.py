"""Leasing under real concurrency on PostgreSQL: 64 threads, each with its own connection.

What must hold however the threads interleave: a lease cap is never exceeded, a token reported spent is
never handed out after that report committed, and a busy pool without caps never answers "no token".
"""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from accounts.roles import Role
from tests.conftest import requires_postgres
from tokens import services
from tokens.models import HFToken, Lease, Strategy, TokenPool
from tokens.policy import Status

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]

THREADS = 64
STRATEGIES = [Strategy.LEAST_RECENTLY_LEASED, Strategy.FEWEST_RECENT_ERRORS, Strategy.WEIGHTED_RANDOM]

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)


@pytest.fixture
def setup(organization, make_member):
    """The default pool and a user with a key, as the threads see them."""
    membership, _ = make_member(organization, Role.USER)
    pool = TokenPool.objects.get(organization=organization, name=TokenPool.DEFAULT_NAME)
    return organization, pool, membership.user, membership.api_keys.get()


def set_strategy(pool: TokenPool, strategy: str) -> None:
    pool.strategy = strategy
    pool.save(update_fields=["strategy"])


def run_threads(task, count: int = THREADS) -> list:
    """Run task(i) in `count` threads released together; each closes its own connection at the end."""
    start = threading.Barrier(count)

    def worker(i):
        try:
            start.wait(timeout=30)
            return task(i)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(worker, range(count)))


def lease_or_refusal(organization, pool, user, api_key):
    try:
        return services.lease_token(organization=organization, pool=pool, user=user, api_key=api_key)
    except services.NoTokenAvailable as refused:
        return refused


def open_leases_by_token(pool) -> Counter:
    return Counter(Lease.objects.filter(pool=pool, reported_at__isnull=True).values_list("token_id", flat=True))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lease_cap_of_one_is_never_exceeded_under_64_concurrent_leases(setup, make_token, strategy):
    organization, pool, user, api_key = setup
    set_strategy(pool, strategy)
    tokens = [make_token(organization, max_concurrent_leases=1) for _ in range(8)]

    results = run_threads(lambda i: lease_or_refusal(organization, pool, user, api_key))

    grants = [r for r in results if isinstance(r, services.LeaseGrant)]
    refusals = [r for r in results if isinstance(r, services.NoTokenAvailable)]
    assert len(grants) + len(refusals) == THREADS  # nothing else went wrong
    # Every token leased exactly once: none twice, and no thread refused while a token was free.
    assert sorted(g.token.pk for g in grants) == sorted(t.pk for t in tokens)
    assert len(refusals) == THREADS - 8
    assert open_leases_by_token(pool) == {t.pk: 1 for t in tokens}
    for token in HFToken.objects.filter(pool=pool):
        assert (token.active_leases, token.lease_count) == (1, 1), token.label


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_busy_pool_without_caps_never_refuses_and_counts_every_lease(setup, make_token, strategy):
    organization, pool, user, api_key = setup
    set_strategy(pool, strategy)
    tokens = [make_token(organization) for _ in range(4)]
    per_thread = 5

    def lease_several(i):
        return [lease_or_refusal(organization, pool, user, api_key) for _ in range(per_thread)]

    results = [r for batch in run_threads(lease_several) for r in batch]

    refusals = [r for r in results if not isinstance(r, services.LeaseGrant)]
    assert refusals == []
    total = THREADS * per_thread
    assert Lease.objects.filter(pool=pool).count() == total
    rows = list(HFToken.objects.filter(pool=pool))
    assert sum(t.lease_count for t in rows) == total
    opened = open_leases_by_token(pool)
    for token in rows:
        assert token.active_leases == opened[token.pk] == token.lease_count, token.label
    if strategy == Strategy.LEAST_RECENTLY_LEASED:
        # Spread, not piled on one token: each token took a fair part.
        assert min(t.lease_count for t in rows) >= total // len(tokens) // 4
    assert {t.pk for t in tokens} == {t.pk for t in rows}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_token_reported_spent_is_never_leased_after_the_report_commits(setup, make_token, strategy):
    organization, pool, user, api_key = setup
    set_strategy(pool, strategy)
    tokens = [make_token(organization) for _ in range(4)]
    spent = tokens[0]
    rounds = 4
    report_done_at: list[float] = []
    leases: list[tuple[float, int]] = []  # (monotonic time the lease call started, token id)
    refusals: list[services.NoTokenAvailable] = []
    lock = threading.Lock()
    # The client that will meet the 402 holds a lease on the spent token (only a lease holder may report).
    others = HFToken.objects.filter(pk__in=[t.pk for t in tokens[1:]])
    others.update(status=Status.DISABLED)
    doomed = services.lease_token(organization=organization, pool=pool, user=user, api_key=api_key)
    others.update(status=Status.ACTIVE)
    assert doomed.token.pk == spent.pk

    def lease_and_report(i):
        for n in range(rounds):
            if i == 0 and n == rounds // 2:
                services.report_outcome(
                    organization=organization, token_id=spent.pk, success=False, error=CREDITS_402,
                    user=user, api_key=api_key, lease_id=doomed.lease.pk,
                )
                report_done_at.append(time.monotonic())
            started = time.monotonic()
            grant = lease_or_refusal(organization, pool, user, api_key)
            if not isinstance(grant, services.LeaseGrant):
                with lock:
                    refusals.append(grant)  # three of four tokens are always free: a 503 here is false
                continue
            with lock:
                leases.append((started, grant.token.pk))
            # Late success reports on the spent token must not bring it back either.
            services.report_outcome(
                organization=organization, token_id=grant.token.pk, success=True, lease_id=grant.lease.pk,
                user=user, api_key=api_key,
            )

    run_threads(lease_and_report)

    (reported,) = report_done_at
    late = [(t, token_id) for t, token_id in leases if token_id == spent.pk and t > reported]
    assert late == []
    assert [str(r) for r in refusals] == []
    assert len(leases) == THREADS * rounds
    assert HFToken.objects.get(pk=spent.pk).status == Status.QUARANTINED

    afterwards = run_threads(lambda i: lease_or_refusal(organization, pool, user, api_key))

    assert all(isinstance(r, services.LeaseGrant) for r in afterwards)
    assert spent.pk not in {r.token.pk for r in afterwards}
    assert HFToken.objects.get(pk=spent.pk).status == Status.QUARANTINED
    # Every lease is accounted for: closed by its report, or open from the second wave.
    counts = Lease.objects.filter(pool=pool).aggregate(
        open=Count("id", filter=Q(reported_at__isnull=True)), closed=Count("id", filter=Q(reported_at__isnull=False))
    )
    assert counts == {"open": THREADS, "closed": THREADS * rounds + 1}  # + the doomed lease


# --- One lease in flight must not hold up, or refuse, another ------------------------------------------
#
# Deterministic versions of what the 64-thread runs above can only meet by chance (as deadlocks and false
# 503s): one transaction is held open at a known point while another lease runs, and the test checks the
# second lease neither waits for the first nor gives up while a token is free.

PENDING = object()


class HeldOpen:
    """Run fn() in its own thread inside a transaction, and keep that transaction open until release()."""

    def __init__(self, fn):
        self.result = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def wait_started(self) -> "HeldOpen":
        """Wait until fn() ran and the transaction is being held; release() it in any case afterwards."""
        assert self._ready.wait(20), "the held transaction never got going: it waited for a lock"
        if self.error is not None:
            raise self.error
        return self

    def _run(self, fn):
        try:
            with transaction.atomic():
                self.result = fn()
                self._ready.set()
                self._release.wait(60)
        except BaseException as exc:  # surfaced in the test's thread
            self.error = exc
            self._ready.set()
        finally:
            connection.close()

    def release(self):
        self._release.set()
        self._thread.join(60)


class InBackground:
    """Run fn() in its own thread (own connection); result_within() waits a bounded time for it."""

    def __init__(self, fn):
        self._outcome = PENDING
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._outcome = fn()
        except BaseException as exc:
            self._outcome = exc
        finally:
            connection.close()
            self._done.set()

    def result_within(self, seconds: float):
        self._done.wait(seconds)
        return self._outcome

    def join(self):
        self._thread.join(60)
        return self._outcome


def wait_until_someone_waits_for_a_lock(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError("no session ever waited for a lock")


def describe(outcome) -> str:
    if outcome is PENDING:
        return "still waiting"
    if isinstance(outcome, services.LeaseGrant):
        return f"leased token {outcome.token.pk}"
    return f"{type(outcome).__name__}: {outcome}"


def test_weighted_random_lease_takes_a_free_token_while_another_lease_is_in_flight(setup, make_token):
    """Locks must name the token row only: a join to the pool (Meta ordering, select_related) locked the pool
    row too, so every candidate looked taken and the lease queued behind - or deadlocked with - another."""
    organization, pool, user, api_key = setup
    set_strategy(pool, Strategy.WEIGHTED_RANDOM)
    busy = make_token(organization, max_concurrent_leases=1)
    free = make_token(organization)
    HFToken.objects.filter(pk=free.pk).update(status=Status.DISABLED)  # so the first lease surely takes `busy`

    in_flight = HeldOpen(lambda: services.lease_token(organization=organization, pool=pool, user=user))
    second = None
    try:
        assert in_flight.wait_started().result.token.pk == busy.pk
        HFToken.objects.filter(pk=free.pk).update(status=Status.ACTIVE)
        second = InBackground(lambda: lease_or_refusal(organization, pool, user, api_key))
        outcome = second.result_within(5)
    finally:
        in_flight.release()
        final = second.join() if second else None

    assert outcome is not PENDING, f"waited for another client's unfinished lease; in the end: {describe(final)}"
    assert isinstance(outcome, services.LeaseGrant) and outcome.token.pk == free.pk, describe(outcome)


def test_lease_does_not_answer_503_when_the_token_it_waited_for_fills_up_but_another_is_free(setup, make_token):
    """After waiting for the best candidate, a lease that finds it full must look again, not answer 503."""
    organization, pool, user, api_key = setup
    capped = make_token(organization, max_concurrent_leases=2)
    uncapped = make_token(organization)
    now = timezone.now()
    # Committed history: `capped` has one open lease and was leased before `uncapped`, so it comes first.
    services.lease_token(organization=organization, pool=pool, user=user, now=now - timedelta(seconds=10))
    earlier = services.lease_token(organization=organization, pool=pool, user=user, now=now - timedelta(seconds=5))
    assert earlier.token.pk == uncapped.pk
    services.report_outcome(
        organization=organization, token_id=uncapped.pk, success=True, lease_id=earlier.lease.pk, user=user
    )

    takes_last_slot = HeldOpen(lambda: services.lease_token(organization=organization, pool=pool, user=user))
    holders, waiting = [takes_last_slot], None
    try:
        assert takes_last_slot.wait_started().result.token.pk == capped.pk
        holders.append(HeldOpen(lambda: services.lease_token(organization=organization, pool=pool, user=user)))
        assert holders[1].wait_started().result.token.pk == uncapped.pk
        waiting = InBackground(lambda: lease_or_refusal(organization, pool, user, api_key))
        wait_until_someone_waits_for_a_lock()
        takes_last_slot.release()  # `capped` is now full; `uncapped` stays free once its lease commits
        time.sleep(0.5)
        holders[1].release()
        outcome = waiting.join()
    finally:
        for holder in holders:
            holder.release()
        if waiting is not None:
            waiting.join()

    assert isinstance(outcome, services.LeaseGrant), describe(outcome)
    assert outcome.token.pk == uncapped.pk


def test_a_report_in_progress_does_not_hold_up_leases_of_other_tokens(setup, make_token):
    """A report locks its token only; locking the pool row as well made every lease of the pool wait for it."""
    organization, pool, user, api_key = setup
    reported = make_token(organization)
    other = make_token(organization)
    services.lease_token(organization=organization, pool=pool, user=user, api_key=api_key)  # `reported`

    report = HeldOpen(
        lambda: services.report_outcome(
            organization=organization, token_id=reported.pk, success=True, user=user, api_key=api_key
        )
    )
    lease = None
    try:
        report.wait_started()
        lease = InBackground(lambda: lease_or_refusal(organization, pool, user, api_key))
        outcome = lease.result_within(5)
    finally:
        report.release()
        final = lease.join() if lease else None

    assert outcome is not PENDING, f"the lease waited for an unrelated report; in the end: {describe(final)}"
    assert isinstance(outcome, services.LeaseGrant) and outcome.token.pk == other.pk, describe(outcome)
