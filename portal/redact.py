"""Scrub secrets out of free text (client error messages, log lines) before it is stored or shown."""

import logging
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


class SecretsFilter(logging.Filter):
    """Scrub every log line, whoever logs it: settings.LOGGING puts it on every handler. Django logs the
    path of each 4xx and 5xx (`Not Found: /proxy/hf/hf_…`, decoded: `/x/Bearer hf_…`), libraries log URLs
    and exception texts; no logger has to remember to redact.

    The message is rendered and scrubbed; only when that changed something do msg and args become the
    scrubbed text (a clean record keeps its template for handlers that group by it). The exception keeps its
    exc_info; its formatted text is scrubbed into exc_text, which formatters print instead of formatting
    exc_info again. Never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken logging call: leave it for the handler to report, as logging does
            message = None
        if message is not None:
            scrubbed = redact_secrets(message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return True
