"""Streamed chat through the portal's relay, against calling upstream directly and against LiteLLM's proxy.

    .venv/bin/python bench/relay.py [--requests N] [--concurrency 1,20,200] [--skip-litellm]

What it starts (all on 127.0.0.1, free ports, stopped again at the end):

- the project's stand-in upstream (tokens/standin.py) under uvicorn, as `manage.py standin_upstream` serves it, the "Hugging Face" every target ends at;
- the portal (portal.asgi) under one daphne worker, with a throwaway PORTAL_VAR_DIR and SQLite database,
  migrated and bootstrapped with a fixed PORTAL_ADMIN_API_KEY, PORTAL_MAX_CONCURRENT_REQUESTS=2000 and
  LOG_LEVEL=WARNING, and 20 good tokens added through POST /admin/tokens;
- LiteLLM's proxy (one uvicorn worker, a master key, no database) routing model `standin/echo` to the
  stand-in. It is installed with `pip install 'litellm[proxy]'` into its own virtualenv, kept between runs
  in /tmp/portal-bench-litellm-venv (--litellm-venv; delete the folder to reinstall). If it cannot be
  installed or started, the reason is printed and the LiteLLM rows are left out.

What it measures, per target and concurrency: N chat requests (`stream: true`, model standin/echo,
max_tokens 16, so 16 content chunks then a last chunk and [DONE]) sent by C asyncio workers, each worker
sending its requests one after another. Targets:

    direct     POST stand-in /v1/chat/completions with an HF token as Bearer (the floor)
    sse        POST portal /v1/chat/completions with the portal admin key (lease, relay, report)
    websocket  portal /ws/chat/ with the admin key as Bearer; one connection per worker, opened before the clock
               starts, chat.request frames sent one after another on it
    litellm    POST LiteLLM /v1/chat/completions with its master key

HTTP targets share one httpx.AsyncClient per target (connection pool large enough for every worker).
Per request: time to first chunk (TTFC: first `data:` event with non-empty delta content, or first
chat.delta frame) and time to completion ([DONE], or chat.end). An error is a non-200 status, an error
event or chat.error frame, a stream without [DONE] / chat.end, no content at all, or an exception.
req/s is requests (errors included) over the wall time of the run. Each target gets 20 warm-up requests
first, not counted. Defaults: 500 requests at concurrency 1 (its medians move by milliseconds between
runs of 200), 1,000 at 20 and 200.

Then a websocket capacity check: --ws-connections (1,000) websockets opened at once on the one portal
worker, and once all are open every one sends one chat.request at the same moment; it reports how many
connected, how many streams completed without error, and the time taken.

The portal runs as `make run` runs it (daphne's defaults, so a websocket must finish its handshake, the
consumer's connect() included, within daphne's --websocket_connect_timeout of 5 s). If a server this script
started exits, the bench stops and says so; --keep-logs DIR keeps the servers' logs.

Everything (client, stand-in, portal, LiteLLM) shares this machine's CPUs, so the numbers are a
comparison between targets under the same conditions, not absolute capacity.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.protocol import State

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (  # noqa: E402
    ADMIN_KEY,
    CLIENT_CONNECTIONS,
    PYTHON,
    Processes,
    bench_run,
    clean_env,
    free_port,
    percentile,
    profile_portal,
    start_portal,
    start_standin,
    wait_until,
)

LITELLM_MASTER_KEY = "sk-bench-litellm-master-key"
LITELLM_UPSTREAM_KEY = "hf_standin_bench_key_x"
MODEL = "standin/echo"
TOKENS = 20
WARMUP = 20
REQUEST_TIMEOUT = 60.0
CAPACITY_TIMEOUT = 300.0
MESSAGES = [{"role": "user", "content": "Tell me something about relays"}]


# --- LiteLLM ---------------------------------------------------------------------------------------


def litellm_install(venv: Path) -> Path:
    """The litellm executable in its own virtualenv, installed on the first run and reused afterwards."""
    executable = venv / "bin" / "litellm"
    if executable.exists():
        return executable
    print(f"installing litellm[proxy] into {venv} (once; later runs reuse it) …", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "litellm[proxy]"],
        capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0 or not executable.exists():
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(f"pip install 'litellm[proxy]' failed: {(result.stderr or result.stdout)[-1500:]}")
    return executable


def start_litellm(procs: Processes, workdir: Path, standin: str, venv: Path) -> str:
    executable = litellm_install(venv)
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    config = workdir / "litellm-config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {standin}/v1\n"
        f"      api_key: {LITELLM_UPSTREAM_KEY}\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )
    port = free_port()
    env = clean_env(
        LITELLM_LOG="ERROR",  # also the uvicorn log level: no access log line per request
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch from GitHub at start (no network here)
        LITELLM_MODE="PRODUCTION",  # no .env loading
        LITELLM_TELEMETRY="False",
        PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
    )
    process = procs.start(
        "litellm",
        [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env,
        workdir / "litellm.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200, "LiteLLM", 180, process)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its log ends with:\n{tail(workdir / 'litellm.log', 20)}") from None
    print(f"LiteLLM {version} listening at {url}", flush=True)
    return url


def summarize_log(path: Path) -> None:
    """The portal's ERROR/WARNING lines and the exceptions ending its tracebacks, counted."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    counts = Counter()
    for line in lines:
        if not line or line[0].isspace() or line.startswith(("Traceback", "The above", "During handling")):
            continue
        # "2026-01-01 12:00:00,123 ERROR logger message": drop the timestamp so equal lines count together
        parts = line.split(" ", 2)
        counts[(parts[2] if len(parts) == 3 and parts[0][:2].isdigit() else line)[:200]] += 1
    if counts:
        print(f"\nportal log: {len(lines)} lines; most frequent entries:")
        for entry, count in counts.most_common(8):
            print(f"  ×{count}: {entry}")


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the load ---------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    ttfc: list[float] = field(default_factory=list)  # seconds, successful requests only
    done: list[float] = field(default_factory=list)
    messages: Counter = field(default_factory=Counter)
    server_cpu: float = 0.0  # CPU seconds the target's server used during the run

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class RequestFailed(Exception):
    pass


def chat_body(max_tokens: int) -> dict:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "stream": True}


async def sse_request(client: httpx.AsyncClient, url: str, headers: dict, max_tokens: int) -> tuple[float, float]:
    """One streamed chat over HTTP: (time to first content chunk, time to [DONE]) or RequestFailed."""
    began = time.perf_counter()
    first = done = None
    async with client.stream("POST", url, json=chat_body(max_tokens), headers=headers) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode("utf-8", "replace")
            raise RequestFailed(f"HTTP {response.status_code}: {body[:200]}")
        async for line in response.aiter_lines():
            # After [DONE], read on to the end of the body, as the openai SDK does: a response left unread
            # costs its keep-alive connection, and the next request a new one.
            if done is not None or not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                if first is None:
                    raise RequestFailed("stream ended without any content")
                done = time.perf_counter() - began
                continue
            event = json.loads(payload)
            if event.get("error"):
                raise RequestFailed(f"error event: {json.dumps(event)[:200]}")
            if first is None:
                choices = event.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter() - began
    if done is None:
        raise RequestFailed("stream ended without [DONE]")
    return first, done


async def ws_request(ws, request_id: str, max_tokens: int) -> tuple[float, float]:
    """One chat over an open /ws/chat/ connection: (time to first chat.delta, time to chat.end)."""
    began = time.perf_counter()
    first = None
    frame = {"type": "chat.request", "id": request_id, "model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
    await ws.send(json.dumps(frame))
    while True:
        message = json.loads(await ws.recv())
        kind = message.get("type")
        if kind == "chat.delta":
            if first is None and message.get("content"):
                first = time.perf_counter() - began
        elif kind == "chat.end":
            if first is None:
                raise RequestFailed(f"chat.end without any chat.delta: {json.dumps(message)[:200]}")
            return first, time.perf_counter() - began
        elif kind == "chat.error":
            raise RequestFailed(f"chat.error {message.get('error_type')}: {str(message.get('error'))[:200]}")


async def timed(result: Result, attempt, timeout: float = REQUEST_TIMEOUT) -> None:
    try:
        first, done = await asyncio.wait_for(attempt, timeout)
    except Exception as exc:  # noqa: BLE001 - every failure is counted and its message kept
        result.errors += 1
        text = str(exc) or type(exc).__name__
        result.messages[f"{type(exc).__name__}: {text}"[:240]] += 1
    else:
        result.ttfc.append(first)
        result.done.append(done)


def http_clients(concurrency: int, timeout: httpx.Timeout) -> list[httpx.AsyncClient]:
    """Enough clients for `concurrency` workers, CLIENT_CONNECTIONS workers to a client: httpx walks its
    whole pool of kept-alive connections on every request, so one client holding 200 of them made the
    client, not the server, the bottleneck at c=200 (as bench/lease.py found)."""
    limits = httpx.Limits(max_connections=CLIENT_CONNECTIONS + 2, max_keepalive_connections=CLIENT_CONNECTIONS + 2)
    return [httpx.AsyncClient(limits=limits, timeout=timeout) for _ in range(-(-concurrency // CLIENT_CONNECTIONS))]


async def run_http(name: str, clients: list[httpx.AsyncClient], url: str, headers: dict, requests: int, concurrency: int, max_tokens: int) -> Result:
    result = Result(name, concurrency, requests)
    counter = itertools.count()

    async def worker(client: httpx.AsyncClient):
        while next(counter) < requests:
            await timed(result, sse_request(client, url, headers, max_tokens))

    began = time.perf_counter()
    await asyncio.gather(*(worker(clients[number // CLIENT_CONNECTIONS % len(clients)]) for number in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


def ws_url(portal: str) -> str:
    return portal.replace("http://", "ws://", 1) + "/ws/chat/"


async def open_ws(portal: str):
    return await ws_connect(
        ws_url(portal), additional_headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        open_timeout=REQUEST_TIMEOUT, ping_interval=None, compression=None, max_queue=None,
    )


async def run_ws(portal: str, requests: int, concurrency: int, max_tokens: int) -> Result:
    result = Result("websocket", concurrency, requests)
    counter = itertools.count()
    opened = await asyncio.gather(*(open_ws(portal) for _ in range(concurrency)), return_exceptions=True)
    connections = [ws for ws in opened if not isinstance(ws, BaseException)]
    for failure in (ws for ws in opened if isinstance(ws, BaseException)):
        result.messages[f"connect: {type(failure).__name__}: {failure}"[:240]] += 1

    async def worker(ws, number: int):
        for sequence in itertools.count():
            if next(counter) >= requests:
                break
            if ws is None or ws.state is not State.OPEN:  # the portal closed it: count that, open another
                with contextlib.suppress(Exception):
                    ws = await open_ws(portal)
                if ws is None or ws.state is not State.OPEN:
                    result.errors += 1
                    result.messages["could not reopen the websocket"] += 1
                    continue
            await timed(result, ws_request(ws, f"w{number}-{sequence}", max_tokens))
        if ws is not None:
            await ws.close()

    began = time.perf_counter()
    try:
        slots = connections + [None] * (concurrency - len(connections))  # a failed connect is retried by its worker
        await asyncio.gather(*(worker(ws, n) for n, ws in enumerate(slots)))
    finally:
        result.seconds = time.perf_counter() - began
        await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    return result


async def ws_capacity(portal: str, connections: int, max_tokens: int) -> None:
    """Open N websockets at once, then start one stream on every one of them at the same moment."""
    began = time.perf_counter()
    opened = await asyncio.gather(*(open_ws(portal) for _ in range(connections)), return_exceptions=True)
    connect_seconds = time.perf_counter() - began
    sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
    failures = Counter(f"{type(ws).__name__}: {ws}"[:200] for ws in opened if isinstance(ws, BaseException))
    result = Result("ws-capacity", connections, connections)
    started = time.perf_counter()
    try:
        # A generous timeout: the question is whether every stream completes, not how fast.
        await asyncio.gather(
            *(timed(result, ws_request(ws, f"cap-{n}", max_tokens), CAPACITY_TIMEOUT) for n, ws in enumerate(sockets))
        )
    finally:
        result.seconds = time.perf_counter() - started
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    completed = len(result.done)
    print(f"\nwebsocket capacity: {connections} connections on one portal worker, one {max_tokens}-token stream each, all at once")
    print(f"  connected       {len(sockets)}/{connections} in {connect_seconds:.2f} s")
    print(f"  completed       {completed}/{connections} without error; all streams done in {result.seconds:.2f} s "
          f"({completed / result.seconds if result.seconds else 0:.0f} streams/s)")
    if result.ttfc:
        print(f"  TTFC p50/p99    {percentile(result.ttfc, 50):.0f} / {percentile(result.ttfc, 99):.0f} ms; "
              f"completion p50/p99 {percentile(result.done, 50):.0f} / {percentile(result.done, 99):.0f} ms")
    for message, count in (failures + result.messages).most_common(5):
        print(f"  error ×{count}: {message}")


# --- the report ---------------------------------------------------------------------------------------


# Whose CPU time a target's row shows: the server that answers it (the stand-in's own work is not counted
# for the portal or LiteLLM).
SERVER_OF = {"direct": "stand-in", "sse": "portal", "websocket": "portal", "litellm": "litellm"}

HEADER = (
    f"{'target':<10}{'conc':>6}{'requests':>10}{'errors':>8}{'req/s':>9}{'TTFC p50 ms':>13}{'TTFC p99 ms':>13}"
    f"{'done p50 ms':>13}{'CPU ms/req':>12}"
)


def row(result: Result) -> str:
    return (
        f"{result.target:<10}{result.concurrency:>6}{result.requests:>10}{result.errors:>8}{result.rate:>9.1f}"
        f"{percentile(result.ttfc, 50):>13.1f}{percentile(result.ttfc, 99):>13.1f}{percentile(result.done, 50):>13.1f}"
        f"{1000 * result.server_cpu / max(result.requests, 1):>12.2f}"
    )


def print_ratios(results: dict[tuple[str, int], Result], levels: list[int]) -> None:
    print()
    for level in levels:
        sse, litellm = results.get(("sse", level)), results.get(("litellm", level))
        if sse and litellm and litellm.rate:
            print(f"portal SSE req/s ÷ LiteLLM req/s at c={level}: {sse.rate:.1f} / {litellm.rate:.1f} = {sse.rate / litellm.rate:.2f}×")
        ws = results.get(("websocket", level))
        if ws and litellm and litellm.rate:
            print(f"portal websocket req/s ÷ LiteLLM req/s at c={level}: {ws.rate:.1f} / {litellm.rate:.1f} = {ws.rate / litellm.rate:.2f}×")
    direct = results.get(("direct", 1))
    if direct and direct.ttfc:
        base = percentile(direct.ttfc, 50)
        for name in ("sse", "websocket", "litellm"):
            other = results.get((name, 1))
            if other and other.ttfc:
                print(f"{name} TTFC p50 − direct TTFC p50 at c=1: {percentile(other.ttfc, 50):.1f} − {base:.1f} = {percentile(other.ttfc, 50) - base:+.1f} ms")


async def bench(args, procs: "Processes", standin: str, portal: str, litellm: str | None) -> dict[tuple[str, int], Result]:
    levels = args.concurrency
    timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=30)
    targets = [
        ("direct", f"{standin}/v1/chat/completions", {"Authorization": "Bearer hf_bench_00_xxxxxxxxxxxxxxxx"}),
        ("sse", f"{portal}/v1/chat/completions", {"Authorization": f"Bearer {ADMIN_KEY}"}),
        ("websocket", None, None),
    ]
    if litellm:
        targets.append(("litellm", f"{litellm}/v1/chat/completions", {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}))
    targets = [target for target in targets if target[0] in args.targets]
    results = {}
    print("\n" + HEADER, flush=True)
    for name, url, headers in targets:
        clients = http_clients(max(levels), timeout) if url else []
        try:
            if clients:
                warm = await run_http(name, clients, url, headers, WARMUP, 5, args.max_tokens)
            else:
                warm = await run_ws(portal, WARMUP, 5, args.max_tokens)
            procs.check_alive()
            if warm.errors:
                print(f"  (warm-up of {name}: {warm.errors} errors: {warm.messages.most_common(1)[0][0]})")
            for level in levels:
                procs.check_alive()
                requests = args.requests or (500 if level == 1 else 1000)
                cpu_before = procs.cpu_seconds(SERVER_OF[name])
                if clients:
                    result = await run_http(name, clients, url, headers, requests, level, args.max_tokens)
                else:
                    result = await run_ws(portal, requests, level, args.max_tokens)
                result.server_cpu = procs.cpu_seconds(SERVER_OF[name]) - cpu_before
                results[name, level] = result
                print(row(result), flush=True)
                for message, count in result.messages.most_common(3):
                    print(f"    error ×{count}: {message}", flush=True)
        finally:
            for client in clients:
                await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=0, help="requests per run (default: 500 at c=1, 1000 otherwise)")
    parser.add_argument("--concurrency", default="1,20,200", help="comma-separated worker counts (default 1,20,200)")
    parser.add_argument("--max-tokens", type=int, default=16, help="chunks per stream (default 16)")
    parser.add_argument("--ws-connections", type=int, default=1000, help="websockets in the capacity check (0: skip it)")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--litellm-venv", type=Path, default=Path(tempfile.gettempdir()) / "portal-bench-litellm-venv",
        help="LiteLLM's virtualenv, created on the first run and reused (default /tmp/portal-bench-litellm-venv)",
    )
    parser.add_argument(
        "--targets", default="direct,sse,websocket,litellm", help="which targets to run (default: all of them)"
    )
    parser.add_argument(
        "--profile", type=Path, help="record the portal worker with py-spy into this speedscope file while the bench runs"
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this folder before cleaning up")
    args = parser.parse_args()
    args.concurrency = [int(part) for part in args.concurrency.split(",") if part.strip()]
    args.targets = {part.strip() for part in args.targets.split(",") if part.strip()}

    def after_stop(workdir: Path) -> None:
        if (workdir / "portal.log").exists():
            summarize_log(workdir / "portal.log")
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
            print(f"logs kept in {args.keep_logs}")

    with bench_run("relay", after_stop=after_stop) as (procs, workdir):
        standin = start_standin(procs, workdir)
        portal, _ = start_portal(procs, workdir, standin, tokens=TOKENS)
        print(f"stand-in at {standin}, portal at {portal} ({TOKENS} tokens)", flush=True)
        litellm = None
        if args.profile:
            profile_portal(procs, args.profile)
        if not args.skip_litellm and "litellm" in args.targets:
            try:
                litellm = start_litellm(procs, workdir, standin, args.litellm_venv)
            except Exception as exc:  # noqa: BLE001 - the bench goes on without it
                print(f"LiteLLM left out: {exc}", flush=True)
        results = asyncio.run(bench(args, procs, standin, portal, litellm))
        print_ratios(results, args.concurrency)
        if args.ws_connections:
            procs.check_alive()
            asyncio.run(ws_capacity(portal, args.ws_connections, args.max_tokens))
        procs.check_alive()


if __name__ == "__main__":
    main()
