"""The audit trail: services of every app call audit_record for each change they make."""

from accounts.models import AuditEvent, Organization, User


def audit_record(
    *,
    organization: Organization | None,
    actor: User | None,
    action: str,
    target=None,
    ip: str | None = None,
    data: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        organization=organization,
        actor=actor,
        actor_username=actor.username if actor else "",
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        data=data or {},
        ip=ip,
    )
