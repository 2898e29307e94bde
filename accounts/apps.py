from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_delete, post_save

        from accounts import schema  # noqa: F401  registers the OpenAPI auth scheme
        from accounts.models import ApiKey, Membership, Organization, User
        from portal.cache import forget_everything
        from tokens.models import TokenPool

        # Who may do what just changed: no worker should answer from what it remembered (portal.cache).
        for model in (ApiKey, Membership, Organization, User, TokenPool):
            post_save.connect(forget_everything, sender=model, dispatch_uid=f"forget-{model.__name__}")
            post_delete.connect(forget_everything, sender=model, dispatch_uid=f"forget-del-{model.__name__}")
