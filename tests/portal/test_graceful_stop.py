"""How a worker stops (portal.serve.GracefulServer): SIGTERM cancels every running request, and the worker
waits until each has finished its clean-up (recording a cut stream as cancelled) before it exits."""

import asyncio

from portal.serve import GracefulServer


async def request_that_records_its_end(cleanup_seconds: float, ended: list) -> None:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(cleanup_seconds)  # e.g. writing the lease's outcome on the database thread
        ended.append(cleanup_seconds)
        raise


def test_the_stop_waits_for_every_request_to_finish_its_clean_up_not_just_the_first():
    async def scenario():
        ended = []
        quick = asyncio.ensure_future(request_that_records_its_end(0, ended))
        slow = asyncio.ensure_future(request_that_records_its_end(0.2, ended))
        finished = asyncio.ensure_future(asyncio.sleep(0))
        await asyncio.sleep(0.01)  # all started; `finished` has already ended
        server = GracefulServer.__new__(GracefulServer)  # only its connections and close timeout are needed
        server.application_close_timeout = 5
        server.connections = {
            "quick": {"application_instance": quick},
            "slow": {"application_instance": slow},
            "finished": {"application_instance": finished},
            "reaped": {},  # daphne drops the instance of a finished request before the connection
        }
        stopped = server.kill_all_applications()
        await stopped.asFuture(asyncio.get_running_loop())
        return ended, quick.cancelled(), slow.cancelled()

    ended, quick_cancelled, slow_cancelled = asyncio.run(scenario())
    assert ended == [0, 0.2]
    assert quick_cancelled and slow_cancelled


def test_a_request_whose_clean_up_hangs_holds_the_stop_only_until_the_close_timeout():
    async def scenario():
        ended = []
        hanging = asyncio.ensure_future(request_that_records_its_end(60, ended))
        await asyncio.sleep(0.01)
        server = GracefulServer.__new__(GracefulServer)
        server.application_close_timeout = 0.2
        server.connections = {"hanging": {"application_instance": hanging}}
        started = asyncio.get_running_loop().time()
        await server.kill_all_applications().asFuture(asyncio.get_running_loop())
        waited = asyncio.get_running_loop().time() - started
        hanging.cancel()
        return waited, ended

    waited, ended = asyncio.run(scenario())
    assert 0.15 < waited < 2 and ended == []
