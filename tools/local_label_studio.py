"""A real Label Studio 1.23.2 on this machine, for the demo and the end-to-end tests.

Label Studio lives in its own virtual environment (it pins Django, DRF, pandas... that must not meet the
backend's dependencies). The first start migrates a fresh SQLite database (about 30 s); that database is kept as a
template and copied for every later start (about 4 s). The three settings that let Label Studio talk to a backend
on 127.0.0.1 are set here (see the protocol notes: ML_BLOCK_LOCAL_IP, SSRF_PROTECTION_ENABLED, legacy tokens).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

log = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LABEL_STUDIO_VENV", REPO / ".venvs" / "label-studio"))
TEMPLATE = VENV.parent / f"label-studio-{LABEL_STUDIO_VERSION}-template-data"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin12345"
ADMIN_TOKEN = "12345c0ffee0123456789abcdef0123456789abc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable() -> Path:
    return VENV / "bin" / "label-studio"


def ensure_installed() -> Path:
    """Create the Label Studio virtual environment if it is missing (about 90 s the first time)."""
    if executable().exists():
        return executable()
    log.info("installing label-studio==%s into %s (first run only, about 90 s)", LABEL_STUDIO_VERSION, VENV)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"label-studio=={LABEL_STUDIO_VERSION}"], check=True)
    return executable()


def _environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": ADMIN_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "PYTHONUNBUFFERED": "1",
    })
    for key in ("PORT", "HOST", "USERNAME", "PASSWORD"):  # Label Studio reads these plain names too
        env.pop(key, None)
    return env


@dataclass
class LabelStudio:
    url: str
    token: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", headers=self.headers(), timeout=120, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"Label Studio {method} {path} -> {response.status_code}: {response.text[:500]}")
        return response

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _launch(data_dir: Path, port: int) -> tuple[subprocess.Popen, Path]:
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(executable()), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)],
            env=_environment(data_dir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir,
        )
    return process, log_path


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}; see {log_path}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"Label Studio did not answer /health within {timeout:.0f} s; see {log_path}")


def _build_template() -> None:
    """Start once on an empty data dir so migrations run and the admin is created, then keep that dir."""
    work = TEMPLATE.with_name(TEMPLATE.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    log.info("preparing a migrated Label Studio database (first run only, about 35 s)")
    process, log_path = _launch(work, port)
    server = LabelStudio(f"http://127.0.0.1:{port}", ADMIN_TOKEN, process, work, log_path)
    try:
        _wait_healthy(server.url, process, log_path, timeout=240)
        server.api("GET", "/api/current-user/whoami")  # proves the admin and its legacy token exist
    finally:
        server.stop()
    shutil.rmtree(TEMPLATE, ignore_errors=True)
    work.rename(TEMPLATE)


def start(data_dir: Path, port: int | None = None, timeout: float = 180) -> LabelStudio:
    """Start Label Studio on `data_dir` (created from the migrated template if it does not exist yet)."""
    ensure_installed()
    data_dir = Path(data_dir)
    if not data_dir.exists():
        if not TEMPLATE.exists():
            _build_template()
        shutil.copytree(TEMPLATE, data_dir, ignore=shutil.ignore_patterns("*.log"))
    port = port or free_port()
    process, log_path = _launch(data_dir, port)
    server = LabelStudio(f"http://127.0.0.1:{port}", ADMIN_TOKEN, process, data_dir, log_path)
    try:
        _wait_healthy(server.url, process, log_path, timeout)
    except BaseException:
        server.stop()
        raise
    return server
