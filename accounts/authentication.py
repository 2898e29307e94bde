"""`Authorization: Bearer <portal key>` for DRF views, and the same check for websocket handshakes."""

import hmac

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts import selectors, services
from accounts.keys import digest_api_key
from accounts.models import ApiKey

BEARER_CHALLENGE = 'Bearer realm="portal"'  # WWW-Authenticate on a 401


def authenticate_api_key(raw_key: str) -> ApiKey:
    """The active key for this string, or AuthenticationFailed (401) / PermissionDenied (403)."""
    digest = digest_api_key(raw_key)
    api_key = selectors.api_key_by_digest(digest)
    # The lookup by digest is the check; the constant-time compare is the house rule, kept for the day
    # the lookup changes (a prefix index, a cache) and the compare becomes the only guard.
    if api_key is None or not hmac.compare_digest(api_key.digest, digest):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if api_key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    now = timezone.now()
    if api_key.is_expired(now):
        raise exceptions.AuthenticationFailed("This API key has expired.")
    membership = api_key.membership
    if not membership.user.is_active or not membership.is_active:
        raise exceptions.PermissionDenied("This user is deactivated.")
    if not membership.organization.is_active:
        raise exceptions.PermissionDenied("This organization is deactivated.")
    services.api_key_touch(api_key=api_key, now=now, interval_seconds=settings.PORTAL_KEY_TOUCH_INTERVAL)
    return api_key


def bearer_key_from_header(header: bytes) -> str | None:
    """The key in a Bearer header; None when the header is absent or another scheme."""
    parts = header.split()
    if not parts or parts[0].lower() != b"bearer":
        return None
    if len(parts) != 2:
        raise exceptions.AuthenticationFailed("Malformed Authorization header: expected 'Bearer <key>'.")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed("Invalid API key.") from None


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw_key = bearer_key_from_header(get_authorization_header(request))
        if raw_key is None:
            return None
        api_key = authenticate_api_key(raw_key)
        return api_key.membership.user, api_key

    def authenticate_header(self, request):
        return BEARER_CHALLENGE
