"""Admin REST API for organizations, users, API keys, roles and the audit log. Thin: HTTP in, service call, HTTP out."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response

from accounts import selectors, services
from accounts.keys import SHOWN_ONCE_HEADERS
from accounts.permissions import membership_permissions, require
from accounts.roles import PERMISSION_DESCRIPTIONS, ROLE_PERMISSIONS, SUPERUSER_PERMISSION, Perm, Role
from accounts.serializers import (
    ApiKeyCreatedOutput,
    ApiKeyCreateInput,
    ApiKeyOutput,
    AuditEventOutput,
    AuditFilterInput,
    MeOutput,
    OrganizationCreateInput,
    OrganizationOutput,
    RoleMatrixOutput,
    UserCreatedOutput,
    UserCreateInput,
    UserOutput,
    UserUpdateInput,
)
from portal.api import TenantAPIView
from portal.pagination import paginated
from tokens.selectors import pool_by_name


class MeApi(TenantAPIView):
    @extend_schema(responses=MeOutput, summary="Who am I: user, organization, role and permissions")
    def get(self, request):
        membership, user = self.membership, request.user
        organizations = [
            {"slug": m.organization.slug, "name": m.organization.name, "role": m.role}
            for m in selectors.active_memberships_of(user)
        ]
        payload = {
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "full_name": user.full_name,
            "is_superuser": user.is_superuser,
            "organization": OrganizationOutput(membership.organization).data,
            "role": membership.role,
            "permissions": membership_permissions(membership),
            "organizations": organizations,
        }
        return Response(MeOutput(payload).data)


class RoleMatrixApi(TenantAPIView):
    @extend_schema(responses=RoleMatrixOutput, summary="The role × permission matrix")
    def get(self, request):
        return Response(
            {
                "roles": [role.value for role in Role],
                "permissions": PERMISSION_DESCRIPTIONS,
                "matrix": {role.value: sorted(ROLE_PERMISSIONS[role]) for role in Role},
            }
        )


class OrganizationListCreateApi(TenantAPIView):
    permission_classes = [require(SUPERUSER_PERMISSION)]

    @extend_schema(responses=paginated(OrganizationOutput), summary="List organizations (superusers)", operation_id="organizations_list")
    def get(self, request):
        return self.paginated_response(selectors.organization_list(), OrganizationOutput)

    @extend_schema(request=OrganizationCreateInput, responses={201: OrganizationOutput}, summary="Create an organization")
    def post(self, request):
        data = OrganizationCreateInput.validated(request.data)
        organization = services.organization_create(name=data["name"], slug=data["slug"], **self.audit)
        return Response(OrganizationOutput(organization).data, status=status.HTTP_201_CREATED)


class UserListCreateApi(TenantAPIView):
    permission_classes = [require(Perm.MANAGE_USERS)]

    @extend_schema(responses=paginated(UserOutput), summary="List the organization's users", operation_id="users_list")
    def get(self, request):
        return self.paginated_response(selectors.membership_list(self.organization), UserOutput)

    @extend_schema(
        request=UserCreateInput,
        responses={201: UserCreatedOutput},
        summary="Create a user with a first API key (shown once)",
    )
    def post(self, request):
        data = UserCreateInput.validated(request.data)
        organization = self._target_organization(data.pop("organization", None))
        membership, raw_key = services.user_create(organization=organization, **data, **self.audit)
        output = UserOutput(membership).data | {"api_key": raw_key}
        return Response(output, status=status.HTTP_201_CREATED, headers=SHOWN_ONCE_HEADERS)

    def _target_organization(self, slug):
        if not slug or slug == self.organization.slug:
            return self.organization
        if not self.may(SUPERUSER_PERMISSION):
            raise exceptions.PermissionDenied("Only superusers create users in another organization.")
        organization = selectors.organization_by_slug(slug)
        if organization is None:
            raise exceptions.ValidationError({"organization": [f"No organization with slug '{slug}'."]})
        return organization


class UserDetailApi(TenantAPIView):
    permission_classes = [require(Perm.MANAGE_USERS)]

    @extend_schema(responses=UserOutput, summary="One user of the organization")
    def get(self, request, user_id: int):
        return Response(UserOutput(selectors.membership_get(self.organization, user_id)).data)

    @extend_schema(request=UserUpdateInput, responses=UserOutput, summary="Change email, name, role or active flag")
    def patch(self, request, user_id: int):
        membership = selectors.membership_to_manage(self.organization, user_id, actor=self.actor)
        data = UserUpdateInput.validated(request.data)
        membership = services.user_update(membership=membership, **data, **self.audit)
        return Response(UserOutput(membership).data)

    @extend_schema(responses={200: UserOutput}, summary="Deactivate a user (history stays)")
    def delete(self, request, user_id: int):
        membership = selectors.membership_to_manage(self.organization, user_id, actor=self.actor)
        membership = services.user_deactivate(membership=membership, **self.audit)
        return Response(UserOutput(membership).data)


class UserApiKeyListCreateApi(TenantAPIView):
    """Admins manage anyone's keys; everyone else who may hold keys manages their own."""

    permission_classes = [require(Perm.MANAGE_OWN_KEYS)]

    def _owner_membership(self, user_id: int):
        if user_id != self.request.user.id and not self.may(Perm.MANAGE_ALL_KEYS):
            # Not found rather than forbidden: do not confirm that the user exists.
            raise exceptions.NotFound()
        return selectors.membership_to_manage(self.organization, user_id, actor=self.actor)

    def _pool_named(self, name: str):
        pool = pool_by_name(self.organization, name)
        if pool is None:
            raise exceptions.ValidationError({"pool": [f"No pool named '{name}'."]})
        return pool

    @extend_schema(responses=paginated(ApiKeyOutput), summary="A user's API keys (never the keys themselves)", operation_id="user_api_keys_list")
    def get(self, request, user_id: int):
        membership = self._owner_membership(user_id)
        return self.paginated_response(selectors.api_key_list(self.organization, actor=self.actor, user=membership.user), ApiKeyOutput)

    @extend_schema(request=ApiKeyCreateInput, responses={201: ApiKeyCreatedOutput}, summary="Create an API key")
    def post(self, request, user_id: int):
        membership = self._owner_membership(user_id)
        data = ApiKeyCreateInput.validated(request.data)
        data["pool"] = self._pool_named(data["pool"]) if data["pool"] else None
        api_key, raw_key = services.api_key_create(membership=membership, **data, **self.audit)
        return Response(
            ApiKeyOutput(api_key).data | {"api_key": raw_key}, status=status.HTTP_201_CREATED, headers=SHOWN_ONCE_HEADERS
        )


class ApiKeyListApi(TenantAPIView):
    """Admins see and revoke all of the organization's keys; everyone else only their own."""

    permission_classes = [require(Perm.MANAGE_OWN_KEYS)]

    @property
    def key_owner(self):
        """Whose keys this caller may see: None means everyone's."""
        return None if self.may(Perm.MANAGE_ALL_KEYS) else self.request.user

    @extend_schema(responses=paginated(ApiKeyOutput), summary="API keys: the organization's for admins, else one's own", operation_id="api_keys_list")
    def get(self, request):
        return self.paginated_response(selectors.api_key_list(self.organization, actor=self.actor, user=self.key_owner), ApiKeyOutput)


class ApiKeyDetailApi(ApiKeyListApi):
    @extend_schema(responses=ApiKeyOutput, summary="One API key (never the key itself)")
    def get(self, request, key_id: int):
        return Response(ApiKeyOutput(selectors.api_key_get(self.organization, key_id, actor=self.actor, user=self.key_owner)).data)

    @extend_schema(responses={200: ApiKeyOutput}, summary="Revoke an API key")
    def delete(self, request, key_id: int):
        api_key = selectors.api_key_get(self.organization, key_id, actor=self.actor, user=self.key_owner)
        api_key = services.api_key_revoke(api_key=api_key, **self.audit)
        return Response(ApiKeyOutput(api_key).data)


class AuditEventListApi(TenantAPIView):
    permission_classes = [require(Perm.VIEW_AUDIT)]

    @extend_schema(
        parameters=[
            OpenApiParameter("action", str, description="Exact action (user.created) or its family (user)"),
            OpenApiParameter("actor", str, description="Actor username or user id"),
        ],
        responses=paginated(AuditEventOutput),
        summary="The organization's audit log, newest first", operation_id="audit_list",
    )
    def get(self, request):
        filters = AuditFilterInput.validated(request.query_params)
        return self.paginated_response(selectors.audit_event_list(self.organization, **filters), AuditEventOutput)
