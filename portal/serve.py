"""daphne, with an access log that never writes a credential: `python -m portal.serve` takes daphne's own
arguments (`-b 127.0.0.1 -p 8000 portal.asgi:application`).

daphne's access log writes each request's whole URI, query string included, so a key sent in a URL (which
the portal refuses: portal.url_keys) would still land in the log. Here every logged URI goes through
scrub_uri first: credential-named query parameters and anything shaped like a portal key or an HF token
become `***`, in the path and in the query.

It also stops gracefully: on SIGTERM every running request is cancelled and the worker exits once all of
them have ended (see GracefulServer). And it runs on uvloop where it is installed (not on Windows): one
chat at a time, bench/ab.py measured +10 req/s and 0.9 ms less to the first chunk than on asyncio's loop.
"""

import asyncio
import logging
from urllib.parse import parse_qsl, quote, unquote

if __name__ == "__main__":  # a worker, not an import (by a test): before daphne.server makes its loop on import
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's own loop
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from daphne import cli
from daphne.access import AccessLogGenerator
from daphne.server import Server
from twisted.internet import defer

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


def main() -> None:
    cli.AccessLogGenerator = ScrubbedAccessLog  # daphne's CLI builds its access log from this name
    cli.CommandLineInterface.server_class = GracefulServer
    cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
