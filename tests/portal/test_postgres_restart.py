"""PostgreSQL restarted under load: while it is down every request answers at once with 503
`database_unavailable` and Retry-After (never a 500, never a hang or a dropped connection); once it is back
the same worker serves again by itself; every lease ends with an outcome and no report is lost (a report
refused with 503 is sent again, as hf_token_utils users do, and counts).

Each phase of the scenario lasts until what the tests check has happened (the clients are all served, the
held leases are taken, the outage has been answered, every kind of request succeeds again), never for a
fixed number of seconds: on a busy machine a freshly started worker's first requests take seconds, and a
fixed steady phase of 1.5 s once stopped PostgreSQL before the client that holds leases across the outage
had them (test_no_client_report_is_lost then failed). PATIENCE_SECONDS only bounds a phase that never ends.

The test starts a PostgreSQL of its own (scripts/with_services.py) and restarts that one, never the test
session's: so it runs in both stages of `make test` wherever PostgreSQL's server binaries are installed."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter

import httpx
import pytest
from django.conf import settings

from tests.conftest import load_script, prepared_portal_env, start_portal_worker

ADMIN_KEY = "pk_pg_restart_admin_key_0123456789abcdefgh"
CLIENTS = 6  # lease + report loops
CHAT_CLIENTS = 2  # short completions, streamed and not
SLOW_STREAMS = 2  # streams of 0.8 s; PostgreSQL goes while one is relaying, so its report comes during the outage
# The longest a phase of the scenario waits for what it waits for: only a worker that never gets there (a
# hang, a lost request) comes near it, whatever else runs on the machine.
PATIENCE_SECONDS = 90.0
# A refusal took this long only if it waited for a connection attempt (portal.settings' connect_timeout).
QUICK_SECONDS = 5.0
# A client gives up resending a refused report after this long: longer than the outage and the recovery
# can last before the scenario gives up, so only a report the worker never accepts is given up.
REPORT_PATIENCE_SECONDS = 3 * PATIENCE_SECONDS
KINDS = {"lease", "report", "chat", "chat-stream", "slow-stream", "readyz"}  # what the clients send


with_services = load_script("with_services")
PG_BINDIR = with_services.find_postgres_bindir()

pytestmark = pytest.mark.skipif(
    PG_BINDIR is None,
    reason="needs PostgreSQL's server binaries (initdb, postgres, pg_isready, createdb) to start a throwaway "
    "server it can restart: apt-get install postgresql, or set PORTAL_PG_BINDIR",
)


class ThrowawayPostgres:
    """A private PostgreSQL that this test may stop and start again on the same port and data directory."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.tmpdir = tempfile.mkdtemp(prefix="portal-pg-restart-")
        os.chmod(self.tmpdir, 0o755)  # the postgres user (when we are root) must reach its data directory
        [self.port] = with_services.free_ports(1)
        self.procs: list = []
        with_services.start_postgres(bindir, self.tmpdir, self.port, self.procs)
        self.url = f"postgres://{with_services.PG_USER}@127.0.0.1:{self.port}/{with_services.PG_DB}"

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open sessions are cut off, as by `pg_ctl restart -m fast`."""
        while self.procs:
            with_services.stop(*self.procs.pop())

    def start(self) -> None:
        """The same server again (start_postgres's command line, without initdb and createdb)."""
        logfile = os.path.join(self.tmpdir, "postgres.log")
        as_user = with_services.postgres_user_kwargs(self.tmpdir)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                [os.path.join(self.bindir, "postgres"), "-D", os.path.join(self.tmpdir, "pgdata"),
                 "-p", str(self.port), "-k", os.path.join(self.tmpdir, "pgsock"),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmpdir, start_new_session=True, **as_user)
        self.procs.append(("postgres", proc, signal.SIGINT))

        def ready():
            return subprocess.run(
                [os.path.join(self.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", with_services.PG_USER, "-d", with_services.PG_DB]).returncode == 0
        with_services.wait_until(ready, 30, proc, "PostgreSQL", logfile)

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            return connection.execute(sql).fetchall()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = ThrowawayPostgres(PG_BINDIR)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def portal(postgres, standin_url, tmp_path_factory):
    """One daphne worker on that PostgreSQL (migrated and bootstrapped), without Redis: only the database fails."""
    tmp_path = tmp_path_factory.mktemp("pg-restart")
    env = prepared_portal_env(
        tmp_path, standin_url, ADMIN_KEY,
        DATABASE_URL=postgres.url,
        REDIS_URL="",  # the in-process tests' Redis, if any, stays out of this
        PORTAL_KEY_RATE_LIMIT_PER_MINUTE="0",  # hundreds of requests a second with one key
        LOG_LEVEL="WARNING",
    )
    log_path = tmp_path / "worker.log"
    worker = start_portal_worker(env, log_path)
    worker.log_path = log_path
    try:
        yield worker
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=10)


class Load:
    """What the clients saw: one record per request, the leases they were granted and what became of their reports."""

    def __init__(self):
        self.records: list[dict] = []
        self.granted: dict[int, int] = {}  # lease_id -> token_id
        self.accepted: dict[int, dict] = {}  # lease_id -> the report's 200 answer
        self.resent: set[int] = set()  # leases whose report was refused at least once and sent again
        self.lost: dict[int, str] = {}  # leases whose report was never accepted, and why
        self.report_answers: Counter[int] = Counter()  # lease_id -> answers its report got (or failures to get one)
        self.readyz: list[tuple[float, int]] = []
        self.stop = asyncio.Event()
        self.down = asyncio.Event()  # PostgreSQL has stopped
        self.held: set[int] = set()  # leases taken before the outage and reported during it
        self.relaying = asyncio.Event()  # a slow stream has sent its first chunk
        self.summary = ""

    def served(self, since: float) -> set[str]:
        """The kinds of request answered 200 that started at `since` or later."""
        return {r["kind"] for r in self.records if r["started"] >= since and r["status"] == 200}

    def answered(self, kind: str, since: float) -> bool:
        return any(r["kind"] == kind and r["started"] >= since for r in self.records)

    def describe(self) -> str:
        kinds = Counter((r["kind"], r["status"], r.get("error_type")) for r in self.records)
        return f"{sorted(kinds.items(), key=str)}; held leases {sorted(self.held)}, resent {sorted(self.resent)}"

    async def call(self, kind: str, request) -> httpx.Response | None:
        started = time.monotonic()
        record = {"kind": kind, "started": started}
        try:
            response = await request
        except httpx.HTTPError as exc:  # a reset or a timeout: an answer the user never got
            record.update(ended=time.monotonic(), status=None, error=f"{type(exc).__name__}: {exc}")
            self.records.append(record)
            return None
        record.update(ended=time.monotonic(), status=response.status_code, retry_after=response.headers.get("Retry-After"))
        if response.status_code != 200:
            try:
                record["error_type"] = response.json().get("error_type")
            except ValueError:
                record["error_type"] = f"(not JSON) {response.text[:200]}"
        self.records.append(record)
        return response


async def lease_and_report(load: Load, url: str, key: str, n: int) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        while not load.stop.is_set():
            leased = await load.call("lease", client.get("/keys/provision/hf", params={"client_name": f"load-{n}"}))
            if leased is None or leased.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            grant = leased.json()
            load.granted[grant["lease_id"]] = grant["token_id"]
            await report_until_accepted(load, client, grant)


async def hold_across_the_outage(load: Load, url: str, key: str) -> None:
    """A client whose work spans the restart: it leases before (the scenario stops PostgreSQL only once it
    holds its two leases), and reports while the database is down."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        grants = []
        while len(grants) < 2 and not load.stop.is_set():
            leased = await load.call("held-lease", client.get("/keys/provision/hf", params={"client_name": "load-held"}))
            if leased is not None and leased.status_code == 200:
                grants.append(leased.json())
                load.granted[grants[-1]["lease_id"]] = grants[-1]["token_id"]
            else:
                await asyncio.sleep(0.1)
        load.held = {grant["lease_id"] for grant in grants}
        await load.down.wait()
        await asyncio.gather(*(report_until_accepted(load, client, grant) for grant in grants))


async def report_until_accepted(load: Load, client: httpx.AsyncClient, grant: dict) -> None:
    """Report a success; a refusal for the database's sake is sent again after Retry-After, as a client would."""
    body = {"token_id": grant["token_id"], "lease_id": grant["lease_id"], "status": "success"}
    deadline = time.monotonic() + REPORT_PATIENCE_SECONDS
    attempt = 0
    while True:
        attempt += 1
        answer = await load.call("report", client.post("/keys/report/hf", json=body))
        load.report_answers[grant["lease_id"]] += 1
        if answer is not None and answer.status_code == 200:
            load.accepted[grant["lease_id"]] = answer.json()
            return
        retryable = answer is None or (answer.status_code == 503 and "Retry-After" in answer.headers)
        if not retryable or time.monotonic() > deadline:
            load.lost[grant["lease_id"]] = "no answer" if answer is None else f"{answer.status_code} {answer.text[:200]}"
            return
        load.resent.add(grant["lease_id"])
        await asyncio.sleep(float(answer.headers["Retry-After"]) if answer is not None else 0.5)


async def chat(load: Load, url: str, key: str, n: int) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        stream = bool(n % 2)
        while not load.stop.is_set():
            stream = not stream
            body = {"model": "standin/echo", "messages": [{"role": "user", "content": f"hello {n}"}],
                    "max_tokens": 3, "stream": stream}
            kind = "chat-stream" if stream else "chat"
            answer = await load.call(kind, client.post("/v1/chat/completions", json=body))
            if answer is not None and answer.status_code == 200 and stream and not answer.text.rstrip().endswith("data: [DONE]"):
                load.records[-1].update(status="broken stream", error_type=answer.text[-300:])
            await asyncio.sleep(0.05 if answer is not None and answer.status_code == 200 else 0.2)


async def slow_stream(load: Load, url: str, key: str, n: int) -> None:
    """Streams read as they come, so that the scenario can stop PostgreSQL while one is relaying."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15) as client:
        while not load.stop.is_set():
            body = {"model": "standin/slow-echo", "messages": [{"role": "user", "content": f"slowly {n}"}],
                    "max_tokens": 8, "stream": True}
            record = {"kind": "slow-stream", "started": time.monotonic()}
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                    record.update(status=answer.status_code, retry_after=answer.headers.get("Retry-After"))
                    text = ""
                    async for chunk in answer.aiter_text():
                        if "first_chunk" not in record and chunk.startswith("data:"):
                            record["first_chunk"] = time.monotonic()
                            load.relaying.set()
                        text += chunk
            except httpx.HTTPError as exc:
                record.update(status=None, error=f"{type(exc).__name__}: {exc}")
            else:
                if answer.status_code != 200:
                    record["error_type"] = json.loads(text).get("error_type")
                elif not text.rstrip().endswith("data: [DONE]"):
                    record.update(status="broken stream", error_type=text[-300:])
            record["ended"] = time.monotonic()
            load.records.append(record)
            await asyncio.sleep(0.0 if record["status"] == 200 else 0.2)


async def watch_readyz(load: Load, url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        while not load.stop.is_set():
            answer = await load.call("readyz", client.get("/readyz"))
            load.readyz.append((time.monotonic(), answer.status_code if answer is not None else 0))
            await asyncio.sleep(0.2)


def _describe(records: list[dict]) -> str:
    return "\n".join(
        f"{r['kind']} +{r['ended'] - r['started']:.2f}s -> {r['status']} {r.get('error_type') or r.get('error') or ''}"
        for r in records[:20]
    )


async def until(condition, what: str, load: Load) -> None:
    """Wait until condition() holds; a phase that never ends is a failure, said in words."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {PATIENCE_SECONDS} s\n{load.describe()}")
        await asyncio.sleep(0.05)


def eventually(condition, timeout: float = PATIENCE_SECONDS) -> bool:
    """Poll condition() until it holds or the time is up; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def restart(postgres, portal) -> Load:
    """The scenario, once for the module's tests: load until every kind of request has been served and the
    held leases are taken; PostgreSQL stopped (fast) while a stream relays, until the outage has been
    answered where the tests look; started again; load until the worker serves every kind of request again;
    every refused report resent until accepted."""
    with httpx.Client(base_url=portal.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as admin:
        for n in range(3):
            admin.post("/admin/tokens", json={"token": f"hf_pgrestart_{n}_{uuid.uuid4().hex}"}).raise_for_status()
        key = admin.post("/admin/users", json={"username": f"load-{uuid.uuid4().hex[:8]}", "role": "user"}).json()["api_key"]
    load = Load()

    def outage_answered() -> bool:
        return (
            # the held leases' reports, sent once PostgreSQL had stopped, have had an answer;
            all(load.report_answers[lease_id] for lease_id in load.held)
            # so has a readiness check made while it was down;
            and load.answered("readyz", since=load.stopped_at)
            # and a stream relaying when it went has ended, so its report met the outage.
            and any(r["kind"] == "slow-stream" and r.get("first_chunk", 1e12) < load.down_at < r["ended"] for r in load.records)
        )

    async def scenario():
        tasks = [asyncio.create_task(lease_and_report(load, portal.url, key, n)) for n in range(CLIENTS)]
        tasks += [asyncio.create_task(chat(load, portal.url, key, n)) for n in range(CHAT_CLIENTS)]
        tasks += [asyncio.create_task(slow_stream(load, portal.url, key, n)) for n in range(SLOW_STREAMS)]
        tasks.append(asyncio.create_task(watch_readyz(load, portal.url)))
        tasks.append(asyncio.create_task(hold_across_the_outage(load, portal.url, key)))
        await until(lambda: load.served(since=0) >= KINDS and len(load.held) == 2, "steady load, held leases taken", load)
        load.relaying.clear()
        await until(load.relaying.is_set, "a slow stream relaying", load)  # it ends while the database is down
        load.down_at = time.monotonic()
        await asyncio.to_thread(postgres.stop)
        load.stopped_at = time.monotonic()
        load.down.set()
        await until(outage_answered, "the outage answered", load)
        await asyncio.to_thread(postgres.start)
        load.up_at = time.monotonic()
        await until(lambda: {"lease", "readyz"} <= load.served(since=load.up_at), "the worker serving again", load)
        load.recovered_at = time.monotonic()
        await until(lambda: load.served(since=load.recovered_at) >= KINDS, "every kind served after the recovery", load)
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=REPORT_PATIENCE_SECONDS + PATIENCE_SECONDS)

    asyncio.run(scenario())
    # The relay writes a success just after its answer, and retries one that met the outage after a pause
    # (tokens.relay.REPORT_RETRY_PAUSES): the tests look once no lease is open any more (or never will be).
    eventually(lambda: not postgres.query("SELECT id FROM tokens_lease WHERE reported_at IS NULL LIMIT 1"))
    kinds = Counter((r["kind"], r["status"], r.get("error_type")) for r in load.records)
    refused = [r for r in load.records if r["status"] == 503 and r["kind"] != "readyz"]
    began = min(r["started"] for r in load.records)
    load.summary = (
        f"{sorted(kinds.items(), key=str)}; database down from +{load.down_at - began:.2f} s "
        f"to +{load.up_at - began:.2f} s; worker log: {portal.log_path}"
    )
    print(
        f"\n{len(load.granted)} leases by REST clients ({len(load.resent)} reports sent again), "
        f"{sum(1 for r in load.records if r['kind'].endswith('chat') or 'stream' in r['kind'])} chat requests, "
        f"{len(refused)} answered 503 database_unavailable (slowest {max((r['ended'] - r['started'] for r in refused), default=0):.3f} s); "
        f"steady load for {load.down_at - began:.2f} s; serving again {load.recovered_at - load.up_at:.2f} s after "
        f"PostgreSQL was back; {load.summary}"
    )
    return load


def test_while_postgres_is_down_requests_answer_at_once_with_a_clear_503(restart):
    records = restart.records
    unanswered = [r for r in records if r["status"] is None]
    assert not unanswered, f"requests without an answer:\n{_describe(unanswered)}\n{restart.summary}"
    # Refusals only: on a busy machine a fresh worker's first leases take seconds, which says nothing
    # about waiting for a database that is gone.
    slow = [r for r in records if r["status"] == 503 and r["ended"] - r["started"] > QUICK_SECONDS]
    assert not slow, f"refusals slower than {QUICK_SECONDS} s:\n{_describe(slow)}\n{restart.summary}"
    answered = [r for r in records if r["kind"] != "readyz"]
    unclear = [
        r for r in answered
        if r["status"] != 200
        and not (r["status"] == 503 and r.get("error_type") in ("database_unavailable", "database_busy") and r["retry_after"])
    ]
    assert not unclear, f"answers other than 200 or 503 database_unavailable with Retry-After:\n{_describe(unclear)}\n{restart.summary}"
    refused = [r for r in answered if r["status"] == 503]
    assert {"lease", "report"} & {r["kind"] for r in refused}, f"the outage was never felt: {restart.summary}"
    assert any(status == 503 for moment, status in restart.readyz if restart.down_at <= moment <= restart.up_at), restart.readyz
    # Streams relaying when PostgreSQL went still ended with [DONE]: the database is not on a stream's path.
    assert any(r["kind"] == "slow-stream" and r.get("first_chunk", 1e12) < restart.down_at < r["ended"] and r["status"] == 200
               for r in records), restart.summary


def test_once_postgres_is_back_the_same_worker_serves_again_by_itself(restart, portal):
    # The scenario waited (at most PATIENCE_SECONDS) for the worker to serve a lease and a readiness check
    # after PostgreSQL was back, and then every kind of request: no restart, no operator.
    assert portal.poll() is None, "the worker died"
    after = [r for r in restart.records if r["started"] >= restart.recovered_at]
    assert {r["kind"] for r in after if r["status"] == 200} >= KINDS, restart.summary
    # Once it serves again, nothing fails but a database thread that sat out the outage finding its
    # connection dead: once per thread (portal.db drops a failed connection and opens a new one).
    failed = [r for r in after if r["status"] != 200]
    assert all(r["status"] == 503 and r.get("error_type") == "database_unavailable" for r in failed), _describe(failed)
    assert len([r for r in failed if r["kind"] != "readyz"]) <= settings.PORTAL_DB_THREADS, _describe(failed)
    # Readiness checks open a connection of their own each time: none fails once the worker serves again.
    assert not [r for r in failed if r["kind"] == "readyz"], restart.readyz


def test_no_client_report_is_lost(restart, postgres):
    """Every lease a REST client was granted is reported; a report refused with 503 was sent again, accepted,
    and the database has every one of them as a success."""
    held = [r for r in restart.records if r["kind"] == "held-lease"]
    assert len(restart.held) == 2, f"the leases to hold across the outage:\n{_describe(held)}"
    assert restart.held <= restart.resent, (restart.held, restart.resent, restart.summary)
    assert not restart.lost, f"reports never accepted: {restart.lost}"
    assert set(restart.accepted) == set(restart.granted)
    outcomes = dict(postgres.query("SELECT id, outcome FROM tokens_lease WHERE client_name LIKE 'load-%'"))
    assert {lease_id: outcomes.get(lease_id) for lease_id in restart.granted} == dict.fromkeys(restart.granted, "success")
    assert set(outcomes) == set(restart.granted), "leases opened for REST clients that never heard of them"


def test_every_relayed_lease_ends_with_its_outcome(restart, postgres):
    still_open = postgres.query("SELECT id, client_name, leased_at FROM tokens_lease WHERE reported_at IS NULL")
    assert not still_open, f"leases left open: {still_open}\n{restart.summary}"
    relayed = dict(postgres.query("SELECT outcome, count(*) FROM tokens_lease WHERE client_name = 'relay' GROUP BY 1"))
    assert set(relayed) == {"success"}, relayed


def test_tokens_count_every_recorded_success(restart, postgres):
    [(successes,)] = postgres.query("SELECT count(*) FROM tokens_lease WHERE outcome = 'success'")
    [(token_successes,)] = postgres.query("SELECT sum(success_count) FROM tokens_hftoken")
    assert token_successes == successes


def test_usage_report_agrees_with_the_leases(restart, postgres, portal):
    # Counts whose upsert met the outage are kept by the worker and added a moment later
    # (tokens.services.USAGE_RETRY_PAUSES): they agree once that has happened.
    seen = {}

    def agree() -> bool:
        [(leases, successes, closed)] = postgres.query(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'success'), count(*) FILTER (WHERE reported_at IS NOT NULL)"
            " FROM tokens_lease"
        )
        with httpx.Client(base_url=portal.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as admin:
            [usage] = admin.get("/admin/usage", params={"group_by": "pool"}).json()["rows"]
        seen.update(usage=usage, leases=(leases, successes, leases - closed))
        return (usage["leases"], usage["successes"], usage["open"]) == (leases, successes, leases - closed)

    assert eventually(agree), seen
