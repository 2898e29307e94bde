"""Assertions shared by the accounts tests."""


def assert_error(response, status: int, error_type: str) -> dict:
    """The response is the portal's one error shape with this status and error_type; returns the body."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("error_type") == error_type, body
    return body

