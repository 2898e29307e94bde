"""Tells drf-spectacular how portal API keys are sent, so /api/docs/ offers an Authorize button."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "portalApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A portal API key: `Authorization: Bearer <key>`."}
