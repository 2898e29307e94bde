from django.urls import path

from dashboard.consumers import LiveConsumer
from portal.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/dashboard/", LiveConsumer.as_asgi()),
]
