"""Everything in tokens that writes: pools, tokens, leases and reports, one function per use case."""

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework import exceptions

from accounts.audit import audit_record
from accounts.models import ApiKey, Organization, User
from portal import live
from portal.db import (
    current_db,
    db_value,
    first_row,
    insert_row,
    lock_rows_of,
    on_commit,
    require_database_thread,
    save_fields,
    statement,
    submit_to_db_threads,
    write_transaction,
)
from portal.errors import DATABASE_DOWN, Conflict, PortalError
from portal.redact import redact_secrets
from tokens import hf_api, selectors
from tokens.crypto import decrypt_secret, encrypt_secret, secret_fingerprint
from tokens.models import HFToken, Lease, Outcome, Strategy, TokenEvent, TokenPool
from tokens.policy import ErrorType, Status, Transition, classify_error, next_state, release_if_due

logger = logging.getLogger(__name__)

class NoTokenAvailable(PortalError):
    status_code = 503
    error_type = "no_token_available"

    def __init__(self, pool: TokenPool, retry_after: int | None):
        when = f"; one returns in {retry_after} s" if retry_after else "; none will return by itself"
        super().__init__(f"No token of pool '{pool.name}' is available{when}.")
        self.wait = retry_after  # the error handler turns it into Retry-After


# --- Pools --------------------------------------------------------------------------------------


def pool_ensure_default(organization: Organization) -> TokenPool:
    pool, _ = TokenPool.objects.get_or_create(
        organization=organization,
        name=TokenPool.DEFAULT_NAME,
        defaults={"lease_ttl_seconds": settings.PORTAL_LEASE_TTL, "description": "Created with the organization."},
    )
    return pool


@transaction.atomic
def pool_create(*, organization: Organization, name: str, actor: User | None, ip: str | None = None, **fields) -> TokenPool:
    if TokenPool.objects.filter(organization=organization, name=name).exists():
        raise Conflict(f"A pool named '{name}' already exists.")
    fields.setdefault("lease_ttl_seconds", settings.PORTAL_LEASE_TTL)
    pool = TokenPool(organization=organization, name=name, **fields)
    pool.full_clean()
    pool.save()
    audit_record(organization=organization, actor=actor, action="pool.created", target=pool, ip=ip)
    return pool


@transaction.atomic
def pool_update(*, pool: TokenPool, actor: User | None, ip: str | None = None, **fields) -> TokenPool:
    if "name" in fields and fields["name"] != pool.name:
        if pool.name == TokenPool.DEFAULT_NAME:
            raise Conflict("The default pool keeps its name.")
        if TokenPool.objects.filter(organization=pool.organization, name=fields["name"]).exists():
            raise Conflict(f"A pool named '{fields['name']}' already exists.")
    for name, value in fields.items():
        setattr(pool, name, value)
    pool.full_clean()
    pool.save()
    audit_record(
        organization=pool.organization, actor=actor, action="pool.updated", target=pool, ip=ip,
        data={"fields": sorted(fields)},
    )
    return pool


@transaction.atomic
def pool_delete(*, pool: TokenPool, actor: User | None, ip: str | None = None) -> None:
    if pool.name == TokenPool.DEFAULT_NAME:
        raise Conflict("The default pool cannot be deleted.")
    if pool.tokens.exists():
        raise Conflict("Move or delete the pool's tokens first.")
    if ApiKey.objects.filter(pool=pool).exists():
        raise Conflict("API keys are pinned to this pool; revoke or re-pin them first.")
    audit_record(organization=pool.organization, actor=actor, action="pool.deleted", target=pool, ip=ip)
    pool.delete()


# --- Tokens -------------------------------------------------------------------------------------


def _record_status_change(token: HFToken, before: str, reason: str, actor_username: str = "") -> None:
    if token.status != before:
        require_database_thread()
        TokenEvent.objects.create(
            organization_id=token.organization_id, token=token, from_status=before, to_status=token.status,
            reason=reason[:300], actor_username=actor_username,
        )
        event = {
            "token_id": token.pk, "pool_id": token.pool_id, "label": token.label, "from_status": before,
            "status": token.status, "available_at": token.available_at.isoformat() if token.available_at else None,
            "reason": reason[:300],
        }
        on_commit(lambda: live.notify(token.organization_id, "token.status", **event))


def _notify_after_commit(lease: Lease, kind: str, **data) -> None:
    """Tell the organization's dashboards about a lease or report once it is committed (portal.live)."""
    on_commit(
        lambda: live.notify(lease.organization_id, kind, token_id=lease.token_id, pool_id=lease.pool_id, **data)
    )


def token_add(
    *,
    organization: Organization,
    pool: TokenPool,
    secret: str,
    label: str = "",
    weight: int = 1,
    max_concurrent_leases: int | None = None,
    actor: User | None,
    ip: str | None = None,
) -> HFToken:
    secret = secret.strip()
    token = HFToken(
        organization=organization,
        pool=pool,
        label=label or f"token …{secret[-4:]}",
        weight=weight,
        max_concurrent_leases=max_concurrent_leases,
        secret_encrypted=encrypt_secret(secret),
        secret_fingerprint=secret_fingerprint(organization.pk, secret),
        last4=secret[-4:],
    )
    token.full_clean(exclude=["organization", "pool"])
    try:
        with transaction.atomic():
            token.save()
            TokenEvent.objects.create(
                organization=organization, token=token, from_status="", to_status=token.status,
                reason="added", actor_username=actor.username if actor else "",
            )
            audit_record(
                organization=organization, actor=actor, action="token.created", target=token, ip=ip,
                data={"pool": pool.name},
            )
    except IntegrityError:
        raise Conflict(f"This token (…{secret[-4:]}) is already in the organization.") from None
    return token


@dataclass
class ImportResult:
    added: list[HFToken]
    duplicates: list[str]  # last 4 characters of each secret already present


def tokens_import(
    *, organization: Organization, pool: TokenPool, secrets: list[str], label_prefix: str = "", actor: User | None,
    ip: str | None = None,
) -> ImportResult:
    result = ImportResult(added=[], duplicates=[])
    seen = set()
    for secret in (s.strip() for s in secrets):
        if not secret:
            continue
        if secret in seen:
            result.duplicates.append(secret[-4:])
            continue
        seen.add(secret)
        label = f"{label_prefix}{len(result.added) + 1}" if label_prefix else ""
        try:
            result.added.append(
                token_add(organization=organization, pool=pool, secret=secret, label=label, actor=actor, ip=ip)
            )
        except Conflict:
            result.duplicates.append(secret[-4:])
    return result


@transaction.atomic
def token_update(*, token: HFToken, actor: User | None, ip: str | None = None, **fields) -> HFToken:
    for name, value in fields.items():
        setattr(token, name, value)
    token.full_clean(exclude=["organization", "pool"])
    token.save(update_fields=list(fields))
    audit_record(
        organization=token.organization, actor=actor, action="token.updated", target=token, ip=ip,
        data={"fields": sorted(fields)},
    )
    return token


def _set_status(token: HFToken, status: str, *, reason: str, actor: User | None, action: str, ip: str | None) -> HFToken:
    """A person's status change: lock the row, move it, record the event and the audit entry."""
    with transaction.atomic():
        token = HFToken.objects.select_for_update(of=("self",)).get(pk=token.pk)
        before = token.status
        token.status = status
        token.available_at = None
        token.consecutive_failures = 0
        token.rate_limit_streak = 0
        token.save(update_fields=["status", "available_at", "consecutive_failures", "rate_limit_streak"])
        _record_status_change(token, before, reason, actor.username if actor else "")
        audit_record(organization=token.organization, actor=actor, action=action, target=token, ip=ip)
    return token


def token_disable(*, token: HFToken, actor: User | None, ip: str | None = None) -> HFToken:
    return _set_status(token, Status.DISABLED, reason="disabled by a person", actor=actor, action="token.disabled", ip=ip)


def token_enable(*, token: HFToken, actor: User | None, ip: str | None = None) -> HFToken:
    if token.status == Status.INVALID:
        raise Conflict("This token was refused by Hugging Face; validate it to bring it back.")
    return _set_status(token, Status.ACTIVE, reason="enabled by a person", actor=actor, action="token.enabled", ip=ip)


def token_release(*, token: HFToken, actor: User | None, ip: str | None = None) -> HFToken:
    if token.status not in Status.TIMED:
        raise Conflict(f"Only cooling or quarantined tokens can be released; this one is {token.status}.")
    return _set_status(token, Status.ACTIVE, reason="released by a person", actor=actor, action="token.released", ip=ip)


@transaction.atomic
def token_delete(*, token: HFToken, actor: User | None, ip: str | None = None) -> None:
    """Leases keep their rows (token set to null) so usage history stays whole."""
    audit_record(
        organization=token.organization, actor=actor, action="token.deleted", target=token, ip=ip,
        data={"pool": token.pool.name},
    )
    token.delete()


def token_validate(
    *, token: HFToken, actor: User | None, ip: str | None = None, now: datetime | None = None, answer: hf_api.WhoAmI | None = None
) -> HFToken:
    """Ask whoami-v2 (unless `answer` is what it already said): valid brings an invalid (or due) token
    back, 401 makes it invalid."""
    # The network call happens outside any transaction: no row stays locked while Hugging Face thinks.
    if answer is None:
        answer = hf_api.whoami(decrypt_secret(token.secret_encrypted))
    now = now or timezone.now()
    with transaction.atomic():
        token = HFToken.objects.select_for_update(of=("self",)).get(pk=token.pk)
        before = token.status
        token.validated_at = now
        if answer.valid:
            token.hf_username, token.hf_token_role = answer.username, answer.token_role
            if token.status == Status.INVALID:
                token.status, token.consecutive_failures = Status.ACTIVE, 0
            else:
                token.apply_policy_state(release_if_due(token.policy_state(), now))
            reason = "validation succeeded"
        else:
            if token.status != Status.DISABLED:
                token.status, token.available_at = Status.INVALID, None
            reason = "validation failed: Hugging Face answered 401"
        token.save()
        _record_status_change(token, before, reason, actor.username if actor else "")
        audit_record(
            organization=token.organization, actor=actor, action="token.validated", target=token, ip=ip,
            data={"valid": answer.valid},
        )
    return token


# --- Leasing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseGrant:
    lease: Lease
    token: HFToken
    secret: str


def lease_pool(organization: Organization, *, api_key: ApiKey | None, pool_name: str = "") -> TokenPool:
    """The pool a lease draws from: the key's pinned pool, the one asked for, or the default."""
    pinned = api_key.pool if api_key is not None and api_key.pool_id else None
    if pinned is not None:
        if pool_name and pool_name != pinned.name:
            raise exceptions.PermissionDenied(f"This API key may only lease from pool '{pinned.name}'.")
        return pinned
    pool = selectors.pool_by_name(organization, pool_name or TokenPool.DEFAULT_NAME)
    if pool is None:
        raise exceptions.NotFound(f"No pool named '{pool_name}'.")
    return pool


def lease_token(
    *,
    organization: Organization,
    pool: TokenPool,
    user: User | None,
    api_key: ApiKey | None = None,
    client_name: str = "",
    now: datetime | None = None,
) -> LeaseGrant:
    """Take the pool's next token by its strategy, atomically, and open a lease on it."""
    now = now or timezone.now()
    leases_expire_overdue(now=now)
    with write_transaction():
        token = _lock_next_token(pool, now)
        if token is None:
            require_database_thread()
            raise NoTokenAvailable(pool, selectors.seconds_until_token_returns(pool, now))
        before = token.status
        token.apply_policy_state(release_if_due(token.policy_state(), now))
        token.last_leased_at = now
        token.lease_count += 1
        token.active_leases += 1
        save_fields(token, ["status", "available_at", "last_leased_at", "lease_count", "active_leases"])
        _record_status_change(token, before, "quarantine time over: back in rotation")
        lease = Lease(
            organization=organization,
            pool=pool,
            token=token,
            user=user,
            api_key=api_key,
            client_name=client_name[:100],
            leased_at=now,
            expires_at=now + timedelta(seconds=pool.lease_ttl_seconds),
        )
        insert_row(lease)
        _count_usage(lease, "leases")
        _notify_after_commit(lease, "lease")
    return LeaseGrant(lease=lease, token=token, secret=decrypt_secret(token.secret_encrypted))


_CANDIDATES_TRIED = 20
RECENT_ERRORS_WINDOW = timedelta(hours=1)  # what fewest_recent_errors counts
_LOCK_ROUNDS = 5


def _lock_next_token(pool: TokenPool, now: datetime) -> HFToken | None:
    """Lock the best eligible token without waiting on rows other leases hold (SKIP LOCKED on PostgreSQL;
    SQLite's IMMEDIATE transactions already serialise writers). When every candidate is locked for a
    moment, wait for the best one; if it was taken meanwhile, look again, so a busy pool never answers
    503 while a token is free. Locks name only the token row: never the pool."""
    eligible, params = _eligible_tokens_sql(pool, now)
    order, order_params = _strategy_order_sql(pool.strategy, now)
    if pool.strategy != Strategy.WEIGHTED_RANDOM:
        token = first_row(
            HFToken, eligible, [*params, *order_params], order_by=order, lock=lock_rows_of(HFToken, skip_locked=True)
        )
        if token is not None:
            return token
    for _ in range(_LOCK_ROUNDS):
        candidates = _candidate_order(pool, now)
        if not candidates:
            return None
        for token_id in candidates:
            token = first_row(
                HFToken, f"{eligible} AND id = %s", [*params, token_id], lock=lock_rows_of(HFToken, skip_locked=True)
            )
            if token is not None:
                return token
        # PostgreSQL re-checks the WHERE clause on the row's newest version once the lock is ours.
        token = first_row(HFToken, f"{eligible} AND id = %s", [*params, candidates[0]], lock=lock_rows_of(HFToken))
        if token is not None:
            return token
    return None


def _eligible_tokens_sql(pool: TokenPool, now: datetime) -> tuple[str, list]:
    """Tokens a lease may take now: active, or cooling/quarantined with their time up, and below their lease cap."""
    return (
        "pool_id = %s AND (status = %s OR (status IN (%s, %s) AND available_at <= %s))"
        " AND (max_concurrent_leases IS NULL OR active_leases < max_concurrent_leases)",
        [pool.pk, Status.ACTIVE, *sorted(Status.TIMED), db_value(HFToken, "available_at", now)],
    )


def _strategy_order_sql(strategy: str, now: datetime) -> tuple[str, list]:
    """Candidates in the pool's strategy order; least recently leased breaks ties so leases spread."""
    lru = "last_leased_at ASC NULLS FIRST, id ASC"
    if strategy == Strategy.FEWEST_RECENT_ERRORS:
        recent_errors = (
            "(SELECT COUNT(*) FROM tokens_lease WHERE tokens_lease.token_id = tokens_hftoken.id"
            " AND tokens_lease.outcome = %s AND tokens_lease.leased_at >= %s)"
        )
        since = db_value(Lease, "leased_at", now - RECENT_ERRORS_WINDOW)
        return f"{recent_errors} ASC, {lru}", [Outcome.ERROR, since]
    return lru, []


def _candidate_order(pool: TokenPool, now: datetime) -> list[int]:
    eligible, params = _eligible_tokens_sql(pool, now)
    if pool.strategy == Strategy.WEIGHTED_RANDOM:
        with statement(f"SELECT id, weight FROM tokens_hftoken WHERE {eligible}", params) as cursor:
            return _weighted_shuffle(cursor.fetchall())[:_CANDIDATES_TRIED]
    order, order_params = _strategy_order_sql(pool.strategy, now)
    sql = f"SELECT id FROM tokens_hftoken WHERE {eligible} ORDER BY {order} LIMIT {_CANDIDATES_TRIED}"
    with statement(sql, [*params, *order_params]) as cursor:
        return [token_id for (token_id,) in cursor.fetchall()]


def _weighted_shuffle(candidates: list[tuple[int, int]]) -> list[int]:
    """Weighted random order without replacement (Efraimidis–Spirakis): the first is the weighted pick."""
    keyed = [(random.random() ** (1.0 / max(weight, 1)), token_id) for token_id, weight in candidates]
    return [token_id for _, token_id in sorted(keyed, reverse=True)]


_last_expiry_sweep = 0.0


def leases_expire_overdue(*, now: datetime, force: bool = False) -> int:
    """Close leases nobody reported within their TTL, freeing their concurrency slots.
    Runs at most once a second per process on the lease path; the conditional update makes
    concurrent sweeps on several workers close each lease once."""
    global _last_expiry_sweep
    if not force and time.monotonic() - _last_expiry_sweep < 1.0:
        return 0
    require_database_thread()
    _last_expiry_sweep = time.monotonic()
    expired = 0
    for lease in selectors.overdue_leases(now):
        with transaction.atomic():
            # Token row first, then the lease: the order report_outcome takes them in, so the two never deadlock.
            if lease.token_id is not None:
                list(HFToken.objects.select_for_update(of=("self",)).filter(pk=lease.token_id).values_list("pk"))
            closed = Lease.objects.filter(pk=lease.pk, reported_at__isnull=True).update(
                reported_at=now, outcome=Outcome.EXPIRED
            )
            if closed:
                if lease.token_id is not None:
                    HFToken.objects.filter(pk=lease.token_id, active_leases__gt=0).update(
                        active_leases=F("active_leases") - 1
                    )
                _count_usage(lease, Outcome.EXPIRED)
                _notify_after_commit(lease, "report", outcome=Outcome.EXPIRED, error_type="")
            expired += closed
    return expired


# --- Usage counters -----------------------------------------------------------------------------

_COUNT_SQL = (
    "INSERT INTO tokens_usagecounter (organization_id, dimension, key_id, hour, metric, count) VALUES {rows} "
    "ON CONFLICT (organization_id, dimension, hour, key_id, metric) "
    "DO UPDATE SET count = tokens_usagecounter.count + excluded.count"
)


def _count_usage(lease: Lease, *metrics: str, delta: int = 1) -> None:
    """Add `delta` to each metric of the lease's hour, for its token, user and pool, in one upsert.
    On PostgreSQL once the caller's transaction has committed: a pool's counter row is shared by all its
    leases, and holding its lock until the end of every lease transaction would make them queue behind
    each other. SQLite lets one writer in at a time anyway, so there it joins the caller's transaction,
    which saves a commit per lease and per report."""
    counts = _usage_counts(lease, metrics, delta)
    if current_db().vendor == "sqlite":
        _upsert_usage(counts)
    else:
        # on_commit logs a failure here, never turning it into an error for a lease that has committed
        on_commit(lambda: _upsert_usage_after_commit(counts))


_usage_backlog: dict[tuple, int] = {}  # counts whose upsert found the database gone after their commit
_usage_backlog_lock = threading.Lock()
_usage_retry_pending = False  # a retry of the backlog is scheduled (under the lock)
USAGE_RETRY_PAUSES = (1, 2, 5, 10, 30, 60)  # seconds before each retry of the backlog; then every 60 s


def _upsert_usage_after_commit(counts: dict[tuple, int], retries: int = 0) -> None:
    """The upsert after the commit. If the database went away in between (a restart, a failover), the
    counts are kept in this process and added with the next ones, or by a retry a moment later when no
    next ones come, rather than lost."""
    global _usage_retry_pending
    with _usage_backlog_lock:
        for bucket, delta in _usage_backlog.items():
            counts[bucket] = counts.get(bucket, 0) + delta
        _usage_backlog.clear()
    if not counts:
        return
    try:
        _upsert_usage(counts)
    except DATABASE_DOWN:
        logger.warning("usage counts kept for later: the database is unavailable")
        with _usage_backlog_lock:
            for bucket, delta in counts.items():
                _usage_backlog[bucket] = _usage_backlog.get(bucket, 0) + delta
            schedule, _usage_retry_pending = not _usage_retry_pending, True
        if schedule:
            _retry_usage_later(USAGE_RETRY_PAUSES[min(retries, len(USAGE_RETRY_PAUSES) - 1)], retries + 1)


def _retry_usage_later(pause: float, retries: int) -> None:
    timer = threading.Timer(pause, submit_to_db_threads, (_retry_usage_backlog, retries))
    timer.daemon = True  # a worker that stops does not wait for it; usage_counters_rebuild repairs the counts
    timer.start()


def _retry_usage_backlog(retries: int) -> None:
    global _usage_retry_pending
    with _usage_backlog_lock:
        _usage_retry_pending = False
    _upsert_usage_after_commit({}, retries)


def _usage_counts(lease: Lease, metrics, delta: int) -> dict[tuple, int]:
    hour = lease.leased_at.replace(minute=0, second=0, microsecond=0)
    keys = [("token", lease.token_id), ("user", lease.user_id), ("pool", lease.pool_id)]
    return {(lease.organization_id, dimension, key_id or 0, hour, metric): delta for metric in metrics for dimension, key_id in keys}


def _upsert_usage(counts: dict[tuple, int]) -> None:
    # In one order everywhere, so two upserts that share rows cannot deadlock on PostgreSQL.
    buckets = sorted(counts)
    adapt_hour = current_db().ops.adapt_datetimefield_value
    params = []
    for organization_id, dimension, key_id, hour, metric in buckets:
        params += [organization_id, dimension, key_id, adapt_hour(hour), metric, counts[organization_id, dimension, key_id, hour, metric]]
    with statement(_COUNT_SQL.format(rows=", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(buckets))), params):
        pass


@transaction.atomic
def usage_counters_rebuild() -> int:
    """Recount every hourly counter from the leases themselves: for data that predates the counters,
    or to repair them. Same numbers as the incremental path, in a few grouped statements."""
    hour = (
        "date_trunc('hour', leased_at)" if connection.vendor == "postgresql"
        else "strftime('%%Y-%%m-%%d %%H:00:00', leased_at)"
    )
    metrics = {
        "'leases'": "TRUE",
        "outcome": "outcome <> ''",
        "'error:' || error_type": f"outcome = '{Outcome.ERROR}'",
    }
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM tokens_usagecounter")
        for dimension, column in (("token", "token_id"), ("user", "user_id"), ("pool", "pool_id")):
            for metric, condition in metrics.items():
                cursor.execute(
                    "INSERT INTO tokens_usagecounter (organization_id, dimension, key_id, hour, metric, count) "
                    f"SELECT organization_id, %s, COALESCE({column}, 0), {hour}, {metric}, COUNT(*) "
                    f"FROM tokens_lease WHERE {condition} GROUP BY 1, 2, 3, 4, 5",
                    [dimension],
                )
        cursor.execute("SELECT COUNT(*) FROM tokens_usagecounter")
        return cursor.fetchone()[0]


# --- Reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportResult:
    token: HFToken
    lease: Lease | None
    duplicate: bool = False


def report_outcome(
    *,
    organization: Organization,
    token_id: int,
    success: bool,
    error: str = "",
    error_type: str | None = None,
    client_name: str = "",
    lease_id: int | None = None,
    user: User | None,
    api_key: ApiKey | None = None,
    cancelled: bool = False,
    blame_token: bool = True,
    now: datetime | None = None,
) -> ReportResult:
    """Close the caller's lease and let the quarantine policy move the token. A report of a lease already
    closed changes nothing (clients retry reports). A cancelled lease, or an error that was the request's own
    (blame_token=False, e.g. upstream refusing invalid input), is recorded but does not move the token."""
    now = now or timezone.now()
    blame_token = blame_token and not cancelled
    if success or cancelled:
        error_type = None
    elif blame_token and error_type not in ErrorType.ALL:
        error_type = classify_error(error)
    if error_type == ErrorType.VALIDATION:  # the request's own fault, as the relay records it
        blame_token = False
    with write_transaction():
        token = first_row(  # lock the token only, never its pool
            HFToken, "organization_id = %s AND id = %s", [organization.pk, token_id], lock=lock_rows_of(HFToken)
        )
        if token is None:
            raise exceptions.NotFound("No such token.")
        lease = _lease_for_report(organization, token, lease_id, api_key=api_key, user=user)
        if lease.reported_at is not None and lease.outcome != Outcome.EXPIRED:
            return ReportResult(token=token, lease=lease, duplicate=True)
        # A late report of an expired lease still counts, for the token (a late 402 still quarantines it)
        # and in usage, where the lease moves from expired to what was reported.
        was_open = lease.reported_at is None
        if not was_open:
            _count_usage(lease, Outcome.EXPIRED, delta=-1)
        # Clients quote whatever their HTTP library said, which may include the token itself.
        if error:
            error = redact_secrets(error, decrypt_secret(token.secret_encrypted))[: Lease.ERROR_TEXT_LIMIT]

        changed_fields = []
        if blame_token:
            before = token.status
            token.pool = first_row(TokenPool, "id = %s", [token.pool_id])
            transition: Transition = next_state(
                token.policy_state(), success=success, error_type=error_type, now=now, policy=token.pool.quarantine_policy()
            )
            changed_fields += token.apply_policy_state(transition.state)
            if success:
                token.success_count += 1
                changed_fields.append("success_count")
            else:
                token.error_count += 1
                token.last_error, token.last_error_type, token.last_error_at = error, error_type, now
                changed_fields += ["error_count", "last_error", "last_error_type", "last_error_at"]
        lease.reported_at = now
        lease.outcome = Outcome.CANCELLED if cancelled else Outcome.SUCCESS if success else Outcome.ERROR
        lease.error_type, lease.error = error_type or "", error or ""
        lease.client_name = client_name[:100] or lease.client_name
        save_fields(lease, ["reported_at", "outcome", "error_type", "error", "client_name"])
        _count_usage(lease, lease.outcome, *([f"error:{error_type}"] if lease.outcome == Outcome.ERROR else []))
        _notify_after_commit(lease, "report", outcome=lease.outcome, error_type=lease.error_type)
        if was_open:  # an expired lease gave its slot back when it expired
            token.active_leases = max(token.active_leases - 1, 0)
            changed_fields.append("active_leases")
        if changed_fields:
            save_fields(token, changed_fields)
        if blame_token:
            _record_status_change(token, before, transition.reason)
    return ReportResult(token=token, lease=lease)


def _lease_for_report(organization, token, lease_id, *, api_key, user) -> Lease:
    """The caller's own lease the report is about. Only a lease holder moves a token: otherwise any key of
    the organization could take every token out of rotation with made-up reports."""
    if lease_id is None:
        require_database_thread()
        lease = selectors.lease_for_report(token, api_key=api_key, user=user)
        if lease is None:
            raise exceptions.NotFound("You hold no lease on this token: lease it before reporting on it.")
        return lease
    holder, holder_id = ("api_key_id", api_key.pk) if api_key is not None else ("user_id", user.pk if user else None)
    lease = first_row(
        Lease,
        f"organization_id = %s AND id = %s AND {holder} " + ("= %s" if holder_id is not None else "IS NULL"),
        [organization.pk, lease_id, *([holder_id] if holder_id is not None else [])],
        lock=lock_rows_of(Lease),
    )
    if lease is None:
        raise exceptions.NotFound("No such lease of yours.")
    if lease.token_id != token.pk:
        raise exceptions.ValidationError({"lease_id": ["This lease is of another token."]})
    return lease
