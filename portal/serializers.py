from rest_framework import serializers


class InputSerializer(serializers.Serializer):
    @classmethod
    def validated(cls, data) -> dict:
        """The validated data, or ValidationError (400 with field details)."""
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


class StrictSerializer(InputSerializer):
    """Refuses fields it does not know, so a typo is a 400 rather than silently ignored."""

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs
