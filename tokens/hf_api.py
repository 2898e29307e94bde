"""The one question the portal asks Hugging Face about a token: whoami-v2."""

from dataclasses import dataclass

import httpx
from django.conf import settings

from portal.errors import PortalError


class UpstreamUnavailable(PortalError):
    status_code = 502
    default_detail = "Hugging Face could not be asked; the token was left as it was."
    error_type = "upstream_error"


@dataclass(frozen=True)
class WhoAmI:
    valid: bool
    username: str = ""
    token_role: str = ""


def whoami(secret: str, *, timeout: float = 10.0) -> WhoAmI:
    """200 → valid with the account name and token role; 401 → invalid; anything else raises."""
    try:
        response = httpx.get(
            f"{settings.HF_API_BASE}/api/whoami-v2",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=timeout,
        )
    except (httpx.HTTPError, UnicodeError) as exc:
        raise UpstreamUnavailable(f"Hugging Face could not be asked ({type(exc).__name__}).") from None
    if response.status_code == 401:
        return WhoAmI(valid=False)
    if response.status_code != 200:
        raise UpstreamUnavailable(f"Hugging Face answered HTTP {response.status_code} to whoami.")
    try:
        account = response.json()
        token_role = ((account.get("auth") or {}).get("accessToken") or {}).get("role") or ""
        return WhoAmI(valid=True, username=str(account.get("name", ""))[:100], token_role=str(token_role)[:32])
    except (ValueError, AttributeError):
        raise UpstreamUnavailable("Hugging Face answered whoami with something that is not an account.") from None
