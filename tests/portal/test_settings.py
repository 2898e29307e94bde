"""Settings come from the environment: commands started with a given environment must run with it."""

import os
import sqlite3
import subprocess
import sys

from tests.conftest import ROOT


def manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_database_url_may_name_a_sqlite_file_which_gets_the_default_databases_options(tmp_path):
    database = tmp_path / "portal-elsewhere.sqlite3"
    env = {**os.environ, "PORTAL_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": f"sqlite:///{database}"}

    # `check --database` opens a connection (where a PostgreSQL-only option made sqlite3 raise TypeError),
    # in a third of the time `migrate` takes.
    checked = manage("check", "--database", "default", env=env)

    assert checked.returncode == 0, checked.stderr
    assert not (tmp_path / "var" / "portal.sqlite3").exists()  # the URL's file, not the default one
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # set as on the default SQLite
