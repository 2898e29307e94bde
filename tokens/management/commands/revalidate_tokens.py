from django.core.management.base import BaseCommand
from django.utils import timezone

from tokens import services
from tokens.hf_api import UpstreamUnavailable
from tokens.models import HFToken
from tokens.policy import Status


class Command(BaseCommand):
    help = (
        "Ask Hugging Face again about invalid tokens and quarantined ones whose time is up, and close leases "
        "nobody reported. Meant for cron, e.g. every 10 minutes."
    )

    def handle(self, *args, **options):
        now = timezone.now()
        expired = services.leases_expire_overdue(now=now, force=True)
        candidates = HFToken.objects.select_related("organization").filter(status=Status.INVALID) | HFToken.objects.filter(
            status=Status.QUARANTINED, available_at__lte=now
        )
        counts = {"checked": 0, "back": 0, "invalid": 0, "unreachable": 0}
        for token in candidates.order_by("id"):
            counts["checked"] += 1
            try:
                token = services.token_validate(token=token, actor=None)
            except UpstreamUnavailable as exc:
                counts["unreachable"] += 1
                self.stderr.write(f"token {token.pk} ({token.label}): {exc.detail}")
                continue
            counts["back" if token.status == Status.ACTIVE else "invalid"] += 1
        self.stdout.write(
            f"revalidate_tokens: {counts['checked']} checked, {counts['back']} back in rotation, "
            f"{counts['invalid']} invalid, {counts['unreachable']} not reachable; {expired} overdue leases expired"
        )
