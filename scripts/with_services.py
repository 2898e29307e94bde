#!/usr/bin/env python3
"""Run a command against throwaway PostgreSQL and Redis servers.

Usage: python scripts/with_services.py [--require] -- COMMAND [ARGS...]

Starts a private PostgreSQL and Redis on free 127.0.0.1 ports in a temp dir,
runs COMMAND with DATABASE_URL, REDIS_URL and PORTAL_TEST_SERVICES=1 set, then
stops both servers and deletes the temp dir. Exits with COMMAND's exit code.

If the server binaries are not installed this prints one line and exits 0
without running COMMAND (the caller has already run the suite on SQLite),
unless --require is given, in which case it exits 1.

Overrides: PORTAL_PG_BINDIR (directory holding initdb/postgres) and
PORTAL_REDIS_SERVER (path to redis-server).  Stdlib only, on purpose.
"""
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PG_USER = "portal"
PG_DB = "portal"


class ServiceError(Exception):
    """A server could not be started; the message already holds the log tail."""


def log(message):
    print(f"with_services: {message}", file=sys.stderr, flush=True)


def find_postgres_bindir():
    def usable(bindir):
        return bool(bindir) and all(os.access(os.path.join(bindir, name), os.X_OK)
                                    for name in ("initdb", "postgres", "pg_isready", "createdb"))

    override = os.environ.get("PORTAL_PG_BINDIR")
    if override is not None:
        return override if usable(override) else None
    initdb = shutil.which("initdb")
    if initdb:
        # PATH may hold just a few symlinks (e.g. /usr/local/bin/initdb), so also
        # try the directory they point into, which has pg_isready and createdb.
        for bindir in (os.path.dirname(initdb), os.path.dirname(os.path.realpath(initdb))):
            if usable(bindir):
                return bindir
    # Debian/Ubuntu keep the server binaries off PATH; pg_config knows where.
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if result.returncode == 0 and usable(result.stdout.strip()):
            return result.stdout.strip()

    def version(path):
        return [int(n) for n in re.findall(r"\d+", path.split("/")[-2])]
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if usable(bindir):
            return bindir
    return None


def find_redis_server():
    override = os.environ.get("PORTAL_REDIS_SERVER")
    if override is not None:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("redis-server")


def free_ports(count):
    # Keep all sockets open until every port is picked so the ports differ.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def log_tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]) or "(log is empty)"
    except OSError:
        return "(no log)"


def wait_until(check, timeout, proc, name, logfile):
    """Poll check() until it is true; fail early if the server process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with code {proc.returncode}:\n{log_tail(logfile)}")
        if check():
            return
        time.sleep(0.2)
    raise ServiceError(f"{name} not ready after {timeout}s:\n{log_tail(logfile)}")


def postgres_user_kwargs(tmpdir):
    """PostgreSQL refuses to run as root, so drop to the `postgres` system user.

    Popen(user=...) is used rather than `runuser`: runuser turns signals into
    SIGTERM followed by SIGKILL, which would break the fast (SIGINT) shutdown.
    """
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root but there is no 'postgres' user to run PostgreSQL as")
    for root, dirs, files in os.walk(tmpdir):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(name, pw.pw_uid, pw.pw_gid)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def start_postgres(bindir, tmpdir, port, procs):
    datadir, sockdir = os.path.join(tmpdir, "pgdata"), os.path.join(tmpdir, "pgsock")
    logfile = os.path.join(tmpdir, "postgres.log")
    os.mkdir(sockdir)
    as_user = postgres_user_kwargs(tmpdir)
    with open(logfile, "ab") as out:
        # cwd=tmpdir: the postgres user may not be able to read the caller's cwd.
        initdb = subprocess.run(
            [os.path.join(bindir, "initdb"), "-D", datadir, "-A", "trust", "-U", PG_USER,
             "--encoding", "UTF8", "--no-sync"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmpdir, **as_user)
        if initdb.returncode != 0:
            raise ServiceError(f"initdb failed:\n{log_tail(logfile)}")
        # Durability is pointless for a throwaway test database; turn it off for speed.
        # New session: a terminal Ctrl-C must not reach it, we shut it down ourselves.
        proc = subprocess.Popen(
            [os.path.join(bindir, "postgres"), "-D", datadir, "-p", str(port), "-k", sockdir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmpdir, start_new_session=True, **as_user)
    procs.append(("postgres", proc, signal.SIGINT))  # SIGINT = fast shutdown

    def ready():
        return subprocess.run(
            [os.path.join(bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
             "-U", PG_USER, "-d", "postgres"]).returncode == 0
    wait_until(ready, 30, proc, "PostgreSQL", logfile)
    created = subprocess.run(
        [os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
        capture_output=True, text=True)
    if created.returncode != 0:
        raise ServiceError(f"createdb failed: {created.stderr.strip()}")


def start_redis(redis_server, tmpdir, port, procs):
    logfile = os.path.join(tmpdir, "redis.log")
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", tmpdir],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmpdir, start_new_session=True)
    procs.append(("redis", proc, signal.SIGTERM))

    def pong():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False
    wait_until(pong, 15, proc, "Redis", logfile)


def stop(name, proc, sig):
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in 10s; killing it")
        proc.kill()
        proc.wait()


def run_command(command, env):
    child = subprocess.Popen(command, env=env)
    try:
        return child.wait()
    except BaseException:
        # Interrupted (Ctrl-C or SIGTERM): let the command finish or stop it first.
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        raise


class MissingServer(ServiceError):
    """A server binary is not installed; the message says which package provides it."""


def find_servers():
    """(PostgreSQL bindir, redis-server path), or raise MissingServer."""
    bindir, redis_server = find_postgres_bindir(), find_redis_server()
    if bindir is None:
        raise MissingServer("PostgreSQL server binaries not found (apt-get install postgresql)")
    if redis_server is None:
        raise MissingServer("redis-server not found (apt-get install redis-server)")
    return bindir, redis_server


@contextlib.contextmanager
def running_services(tmpdir=None):
    """Start a throwaway PostgreSQL and Redis on free loopback ports; yield (DATABASE_URL, REDIS_URL).

    Both are stopped (and a temp dir made here deleted) on the way out, whatever happens.
    Raises MissingServer or ServiceError when they cannot be started."""
    bindir, redis_server = find_servers()
    own_tmpdir = tmpdir is None
    if own_tmpdir:
        tmpdir = tempfile.mkdtemp(prefix="portal-services-")
    os.chmod(tmpdir, 0o755)  # must be traversable by the postgres user
    procs = []
    try:
        pg_port, redis_port = free_ports(2)
        start_postgres(bindir, tmpdir, pg_port, procs)
        start_redis(redis_server, tmpdir, redis_port, procs)
        log(f"started PostgreSQL ({bindir}) on 127.0.0.1:{pg_port} and Redis on 127.0.0.1:{redis_port}")
        yield (f"postgres://{PG_USER}@127.0.0.1:{pg_port}/{PG_DB}", f"redis://127.0.0.1:{redis_port}/0")
    finally:
        for name, proc, sig in reversed(procs):
            stop(name, proc, sig)
        if own_tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def raise_on_sigterm():
    """Turn SIGTERM into an exception so finally blocks (which stop the servers) still run."""
    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv):
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        log("usage: with_services.py [--require] -- COMMAND [ARGS...]")
        return 2
    options, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    if set(options) - {"--require"}:
        log(f"unknown options: {' '.join(options)}")
        return 2
    missing_exit = 1 if "--require" in options else 0

    try:
        find_servers()
    except MissingServer as missing:
        log(f"{missing}; skipping the PostgreSQL+Redis run")
        return missing_exit

    raise_on_sigterm()
    try:
        with running_services() as (database_url, redis_url):
            env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, PORTAL_TEST_SERVICES="1")
            log(f"running: {shlex.join(command)}")
            code = run_command(command, env)
            return 128 - code if code < 0 else code  # killed by a signal: shell convention
    except ServiceError as error:
        log(str(error))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
