"""The base of every tenant-scoped API view: who is asking, for which organization, from where."""

from functools import cached_property

from rest_framework import exceptions
from rest_framework.views import APIView

from accounts.models import ApiKey, Membership, Organization, User
from accounts.permissions import membership_has, request_membership
from portal.pagination import Pagination


class TenantAPIView(APIView):
    @cached_property
    def membership(self) -> Membership:
        membership = request_membership(self.request)
        if membership is None:
            raise exceptions.PermissionDenied("You are not a member of any active organization.")
        return membership

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    @property
    def api_key(self) -> ApiKey | None:
        """The key the request came with; None for a dashboard session."""
        return self.request.auth if isinstance(self.request.auth, ApiKey) else None

    @property
    def actor(self) -> User:
        return self.request.user

    @property
    def client_ip(self) -> str | None:
        return self.request.META.get("REMOTE_ADDR") or None

    def may(self, perm: str) -> bool:
        return membership_has(self.membership, perm)

    @property
    def audit(self) -> dict:
        """Keyword arguments every writing service takes to record who did it."""
        return {"actor": self.actor, "ip": self.client_ip}

    def paginated_response(self, queryset, output_class):
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, self.request, view=self)
        return paginator.get_paginated_response(output_class(page, many=True).data)
