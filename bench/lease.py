"""Leasing throughput: provision + report pairs against a trivial endpoint of the same server, in one run.

    .venv/bin/python bench/lease.py [--pairs N] [--concurrency C] [--load F] [--url URL --admin-key KEY]

Without --url it starts one daphne portal worker on a throwaway SQLite database (as bench/relay.py does),
bootstrapped with a fixed admin key and 20 tokens. With --url it measures a running portal instead (a
cluster behind nginx, `make cluster`), given its admin key.

What it measures, with C asyncio clients (default 32; httpx clients of 4 connections each), after 50
warm-up requests of each kind:

    trivial   GET /healthz (through Django)                N requests, C clients that never pause
    lease     GET /keys/provision/hf, then POST /keys/report/hf with the lease's token_id and lease_id,
              status "success"                             N pairs (2N requests), the same way
    F load    lease pairs started at F times the pairs/s the lease run reached (--load, default 25% and
              50%), evenly spaced, for 15 s each, at most C at once: latency below saturation

and prints requests per second, pairs per second and latency p50/p99 per request. Targets (issue 6): the
lease path keeps at least half of the trivial endpoint's requests per second, and a p99 under 20 ms on
one worker. With C clients that never pause, latency is at least C ÷ throughput however fast the server
is; the paced run shows the latency a client sees below saturation. The client shares the machine's CPUs
with the server, so the numbers compare the paths under the same conditions; they are not the server's
absolute capacity.
"""

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import ADMIN_KEY, CLIENT_CONNECTIONS, bench_run, percentile, start_portal  # noqa: E402

WARMUP = 50
PACED_SECONDS = 15


@dataclass
class Run:
    name: str
    requests: int = 0
    pairs: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds per HTTP request
    server_cpu: float | None = None  # CPU seconds the server used (when this script started it)

    def line(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        pairs = f"{self.pairs / self.seconds:>9.1f}" if self.pairs else f"{'':>9}"
        cpu = f"{1000 * self.server_cpu / max(self.requests, 1):>12.2f}" if self.server_cpu is not None else ""
        return (
            f"{self.name:<9}{self.requests:>9}{self.errors:>8}{rate:>11.1f}{pairs}"
            f"{percentile(self.latencies, 50):>10.1f}{percentile(self.latencies, 99):>10.1f}{cpu}"
        )


async def timed(run: Run, client: httpx.AsyncClient, method: str, url: str, **kwargs) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError:
        run.errors += 1
        return None
    run.latencies.append(time.perf_counter() - started)
    run.requests += 1
    if response.status_code != 200:
        run.errors += 1
        return None
    return response


async def trivial(run: Run, client: httpx.AsyncClient) -> None:
    await timed(run, client, "GET", "/healthz")


async def lease_pair(run: Run, client: httpx.AsyncClient) -> None:
    leased = await timed(run, client, "GET", "/keys/provision/hf")
    if leased is None:
        return
    grant = leased.json()
    report = {"token_id": grant["token_id"], "lease_id": grant["lease_id"], "status": "success"}
    if await timed(run, client, "POST", "/keys/report/hf", json=report) is not None:
        run.pairs += 1


SERVER_CPU = None  # () -> CPU seconds the server has used so far, when this script started it


def _cpu_now() -> float | None:
    return SERVER_CPU() if SERVER_CPU else None


def _with_cpu(run: Run, before: float | None) -> Run:
    if before is not None:
        run.server_cpu = _cpu_now() - before
    return run


async def measure(name: str, work, clients: list[httpx.AsyncClient], count: int, concurrency: int) -> Run:
    run, cpu_before = Run(name), _cpu_now()
    remaining = iter(range(count))

    async def worker(client: httpx.AsyncClient):
        for _ in remaining:
            await work(run, client)

    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[n % len(clients)]) for n in range(concurrency)))
    run.seconds = time.perf_counter() - started
    return _with_cpu(run, cpu_before)


async def paced(name: str, work, clients: list[httpx.AsyncClient], rate: float, seconds: float, concurrency: int) -> Run:
    """Open loop: start `work` `rate` times a second, evenly spaced, whether or not earlier ones have
    finished (at most `concurrency` at once; a start that finds them all busy waits its turn)."""
    run, cpu_before = Run(name), _cpu_now()
    slots = asyncio.Semaphore(concurrency)

    async def one(n: int):
        async with slots:
            await work(run, clients[n % len(clients)])

    started = time.perf_counter()
    tasks = []
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(n)))
    await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - started
    return _with_cpu(run, cpu_before)


async def bench(url: str, key: str, pairs: int, concurrency: int, loads: list[float]) -> tuple[Run, Run, list[Run]]:
    # httpcore walks its whole pool for every request: one client holding 32 connections cost this client
    # 5.6 ms of CPU per request, more than the server spent, so the bench measured itself. Clients of
    # CLIENT_CONNECTIONS connections each cost about 1.7 ms.
    count = max(1, concurrency // CLIENT_CONNECTIONS)
    limits = httpx.Limits(max_connections=CLIENT_CONNECTIONS + 2, max_keepalive_connections=CLIENT_CONNECTIONS + 2)
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) for _ in range(count)]
    try:
        probe = await clients[0].get("/healthz")
        if probe.status_code != 200:
            raise RuntimeError(f"GET /healthz answered {probe.status_code}: the trivial endpoint is missing")
        await measure("warm-up", trivial, clients, WARMUP, concurrency)
        await measure("warm-up", lease_pair, clients, WARMUP, concurrency)
        # Trivial first, lease second, trivial again: the slower of the two trivial runs is the one compared,
        # so a machine that slows down during the run cannot flatter the lease path.
        first = await measure("trivial", trivial, clients, pairs, concurrency)
        lease = await measure("lease", lease_pair, clients, pairs, concurrency)
        second = await measure("trivial", trivial, clients, pairs, concurrency)
        capacity = lease.pairs / lease.seconds
        at_loads = [
            await paced(f"{load:.0%} load", lease_pair, clients, load * capacity, PACED_SECONDS, concurrency)
            for load in loads
        ]
    finally:
        for client in clients:
            await client.aclose()
    slower = min((first, second), key=lambda run: run.requests / run.seconds)
    return slower, lease, at_loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000, help="lease+report pairs, and trivial requests (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (default 32)")
    parser.add_argument("--load", default="0.25,0.5", help="the paced runs' shares of the measured lease capacity (default 0.25,0.5)")
    parser.add_argument("--url", help="a running portal (e.g. the nginx of `make cluster`) instead of starting one")
    parser.add_argument("--admin-key", default=ADMIN_KEY, help="its admin API key (with --url)")
    args = parser.parse_args()
    with bench_run("lease") as (procs, workdir):
        if args.url:
            url, where = args.url.rstrip("/"), args.url
        else:
            # No upstream is called when leasing: the stand-in's address is never used.
            url, _ = start_portal(procs, workdir, "http://127.0.0.1:9", tokens=20)
            global SERVER_CPU
            SERVER_CPU = lambda: procs.cpu_seconds("portal")  # noqa: E731
            where = "one daphne worker, SQLite, 20 tokens"
        loads = [float(load) for load in args.load.split(",")]
        trivial_run, lease_run, paced_runs = asyncio.run(bench(url, args.admin_key, args.pairs, args.concurrency, loads))

    print(f"\n{where}; concurrency {args.concurrency}")
    cpu_title = f"{'CPU ms/req':>12}" if SERVER_CPU else ""
    print(f"{'target':<9}{'requests':>9}{'errors':>8}{'req/s':>11}{'pairs/s':>9}{'p50 ms':>10}{'p99 ms':>10}{cpu_title}")
    print(trivial_run.line())
    print(lease_run.line())
    for run in paced_runs:
        print(run.line())
    trivial_rate = trivial_run.requests / trivial_run.seconds
    lease_rate = lease_run.requests / lease_run.seconds
    print(f"\nlease req/s ÷ trivial req/s: {lease_rate:.1f} / {trivial_rate:.1f} = {lease_rate / trivial_rate:.2f} (target ≥ 0.5)")
    paced = ", ".join(f"{percentile(run.latencies, 99):.1f} ms at {run.name}" for run in paced_runs)
    print(f"lease p99: {percentile(lease_run.latencies, 99):.1f} ms with {args.concurrency} clients that never pause; "
          f"paced: {paced} (target < 20 ms on one worker)")


if __name__ == "__main__":
    main()
