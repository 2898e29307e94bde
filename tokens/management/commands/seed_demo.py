from django.core.management.base import BaseCommand

from accounts.models import Organization
from accounts.services import DEFAULT_ORGANIZATION_SLUG
from portal.errors import Conflict
from tokens import selectors, services

DEMO_TOKENS = [
    ("demo-1", "hf_standin_demo_one_0001"),
    ("demo-2", "hf_standin_demo_two_0002"),
    ("demo-3", "hf_standin_demo_three_0003"),
    ("demo-out-of-credits", "hf_standin_demo_credits_0004"),
]


class Command(BaseCommand):
    help = "Put stand-in tokens in the default pool for `make demo` (never against real Hugging Face)."

    def handle(self, *args, **options):
        organization = Organization.objects.get(slug=DEFAULT_ORGANIZATION_SLUG)
        pool = selectors.pool_by_name(organization, "default")
        added = 0
        for label, secret in DEMO_TOKENS:
            try:
                services.token_add(organization=organization, pool=pool, secret=secret, label=label, actor=None)
                added += 1
            except Conflict:
                pass
        self.stdout.write(f"seed_demo: {added} stand-in tokens added to the default pool ({len(DEMO_TOKENS) - added} were there)")
