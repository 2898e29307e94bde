"""HTTP for leasing, reporting, pools, tokens and usage. Thin: parse, call a service, render."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response

from accounts.authentication import ApiKeyAuthentication
from accounts.permissions import require
from accounts.roles import Perm
from portal.api import TenantAPIView
from portal.pagination import paginated
from tokens import hf_api, selectors, services
from tokens.models import TokenPool
from tokens.serializers import (
    PROVISION_HEADERS,
    PoolInput,
    PoolOutput,
    PoolUpdateInput,
    ProvisionInput,
    ProvisionOutput,
    ReportInput,
    ReportOutput,
    TokenCreateInput,
    TokenCreateQuery,
    TokenDetailOutput,
    TokenEventOutput,
    TokenFilterInput,
    TokenImportInput,
    TokenImportOutput,
    TokenOutput,
    TokenUpdateInput,
    UsageInput,
    UsageOutput,
    provision_answer,
    report_answer,
    report_arguments,
)

# --- The client contract: hf_token_utils' get_proxy_token and report_token_status -----------------


class ProvisionApi(TenantAPIView):
    # Keys only: a session cookie would let any page the user visits open leases (a GET needs no CSRF token).
    authentication_classes = [ApiKeyAuthentication]
    http_method_names = ["get", "options"]  # not HEAD: it would open a lease and throw its secret away
    permission_classes = [require(Perm.LEASE_TOKENS)]

    @extend_schema(
        parameters=[ProvisionInput], responses=ProvisionOutput, operation_id="provision_token",
        summary="Lease an HF token (hf_token_utils.get_proxy_token)",
    )
    def get(self, request):
        query = ProvisionInput.validated(request.query_params)
        pool = services.lease_pool(self.organization, api_key=self.api_key, pool_name=query["pool"])
        grant = services.lease_token(
            organization=self.organization, pool=pool, user=request.user, api_key=self.api_key,
            client_name=query["client_name"],
        )
        return Response(provision_answer(grant, pool), headers=PROVISION_HEADERS)


class ReportApi(TenantAPIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [require(Perm.LEASE_TOKENS)]

    @extend_schema(
        request=ReportInput, responses=ReportOutput, operation_id="report_token_status",
        summary="Report how a leased token did (hf_token_utils.report_token_status)",
    )
    def post(self, request):
        result = services.report_outcome(
            organization=self.organization, user=request.user, api_key=self.api_key,
            **report_arguments(ReportInput.validated(request.data)),
        )
        return Response(report_answer(result))


# --- Pools ---------------------------------------------------------------------------------------


class PoolListCreateApi(TenantAPIView):
    def get_permissions(self):
        return [require(Perm.VIEW_TOKENS if self.request.method == "GET" else Perm.MANAGE_POOLS)()]

    @extend_schema(responses=paginated(PoolOutput), operation_id="pools_list", summary="The organization's pools")
    def get(self, request):
        return self.paginated_response(selectors.pool_list(self.organization), PoolOutput)

    @extend_schema(request=PoolInput, responses={201: PoolOutput}, summary="Create a pool")
    def post(self, request):
        data = PoolInput.validated(request.data)
        pool = services.pool_create(organization=self.organization, **data, **self.audit)
        return Response(PoolOutput(pool).data, status=status.HTTP_201_CREATED)


class PoolDetailApi(PoolListCreateApi):
    http_method_names = ["get", "patch", "delete", "options"]

    @extend_schema(responses=PoolOutput, summary="One pool")
    def get(self, request, pool_id: int):
        return Response(PoolOutput(selectors.pool_get(self.organization, pool_id)).data)

    @extend_schema(request=PoolUpdateInput, responses=PoolOutput, summary="Change a pool's strategy or policy")
    def patch(self, request, pool_id: int):
        pool = selectors.pool_get(self.organization, pool_id)
        data = PoolUpdateInput.validated(request.data)
        return Response(PoolOutput(services.pool_update(pool=pool, **data, **self.audit)).data)

    @extend_schema(responses={204: None}, summary="Delete an empty pool")
    def delete(self, request, pool_id: int):
        services.pool_delete(pool=selectors.pool_get(self.organization, pool_id), **self.audit)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Tokens --------------------------------------------------------------------------------------


class TokenListCreateApi(TenantAPIView):
    def get_permissions(self):
        return [require(Perm.VIEW_TOKENS if self.request.method == "GET" else Perm.MANAGE_TOKENS)()]

    def pool_named(self, name: str):
        pool = selectors.pool_by_name(self.organization, name or TokenPool.DEFAULT_NAME)
        if pool is None:
            raise exceptions.ValidationError({"pool": [f"No pool named '{name}'."]})
        return pool

    @extend_schema(
        parameters=[TokenFilterInput], responses=paginated(TokenOutput), operation_id="tokens_list",
        summary="The organization's tokens (never their secrets)",
    )
    def get(self, request):
        filters = TokenFilterInput.validated(request.query_params)
        return self.paginated_response(selectors.token_list(self.organization, **filters), TokenOutput)

    @extend_schema(
        parameters=[TokenCreateQuery], request=TokenCreateInput, responses={201: TokenOutput},
        summary="Add a token (?validate=1 asks Hugging Face first)",
    )
    def post(self, request):
        query = TokenCreateQuery.validated(request.query_params)
        data = TokenCreateInput.validated(request.data)
        secret = data.pop("token")
        # Asked before anything is stored: when Hugging Face cannot be asked, the answer is 502 and no token.
        answer = hf_api.whoami(secret) if query["validate"] else None
        token = services.token_add(
            organization=self.organization, pool=self.pool_named(data.pop("pool")), secret=secret, **data, **self.audit
        )
        if answer is not None:
            token = services.token_validate(token=token, answer=answer, **self.audit)
        return Response(TokenOutput(token).data, status=status.HTTP_201_CREATED)


class TokenImportApi(TokenListCreateApi):
    http_method_names = ["post", "options"]

    @extend_schema(request=TokenImportInput, responses=TokenImportOutput, summary="Add many tokens at once")
    def post(self, request):
        data = TokenImportInput.validated(request.data)
        result = services.tokens_import(
            organization=self.organization, pool=self.pool_named(data["pool"]), secrets=data["secrets"],
            label_prefix=data["label_prefix"], **self.audit,
        )
        return Response(TokenImportOutput(result).data)


class TokenDetailApi(TokenListCreateApi):
    http_method_names = ["get", "patch", "delete", "options"]

    @extend_schema(responses=TokenDetailOutput, summary="One token with its recent status changes")
    def get(self, request, token_id: int):
        token = selectors.token_get(self.organization, token_id)
        events = selectors.token_events(self.organization, token)
        return Response(TokenOutput(token).data | {"events": TokenEventOutput(events, many=True).data})

    @extend_schema(request=TokenUpdateInput, responses=TokenOutput, summary="Change label, weight or lease cap")
    def patch(self, request, token_id: int):
        token = selectors.token_get(self.organization, token_id)
        data = TokenUpdateInput.validated(request.data)
        return Response(TokenOutput(services.token_update(token=token, **data, **self.audit)).data)

    @extend_schema(responses={204: None}, summary="Delete a token (its lease history stays)")
    def delete(self, request, token_id: int):
        services.token_delete(token=selectors.token_get(self.organization, token_id), **self.audit)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenActionApi(TenantAPIView):
    """POST /admin/tokens/{id}/validate|enable|disable|release."""

    permission_classes = [require(Perm.MANAGE_TOKENS)]
    actions = {
        "validate": services.token_validate,
        "enable": services.token_enable,
        "disable": services.token_disable,
        "release": services.token_release,
    }

    @extend_schema(
        request=None, responses=TokenOutput, operation_id="token_action",
        parameters=[OpenApiParameter("action", str, OpenApiParameter.PATH, enum=["validate", "enable", "disable", "release"])],
        summary="Validate, enable, disable or release a token",
    )
    def post(self, request, token_id: int, action: str):
        token = selectors.token_get(self.organization, token_id)
        return Response(TokenOutput(self.actions[action](token=token, **self.audit)).data)


# --- Usage ---------------------------------------------------------------------------------------


class UsageApi(TenantAPIView):
    """Everyone sees their own usage; managers and admins see the whole organization's."""

    permission_classes = [require(Perm.VIEW_DASHBOARD)]

    @extend_schema(parameters=[UsageInput], responses=UsageOutput, summary="Leases and outcomes by token, user, pool or day")
    def get(self, request):
        query = UsageInput.validated(request.query_params)
        user = None if self.may(Perm.VIEW_ALL_USAGE) else request.user
        return Response(UsageOutput(selectors.usage_report(self.organization, **query, user=user)).data)
