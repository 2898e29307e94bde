"""What the benchmarks share: starting and stopping the stand-in and a portal worker on free ports."""

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
sys.path.insert(0, str(ROOT))

from tokens.standin import standin_command  # noqa: E402  plain ASGI, no Django needed

ADMIN_KEY = "pk_bench_portal_admin_key_0123456789abcdef"
CLIENT_CONNECTIONS = 4  # connections per httpx client of a bench: see relay.http_clients


def raise_fd_limit() -> None:
    """1,000 websockets plus their upstream streams need more descriptors than a default 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextlib.contextmanager
def bench_run(name: str, *, after_stop=None):
    """What each bench's main() does around its work: a higher descriptor limit, and a scratch folder and
    the servers it starts, yielded as (procs, workdir). On the way out a RuntimeError (a server that died
    or never came up) becomes a message and exit code 1; the servers stop; `after_stop(workdir)` runs,
    with their logs complete; the folder is deleted; and the run's length is printed."""
    raise_fd_limit()
    started = time.perf_counter()
    procs, workdir = Processes(), Path(tempfile.mkdtemp(prefix=f"portal-bench-{name}-"))
    failed = False
    try:
        yield procs, workdir
    except RuntimeError as exc:
        print(f"\nbench stopped: {exc}", flush=True)
        failed = True
    finally:
        procs.stop_all()
        if after_stop is not None:
            after_stop(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if failed:
        sys.exit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """The servers this script started, each in its own process group so its children stop with it."""

    def __init__(self):
        self.running: list[tuple[str, subprocess.Popen]] = []
        self.stop_signals: dict[int, int] = {}

    def start(self, name: str, args: list[str], env: dict, log: Path, stop_signal=signal.SIGTERM, cwd: Path = ROOT) -> subprocess.Popen:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running.append((name, process))
        self.stop_signals[process.pid] = stop_signal
        return process

    def cpu_seconds(self, name: str) -> float:
        """CPU time (user + system) used so far by a server's whole process group."""
        group = next(process.pid for running, process in self.running if running == name)
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == group:  # field 5, pgrp, counted after the ")" that ends the command name
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        """Stop the bench when a server it depends on has gone, instead of timing a dead target."""
        for name, process in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"the {name} process (pid {process.pid}) exited with code {process.returncode}")

    def stop_all(self) -> None:
        for name, process in reversed(self.running):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, self.stop_signals.get(process.pid, signal.SIGTERM))
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        self.running.clear()


def clean_env(**extra: str) -> dict:
    """This environment without anything that would point a server at a shared database or Redis."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def start_standin(procs: Processes, workdir: Path) -> str:
    port = free_port()
    process = procs.start(
        "stand-in",
        standin_command("127.0.0.1", port),
        clean_env(),
        workdir / "standin.log",
    )
    wait_until(lambda: port_open(port), "the stand-in upstream", 30, process)
    return f"http://127.0.0.1:{port}"


def start_portal(
    procs: Processes, workdir: Path, standin: str, tokens: int = 20, *, root: Path = ROOT, name: str = "portal", **env_extra: str
) -> tuple[str, Path]:
    """One daphne worker on its own SQLite database, bootstrapped with ADMIN_KEY, with `tokens` good tokens;
    `root` is the source tree it runs (bench/ab.py runs two), `name` what Processes calls it."""
    var_dir = workdir / f"{name}-var"
    var_dir.mkdir()
    env = clean_env(
        PORTAL_VAR_DIR=str(var_dir),
        PORTAL_ADMIN_API_KEY=ADMIN_KEY,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        HF_API_BASE=standin,
        HF_INFERENCE_BASE_URL=f"{standin}/v1",
        PORTAL_MAX_CONCURRENT_REQUESTS="2000",
        PORTAL_KEY_RATE_LIMIT_PER_MINUTE="0",  # one key drives the whole benchmark
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="portal.settings",
        **env_extra,
    )
    manage = [PYTHON, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, cwd=root, check=True)
    subprocess.run([*manage, "bootstrap"], env=env, cwd=root, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    log = workdir / f"{name}.log"
    process = procs.start(
        name,
        [PYTHON, "-m", "portal.serve", "-v", "0", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
        env,
        log,
        cwd=root,
    )
    wait_until(lambda: port_open(port), "the portal", 60, process)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
        for i in range(tokens):
            response = admin.post("/admin/tokens", json={"token": f"hf_bench_{i:02d}_xxxxxxxxxxxxxxxx", "label": f"bench-{i:02d}"})
            if response.status_code != 201:
                raise RuntimeError(f"adding a token: {response.status_code} {response.text[:300]}")
    return url, log


def profile_portal(procs: Processes, output: Path) -> None:
    """py-spy records the portal worker until the bench ends (SIGINT makes it write the file): collapsed
    stacks (py-spy's raw format) for a .txt file, speedscope otherwise."""
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    portal = next(process for name, process in procs.running if name == "portal")
    procs.start(
        "py-spy",
        [py_spy, "record", "--pid", str(portal.pid), "--rate", "250", "--nonblocking", "--format", "raw" if output.suffix == ".txt" else "speedscope", "-o", str(output.resolve())],
        clean_env(),
        output.with_suffix(".log"),
        stop_signal=signal.SIGINT,
    )
    time.sleep(1)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, in ms."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] * 1000
