from django.urls import path, re_path

import portal.converters  # noqa: F401  registers <id:…>
from tokens import api

urlpatterns = [
    # hf_token_utils calls these exact paths; older copies of it omit the /hf suffix (same views, one schema entry).
    path("keys/provision/hf", api.ProvisionApi.as_view(), name="provision"),
    path("keys/provision", api.ProvisionApi.as_view(schema=None), name="provision-legacy"),
    path("keys/report/hf", api.ReportApi.as_view(), name="report"),
    path("keys/report", api.ReportApi.as_view(schema=None), name="report-legacy"),
    path("admin/pools", api.PoolListCreateApi.as_view(), name="pool-list"),
    path("admin/pools/<id:pool_id>", api.PoolDetailApi.as_view(), name="pool-detail"),
    path("admin/tokens", api.TokenListCreateApi.as_view(), name="token-list"),
    path("admin/tokens/import", api.TokenImportApi.as_view(), name="token-import"),
    path("admin/tokens/<id:token_id>", api.TokenDetailApi.as_view(), name="token-detail"),
    re_path(
        r"^admin/tokens/(?P<token_id>[0-9]{1,18})/(?P<action>validate|enable|disable|release)$",
        api.TokenActionApi.as_view(),
        name="token-action",
    ),
    path("admin/usage", api.UsageApi.as_view(), name="usage"),
]
