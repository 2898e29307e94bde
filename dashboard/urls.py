from django.contrib.auth import views as auth_views
from django.urls import path, re_path

import portal.converters  # noqa: F401  registers <id:…>
from dashboard import views

app_name = "dashboard"

# Every path ends with a slash and none starts like an API path (/admin/, /keys/, /me, /v1/, /api/, /proxy/).
urlpatterns = [
    path("", views.front, name="overview"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("password/", views.PasswordChangeView.as_view(), name="password-change"),
    path("organization/", views.organization_switch, name="organization-switch"),
    path("organizations/", views.organizations, name="organizations"),
    path("organizations/<id:organization_id>/enter/", views.organization_enter, name="organization-enter"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/add/", views.token_add, name="token-add"),
    path("tokens/import/", views.token_import, name="token-import"),
    path("tokens/<id:token_id>/", views.token_detail, name="token-detail"),
    re_path(
        r"^tokens/(?P<token_id>[0-9]{1,18})/(?P<action>validate|enable|disable|release|delete)/$",
        views.token_action,
        name="token-action",
    ),
    path("pools/", views.pools, name="pools"),
    path("pools/<id:pool_id>/", views.pool_edit, name="pool-edit"),
    path("pools/<id:pool_id>/delete/", views.pool_delete, name="pool-delete"),
    path("users/", views.users, name="users"),
    re_path(
        r"^users/(?P<user_id>[0-9]{1,18})/(?P<change>role|deactivate|reactivate)/$", views.user_change, name="user-change"
    ),
    path("api-keys/", views.api_keys, name="api-keys"),
    path("api-keys/<id:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("usage/", views.usage, name="usage"),
    path("audit/", views.audit, name="audit"),
    path("chat/", views.chat, name="chat"),
    path("chat/models/", views.chat_models, name="chat-models"),
]
