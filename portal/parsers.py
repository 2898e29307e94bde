"""The one JSON reader behind every entrance: the DRF views (JsonParser, the default parser class), the bare
doors (chat, report) and the chat socket's frames. Strict (no NaN or Infinity, which no upstream would
take) and with a depth limit, so hostile nesting is a 400 `validation`, never a RecursionError."""

import json

from rest_framework import exceptions, parsers

# Deep enough for any real request (OpenAI tool schemas nest a dozen levels); well below the depth where
# Python's recursive parser, encoder or our own code would run out of stack (about 1000).
MAX_JSON_DEPTH = 128


def _refuse_constant(name: str):
    raise exceptions.ValidationError(f"The body is not valid JSON: {name} is not a JSON value.")


def load_json(text: str | bytes) -> object:
    """`text` as JSON, or ValidationError (400 `validation`) for anything else."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as exc:
        raise exceptions.ValidationError(f"The body is not valid JSON: {exc}.") from None
    except (TypeError, ValueError):  # not text at all, or a number with more digits than Python converts
        raise exceptions.ValidationError("The body is not valid JSON.") from None
    if _brackets(text) > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep()
    return value


def load_json_bytes(raw: bytes, charset: str | None) -> object:
    """A body in its declared charset (UTF-8 when none is declared) as JSON."""
    try:
        text = raw.decode(charset or "utf-8")
    except (LookupError, UnicodeDecodeError):  # LookupError also for codecs that are not text (bz2_codec)
        raise exceptions.ParseError("JSON parse error - the body is not in its declared charset.") from None
    return load_json(text)


class JsonParser(parsers.JSONParser):
    """DRF's JSON parser reading through load_json, so a DRF view refuses exactly what the bare doors do."""

    def parse(self, stream, media_type=None, parser_context=None):
        return load_json_bytes(stream.read(), (parser_context or {}).get("encoding"))


def _too_deep() -> exceptions.ValidationError:
    return exceptions.ValidationError(f"The body is nested deeper than {MAX_JSON_DEPTH} levels.")


def _brackets(text) -> int:
    """An upper bound of the nesting depth that costs next to nothing: most bodies need no walk at all."""
    opening = (b"[", b"{") if isinstance(text, (bytes, bytearray)) else ("[", "{")
    return sum(text.count(bracket) for bracket in opening)


def _deeper_than(value, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels, walked level by level (not recursively:
    the point is not to need a deep stack)."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        below = []
        for container in level:
            for child in container.values() if isinstance(container, dict) else container:
                if isinstance(child, (dict, list)):
                    below.append(child)
        if not below:
            return False
        level = below
    return True
