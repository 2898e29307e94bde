"""Path converters shared by the apps' urls."""

from django.urls import register_converter


class IdConverter:
    """A row id: digits that fit in 64 bits, so an absurd id is a 404 rather than an overflow."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(value)


class ProxiedPathConverter:
    """Everything after /proxy/hf/, line breaks included (Django's `path` stops at them): the proxy refuses
    a control character itself, as a 400 that says why, rather than as a route that is not found."""

    regex = "(?s:.+)"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value) -> str:
        return value


register_converter(IdConverter, "id")
register_converter(ProxiedPathConverter, "proxied_path")
