from django.apps import AppConfig
from django.db import transaction


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
        from django.core import checks
        from django.db.models.signals import post_delete, post_save

        from accounts import schema  # noqa: F401  registers the OpenAPI auth scheme
        from accounts.login_throttle import check_backend_first, clear_failures_on_login, count_failed_login
        from accounts.models import ApiKey, Membership, Organization, User
        from portal.cache import forget_everything
        from tokens.models import TokenPool

        # Who may do what just changed: no worker should answer from what it remembered (portal.cache).
        for model in (ApiKey, Membership, Organization, User, TokenPool):
            post_save.connect(forget_everything, sender=model, dispatch_uid=f"forget-{model.__name__}")
            post_delete.connect(forget_everything, sender=model, dispatch_uid=f"forget-del-{model.__name__}")
        # And open sockets of whoever it concerns check their caller again (portal.live.access_changed).
        for model in (ApiKey, Membership, Organization, User):
            post_save.connect(announce_access_change, sender=model, dispatch_uid=f"access-{model.__name__}")
            post_delete.connect(announce_access_change, sender=model, dispatch_uid=f"access-del-{model.__name__}")
        user_logged_out.connect(announce_logout, dispatch_uid="access-logout")
        user_logged_out.connect(forget_everything, dispatch_uid="forget-logout")

        # Every login, whatever its form or view, is counted by the throttle (accounts.login_throttle).
        user_login_failed.connect(count_failed_login, dispatch_uid="login-throttle-failure")
        user_logged_in.connect(clear_failures_on_login, dispatch_uid="login-throttle-success")
        checks.register(check_backend_first)


def announce_access_change(sender, instance, **kwargs) -> None:
    """Once the change commits (a socket checking before then would read the old row)."""
    from accounts.models import ApiKey, Organization
    from portal import live

    if isinstance(instance, ApiKey):
        concerned = {"api_key_id": instance.pk}
    elif isinstance(instance, Organization):
        concerned = {"organization_id": instance.pk}
    else:  # a User, or a Membership (its role, its active flag)
        concerned = {"user_id": getattr(instance, "user_id", instance.pk)}
    transaction.on_commit(lambda: live.access_changed(**concerned))


def announce_logout(sender, request, user, **kwargs) -> None:
    from portal import live

    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        live.access_changed(session_key=session_key, ended=True)
