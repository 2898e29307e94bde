"""Portal API key material: random, high-entropy, stored only as a SHA-256 digest.

A fast digest is right here (as in django-rest-knox): the keys carry 256 bits of
randomness, so there is nothing for a slow hash to protect against, and lookups
by digest stay one indexed query.
"""

import hashlib
import secrets

KEY_PREFIX = "pk_"
MIN_PROVIDED_KEY_LENGTH = 32


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def display_prefix(raw_key: str) -> str:
    return raw_key[:8]


# A response that shows a raw key (or a leased token) once: no browser, proxy or cache may keep it.
SHOWN_ONCE_HEADERS = {"Cache-Control": "no-store"}
