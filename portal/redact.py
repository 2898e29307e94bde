"""Scrub secrets out of free text (client error messages, log lines) before it is stored or shown."""

import re
from urllib.parse import unquote

# A secret starts wherever no letter or digit runs into it: `\b` would miss `token_hf_…` (`_` is a word
# character), and letters or digits before it make another word (`shf_…`), not a token.
_SECRET_PATTERNS = [
    re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9_\-]{6,}"),  # Hugging Face tokens
    re.compile(r"(?<![A-Za-z0-9])pk_[A-Za-z0-9_\-]{16,}"),  # portal API keys
    re.compile(r"(?i)(bearer(?:\s|\+)+)[^\s'\"]+"),  # anything sent as a bearer credential (`+`: form-encoded)
]
# URLs quoted inside an error may be encoded twice (`Bearer%2520hf_…`); a few rounds find those, and the
# bound keeps a text of `%252525…` from costing a round per character.
_DECODING_ROUNDS = 3


def redact_secrets(text: str, *known_secrets: str) -> str:
    """Remove the given secrets verbatim, then anything shaped like a token or a bearer credential, in the
    text as written and percent-decoded. The text stays as written unless decoding revealed a secret;
    then the decoded text is returned, scrubbed."""
    scrubbed = _scrubbed(text, known_secrets)
    decoded = scrubbed
    for _ in range(_DECODING_ROUNDS):
        decoded, before = unquote(decoded), decoded
        if decoded == before:
            break
    if decoded == scrubbed:
        return scrubbed
    decoded_scrubbed = _scrubbed(decoded, known_secrets)
    return scrubbed if decoded_scrubbed == decoded else decoded_scrubbed


def _scrubbed(text: str, known_secrets) -> str:
    for secret in known_secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else m.group(0)[:3]) + "***", text)
    return text
