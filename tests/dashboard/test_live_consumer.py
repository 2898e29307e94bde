"""The dashboard's live websocket, /ws/dashboard/, in-process: who may listen, and that each organization's
events reach its own dashboards only."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from accounts.roles import Role
from portal import live
from portal.asgi import application

TIMEOUT = 5


def _cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


async def dashboard_socket(user=None, origin=b"http://localhost"):
    headers = []
    if user is not None:
        headers.append((b"cookie", await sync_to_async(_cookie)(user)))
    if origin is not None:
        headers.append((b"origin", origin))
    return WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", [Role.ADMIN, Role.VIEWER])
async def test_members_hear_their_organizations_events(organization, make_member, role):
    membership, _ = await sync_to_async(make_member)(organization, role)
    socket = await dashboard_socket(membership.user)
    connected, _ = await socket.connect()
    try:
        assert connected
        hello = await socket.receive_json_from(TIMEOUT)
        assert hello == {"type": "live.hello", "organization_id": organization.pk}

        events = [{"kind": "token.status", "token_id": 1, "status": "quarantined"}, {"kind": "lease", "token_id": 1}]
        await get_channel_layer().group_send(live.group_name(organization.pk), {"type": "live.events", "events": events})

        assert await socket.receive_json_from(TIMEOUT) == {"type": "live.events", "events": events}
    finally:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_another_organizations_events_never_arrive(organization, make_organization, make_member):
    other = await sync_to_async(make_organization)("other-co")
    membership, _ = await sync_to_async(make_member)(organization, Role.ADMIN)
    socket = await dashboard_socket(membership.user)
    await socket.connect()
    try:
        await socket.receive_json_from(TIMEOUT)
        await get_channel_layer().group_send(live.group_name(other.pk), {"type": "live.events", "events": [{"kind": "lease"}]})

        assert await socket.receive_nothing(0.3)
    finally:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_real_status_change_reaches_the_dashboard(organization, make_member, make_token):
    """The services' own events (portal.live, sent at once outside a running ASGI server's loop)."""
    from tokens import services as token_services

    membership, _ = await sync_to_async(make_member)(organization, Role.ADMIN)
    token = await sync_to_async(make_token)(organization, label="watched")
    socket = await dashboard_socket(membership.user)
    await socket.connect()
    try:
        await socket.receive_json_from(TIMEOUT)
        await sync_to_async(token_services.token_disable)(token=token, actor=membership.user)

        frame = await socket.receive_json_from(TIMEOUT)
        assert frame["type"] == "live.events"
        event = frame["events"][0]
        assert (event["kind"], event["token_id"], event["status"], event["label"]) == ("token.status", token.pk, "disabled", "watched")
    finally:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_pings_are_answered_and_junk_is_ignored(organization, make_member):
    membership, _ = await sync_to_async(make_member)(organization, Role.USER)
    socket = await dashboard_socket(membership.user)
    await socket.connect()
    try:
        await socket.receive_json_from(TIMEOUT)
        await socket.send_to(text_data="not json")
        await socket.send_json_to({"type": "ping"})

        assert await socket.receive_json_from(TIMEOUT) == {"type": "pong"}
    finally:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_strangers_are_refused():
    socket = await dashboard_socket(None)

    connected, code = await socket.connect()

    assert (connected, code) == (False, 4401)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", None], ids=["foreign", "null", "missing"])
async def test_a_session_socket_from_another_origin_is_refused(organization, make_member, origin):
    membership, _ = await sync_to_async(make_member)(organization, Role.ADMIN)
    socket = await dashboard_socket(membership.user, origin=origin)

    connected, code = await socket.connect()

    assert (connected, code) == (False, 4403)


@pytest.mark.django_db(transaction=True)
async def test_a_deactivated_member_is_refused(organization, make_member):
    from accounts.models import Membership

    membership, _ = await sync_to_async(make_member)(organization, Role.ADMIN)
    await sync_to_async(make_member)(organization, Role.ADMIN)  # so one admin remains
    await Membership.objects.filter(pk=membership.pk).aupdate(is_active=False)
    socket = await dashboard_socket(membership.user)

    connected, code = await socket.connect()

    assert (connected, code) == (False, 4403)


@pytest.mark.django_db(transaction=True)
async def test_a_hostile_frame_is_ignored_and_the_socket_keeps_answering(organization, make_member):
    membership, _ = await sync_to_async(make_member)(organization, Role.VIEWER)
    socket = await dashboard_socket(membership.user)
    await socket.connect()
    try:
        await socket.receive_json_from(TIMEOUT)  # live.hello
        await socket.send_to(text_data="[" * 5000)  # Python's own parser gives up with a RecursionError
        await socket.send_to(text_data='{"type": "ping"}')
        assert await socket.receive_json_from(TIMEOUT) == {"type": "pong"}
    finally:
        await socket.disconnect()
