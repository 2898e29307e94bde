"""HF token secrets at rest: Fernet under PORTAL_ENCRYPTION_KEY, or a key derived from SECRET_KEY.

PORTAL_ENCRYPTION_KEY may list several keys separated by commas: the first
encrypts, all decrypt (MultiFernet), so keys can be rotated without downtime.
A value that is not a Fernet key is stretched into one with SHA-256.
"""

import base64
import hashlib
import os
from functools import cache, lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


def _fernet_from(material: str) -> Fernet:
    try:
        return Fernet(material.encode())
    except ValueError:
        derived = hashlib.sha256(b"hf-token-portal/fernet:" + material.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(derived))


@cache
def _cipher() -> MultiFernet:
    configured = [part.strip() for part in os.environ.get("PORTAL_ENCRYPTION_KEY", "").split(",") if part.strip()]
    return MultiFernet([_fernet_from(material) for material in configured or [settings.SECRET_KEY]])


def encrypt_secret(secret: str) -> str:
    return _cipher().encrypt(secret.encode()).decode()


def decrypt_secret(ciphertext: str) -> str:
    try:
        return _decrypted(ciphertext)
    except InvalidToken:
        raise RuntimeError(
            "Cannot decrypt an HF token: PORTAL_ENCRYPTION_KEY (or SECRET_KEY) differs from the one it was stored with."
        ) from None


@lru_cache(maxsize=1024)
def _decrypted(ciphertext: str) -> str:
    """Remembered per ciphertext: every lease decrypts its token, and Fernet's MAC check and AES took 2%
    of a relayed chat's CPU. The cost: up to 1,024 recently leased secrets stay in the worker's memory
    (which also holds the keys that decrypt every one of them) until they fall out of the cache or the
    worker restarts, also after their token is deleted. A re-encrypted secret is a new ciphertext."""
    return _cipher().decrypt(ciphertext.encode()).decode()


def secret_fingerprint(organization_id: int, secret: str) -> str:
    """Finds duplicates without decrypting; keyed by organization so equal digests say nothing across tenants."""
    return hashlib.sha256(f"{organization_id}:{secret}".encode()).hexdigest()
