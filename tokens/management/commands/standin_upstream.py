import os
import sys

from django.core.management.base import BaseCommand

from tokens.standin import standin_command


class Command(BaseCommand):
    help = "Serve the stand-in Hugging Face upstream (whoami-v2, chat completions) for tests and offline demos."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8090)

    def handle(self, *args, host, port, **options):
        self.stdout.write(f"Stand-in upstream on http://{host}:{port} (HF_API_BASE / HF_INFERENCE_BASE_URL=…/v1)")
        self.stdout.flush()
        os.execv(sys.executable, standin_command(host, port))
