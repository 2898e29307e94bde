"""The cron and operator commands."""

import io
from datetime import timedelta

from django.core.management import call_command
from django.utils import timezone

from accounts.roles import Role
from tokens import selectors, services
from tokens.models import HFToken, Lease
from tokens.policy import Status


def run(command: str) -> str:
    out = io.StringIO()
    call_command(command, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_revalidate_tokens_brings_back_what_hugging_face_accepts_and_closes_forgotten_leases(
    organization, make_member, make_token, standin
):
    now = timezone.now()
    refused_once = make_token(organization, secret="hf_standin_fine_now_0001")
    still_refused = make_token(organization, secret="hf_standin_invalid_0002")
    quarantine_over = make_token(organization, secret="hf_standin_quarantine_over_0003")
    quarantine_running = make_token(organization, secret="hf_standin_quarantine_running_0004")
    HFToken.objects.filter(pk__in=[refused_once.pk, still_refused.pk]).update(status=Status.INVALID)
    HFToken.objects.filter(pk=quarantine_over.pk).update(status=Status.QUARANTINED, available_at=now - timedelta(minutes=1))
    HFToken.objects.filter(pk=quarantine_running.pk).update(status=Status.QUARANTINED, available_at=now + timedelta(hours=1))
    member, _ = make_member(organization, Role.USER)
    HFToken.objects.filter(pk=refused_once.pk).update(status=Status.ACTIVE)  # lease it once, long ago
    forgotten = services.lease_token(
        organization=organization, pool=selectors.pool_by_name(organization, "default"), user=member.user,
        now=now - timedelta(hours=2),
    )
    HFToken.objects.filter(pk=refused_once.pk).update(status=Status.INVALID)

    output = run("revalidate_tokens")

    status = dict(HFToken.objects.values_list("pk", "status"))
    assert status[refused_once.pk] == Status.ACTIVE
    assert status[still_refused.pk] == Status.INVALID
    assert status[quarantine_over.pk] == Status.ACTIVE
    assert status[quarantine_running.pk] == Status.QUARANTINED  # its time is not up: not asked
    assert Lease.objects.get(pk=forgotten.lease.pk).outcome == "expired"
    assert "3 checked, 2 back in rotation, 1 invalid, 0 not reachable; 1 overdue leases expired" in output
