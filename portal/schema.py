"""The OpenAPI schema documents the errors every operation can answer, in the one error shape.

drf-spectacular documents what each view returns on success; the failures come from shared machinery
(authentication, permissions, validation, lookups, limits), so they are added here to every operation
rather than repeated on each view. Schemathesis checks the schema against what the API really answers
(tests/portal/test_schema_fuzz.py)."""

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error: a sentence for people and a kind for programs (TGI's shape).",
    "properties": {
        "error": {"type": "string"},
        "error_type": {"type": "string"},
        "fields": {
            "type": "object",
            "description": "Validation errors only: the problems, field by field.",
            "additionalProperties": True,
        },
    },
    "required": ["error", "error_type"],
}

COMMON_ERRORS = {
    "400": "The request is malformed or fails validation (`validation`).",
    "401": "No API key, or one that is unknown, revoked or expired (`authentication`).",
    "403": "The key's role may not do this (`permission_denied`).",
    "404": "No such object in this organization (`not_found`).",
    "405": "The path does not take this method (`method_not_allowed`).",
    "409": "The change conflicts with the current state (`conflict`).",
    "413": "The request body is too large (`payload_too_large`).",
    "415": "The body is not JSON (`unsupported_media_type`).",
    "429": "Too many requests for this key (`rate_limited`), with `Retry-After`.",
    "503": "Nothing can serve this now (`no_token_available`, or the database is unreachable), with `Retry-After` when known.",
}

# Adding or validating a token may ask Hugging Face's whoami-v2.
ASKS_HUGGING_FACE = {"502": "Hugging Face could not be reached to check the token."}


def add_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, path_item in result.get("paths", {}).items():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            errors = {**COMMON_ERRORS, **(ASKS_HUGGING_FACE if path.startswith("/admin/tokens") else {})}
            for status, description in errors.items():
                responses.setdefault(status, {"description": description, "content": reference})
    return result
