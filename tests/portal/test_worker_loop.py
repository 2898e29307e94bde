"""Which event loop a worker runs (portal.serve): uvloop where it is installed, asyncio's own with
PORTAL_UVLOOP=0; the worker says which when it starts."""

import os

import pytest

from tests.conftest import start_portal_worker, stop_portal_workers
from tests.portal.test_worker_writes import BUSY_APP


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("0", "asyncio")])
def test_the_worker_runs_and_names_the_event_loop_asked_for(setting, loop, tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "PORTAL_UVLOOP"}
    if setting is not None:
        env["PORTAL_UVLOOP"] = setting
    log = tmp_path / "daphne.log"
    stop_portal_workers(start_portal_worker(env, log, app=BUSY_APP))  # started: it listens; stopped at once
    assert f"Event loop: {loop}" in log.read_text()
