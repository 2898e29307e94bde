from accounts import selectors
from dashboard.access import viewer_for


def dashboard(request) -> dict:
    """The navigation's needs on every page: the organization in use, the others to switch to, and `can`."""
    viewer = viewer_for(request)
    if viewer is None:
        return {"viewer": None, "can": {}, "switchable": []}
    switchable = [
        m for m in selectors.active_memberships_of(request.user).order_by("organization__name")
        if m.organization_id != viewer.organization.pk
    ]
    return {"viewer": viewer, "can": viewer.can, "switchable": switchable}
