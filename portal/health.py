"""Health for load balancers and orchestrators.

/healthz: the process answers (no database, no Redis), for liveness.
/readyz: the database answers `SELECT 1` and, with REDIS_URL, Redis answers PING, for readiness. Each
check has CHECK_TIMEOUT seconds; a check that takes longer counts as failed, so /readyz never hangs on a
database or Redis that is gone silently.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from portal.errors import error_payload

CHECK_TIMEOUT = 2.0

# Its own threads, not the portal's database threads: readiness must answer even when those are all busy
# or stuck, and a stuck check must not take a request's thread.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="portal-readyz")


def _database_ping() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # one short connection per check: these threads carry no requests


async def check_database() -> None:
    await asyncio.get_running_loop().run_in_executor(_executor, _database_ping)


async def check_redis() -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT, retry_on_timeout=False
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


def _checks() -> dict:
    checks = {"database": check_database}
    if settings.REDIS_URL:
        checks["redis"] = check_redis
    return checks


async def _run_check(check) -> dict:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
    except TimeoutError:
        result = {"status": "error", "error": f"no answer within {CHECK_TIMEOUT:g} s"}
    except Exception as exc:  # anything at all means not ready; the class name says which kind
        result = {"status": "error", "error": f"{type(exc).__name__}: {_first_line(exc)}"}
    else:
        result = {"status": "ok"}
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


def _first_line(exc: Exception) -> str:
    # Connection errors name host and port, never the password in the URL; keep one line of it.
    return (str(exc).strip().splitlines() or [""])[0][:200]


@require_GET
async def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
async def readyz(request):
    checks = _checks()
    results = dict(zip(checks, await asyncio.gather(*(_run_check(check) for check in checks.values()))))
    failed = [name for name, result in results.items() if result["status"] != "ok"]
    if failed:
        message = f"Not ready: {', '.join(failed)} unreachable."
        return JsonResponse(error_payload(message, "service_unavailable", checks=results), status=503)
    return JsonResponse({"status": "ok", "checks": results})
