"""The dashboard's live websocket, /ws/dashboard/: pushes what happens to the organization's tokens and
leases to its open pages, without a reload.

The services publish events to the Channels group `portal.live.group_name(organization_id)` after commit
(see portal.live); this consumer joins the group of the organization the session works in and passes each
batch on as one frame: {"type": "live.events", "events": [...]}. Sessions only, from our own pages.
"""

import json

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts import selectors as account_selectors
from accounts.permissions import SESSION_ORGANIZATION_KEY, membership_has
from accounts.roles import Perm
from portal import live
from portal.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, _same_origin
from portal.db import on_db_threads


class LiveConsumer(AsyncJsonWebsocketConsumer):
    group = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        # A session cookie rides along with any page's websocket: only our own pages may listen.
        if not _same_origin(dict(self.scope["headers"])):
            return await self.close(code=CLOSE_FORBIDDEN)
        session = self.scope.get("session") or {}
        membership = await on_db_threads(self._membership)(user, session.get(SESSION_ORGANIZATION_KEY))
        if membership is None:
            return await self.close(code=CLOSE_FORBIDDEN)
        self.organization_id = membership.organization_id
        self.group = live.group_name(membership.organization_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "live.hello", "organization_id": self.organization_id})

    @staticmethod
    def _membership(user, organization_id):
        membership = account_selectors.membership_for_user(user, organization_id)
        return membership if membership_has(membership, Perm.VIEW_DASHBOARD) else None

    async def disconnect(self, code):
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        """Pages only listen; a ping keeps proxies from closing an idle socket. Anything else is ignored."""
        try:
            content = json.loads(text_data or bytes_data or b"")
        except ValueError:
            return
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def live_events(self, message):
        await self.send_json({"type": "live.events", "events": message["events"]})
