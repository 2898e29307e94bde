"""Memory of one portal worker across many streamed chat requests: it must stay flat (within 10%).

    .venv/bin/python bench/memory.py [--requests 100000] [--concurrency 20] [--every 10000]

Starts the stand-in and one daphne portal worker on SQLite (as bench/relay.py does), warms the worker up
with 2,000 streamed requests, then sends --requests more through POST /v1/chat/completions (stream, 16
chunks each) from --concurrency clients, printing the worker's resident memory (RSS, from /proc) after
the warm-up and after every --every requests. The verdict compares the last reading with the one after
the warm-up.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import ADMIN_KEY, bench_run, start_portal, start_standin  # noqa: E402

WARMUP = 2000
BODY = {
    "model": "standin/echo",
    "messages": [{"role": "user", "content": "Tell me something about memory"}],
    "max_tokens": 16,
    "stream": True,
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for the portal process")


async def stream_many(client: httpx.AsyncClient, count: int, concurrency: int) -> int:
    """Send `count` streamed requests; returns how many failed."""
    remaining = iter(range(count))
    failures = 0

    async def worker():
        nonlocal failures
        for _ in remaining:
            try:
                async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
                    body = b"".join([piece async for piece in response.aiter_raw()])
                if response.status_code != 200 or not body.rstrip().endswith(b"data: [DONE]"):
                    failures += 1
            except httpx.HTTPError:
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def soak(url: str, pid: int, requests: int, concurrency: int, every: int) -> None:
    limits = httpx.Limits(max_connections=concurrency + 5, max_keepalive_connections=concurrency + 5)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        failures = await stream_many(client, WARMUP, concurrency)
        baseline = rss_mib(pid)
        print(f"after {WARMUP:>7} warm-up requests: RSS {baseline:7.1f} MiB ({failures} failed)", flush=True)
        done, started, last = 0, time.perf_counter(), baseline
        while done < requests:
            batch = min(every, requests - done)
            failures += await stream_many(client, batch, concurrency)
            done += batch
            last = rss_mib(pid)
            rate = done / (time.perf_counter() - started)
            print(f"after {done:>7} requests:         RSS {last:7.1f} MiB ({failures} failed, {rate:.0f} req/s)", flush=True)
    growth = (last - baseline) / baseline * 100
    print(f"\nRSS {baseline:.1f} → {last:.1f} MiB over {requests} requests: {growth:+.1f}% (target within ±10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--every", type=int, default=10_000, help="print the RSS after this many requests")
    args = parser.parse_args()
    with bench_run("memory") as (procs, workdir):
        standin = start_standin(procs, workdir)
        url, _ = start_portal(procs, workdir, standin, tokens=20)
        portal = next(process for name, process in procs.running if name == "portal")
        asyncio.run(soak(url, portal.pid, args.requests, args.concurrency, args.every))


if __name__ == "__main__":
    main()
