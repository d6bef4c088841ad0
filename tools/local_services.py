"""PostgreSQL and Redis on 127.0.0.1 for the tests and the load run, from Debian's packages, as this machine's own
processes (no Docker): a throwaway cluster in a temporary folder, on a free port, stopped at the end.

PostgreSQL refuses to run as root, so when the tests run as root (CI) the cluster runs as the ``postgres`` user the
Debian package creates. ``missing()`` says what is not installed, so a test can be skipped with that reason.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tools.local_label_studio import free_port


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def missing() -> list[str]:
    """What keeps PostgreSQL or Redis from starting here, in words; empty when both can."""
    problems = []
    if _pg_bin() is None:
        problems.append("PostgreSQL is not installed (Debian package postgresql)")
    elif os.geteuid() == 0 and shutil.which("runuser") is None:
        problems.append("running as root without runuser: PostgreSQL cannot be started as another user")
    if shutil.which("redis-server") is None:
        problems.append("Redis is not installed (Debian package redis-server)")
    try:
        import psycopg  # noqa: F401
        import rq  # noqa: F401
    except ImportError as exc:
        problems.append(f"{exc.name} is not installed (requirements.txt)")
    return problems


def _as_postgres(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


@dataclass
class Postgres:
    root: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    root = Path(tempfile.mkdtemp(prefix="postgres-"))
    os.chmod(root, 0o777)  # the postgres user writes its cluster here
    port = free_port()
    data = root / "data"
    _as_postgres([str(_pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
    _as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "postgres.log"), "-w", "start"], timeout=60)
    return Postgres(root, port)


@dataclass
class Redis:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


def start_redis() -> Redis:
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return Redis(port, process)
        except redis.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("redis-server did not answer within 30 s")
