"""Websocket routes; the consumers arrive with the chat and dashboard work."""

websocket_urlpatterns: list = []
