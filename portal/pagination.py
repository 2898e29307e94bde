from functools import cache

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`; responses carry count, next, previous and results."""

    default_limit = 50
    max_limit = 500


@cache
def paginated(output_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The schema of a paginated list of `output_class`, for extend_schema(responses=...)."""
    return type(
        f"Paginated{output_class.__name__}",
        (serializers.Serializer,),
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": output_class(many=True),
        },
    )
