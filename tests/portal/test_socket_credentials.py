"""An open websocket is only as good as its caller's credentials now, not at connect.

/ws/chat/ checks its caller again on every chat.request, and hears at once (portal.live.access_changed) when
a key is revoked, a user deactivated or demoted, a session logged out: running streams are cancelled and
recorded so, the client hears why, and the socket closes with 4401 (credentials gone) or 4403 (no longer
allowed). /ws/dashboard/ stops sending the organization's events the same way. In process, on real ASGI
sockets (channels' communicator against portal.asgi.application); tests/cluster covers other workers.
"""

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey, Membership
from accounts.roles import Role
from portal import cache, consumers, live
from portal.asgi import application
from tests.portal.test_chat_websocket import (
    GOOD_SECRET,
    TIMEOUT,
    assert_streamed,
    bearer,
    chat_socket,
    leases_of,
    request_frame,
)
from tokens import relay
from tokens.models import Lease, Outcome

in_process = pytest.mark.django_db(transaction=True)


@pytest.fixture
def good_token(organization, make_token):
    return make_token(organization, secret=GOOD_SECRET, label="good token")


@pytest.fixture
def member(organization, make_member):
    """(membership, raw key) of a plain user, with an admin beside it so it can be demoted or deactivated."""
    make_member(organization, Role.ADMIN, username="keeper")
    return make_member(organization, Role.USER, username="chatter")


def logged_in(user) -> tuple[Client, bytes]:
    """A browser logged in as `user` and its session cookie, as the dashboard's pages hold it."""
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return client, f"{name}={client.cookies[name].value}".encode()


async def frames_until_closed(communicator: WebsocketCommunicator) -> tuple[list[dict], int]:
    """Every frame the server sends until it closes the socket, and the close code."""
    frames = []
    while True:
        output = await communicator.receive_output(TIMEOUT)
        if output["type"] == "websocket.close":
            return frames, output.get("code")
        frames.append(json.loads(output["text"]))


async def chats_fine(socket, request_id: str) -> None:
    assert_streamed(await socket.chat(request_frame(request_id, "hi there")), request_id, "Echo: hi there")
    # The success is written just after chat.end; the test's own writes come after it (SQLite in memory
    # refuses a second writer at once, where a real database file would wait).
    async with asyncio.timeout(TIMEOUT):
        while await sync_to_async(_a_lease_is_open)():
            await asyncio.sleep(0.01)
    await relay.reports_settled()


def _a_lease_is_open() -> bool:
    try:
        return Lease.objects.filter(outcome="").exists()
    except OperationalError:  # "table is locked": the report is being written right now
        return True


# --- every chat.request checks the caller again ----------------------------------------------------------


@in_process
async def test_a_key_revoked_where_no_signal_reached_this_worker_is_refused_at_the_next_request(
    standin, member, good_token
):
    membership, key = member
    async with chat_socket(bearer(key)) as socket:
        await chats_fine(socket, "before")
        # Revoked as another worker would, with nothing announced here; this worker's memory has lapsed.
        await sync_to_async(ApiKey.objects.filter(membership=membership).update)(revoked_at=timezone.now())
        cache.forget_now()

        await socket.send(request_frame("after"))
        frames, code = await frames_until_closed(socket.communicator)

    assert frames == [
        {"type": "chat.error", "id": "after", "error": "This API key has been revoked.", "error_type": "authentication"}
    ]
    assert code == 4401


@in_process
async def test_a_key_that_expires_while_the_socket_is_open_is_refused_at_the_next_request(
    standin, member, good_token, monkeypatch
):
    membership, _ = member
    expires_at = timezone.now() + timedelta(hours=1)
    _, key = await sync_to_async(account_services.api_key_create)(membership=membership, expires_at=expires_at, actor=None)
    async with chat_socket(bearer(key)) as socket:
        await chats_fine(socket, "before")
        # An expiry passing changes no row and announces nothing: the check itself must see it.
        later = expires_at + timedelta(seconds=1)
        monkeypatch.setattr(timezone, "now", lambda: later)
        await socket.send(request_frame("after"))
        frames, code = await frames_until_closed(socket.communicator)

    assert [(frame["type"], frame["id"], frame["error_type"]) for frame in frames] == [
        ("chat.error", "after", "authentication")
    ]
    assert code == 4401


@in_process
async def test_a_session_logged_out_where_no_signal_reached_this_worker_is_refused_at_the_next_request(
    standin, member, good_token
):
    membership, _ = member
    _, cookie = await sync_to_async(logged_in)(membership.user)
    async with chat_socket([(b"cookie", cookie), (b"origin", b"http://localhost")]) as socket:
        await chats_fine(socket, "before")
        await sync_to_async(Session.objects.all().delete)()  # the session is gone, as after a logout elsewhere
        cache.forget_now()

        await socket.send(request_frame("after"))
        frames, code = await frames_until_closed(socket.communicator)

    assert [(frame["type"], frame["id"], frame["error_type"]) for frame in frames] == [
        ("chat.error", "after", "authentication")
    ]
    assert code == 4401


# --- a change closes open sockets at once ----------------------------------------------------------------


@in_process
async def test_revoking_a_key_cancels_its_running_stream_and_closes_its_socket(standin, member, good_token):
    membership, key = member
    api_key = await sync_to_async(ApiKey.objects.get)(membership=membership)
    async with chat_socket(bearer(key)) as socket:
        await socket.send(request_frame("long", "tell me a long story", max_tokens=50, model="standin/slow-echo"))
        assert (await socket.receive())["type"] == "chat.start"
        assert (await socket.receive())["type"] == "chat.delta"

        await sync_to_async(account_services.api_key_revoke)(api_key=api_key, actor=None)
        frames, code = await frames_until_closed(socket.communicator)

    assert code == 4401
    ends = [frame for frame in frames if frame["type"] != "chat.delta"]
    assert ends == [
        {"type": "chat.end", "id": "long", "finish_reason": "cancelled", "usage": None},
        {"type": "chat.error", "id": None, "error": "This API key has been revoked.", "error_type": "authentication"},
    ]
    (lease,) = await leases_of(good_token)
    assert lease.outcome == Outcome.CANCELLED


@in_process
@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        (lambda membership: account_services.user_deactivate(membership=membership, actor=None), "permission_denied"),
        (
            lambda membership: account_services.user_update(membership=membership, role=Role.VIEWER, actor=None),
            "permission_denied",
        ),
    ],
    ids=["deactivated", "demoted-to-viewer"],
)
async def test_a_user_deactivated_or_demoted_loses_its_open_chat_socket_at_once(
    standin, member, good_token, change, error_type
):
    membership, key = member
    async with chat_socket(bearer(key)) as socket:
        await chats_fine(socket, "before")
        await sync_to_async(change)(membership)
        frames, code = await frames_until_closed(socket.communicator)

    assert [(frame["type"], frame["id"], frame["error_type"]) for frame in frames] == [
        ("chat.error", None, error_type)
    ]
    assert code == 4403


@in_process
async def test_a_role_change_that_still_allows_chat_keeps_the_socket(standin, member, good_token):
    membership, key = member
    async with chat_socket(bearer(key)) as socket:
        await sync_to_async(account_services.user_update)(membership=membership, role=Role.MANAGER, actor=None)
        await chats_fine(socket, "after")  # checked again, still allowed: the socket carries on


@in_process
async def test_logging_out_closes_the_sessions_chat_socket(standin, member, good_token):
    membership, _ = member
    browser, cookie = await sync_to_async(logged_in)(membership.user)
    async with chat_socket([(b"cookie", cookie), (b"origin", b"http://localhost")]) as socket:
        await chats_fine(socket, "before")
        await sync_to_async(browser.post)("/logout/")
        frames, code = await frames_until_closed(socket.communicator)

    assert [(frame["type"], frame["error_type"]) for frame in frames] == [("chat.error", "authentication")]
    assert code == 4401


@in_process
async def test_session_chat_counts_against_the_members_rate(settings, standin, member, good_token):
    settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE = 2
    membership, _ = member
    _, cookie = await sync_to_async(logged_in)(membership.user)
    async with chat_socket([(b"cookie", cookie), (b"origin", b"http://localhost")]) as socket:  # counts once
        await chats_fine(socket, "first")  # twice
        refused = await socket.chat(request_frame("second"))
    assert [(frame["type"], frame["error_type"]) for frame in refused] == [("chat.error", "rate_limited")]
    assert "member" in refused[0]["error"]


# --- the dashboard's live socket ---------------------------------------------------------------------------


async def live_socket(cookie: bytes) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(application, "/ws/dashboard/", headers=[(b"cookie", cookie), (b"origin", b"http://localhost")])
    connected, _ = await socket.connect(TIMEOUT)
    assert connected
    assert (await socket.receive_json_from(TIMEOUT))["type"] == "live.hello"
    return socket


@in_process
@pytest.mark.parametrize("how", ["logout", "deactivate"])
async def test_the_dashboards_live_socket_closes_and_hears_nothing_more(organization, member, how):
    membership, _ = member
    browser, cookie = await sync_to_async(logged_in)(membership.user)
    socket = await live_socket(cookie)
    try:
        if how == "logout":
            await sync_to_async(browser.post)("/logout/")
        else:
            await sync_to_async(account_services.user_deactivate)(membership=membership, actor=None)
        output = await socket.receive_output(TIMEOUT)
        assert output == {"type": "websocket.close", "code": 4401 if how == "logout" else 4403}

        await get_channel_layer().group_send(
            live.group_name(organization.pk), {"type": "live.events", "events": [{"kind": "lease", "token_id": 1}]}
        )
        assert await socket.receive_nothing(0.3)
    finally:
        await socket.disconnect()


# --- what the review found: a session that falls back to another organization, a database that blips --------


@in_process
async def test_a_session_deactivated_in_its_organization_is_not_carried_over_to_another(
    standin, organization, make_organization, member, good_token, make_token
):
    """The session's membership ends while it belongs to a second organization: the socket closes, its
    stream is cancelled, and nothing is ever served from the other organization's pool."""
    membership, _ = member
    other = await sync_to_async(make_organization)("beta")
    await sync_to_async(make_token)(other, secret="hf_ws_good_token_0002_mnopqrstuvwx", label="beta token")
    await sync_to_async(Membership.objects.create)(user=membership.user, organization=other, role=Role.USER)
    _, cookie = await sync_to_async(logged_in)(membership.user)
    async with chat_socket([(b"cookie", cookie), (b"origin", b"http://localhost")]) as socket:
        await socket.send(request_frame("long", "tell me a long story", max_tokens=50, model="standin/slow-echo"))
        assert (await socket.receive())["token_label"] == "good token"
        await sync_to_async(account_services.user_deactivate)(membership=membership, actor=None)
        frames, code = await frames_until_closed(socket.communicator)

    assert code == 4403
    assert [(f["type"], f.get("finish_reason") or f.get("error_type")) for f in frames if f["type"] != "chat.delta"] == [
        ("chat.end", "cancelled"), ("chat.error", "permission_denied")
    ]


@in_process
async def test_a_database_error_while_checking_a_request_is_a_clear_error_and_the_socket_stays(
    standin, member, good_token, monkeypatch
):
    _, key = member
    async with chat_socket(bearer(key)) as socket:
        with monkeypatch.context() as patched:
            patched.setattr(consumers, "known_caller", database_gone)
            cache.forget_now()
            refused = await socket.chat(request_frame("blip"))
        assert [(frame["type"], frame["error_type"]) for frame in refused] == [("chat.error", "database_unavailable")]
        await chats_fine(socket, "after")


@in_process
async def test_a_change_that_cannot_be_checked_closes_the_socket_and_leaves_its_groups(
    standin, member, good_token, monkeypatch
):
    membership, key = member
    watches = []

    class RememberedWatch(live.AccessWatch):
        def __init__(self, on_change):
            super().__init__(on_change)
            watches.append(self)

    monkeypatch.setattr(live, "AccessWatch", RememberedWatch)
    async with chat_socket(bearer(key)) as socket:
        monkeypatch.setattr(consumers, "known_caller", database_gone)
        await sync_to_async(account_services.user_update)(membership=membership, full_name="Renamed", actor=None)
        frames, code = await frames_until_closed(socket.communicator)
    assert [(frame["type"], frame["error_type"]) for frame in frames] == [("chat.error", "database_unavailable")]
    assert code == 1013  # try again later: reconnecting checks the caller afresh
    (watch,) = watches
    assert watch.groups == [] and watch.task.done()


async def database_gone(raw_key):
    raise OperationalError("server closed the connection unexpectedly")
