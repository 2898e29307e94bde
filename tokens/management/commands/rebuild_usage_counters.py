from django.core.management.base import BaseCommand

from tokens.services import usage_counters_rebuild


class Command(BaseCommand):
    help = "Recount the hourly usage counters from the lease table (after an import or to repair them)."

    def handle(self, *args, **options):
        self.stdout.write(f"rebuild_usage_counters: {usage_counters_rebuild()} counters from the lease table")
