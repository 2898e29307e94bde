import asyncio
import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Django must be set up before anything imports models (the routing does).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from portal import lease_door, live, metrics, sse  # noqa: E402
from portal.bare_asgi import checked_like_django  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402
from portal.url_keys import refuse_keys_in_url  # noqa: E402

# The hot paths, served as bare ASGI apps before Django's request handling (see portal.sse, portal.lease_door).
BARE_HTTP_PATHS = {
    path: checked_like_django(app)
    for path, app in {
        "/v1/chat/completions": sse.chat_completions,
        "/keys/provision/hf": lease_door.provision,
        "/keys/provision": lease_door.provision,
        "/keys/report/hf": lease_door.report,
        "/keys/report": lease_door.report,
    }.items()
}


async def http_application(scope, receive, send):
    await BARE_HTTP_PATHS.get(scope["path"], django_asgi_app)(scope, receive, send)


router = ProtocolTypeRouter(
    {
        # Django's middleware times Django's requests; the bare paths are timed here (to their headers).
        "http": refuse_keys_in_url(metrics.asgi_request_metrics(http_application, {path: path for path in BARE_HTTP_PATHS})),
        "websocket": refuse_keys_in_url(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)


async def application(scope, receive, send):
    live.start(asyncio.get_running_loop())  # dashboards' live events leave from this loop (a no-op after the first call)
    await router(scope, receive, send)


# Everything loaded so far (Django, the apps, the URL and model registries) lives as long as the process:
# out of the collector's sight, the full collections that pause every request become much shorter
# (bench/lease.py's paced run: p99 17 → 12 ms).
gc.freeze()
