"""The rate limit and the URL check on the paths served before Django: /v1/chat/completions, /v1/models, /ws/chat/."""


import httpx
import pytest
from channels.testing import WebsocketCommunicator

from accounts.roles import Role


@pytest.mark.django_db(transaction=True)
async def test_sse_models_and_websocket_are_rate_limited(settings, organization, make_member):
    from asgiref.sync import sync_to_async

    from portal.asgi import application

    settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE = 2
    _, key = await sync_to_async(make_member)(organization, Role.USER)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost") as client:
        settings.PORTAL_MODELS = ["m"]
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        refused = await client.post("/v1/chat/completions", headers=headers, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_type"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
        bad = await client.post(f"/v1/chat/completions?api_key={key}", headers=headers, json={})
        assert bad.status_code == 400 and bad.json()["error_type"] == "credentials_in_url"
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Bearer {key}".encode()), (b"host", b"localhost")])
    connected, code = await socket.connect()
    assert (connected, code) == (False, 4429)
    await socket.disconnect()
    socket = WebsocketCommunicator(application, f"/ws/chat/?token={key}", headers=[(b"host", b"localhost")])
    connected, code = await socket.connect()
    assert not connected
    await socket.disconnect()
