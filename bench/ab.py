"""An interleaved A/B run of the relay at low concurrency: this tree against another commit.

    .venv/bin/python bench/ab.py [--base REV] [--rounds 8] [--requests 300] [--concurrency 1]

On this 2-core machine a concurrency-1 run of bench/relay.py moves by ±15% from one run to the next (the
direct target's too), so a change worth 5–10% cannot be seen by running the two versions one after the
other. This runs both at once instead: one stand-in upstream, and two daphne portal workers started as
bench/relay.py starts its one (SQLite, 20 tokens), one from this working tree ("new") and one from a
throwaway git worktree of --base ("base", default HEAD). Then --rounds rounds, each sending --requests
streamed chats through `POST /v1/chat/completions` to each worker in turn, the order alternating, so
both see the same moments of the machine. It prints each round and the medians per side, and the median
of the per-round differences: what a change did, with the spread of the rounds to judge it by.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay import WARMUP, http_clients, run_http  # noqa: E402
from servers import ADMIN_KEY, ROOT, Processes, bench_run, percentile, start_portal, start_standin  # noqa: E402

SIDES = ("base", "new")


def worktree_of(rev: str, folder: Path) -> Path:
    tree = folder / BASE_TREE
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
    return tree


def remove_worktree(folder: Path) -> None:
    if (folder / BASE_TREE).exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder / BASE_TREE)], check=False)


BASE_TREE = "base-tree"


async def rounds(args, procs: Processes, portals: dict[str, str]) -> dict[str, list[tuple[float, float, float]]]:
    """Per side, per round: (req/s, TTFC p50 ms, server CPU ms per request)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    measured = {side: [] for side in SIDES}
    clients = {side: http_clients(args.concurrency, httpx.Timeout(60)) for side in SIDES}
    try:
        for side in SIDES:
            await run_http(side, clients[side], f"{portals[side]}/v1/chat/completions", headers, WARMUP, 5, args.max_tokens)
        print(f"{'round':>5}  {'side':<5}{'req/s':>9}{'TTFC p50 ms':>13}{'CPU ms/req':>12}", flush=True)
        for number in range(args.rounds):
            for side in SIDES if number % 2 == 0 else reversed(SIDES):
                procs.check_alive()
                cpu_before = procs.cpu_seconds(side)
                result = await run_http(
                    side, clients[side], f"{portals[side]}/v1/chat/completions", headers, args.requests, args.concurrency, args.max_tokens
                )
                if result.errors:
                    raise RuntimeError(f"{side}: {result.errors} errors, e.g. {result.messages.most_common(1)[0][0]}")
                cpu = (procs.cpu_seconds(side) - cpu_before) * 1000 / result.requests
                measured[side].append((result.rate, percentile(result.ttfc, 50), cpu))
                print(f"{number + 1:>5}  {side:<5}{result.rate:>9.1f}{percentile(result.ttfc, 50):>13.2f}{cpu:>12.2f}", flush=True)
    finally:
        for client in [client for side in SIDES for client in clients[side]]:
            await client.aclose()
    return measured


def summarize(measured: dict[str, list[tuple[float, float, float]]]) -> None:
    print(f"\n{'':<28}{'base':>10}{'new':>10}{'new − base, per round: median [min, max]':>44}")
    for index, label in enumerate(("req/s", "TTFC p50 ms", "server CPU ms/req")):
        base = [values[index] for values in measured["base"]]
        new = [values[index] for values in measured["new"]]
        differences = [after - before for before, after in zip(base, new)]
        print(
            f"{label + ' (median of rounds)':<28}{statistics.median(base):>10.2f}{statistics.median(new):>10.2f}"
            f"{statistics.median(differences):>+22.2f} [{min(differences):+.2f}, {max(differences):+.2f}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="the commit to compare this working tree with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds; each runs both sides once (default 8)")
    parser.add_argument("--requests", type=int, default=300, help="streamed chats per side per round (default 300)")
    parser.add_argument("--concurrency", type=int, default=1, help="clients sending at once (default 1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="chunks per stream (default 16)")
    args = parser.parse_args()

    with bench_run("ab", after_stop=remove_worktree) as (procs, workdir):
        base_tree = worktree_of(args.base, workdir)
        standin = start_standin(procs, workdir)
        portals = {
            "base": start_portal(procs, workdir, standin, root=base_tree, name="base")[0],
            "new": start_portal(procs, workdir, standin, root=ROOT, name="new")[0],
        }
        print(f"base = {args.base} at {portals['base']}, new = this working tree at {portals['new']}", flush=True)
        summarize(asyncio.run(rounds(args, procs, portals)))


if __name__ == "__main__":
    main()
