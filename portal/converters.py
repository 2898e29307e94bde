"""Path converters shared by the apps' urls."""

from django.urls import register_converter


class IdConverter:
    """A row id: digits that fit in 64 bits, so an absurd id is a 404 rather than an overflow."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(value)


register_converter(IdConverter, "id")
