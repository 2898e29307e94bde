from rest_framework import serializers


class InputSerializer(serializers.Serializer):
    @classmethod
    def validated(cls, data) -> dict:
        """The validated data, or ValidationError (400 with field details)."""
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


class SharedInputSerializer(InputSerializer):
    """For the hot paths (the client contract's lease and report): one instance per class does all the
    checking. A new instance deep-copies every declared field, which cost more CPU than the lease it
    guards. Checking keeps no state on the instance (no `validate` hook reading `initial_data`), so the
    event loop and the request threads may share it."""

    @classmethod
    def validated(cls, data) -> dict:
        checker = cls.__dict__.get("_checker")
        if checker is None:
            checker = cls._checker = cls()
        return dict(checker.run_validation(data))


class StrictSerializer(InputSerializer):
    """Refuses fields it does not know, so a typo is a 400 rather than silently ignored."""

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs
