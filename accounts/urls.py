from django.urls import path

import portal.converters  # noqa: F401  registers <id:…>
from accounts import api

# No trailing slashes: the paths are the ones existing clients already call.
urlpatterns = [
    path("me", api.MeApi.as_view(), name="me"),
    path("admin/roles", api.RoleMatrixApi.as_view(), name="role-matrix"),
    path("admin/organizations", api.OrganizationListCreateApi.as_view(), name="organization-list"),
    path("admin/users", api.UserListCreateApi.as_view(), name="user-list"),
    path("admin/users/<id:user_id>", api.UserDetailApi.as_view(), name="user-detail"),
    path("admin/users/<id:user_id>/api-keys", api.UserApiKeyListCreateApi.as_view(), name="user-api-keys"),
    path("admin/api-keys", api.ApiKeyListApi.as_view(), name="api-key-list"),
    path("admin/api-keys/<id:key_id>", api.ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("admin/audit", api.AuditEventListApi.as_view(), name="audit-list"),
]
