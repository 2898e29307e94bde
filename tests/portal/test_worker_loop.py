"""Which event loop a worker runs (portal.serve): uvloop where it is installed, asyncio's own with
PORTAL_UVLOOP=0; the worker says which when it starts."""

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port, wait_for_port


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("0", "asyncio")])
def test_the_worker_runs_and_names_the_event_loop_asked_for(setting, loop, tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "PORTAL_UVLOOP"}
    if setting is not None:
        env["PORTAL_UVLOOP"] = setting
    port, log = free_port(), tmp_path / "daphne.log"
    with open(log, "w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "portal.serve", "-b", "127.0.0.1", "-p", str(port), "tests.portal.busy_after_first_write:application"],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    assert f"Event loop: {loop}" in log.read_text()
