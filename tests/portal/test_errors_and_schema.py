"""One error shape for 404/405/500 under the API paths, and the OpenAPI schema with its locally served docs."""

import json
import re

import pytest
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from accounts import selectors
from accounts.roles import Role

pytestmark = pytest.mark.django_db


def assert_error_shape(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert isinstance(body["error"], str) and body["error"]
    assert body["error_type"] == error_type
    return body


@pytest.mark.parametrize(
    "path", ["/admin/does-not-exist", "/admin/users/abc", "/admin/users/1/nothing", "/admin/", "/admin/users/"]
)
def test_unknown_path_under_admin_is_a_json_404(admin_client, path):
    assert_error_shape(admin_client.get(path), 404, "not_found")


def test_unknown_path_under_admin_is_a_json_404_without_credentials_too():
    assert_error_shape(APIClient().get("/admin/nothing-here"), 404, "not_found")


def test_wrong_method_is_a_json_405(admin_client):
    assert_error_shape(admin_client.put("/admin/users", {}, format="json"), 405, "method_not_allowed")


def test_unexpected_exception_under_an_api_path_is_a_json_500(admin_client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(selectors, "membership_list", explode)
    admin_client.raise_request_exception = False

    response = admin_client.get("/admin/users")

    body = assert_error_shape(response, 500, "server_error")
    assert set(body) == {"error", "error_type"}
    assert b"secret internal detail" not in response.content
    assert b"Traceback" not in response.content


def test_schema_is_valid_openapi_listing_the_admin_api():
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)

    validate_schema(schema)  # raises on anything that is not OpenAPI 3
    assert schema["openapi"].startswith("3.")
    for path in ("/admin/users", "/me", "/admin/users/{user_id}", "/admin/api-keys/{key_id}", "/admin/audit"):
        assert path in schema["paths"], path
    assert "201" in schema["paths"]["/admin/users"]["post"]["responses"]


def test_schema_default_format_is_served():
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    assert b"openapi:" in response.content and b"/admin/users" in response.content


def test_schema_documents_bearer_authentication():
    schema = json.loads(APIClient().get("/api/schema/", {"format": "json"}).content)
    schemes = schema["components"]["securitySchemes"].values()
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes)


def test_docs_page_loads_its_assets_from_local_static():
    client = APIClient()
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()

    scripts = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    stylesheets = re.findall(r'<link[^>]*\shref="([^"]+)"', html)
    assert scripts, "the docs page loads no script"
    for url in scripts:  # vendored files, and the page's own settings script (no inline code, for the CSP)
        assert url.startswith(("/static/", "/api/docs/?script")), url
    for url in scripts + stylesheets:
        assert not url.startswith(("http:", "https:", "//")), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert b"".join(asset.streaming_content if asset.streaming else [asset.content]), url


def test_docs_page_points_at_the_schema():
    client = APIClient()
    html = client.get("/api/docs/").content.decode()
    # The settings live in the page's own script (served split from the page, so no inline code).
    script_url = re.search(r'<script src="(/api/docs/\?script=[^"]*)"', html).group(1)
    assert "/api/schema/" in client.get(script_url).content.decode()


def test_member_of_any_role_can_still_reach_the_docs(organization, make_member, client_for):
    _, raw_key = make_member(organization, Role.VIEWER)
    assert client_for(raw_key).get("/api/docs/").status_code == 200
