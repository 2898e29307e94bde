"""One cluster for the module's tests: two daphne workers behind nginx, on the PostgreSQL stage's servers.

The cluster gets its own database on the stage's PostgreSQL and its own Redis database number, so its
workers share nothing with the in-process tests but the server processes."""

import os
import secrets
from types import SimpleNamespace

import httpx
import pytest
from django.conf import settings

from tests.conftest import load_script

ORG_LIMIT = 3  # streams per organization, across all workers
KEY_LIMIT = 2  # streams per API key, across all workers


cluster_script = load_script("cluster")


def _why_skip() -> str | None:
    on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    if not (on_postgres and os.environ.get("REDIS_URL")):
        return ("cluster tests run in the PostgreSQL stage: `make test-services`, or "
                "`.venv/bin/python scripts/with_services.py -- .venv/bin/python -m pytest tests/cluster`")
    return cluster_script.missing_binaries()


def pytest_collection_modifyitems(config, items):
    why = _why_skip()
    if why is None:
        return
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster_database_url():
    """A database of its own on the stage's PostgreSQL server, dropped afterwards."""
    import psycopg

    base = settings.DATABASES["default"]
    name = f"portal_cluster_{os.getpid()}"
    admin = dict(host=base["HOST"], port=base["PORT"], user=base["USER"], password=base["PASSWORD"] or None,
                 dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    password = f":{base['PASSWORD']}" if base["PASSWORD"] else ""
    yield f"postgres://{base['USER']}{password}@{base['HOST']}:{base['PORT']}/{name}"
    with psycopg.connect(**admin) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def cluster(cluster_database_url):
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/1"  # the in-process tests use /0
    env = {
        "PORTAL_ORG_MAX_CONCURRENT_REQUESTS": str(ORG_LIMIT),
        "PORTAL_KEY_MAX_CONCURRENT_REQUESTS": str(KEY_LIMIT),
        "STANDIN_SLOW_SECONDS": "1",
        # The tests send hundreds of requests a minute with one key; the rate limit has tests of its own.
        "PORTAL_KEY_RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
    }
    with cluster_script.Cluster(2, database_url=cluster_database_url, redis_url=redis_url, env=env,
                                standin=True) as running:
        yield running


@pytest.fixture
def cluster_org(cluster):
    """A fresh organization on the cluster: its admin's and a user's API keys and the user's id."""
    slug = f"cl-{secrets.token_hex(4)}"
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.admin_key}"}, timeout=20) as root:
        root.post("/admin/organizations", json={"name": slug, "slug": slug}).raise_for_status()
        org_admin = root.post("/admin/users", json={"username": f"{slug}-admin", "role": "admin", "organization": slug})
        org_admin.raise_for_status()
    admin = httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {org_admin.json()['api_key']}"},
                         timeout=20)
    user = admin.post("/admin/users", json={"username": f"{slug}-user", "role": "user"})
    user.raise_for_status()
    yield SimpleNamespace(slug=slug, admin=admin, admin_key=org_admin.json()["api_key"],
                          user_key=user.json()["api_key"], user_id=user.json()["id"])
    admin.close()
