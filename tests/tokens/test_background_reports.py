"""The relay writes a success in the background (on the loop, or on a database thread) after the client has its answer.
A database that is down at that moment must not lose the outcome, and waiting for the writes
(`reports_settled`, at a test's end or a shutdown) must end even when a retry can no longer run."""

import asyncio
import logging

import pytest
from django.db import OperationalError

from portal import db
from tokens import relay, services

REPORT = {"organization": None, "token_id": 1, "lease_id": 1, "user": None, "success": True}


@pytest.fixture
def writes(monkeypatch):
    """report_outcome replaced: fails while `writes["down"]` says so, else records the report. Every write
    goes to the database thread, as when the loop's SQLite writer is busy (or on PostgreSQL)."""
    state = {"down": 0, "recorded": []}

    def report_outcome(**report):
        if state["down"]:
            state["down"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        state["recorded"].append(report)

    monkeypatch.setattr(services, "report_outcome", report_outcome)
    monkeypatch.setattr(db, "_run_on_loop", lambda func, args, kwargs: db._NOT_DONE)
    monkeypatch.setattr(relay, "_report", db.on_loop_when_free(report_outcome))
    monkeypatch.setattr(relay, "REPORT_RETRY_PAUSES", (0.01, 0.01, 0.01))
    return state


async def test_a_success_written_while_the_database_is_down_is_written_once_it_is_back(writes):
    writes["down"] = 2  # the background write and the first retry fail
    relay._report_in_background(dict(REPORT))
    await asyncio.wait_for(relay.reports_settled(), timeout=5)
    assert writes["recorded"] == [REPORT]
    assert not relay._reports_in_flight


async def test_a_database_down_for_every_retry_is_logged_with_its_error(writes, caplog):
    writes["down"] = 10
    with caplog.at_level(logging.ERROR, logger="tokens.relay"):
        relay._report_in_background(dict(REPORT))
        await asyncio.wait_for(relay.reports_settled(), timeout=5)
    assert writes["recorded"] == []
    [record] = [r for r in caplog.records if "could not record" in r.getMessage()]
    assert isinstance(record.exc_info[1].__cause__, OperationalError)


def test_waiting_ends_when_a_retry_was_left_on_a_loop_that_stopped(writes, caplog, monkeypatch):
    writes["down"] = 1
    monkeypatch.setattr(relay, "REPORT_RETRY_PAUSES", (30,))  # the retry is still pausing when its loop stops
    stopped = asyncio.new_event_loop()

    async def relay_then_stop():
        relay._report_in_background(dict(REPORT))
        await asyncio.sleep(0.1)  # the write fails, and its retry starts on this loop

    with caplog.at_level(logging.ERROR, logger="tokens.relay"):
        stopped.run_until_complete(relay_then_stop())
        stopped.close()
        asyncio.run(asyncio.wait_for(relay.reports_settled(), timeout=5))
    assert not relay._reports_in_flight
    assert any("event loop stopped" in r.getMessage() for r in caplog.records)
