from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.app import create_app
from core.settings import Settings
from core.store import Store
from tools import local_label_studio, local_services
from tools.demo import start_backend as launch_backend
from tools.demo import stop_process


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(model_dir=tmp_path / "model", instant_refit_seconds=0.0, reconcile_seconds=0, prepare_wait_seconds=60)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    service = app.extensions["service"]
    service.background.wait_idle(30)
    service.stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def service(app):
    return app.extensions["service"]


# -- real processes: Label Studio 1.23.2 and the backend, talking HTTP -------------------------------------------



@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    server = local_label_studio.start(tmp_path_factory.mktemp("label-studio") / "data")
    yield server
    server.stop()


@dataclass
class BackendProcess:
    url: str
    port: int
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    def store(self) -> Store:
        return Store(self.model_dir / "store.sqlite3")

    def kill(self) -> None:
        """kill -9: no shutdown handlers run."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _backend_starter(tmp_path, label_studio):
    started: list[BackendProcess] = []

    def start(model_dir: Path | None = None, port: int | None = None, **env) -> BackendProcess:
        model_dir = model_dir or tmp_path / "model"
        port = port or local_label_studio.free_port()
        log_path = tmp_path / f"backend-{len(started)}.log"
        extra = {"INSTANT_REFIT_SECONDS": "0.2", "RECONCILE_SECONDS": "0", **{k: str(v) for k, v in env.items()}}
        process = launch_backend(Settings(), model_dir, port, label_studio, log_path, extra_env=extra)
        backend = BackendProcess(f"http://127.0.0.1:{port}", port, model_dir, process, log_path)
        started.append(backend)
        return backend

    return start, started


@pytest.fixture
def start_backend(tmp_path, label_studio):
    """Start `python -m backend` as its own process against the session's Label Studio."""
    start, started = _backend_starter(tmp_path, label_studio)
    yield start
    for backend in started:
        stop_process(backend.process)


@pytest.fixture
def running_backend(tmp_path):
    """Start `python -m backend` as its own process (gunicorn, as in production) with no Label Studio."""
    start, started = _backend_starter(tmp_path, None)
    yield start
    for backend in started:
        stop_process(backend.process)


# -- PostgreSQL and Redis on 127.0.0.1, for the store suite on both engines and the scale-out tests ---------------
@pytest.fixture(scope="session")
def postgres():
    problems = local_services.missing()
    if problems:
        pytest.skip("PostgreSQL/Redis cannot run on this machine: " + "; ".join(problems))
    server = local_services.start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """Where a test's store lives: a SQLite file, or a fresh PostgreSQL database (the same tests run on both)."""
    if request.param == "sqlite":
        return tmp_path / "s.sqlite3"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def redis_server():
    problems = local_services.missing()
    if problems:
        pytest.skip("PostgreSQL/Redis cannot run on this machine: " + "; ".join(problems))
    server = local_services.start_redis()
    yield server
    server.stop()
