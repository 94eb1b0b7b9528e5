"""Private PostgreSQL and Redis servers for the tests, or the ones the environment names.

``OMNISERVE_TEST_POSTGRES_URL`` and ``OMNISERVE_TEST_REDIS_URL`` point the tests at existing
servers; otherwise each is started on 127.0.0.1 in a temporary directory for the session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from sqlalchemy.engine import make_url

POSTGRES_ENV = "OMNISERVE_TEST_POSTGRES_URL"
REDIS_ENV = "OMNISERVE_TEST_REDIS_URL"
READY_S = 30.0


class ServerError(RuntimeError):
    """A test server could not be found or started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


def _wait_ready(name: str, proc: subprocess.Popen[bytes], log: Path, probe: Any) -> None:
    """Polls ``probe`` until it succeeds; fails with the server's log if it dies or stalls."""
    deadline = time.monotonic() + READY_S
    while True:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with {proc.returncode}:\n{_log(log)}")
        try:
            probe()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{name} not ready after {READY_S:.0f} s ({exc}):\n{_log(log)}"
                ) from exc
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- PostgreSQL -------------------------------------------------------------------------------


def _major(path: str) -> float:
    version = Path(path).parts[-3]  # /usr/lib/postgresql/<version>/bin/<name>
    return float(version) if version.replace(".", "", 1).isdigit() else 0.0


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH or under /usr/lib/postgresql/*/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if candidates:
        return max(candidates, key=_major)
    raise ServerError(
        f"PostgreSQL's {name} was not found (on PATH or under /usr/lib/postgresql/*/bin): "
        f"install the Debian package postgresql (scripts/bootstrap --dev does), or set "
        f"{POSTGRES_ENV} to a server to use"
    )


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://…) as a libpq one, for psycopg itself."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def create_database(url: str) -> str:
    """A new, empty database with a random name on ``url``'s server; returns its URL."""
    name = f"omniserve_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drops ``url``'s database, connected through ``server_url``'s."""
    name = make_url(url).database
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL on 127.0.0.1 with a database ``omniserve_test``; yields its URL."""
    initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
    tmp = Path(tempfile.mkdtemp(prefix="omniserve-pg-"))
    # initdb and postgres refuse to run as root: run them as the postgres system user.
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(
                "running as root needs the postgres system user to start PostgreSQL: "
                "install the Debian package postgresql"
            ) from None
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, log = tmp / "data", tmp / "postgres.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        init_args = [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        init_args += ["--locale=C", "--no-sync", "--no-instructions"]
        init = subprocess.run(
            init_args,
            cwd=tmp,
            capture_output=True,
            text=True,
            **user,
        )
        if init.returncode != 0:
            raise ServerError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        port = free_port()
        settings = {
            "port": str(port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(tmp),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        args = [postgres, "-D", str(data)]
        for k, v in settings.items():
            args += ["-c", f"{k}={v}"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **user,
            )
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

        def probe() -> None:
            psycopg.connect(libpq_url(url), connect_timeout=2).close()

        _wait_ready("PostgreSQL", proc, log, probe)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("CREATE DATABASE omniserve_test")
        yield with_database(url, "omniserve_test")
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(tmp, ignore_errors=True)


# --- Redis ------------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """A private Redis on 127.0.0.1 without persistence; yields the URL of its db 0."""
    exe = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if exe is None:
        raise ServerError(
            "redis-server was not found: install the Debian package redis-server "
            f"(scripts/bootstrap --dev does), or set {REDIS_ENV} to a server to use"
        )
    tmp = Path(tempfile.mkdtemp(prefix="omniserve-redis-"))
    log = tmp / "redis.log"
    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp), "--databases", "64"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        url = f"redis://127.0.0.1:{port}/0"

        def probe() -> None:
            with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
                client.ping()

        _wait_ready("redis-server", proc, log, probe)
        yield url
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


_next_db = itertools.count()


def fresh_redis_db(url: str) -> str:
    """An emptied database (other than ``url``'s own) on ``url``'s server; returns its URL."""
    parts = urlsplit(url)
    own = int(parts.path.strip("/") or 0)
    with redis.Redis.from_url(url, decode_responses=True) as client:
        try:
            count = int(client.config_get("databases").get("databases", 16))
        except redis.ResponseError:  # CONFIG may be disabled on a managed server
            count = 16
    choices = [db for db in range(count) if db != own]
    if not choices:
        raise ServerError(f"{url} offers no database besides its own")
    fresh = urlunsplit(parts._replace(path=f"/{choices[next(_next_db) % len(choices)]}"))
    with redis.Redis.from_url(fresh) as other:
        other.flushdb()
    return fresh
