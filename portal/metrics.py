"""/metrics in Prometheus' text format.

Two kinds of numbers, and the scraper must tell them apart:

- Read from the database at scrape time, so every worker answers the same (do not sum them over workers):
  tokens by status per pool (gauges), and leases, lease outcomes and error types per pool (counters,
  summed from the hourly usage counters the services keep as leases open and close).
- Counted in this process (sum them over workers): request latency histograms, active streams, and
  prometheus_client's process metrics (memory, CPU, open files).

Access: from loopback without proxy headers, or with `Authorization: Bearer <PORTAL_METRICS_TOKEN>`.
"""

import hmac
import ipaddress
import time
from collections import defaultdict

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from portal.db import on_db_threads
from portal.errors import error_response

REQUEST_LATENCY = Histogram(
    "portal_http_request_duration_seconds",
    "Time from request to response headers, per worker, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _active_streams() -> int:
    from tokens import limits

    return limits.worker_streams()


ACTIVE_STREAMS = Gauge("portal_active_streams", "Chat streams (SSE and websocket) this worker carries now.")
ACTIVE_STREAMS.set_function(_active_streams)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def route_of(request) -> str:
    """The URL pattern that served the request, never the raw path: one label value per route."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return "/" + match.route.lstrip("^").rstrip("$")
    if request.path_info.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    return "unmatched"


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUEST_LATENCY.labels(method if method in _METHODS else "other", route, str(status)).observe(seconds)


class RequestMetricsMiddleware:
    """Observes every response Django produces (first in MIDDLEWARE, so static files and errors count)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        observe_request(request.method, route_of(request), response.status_code, time.perf_counter() - started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        observe_request(request.method, route_of(request), response.status_code, time.perf_counter() - started)
        return response


def asgi_request_metrics(app, routes: dict[str, str]):
    """ASGI wrapper for HTTP apps served before Django (the SSE chat door): observes the time to the
    response's headers under the route `routes[path]`; other paths pass through untouched (Django's
    middleware observes them)."""

    async def observed(scope, receive, send):
        route = routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            return await app(scope, receive, send)
        started = time.perf_counter()

        async def send_observing(message):
            if message["type"] == "http.response.start":
                observe_request(scope.get("method", ""), route, message["status"], time.perf_counter() - started)
            await send(message)

        return await app(scope, receive, send_observing)

    return observed


# --- From the database, at scrape time ---------------------------------------------------------------


def database_snapshot() -> dict:
    """Token statuses and usage totals per (organization, pool), in three grouped queries."""
    from django.db.models import Count, Sum

    from accounts.models import Organization
    from tokens.models import HFToken, TokenPool, UsageCounter

    organizations = dict(Organization.objects.values_list("pk", "slug"))
    pools = {pk: (organizations.get(org_id, ""), name) for pk, org_id, name in TokenPool.objects.values_list("pk", "organization_id", "name")}
    tokens = list(HFToken.objects.values("organization_id", "pool_id", "status").annotate(n=Count("pk")).order_by())
    usage = list(
        UsageCounter.objects.filter(dimension="pool")
        .values("organization_id", "key_id", "metric")
        .annotate(n=Sum("count"))
        .order_by()
    )
    return {"organizations": organizations, "pools": pools, "tokens": tokens, "usage": usage}


def database_families(snapshot: dict) -> list:
    from tokens.models import Outcome
    from tokens.policy import Status

    organizations, pools = snapshot["organizations"], snapshot["pools"]

    def labels_of(org_id, pool_id):
        if pool_id in pools:
            return pools[pool_id]
        return organizations.get(org_id, ""), ""  # a deleted pool's history, or leases without one

    tokens = GaugeMetricFamily(
        "portal_tokens", "Hugging Face tokens by status, per organization and pool.", labels=["organization", "pool", "status"]
    )
    counts = defaultdict(int)
    for org_slug, pool_name in pools.values():  # every pool shows every status, zeros included
        for status, _ in Status.CHOICES:
            counts[(org_slug, pool_name, status)] += 0
    for row in snapshot["tokens"]:
        counts[(*labels_of(row["organization_id"], row["pool_id"]), row["status"])] += row["n"]
    for labels, value in sorted(counts.items()):
        tokens.add_metric(list(labels), value)

    leases = CounterMetricFamily(
        "portal_leases", "Leases granted, per organization and pool (all workers).", labels=["organization", "pool"]
    )
    outcomes = CounterMetricFamily(
        "portal_lease_outcomes", "Leases closed by a report, by outcome, per pool (all workers).",
        labels=["organization", "pool", "outcome"],
    )
    errors = CounterMetricFamily(
        "portal_lease_errors", "Leases reported as errors, by error type, per pool (all workers).",
        labels=["organization", "pool", "error_type"],
    )
    # Not counters: a report that arrives after the TTL turns an expired lease into a reported one, so
    # the expired count can fall, and a counter that falls reads as a reset to Prometheus.
    expired = GaugeMetricFamily(
        "portal_leases_expired", "Leases closed by their TTL and never reported since, per pool (all workers).",
        labels=["organization", "pool"],
    )
    open_leases = GaugeMetricFamily(
        "portal_leases_open", "Leases granted and not yet closed, per pool (all workers).", labels=["organization", "pool"]
    )
    totals = defaultdict(int)
    for row in snapshot["usage"]:
        totals[(*labels_of(row["organization_id"], row["key_id"]), row["metric"])] += row["n"] or 0
    still_open = defaultdict(int)
    for (org_slug, pool_name, metric), value in sorted(totals.items()):
        if metric == "leases":
            leases.add_metric([org_slug, pool_name], value)
            still_open[(org_slug, pool_name)] += value
        elif metric.startswith("error:"):
            errors.add_metric([org_slug, pool_name, metric.removeprefix("error:") or "unknown"], value)
        elif metric == Outcome.EXPIRED:
            expired.add_metric([org_slug, pool_name], value)
            still_open[(org_slug, pool_name)] -= value
        elif metric in Outcome.values:
            outcomes.add_metric([org_slug, pool_name, metric], value)
            still_open[(org_slug, pool_name)] -= value
    for (org_slug, pool_name), value in sorted(still_open.items()):
        open_leases.add_metric([org_slug, pool_name], max(value, 0))
    return [tokens, leases, outcomes, errors, expired, open_leases]


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


# --- The view -------------------------------------------------------------------------------------


def _is_loopback(request) -> bool:
    if any(request.META.get(header) for header in _PROXY_HEADERS):
        return False  # relayed by a proxy on this machine: the real client is elsewhere
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _has_metrics_token(request) -> bool:
    expected = settings.PORTAL_METRICS_TOKEN
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def metrics_allowed(request) -> bool:
    return _has_metrics_token(request) or _is_loopback(request)


@require_GET
async def metrics(request):
    if not metrics_allowed(request):
        return error_response(
            "Metrics are served to loopback or with the metrics token.", "permission_denied", 403
        )
    snapshot = await on_db_threads(database_snapshot)()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(database_families(snapshot)))
    body = generate_latest(REGISTRY) + generate_latest(registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
