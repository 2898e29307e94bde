"""Plain fixtures and factories shared by the whole suite."""

import importlib.util
import itertools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts import services
from accounts.models import Membership, Organization
from accounts.roles import Role

_names = itertools.count(1)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(name: str):
    """A script of scripts/ (a folder of programs, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"portal_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
requires_postgres = pytest.mark.skipif(
    not on_postgres, reason="needs PostgreSQL: `make test` runs it when postgresql's server binaries are installed"
)
requires_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="needs Redis: `make test` runs it when redis-server is installed"
)


@pytest.fixture
def make_organization(db):
    def make(slug: str | None = None) -> Organization:
        slug = slug or f"org-{next(_names)}"
        return services.organization_create(name=slug.title(), slug=slug, actor=None)

    return make


@pytest.fixture
def organization(make_organization) -> Organization:
    return make_organization("acme")


@pytest.fixture
def make_member(db):
    """make_member(organization, role) -> (membership, raw API key)."""

    def make(organization: Organization, role: str = Role.USER, **fields) -> tuple[Membership, str]:
        fields.setdefault("username", f"{role}-{next(_names)}")
        return services.user_create(organization=organization, role=role, actor=None, **fields)

    return make


@pytest.fixture
def client_for():
    """client_for(raw_key) -> an APIClient that sends `Authorization: Bearer <key>`."""

    def make(raw_key: str | None) -> APIClient:
        client = APIClient()
        if raw_key:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        return client

    return make


@pytest.fixture
def admin_client(organization, make_member, client_for) -> APIClient:
    _, key = make_member(organization, Role.ADMIN)
    return client_for(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="session")
def standin_url():
    """The project's stand-in Hugging Face upstream, served in its own process."""
    from tokens.standin import standin_command

    port = free_port()
    process = subprocess.Popen(
        standin_command("127.0.0.1", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "STANDIN_SLOW_SECONDS": "1"},
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def standin(settings, standin_url) -> str:
    """Point the portal's Hugging Face URLs at the stand-in for one test."""
    settings.HF_API_BASE = standin_url
    settings.HF_INFERENCE_BASE_URL = f"{standin_url}/v1"
    return standin_url


@pytest.fixture
def make_token(db):
    """make_token(organization, secret=None, pool="default", **fields) -> HFToken, added through the service."""
    from tokens import selectors as token_selectors
    from tokens import services as token_services

    def make(organization: Organization, secret: str | None = None, pool: str = "default", **fields):
        secret = secret or f"hf_test_{next(_names):04d}_abcdefghijklmnop"
        return token_services.token_add(
            organization=organization,
            pool=token_selectors.pool_by_name(organization, pool),
            secret=secret,
            actor=None,
            **fields,
        )

    return make


def prepared_portal_env(var_dir, standin_url: str, admin_key: str, **extra: str) -> dict:
    """The environment of a portal worker a test starts (and may kill) itself, on a database migrated and
    bootstrapped in var_dir (SQLite, or DATABASE_URL's on the PostgreSQL run, unless extra says otherwise)."""
    env = {
        **os.environ,
        "PORTAL_VAR_DIR": str(var_dir),
        "PORTAL_ADMIN_API_KEY": admin_key,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "HF_API_BASE": standin_url,
        "HF_INFERENCE_BASE_URL": f"{standin_url}/v1",
        **extra,
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env=env, check=True)
    subprocess.run([sys.executable, "manage.py", "bootstrap"], env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def start_portal_worker(env: dict, log_path, app: str = "portal.asgi:application") -> subprocess.Popen:
    """One worker as `make run` starts it (portal.serve, serving `app`), in its own process group (so a test
    can SIGKILL it whole); `.url` is its address."""
    port = free_port()
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "portal.serve", "-b", "127.0.0.1", "-p", str(port), app],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    wait_for_port(port)
    process.url = f"http://127.0.0.1:{port}"
    return process


def new_organization_admin_key(worker_url: str, admin_key: str, slug_prefix: str) -> str:
    """A fresh organization on a worker a test started, made through the admin API; its admin's API key."""
    slug = f"{slug_prefix}-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=worker_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10) as admin:
        admin.post("/admin/organizations", json={"name": slug, "slug": slug}).raise_for_status()
        created = admin.post("/admin/users", json={"username": f"{slug}-admin", "role": "admin", "organization": slug})
        created.raise_for_status()
        return created.json()["api_key"]


def stop_portal_workers(*workers: subprocess.Popen | None, how: int = signal.SIGTERM) -> None:
    """Stop the workers a test started that are still running (the whole process group of each)."""
    for worker in workers:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, how)
            worker.wait(timeout=10)


LIVE_ADMIN_KEY = "pk_live_portal_admin_key_for_tests_0123456789"
LIVE_ADMIN_PASSWORD = "live-portal-admin-password-for-tests"  # the bootstrap superuser "admin" logs in with it
LIVE_MAX_CONCURRENT = 8


@pytest.fixture(scope="session")
def live_portal(standin_url, tmp_path_factory):
    """The real thing: daphne serving portal.asgi in its own process, with the stand-in as Hugging Face.

    It has its own database (a SQLite file, or DATABASE_URL's database on the PostgreSQL run) and a
    superuser admin whose key is LIVE_ADMIN_KEY (dashboard password LIVE_ADMIN_PASSWORD). Upstream reads time out after 0.5 s (the stand-in's
    slow tokens wait 1 s) and one worker carries LIVE_MAX_CONCURRENT streams."""
    var_dir = tmp_path_factory.mktemp("live-portal")
    env = {
        **os.environ,
        "PORTAL_VAR_DIR": str(var_dir),
        "PORTAL_ADMIN_API_KEY": LIVE_ADMIN_KEY,
        "PORTAL_ADMIN_PASSWORD": LIVE_ADMIN_PASSWORD,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "HF_API_BASE": standin_url,
        "HF_INFERENCE_BASE_URL": f"{standin_url}/v1",
        "PORTAL_PROXY_BASE_URL": standin_url,
        "PORTAL_UPSTREAM_READ_TIMEOUT": "0.5",
        "PORTAL_MAX_CONCURRENT_REQUESTS": str(LIVE_MAX_CONCURRENT),
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True)
    subprocess.run([*manage, "bootstrap"], env=env, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    log = open(var_dir / "daphne.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "portal.serve", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def live_org(live_portal):
    """A fresh organization on the live portal: its admin's and a user's API keys, made through the REST API."""
    import httpx

    slug = f"live-{next(_names)}-{os.getpid()}"
    admin = httpx.Client(base_url=live_portal, headers={"Authorization": f"Bearer {LIVE_ADMIN_KEY}"}, timeout=10)
    admin.post("/admin/organizations", json={"name": slug, "slug": slug}).raise_for_status()
    org_admin = admin.post(
        "/admin/users", json={"username": f"{slug}-admin", "role": "admin", "organization": slug}
    ).json()
    admin.close()
    org_client = httpx.Client(base_url=live_portal, headers={"Authorization": f"Bearer {org_admin['api_key']}"}, timeout=10)
    user = org_client.post("/admin/users", json={"username": f"{slug}-user", "role": "user"}).json()
    yield SimpleNamespace(url=live_portal, slug=slug, admin=org_client, admin_key=org_admin["api_key"], user_key=user["api_key"])
    org_client.close()


@pytest.fixture(scope="session", autouse=True)
def close_database_thread_connections():
    """The async side's database threads keep their connections; close them so the test database can go."""
    yield
    from portal.db import close_thread_connections

    close_thread_connections()


@pytest.fixture(autouse=True)
def forget_rate_counts():
    """Request and failed-login counts live in the process (or Redis) across tests, while database ids are
    reused from one test to the next: each test starts with none."""
    from django.core.cache import cache

    from portal.rate_limit import reset_key_rates

    reset_key_rates()
    if "locmem" in settings.CACHES["default"]["BACKEND"].lower():
        cache.clear()
    else:
        client = cache._cache.get_client(write=True)
        keys = list(client.scan_iter(match="*portal:login-fail:*", count=1000))
        if keys:
            client.delete(*keys)
    yield
