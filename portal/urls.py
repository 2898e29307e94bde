from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

import portal.converters  # noqa: F401  registers <proxied_path:…>
from portal import health, metrics, sse

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("", include("accounts.urls")),
    path("", include("tokens.urls")),
    path("v1/models", sse.models, name="models"),
    path("proxy/hf/<proxied_path:path>", sse.proxy, name="proxy"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    # /admin/ is the portal's REST API; Django's own admin site lives here.
    path("django-admin/", admin.site.urls),
    # The dashboard last, so no page of it can shadow an API path.
    path("", include("dashboard.urls")),
]

handler400 = "portal.errors.handler400"
handler403 = "portal.errors.handler403"
handler404 = "portal.errors.handler404"
handler500 = "portal.errors.handler500"
