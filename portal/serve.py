"""daphne, with an access log that never writes a credential: `python -m portal.serve` takes daphne's own
arguments (`-b 127.0.0.1 -p 8000 portal.asgi:application`).

daphne's access log writes each request's whole URI, query string included, so a key sent in a URL (which
the portal refuses: portal.url_keys) would still land in the log. Here every logged URI goes through
scrub_uri first: credential-named query parameters and anything shaped like a portal key or an HF token
become `***`, in the path and in the query.

It also stops gracefully: on SIGTERM every running request is cancelled and the worker exits once all of
them have ended (see GracefulServer); it sends streamed writes at once (PortalServer.handle_reply); and
Twisted no longer parses request bodies as forms (FormsLeftToDjango). And it runs on uvloop where it is installed (not on Windows; PORTAL_UVLOOP=0 keeps asyncio's loop): one
chat at a time, bench/ab.py measured +10 req/s and 0.9 ms less to the first chunk than on asyncio's loop.
"""

import asyncio
import logging
import os
from urllib.parse import parse_qsl, quote, unquote

# A worker, not an import (by a test), unless PORTAL_UVLOOP=0; before daphne.server makes its loop on import.
if __name__ == "__main__" and os.environ.get("PORTAL_UVLOOP", "1") != "0":
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's own loop
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from daphne import cli, http_protocol
from daphne.access import AccessLogGenerator
from daphne.server import Server
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor

from portal.redact import redact_secrets
from portal.url_keys import CREDENTIAL_PARAMS

logger = logging.getLogger("daphne.server")


def scrub_uri(uri: str) -> str:
    path, question, query = uri.partition("?")
    path = redact_secrets(unquote(path))
    if not question:
        return path
    try:
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:
        return f"{path}?***"
    scrubbed = []
    for name, value in pairs:
        if value and name.strip().lower() in CREDENTIAL_PARAMS:
            value = "***"
        scrubbed.append(f"{quote(redact_secrets(name), safe='*')}={quote(redact_secrets(value), safe='*')}")
    return f"{path}?{'&'.join(scrubbed)}"


class ScrubbedAccessLog(AccessLogGenerator):
    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        method, _, uri = request.partition(" ")
        super().write_entry(host, date, f"{method} {scrub_uri(uri)}", status, length, ident, user)


class GracefulServer(Server):
    def listen_success(self, port):
        self.__dict__.setdefault("ports", []).append(port)
        logger.info("Event loop: %s", type(asyncio.get_event_loop_policy()).__module__.split(".")[0])  # uvloop or asyncio
        return super().listen_success(port)

    def kill_all_applications(self):
        """daphne's own cancels the running requests and waits with a plain asyncio.gather, which ends as
        soon as the first of them has ended, cancelled: the worker then exited while others were still
        recording how they ended (a stream cut by the stop, its lease's `cancelled` not yet written; 1 run
        in 8 of tests/portal/test_worker_stop.py). This one first stops taking new connections (Twisted
        closes its ports only after this wait), then waits for every request it cancelled, for at most
        daphne's --application-close-timeout."""
        for port in self.__dict__.get("ports", []):
            port.stopListening()
        running = [
            instance
            for details in self.connections.values()
            if (instance := details.get("application_instance")) is not None and not instance.done()
        ]
        for instance in running:
            instance.cancel()
        logger.info("Stopping %i running requests", len(running))
        return defer.Deferred.fromFuture(asyncio.ensure_future(_all_ended(running, self.application_close_timeout)))


async def _all_ended(running: list, timeout: float) -> None:
    if not running:
        return
    _, still_running = await asyncio.wait(running, timeout=timeout)
    if still_running:
        logger.warning("%i requests still running %s s after the stop: exiting without them", len(still_running), timeout)


class PortalServer(GracefulServer):
    async def handle_reply(self, protocol, message):
        """Twisted sends what is written to a connection on the reactor's next turn, after everything already
        runnable has run. When a burst of upstream chunks is already buffered, the relay forwards them one
        by one without waiting for anything, so the first chunk sat in Twisted's buffer until the last
        was forwarded (at concurrency 1, 1.1 ms of the time to the first chunk). A streamed write, a body
        part with more to come or a websocket frame, is sent now instead; a response's last part keeps
        Twisted's way, which also closes the connection when it must."""
        await super().handle_reply(protocol, message)
        kind = message.get("type")
        if kind == "websocket.send" or (kind == "http.response.body" and message.get("more_body")):
            _send_buffered(getattr(protocol, "channel", protocol))


def _send_buffered(connection) -> None:
    transport = getattr(connection, "transport", None)
    # Only plain TCP connections (a TLS transport wraps its own), and none that is closing.
    if not isinstance(transport, FileDescriptor) or not transport.connected or transport.disconnecting:
        return
    try:
        # What the reactor calls when the socket can take data. A failure it returns is left to the reactor:
        # the transport stays registered for writing, and its next turn finds the same failure and closes it.
        transport.doWrite()
    except Exception:
        logger.exception("sending a streamed write at once failed; the reactor sends it")


class FormsLeftToDjango(http_protocol.WebRequest):
    """Twisted parses the body of every POST with a content type into form arguments before daphne sees
    it, with the email package (0.1 ms per request even for JSON); nothing reads them (Django parses its
    own forms), and a multipart body Twisted could not parse was answered with its bare 400 and a closed
    connection instead of the API's JSON error."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._parsePOSTFormSubmission = False


def main() -> None:
    cli.AccessLogGenerator = ScrubbedAccessLog  # daphne's CLI builds its access log from this name
    http_protocol.WebRequest = FormsLeftToDjango  # daphne's HTTPFactory builds its requests from this name
    cli.CommandLineInterface.server_class = PortalServer
    cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
