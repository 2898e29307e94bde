"""The dashboard's live websocket, /ws/dashboard/: pushes what happens to the organization's tokens and
leases to its open pages, without a reload.

The services publish events to the Channels group `portal.live.group_name(organization_id)` after commit
(see portal.live); this consumer joins the group of the organization the session works in and passes each
batch on as one frame: {"type": "live.events", "events": [...]}. Sessions only, from our own pages.

It also joins its caller's access groups (portal.live.access_groups): when the session logs out, or the
user is deactivated or loses the organization, the socket closes (4401/4403) and hears nothing more.
"""

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from rest_framework import exceptions

from accounts.roles import Perm
from portal import cache, live
from portal.consumers import CLOSE_TRY_AGAIN, CLOSE_UNAUTHENTICATED, _close_code, _same_origin
from portal.errors import DATABASE_DOWN
from portal.parsers import load_json
from tokens.callers import ensure_caller_may, known_session_caller


class LiveConsumer(AsyncJsonWebsocketConsumer):
    groups_joined: list[str] = []
    organization_id = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        try:
            # A session cookie rides along with any page's websocket: only our own pages may listen.
            if not _same_origin(dict(self.scope["headers"])):
                raise exceptions.PermissionDenied("Cross-origin websocket refused.")
            caller = await self._current_caller()
        except exceptions.APIException as exc:
            return await self.close(code=_close_code(exc))
        except DATABASE_DOWN:
            return await self.close(code=CLOSE_TRY_AGAIN)
        self.organization_id = caller.organization.pk
        self.groups_joined = [
            live.group_name(self.organization_id),
            *live.access_groups(
                user_id=caller.user.pk, organization_id=self.organization_id,
                session_key=self.scope["session"].session_key,
            ),
        ]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "live.hello", "organization_id": self.organization_id})

    async def _current_caller(self):
        caller = await known_session_caller(self.scope["session"].session_key, organization_id=self.organization_id)
        ensure_caller_may(caller, Perm.VIEW_DASHBOARD, "Your role does not allow the dashboard.")
        return caller

    async def access_changed(self, message):
        """The session's credentials changed somewhere: check them afresh, close if they no longer hold."""
        cache.forget_now()
        try:
            if message.get("ended"):
                raise exceptions.NotAuthenticated("Your session has ended; log in again.")
            await self._current_caller()
        except (exceptions.APIException, *DATABASE_DOWN) as exc:  # what cannot be checked now fails closed
            await self._leave_groups()  # not one more event, even before the close is through
            await self.close(code=_close_code(exc) if isinstance(exc, exceptions.APIException) else CLOSE_TRY_AGAIN)

    async def disconnect(self, code):
        await self._leave_groups()

    async def _leave_groups(self):
        groups, self.groups_joined = self.groups_joined, []
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        """Pages only listen; a ping keeps proxies from closing an idle socket. Anything else is ignored."""
        try:
            content = load_json(text_data or bytes_data or b"")
        except exceptions.ValidationError:
            return
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def live_events(self, message):
        await self.send_json({"type": "live.events", "events": message["events"]})
