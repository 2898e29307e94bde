"""Scrub secrets out of free text (client error messages, log lines) before it is stored or shown."""

import re

_SECRET_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9_\-]{6,}"),  # Hugging Face tokens
    re.compile(r"\bpk_[A-Za-z0-9_\-]{16,}"),  # portal API keys
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),  # anything sent as a bearer credential
]


def redact_secrets(text: str, *known_secrets: str) -> str:
    """Remove the given secrets verbatim, then anything shaped like a token or a bearer credential."""
    for secret in known_secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else m.group(0)[:3]) + "***", text)
    return text
