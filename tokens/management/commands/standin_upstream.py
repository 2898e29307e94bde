import os
import sys

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the stand-in Hugging Face upstream (whoami-v2, chat completions) for tests and offline demos."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8090)

    def handle(self, *args, host, port, **options):
        self.stdout.write(f"Stand-in upstream on http://{host}:{port} (HF_API_BASE / HF_INFERENCE_BASE_URL=…/v1)")
        self.stdout.flush()
        # The stand-in is plain ASGI, independent of Django: daphne replaces this process to serve it,
        # so stopping this command's PID stops the server.
        os.execv(sys.executable, [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "tokens.standin:application"])
