"""Time GET /admin/usage over a million leases.

    .venv/bin/python bench/usage.py [--rows 1000000] [--repeat 5]

Seeds a fresh database (a throwaway SQLite file, or DATABASE_URL if set, which
must point at an empty database) with one organization, 4 pools, 40 tokens,
50 users and N leases spread over 30 days with realistic outcomes (inserted in
bulk, then counted by `rebuild_usage_counters`, the same counts the services
keep as leases happen), then times the usage endpoint through Django's test
client for every group_by over the whole 30 days, and checks its totals
against the lease table. Prints a table; the target is under 300 ms per query.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if not os.environ.get("DATABASE_URL"):
    os.environ["PORTAL_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-usage-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ["ALLOWED_HOSTS"] = "testserver"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from accounts import services as account_services  # noqa: E402
from accounts.roles import Role  # noqa: E402
from tokens import services as token_services  # noqa: E402

OUTCOMES = [("success", ""), ("error", "rate_limited"), ("error", "credits_exceeded"), ("error", "timeout"), ("", "")]
OUTCOME_WEIGHTS = [88, 4, 2, 3, 3]


def seed(rows: int) -> tuple[str, str, str]:
    organization = account_services.organization_create(name="Bench", slug="bench", actor=None)
    admin, admin_key = account_services.user_create(
        organization=organization, username="bench-admin", role=Role.ADMIN, actor=None
    )
    users = [admin.user] + [
        account_services.user_create(organization=organization, username=f"user{i}", actor=None)[0].user
        for i in range(49)
    ]
    pools = [token_services.pool_ensure_default(organization)] + [
        token_services.pool_create(organization=organization, name=f"pool{i}", actor=None) for i in range(3)
    ]
    tokens = [
        token_services.token_add(
            organization=organization, pool=pools[i % 4], secret=f"hf_bench_{i:04d}_abcdefghijklmnop", actor=None
        )
        for i in range(40)
    ]
    now = timezone.now()
    start = now - timedelta(days=30)
    span = (now - start).total_seconds()
    rng = random.Random(7)
    adapt = connection.ops.adapt_datetimefield_value
    insert = (
        "INSERT INTO tokens_lease (organization_id, pool_id, token_id, user_id, client_name, leased_at, expires_at, "
        "reported_at, outcome, error_type, error) VALUES (%s, %s, %s, %s, '', %s, %s, %s, %s, %s, '')"
    )
    batch = []
    for i in range(rows):
        token = tokens[rng.randrange(len(tokens))]
        leased_at = start + timedelta(seconds=rng.random() * span)
        outcome, error_type = rng.choices(OUTCOMES, OUTCOME_WEIGHTS)[0]
        reported_at = adapt(leased_at + timedelta(seconds=2)) if outcome else None
        batch.append(
            (organization.pk, token.pool_id, token.pk, users[rng.randrange(len(users))].pk, adapt(leased_at),
             adapt(leased_at + timedelta(minutes=10)), reported_at, outcome, error_type)
        )
        if len(batch) == 50_000 or i == rows - 1:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(insert, batch)
            batch.clear()
    # The services count usage as leases happen; rows inserted behind their back are counted here instead.
    token_services.usage_counters_rebuild()
    if connection.vendor == "sqlite":
        connection.cursor().execute("ANALYZE")
    else:
        connection.cursor().execute("ANALYZE tokens_lease")
    return admin_key, (start - timedelta(seconds=1)).isoformat(), (now + timedelta(seconds=1)).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    key, since, until = seed(args.rows)
    print(f"seeded {args.rows:,} leases on {connection.vendor} in {time.perf_counter() - started:.1f} s")

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    print(f"{'group_by':<10}{'rows':>6}{'p50 ms':>10}{'max ms':>10}")
    for group_by in ("day", "token", "user", "pool"):
        timings = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            response = client.get("/admin/usage", {"group_by": group_by, "since": since, "until": until})
            timings.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, response.content
        total = sum(row["leases"] for row in response.json()["rows"])
        assert total == args.rows, f"usage counted {total} leases of {args.rows}"
        print(f"{group_by:<10}{len(response.json()['rows']):>6}{statistics.median(timings):>10.1f}{max(timings):>10.1f}")


if __name__ == "__main__":
    main()
