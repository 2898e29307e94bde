"""GET /admin/usage: leases and their outcomes grouped by token, user, pool or day, as each role may see them.

The history below is made through the services with explicit times, so every count is known in advance.
"""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from accounts.roles import Role
from tokens import services
from tokens.models import HFToken, TokenPool
from tokens.policy import ErrorType

pytestmark = pytest.mark.django_db

USAGE = "/admin/usage"
SINCE = datetime(2025, 3, 10, tzinfo=UTC)
UNTIL = datetime(2025, 3, 12, tzinfo=UTC)
WINDOW = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def counts(leases, successes=0, errors=0, cancelled=0, expired=0, open=0, **errors_by_type) -> dict:
    """A usage row's numbers; errors_by_type lists every error type, zero where none happened."""
    assert set(errors_by_type) <= set(ErrorType.ALL)
    return {
        "leases": leases, "successes": successes, "errors": errors, "cancelled": cancelled, "expired": expired,
        "open": open, "errors_by_type": {kind: errors_by_type.get(kind, 0) for kind in ErrorType.ALL},
    }


def numbers(row: dict) -> dict:
    fields = ("leases", "successes", "errors", "cancelled", "expired", "open", "errors_by_type")
    return {field: row[field] for field in fields}


def usage(client, **params):
    response = client.get(USAGE, {**WINDOW, **params})
    assert response.status_code == 200, (response.status_code, response.content[:500])
    return response.json()


def rows_by_key(body: dict) -> dict:
    return {row["key"]: row for row in body["rows"]}


@pytest.fixture
def history(organization, make_organization, make_member, make_token, django_capture_on_commit_callbacks):
    """Two pools, three tokens, three people, nine leases: eight inside the window, one on each side."""
    # Usage is counted once each lease transaction commits; run those callbacks as the story is written.
    with django_capture_on_commit_callbacks(execute=True):
        alice, alice_key = make_member(organization, Role.USER, username="alice")
        bob, bob_key = make_member(organization, Role.USER, username="bob")
        mia, mia_key = make_member(organization, Role.MANAGER, username="mia")
        default = TokenPool.objects.get(organization=organization, name=TokenPool.DEFAULT_NAME)
        batch = services.pool_create(organization=organization, name="batch", actor=None)
        # No lease expires on its own while the history is written: every outcome below is the one reported.
        TokenPool.objects.filter(organization=organization).update(lease_ttl_seconds=10**8)
        default.refresh_from_db()
        batch.refresh_from_db()
        t1 = make_token(organization, label="t1")
        t2 = make_token(organization, label="t2")
        t3 = make_token(organization, label="t3", pool="batch")

        def lease(member, pool, when, expected_token, outcome, error=""):
            grant = services.lease_token(organization=organization, pool=pool, user=member.user, now=when)
            assert grant.token.pk == expected_token.pk  # least recently leased, so the story below is exact
            if outcome != "open":
                services.report_outcome(
                    organization=organization, token_id=grant.token.pk, lease_id=grant.lease.pk, user=member.user,
                    success=outcome == "success", error=error, cancelled=outcome == "cancelled", now=when,
                )

        lease(alice, default, at(1, 12), t1, "success")  # before the window
        # 2025-03-10
        lease(alice, default, at(10, 9, 0), t2, "success")
        lease(alice, default, at(10, 9, 1), t1, "error", "HTTPSConnectionPool: Read timed out.")
        lease(bob, default, at(10, 9, 2), t2, "error", "something odd happened")  # unknown
        lease(bob, batch, at(10, 9, 3), t3, "error", CREDITS_402)
        # 2025-03-11 (t3's hour of quarantine is long over)
        lease(alice, default, at(11, 10, 0), t1, "success")
        lease(bob, default, at(11, 10, 1), t2, "cancelled")
        lease(alice, batch, at(11, 10, 2), t3, "error", "429 Client Error: Too Many Requests")
        lease(mia, default, at(11, 10, 3), t1, "open")
        lease(bob, batch, UNTIL, t3, "success")  # exactly at `until`: outside, the window is half-open

        # Another organization's usage in the same window must never show up.
        globex = make_organization("globex")
        outsider, _ = make_member(globex, Role.USER, username="otto")
        make_token(globex, label="globex-token")
        globex_pool = TokenPool.objects.get(organization=globex, name=TokenPool.DEFAULT_NAME)
        services.lease_token(organization=globex, pool=globex_pool, user=outsider.user, now=at(10, 12))

        _, admin_key = make_member(organization, Role.ADMIN, username="ada")
        _, viewer_key = make_member(organization, Role.VIEWER, username="vic")
    return SimpleNamespace(
        users={"alice": alice.user, "bob": bob.user, "mia": mia.user},
        keys={"alice": alice_key, "bob": bob_key, "mia": mia_key, "admin": admin_key, "viewer": viewer_key},
        tokens={"t1": t1, "t2": t2, "t3": t3},
        pools={"default": default, "batch": batch},
    )


# --- Each grouping, seen by an admin ----------------------------------------------------------------------


def test_usage_by_token(history, client_for):
    body = usage(client_for(history.keys["admin"]), group_by="token")

    t1, t2, t3 = (history.tokens[name] for name in ("t1", "t2", "t3"))
    rows = rows_by_key(body)
    assert set(rows) == {str(t1.pk), str(t2.pk), str(t3.pk)}
    assert numbers(rows[str(t1.pk)]) == counts(3, successes=1, errors=1, open=1, timeout=1)
    assert numbers(rows[str(t2.pk)]) == counts(3, successes=1, errors=1, cancelled=1, unknown=1)
    assert numbers(rows[str(t3.pk)]) == counts(2, errors=2, credits_exceeded=1, rate_limited=1)
    assert [rows[str(t.pk)]["name"] for t in (t1, t2, t3)] == ["t1", "t2", "t3"]
    assert body["group_by"] == "token"


def test_usage_by_user(history, client_for):
    body = usage(client_for(history.keys["admin"]), group_by="user")

    rows = {row["name"]: row for row in body["rows"]}
    assert set(rows) == {"alice", "bob", "mia"}
    assert numbers(rows["alice"]) == counts(4, successes=2, errors=2, timeout=1, rate_limited=1)
    assert numbers(rows["bob"]) == counts(3, errors=2, cancelled=1, unknown=1, credits_exceeded=1)
    assert numbers(rows["mia"]) == counts(1, open=1)
    assert rows["alice"]["key"] == str(history.users["alice"].pk)


def test_usage_by_pool(history, client_for):
    body = usage(client_for(history.keys["admin"]), group_by="pool")

    rows = {row["name"]: row for row in body["rows"]}
    assert set(rows) == {"default", "batch"}
    assert numbers(rows["default"]) == counts(6, successes=2, errors=2, cancelled=1, open=1, timeout=1, unknown=1)
    assert numbers(rows["batch"]) == counts(2, errors=2, credits_exceeded=1, rate_limited=1)
    assert rows["batch"]["key"] == str(history.pools["batch"].pk)


def test_usage_by_day(history, client_for):
    body = usage(client_for(history.keys["admin"]), group_by="day")

    assert [row["key"] for row in body["rows"]] == ["2025-03-10", "2025-03-11"]
    first, second = body["rows"]
    assert numbers(first) == counts(4, successes=1, errors=3, timeout=1, unknown=1, credits_exceeded=1)
    assert numbers(second) == counts(4, successes=1, errors=1, cancelled=1, open=1, rate_limited=1)


def test_usage_window_is_half_open_and_narrows_the_counts(history, client_for):
    admin = client_for(history.keys["admin"])

    only_the_first_day = usage(admin, group_by="pool", until=at(11, 0).isoformat())
    just_past_until = datetime(2025, 3, 12, 0, 0, 1, tzinfo=UTC)
    including_until = usage(admin, group_by="day", until=just_past_until.isoformat())

    rows = {row["name"]: row for row in only_the_first_day["rows"]}
    assert numbers(rows["default"]) == counts(3, successes=1, errors=2, timeout=1, unknown=1)
    assert numbers(rows["batch"]) == counts(1, errors=1, credits_exceeded=1)
    assert [row["key"] for row in including_until["rows"]] == ["2025-03-10", "2025-03-11", "2025-03-12"]
    assert numbers(including_until["rows"][2]) == counts(1, successes=1)


def test_totals_over_any_grouping_agree(history, client_for):
    admin = client_for(history.keys["admin"])

    for group_by in ("token", "user", "pool", "day"):
        rows = usage(admin, group_by=group_by)["rows"]
        assert sum(row["leases"] for row in rows) == 8, group_by
        assert sum(row["errors"] for row in rows) == 4, group_by
        assert sum(sum(row["errors_by_type"].values()) for row in rows) == 4, group_by


def test_usage_of_a_deleted_token_is_kept(history, client_for):
    t3 = history.tokens["t3"]
    services.token_delete(token=HFToken.objects.get(pk=t3.pk), actor=None)

    rows = usage(client_for(history.keys["admin"]), group_by="token")["rows"]

    assert "t3" not in {row["name"] for row in rows}
    deleted = [row for row in rows if row["name"] == "(deleted)"]
    assert len(deleted) == 1
    assert numbers(deleted[0]) == counts(2, errors=2, credits_exceeded=1, rate_limited=1)
    assert sum(row["leases"] for row in rows) == 8


# --- Who sees what ---------------------------------------------------------------------------------------


def test_a_user_sees_only_their_own_usage(history, client_for):
    alice = client_for(history.keys["alice"])

    by_user = usage(alice, group_by="user")["rows"]
    by_token = rows_by_key(usage(alice, group_by="token"))
    by_day = usage(alice, group_by="day")["rows"]

    assert [row["name"] for row in by_user] == ["alice"]
    assert numbers(by_user[0]) == counts(4, successes=2, errors=2, timeout=1, rate_limited=1)
    t1, t2, t3 = (history.tokens[name] for name in ("t1", "t2", "t3"))
    assert numbers(by_token[str(t1.pk)]) == counts(2, successes=1, errors=1, timeout=1)
    assert numbers(by_token[str(t2.pk)]) == counts(1, successes=1)
    assert numbers(by_token[str(t3.pk)]) == counts(1, errors=1, rate_limited=1)
    assert [numbers(row)["leases"] for row in by_day] == [2, 2]
    for leaked in ("bob", "mia", "otto"):
        assert leaked not in str(by_user)


@pytest.mark.parametrize("who", ["mia", "admin"])
def test_managers_and_admins_see_everyone(history, client_for, who):
    rows = usage(client_for(history.keys[who]), group_by="user")["rows"]

    assert sorted(row["name"] for row in rows) == ["alice", "bob", "mia"]


def test_a_viewer_sees_no_one_elses_usage(history, client_for):
    rows = usage(client_for(history.keys["viewer"]), group_by="user")["rows"]

    assert rows == []


def test_usage_needs_a_key(history, client_for):
    response = client_for(None).get(USAGE, WINDOW)

    assert response.status_code == 401


# --- Bad requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "hour"},
        {"since": UNTIL.isoformat(), "until": SINCE.isoformat()},
        {"since": SINCE.isoformat(), "until": SINCE.isoformat()},
        {"since": "yesterday"},
    ],
    ids=["unknown group_by", "since after until", "since equals until", "since not a date"],
)
def test_bad_usage_queries_are_400(history, client_for, params):
    response = client_for(history.keys["admin"]).get(USAGE, {**WINDOW, "group_by": "token", **params})

    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["error_type"] == "validation" and body["error"]
