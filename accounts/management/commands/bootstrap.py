import os

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import ValidationError

from accounts.services import portal_bootstrap


class Command(BaseCommand):
    help = (
        "Create the default organization and its superuser admin when no admin exists, and print the "
        "credentials once. PORTAL_ADMIN_PASSWORD and PORTAL_ADMIN_API_KEY replace the random ones."
    )

    def handle(self, *args, **options):
        password_from_env = os.environ.get("PORTAL_ADMIN_PASSWORD") or None
        api_key_from_env = os.environ.get("PORTAL_ADMIN_API_KEY") or None
        try:
            result = portal_bootstrap(admin_password=password_from_env, admin_api_key=api_key_from_env)
        except ValidationError as exc:
            raise CommandError(f"bootstrap: {exc.detail}") from None
        if not result.created:
            self.stdout.write(f"Bootstrap: admin '{result.username}' already exists; nothing to create.")
            if result.api_key:
                self.stdout.write("Bootstrap: registered the API key from PORTAL_ADMIN_API_KEY.")
            return
        self.stdout.write(
            self.style.SUCCESS("Bootstrap: created the portal's first admin. These are shown once:")
            + f"\n  organization: {result.organization.slug}"
            + f"\n  username:     {result.username}"
            # A secret the operator provided is not echoed into logs.
            + f"\n  password:     {'(from PORTAL_ADMIN_PASSWORD)' if password_from_env else result.password}"
            + f"\n  API key:      {'(from PORTAL_ADMIN_API_KEY)' if api_key_from_env else result.api_key}\n"
        )
