"""`python -m backend demo`: the whole loop on this machine, no GPU and no model weights needed.

Starts a real Label Studio (SQLite) and this backend, creates the 12345 project from annotation_config/,
imports the sample tickets, has the backend pre-annotate them (suggestion row, queue tab), and prints where to log in.
Run it again and it reuses the same data (your annotations stay); --fresh starts over.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from annotation_config.catalog import SAMPLE_TICKETS
from annotation_config.labeling_config import QUEUE_TAB_TITLE
from core.settings import Settings
from tools import local_label_studio

log = logging.getLogger(__name__)

PROJECT_TITLE = "12345 热线工单分派 Ticket routing"
BACKEND_TITLE = "12345-department-router"


def start_backend(settings: Settings, model_dir: Path, port: int, ls: local_label_studio.LabelStudio | None,
                  log_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """The backend as its own process, exactly as `python -m backend` runs in production (without a Label Studio
    connection when `ls` is None)."""
    env = {**os.environ, "MODEL_DIR": str(model_dir), "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": settings.log_level,
           **({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token} if ls else {}), **(extra_env or {})}
    with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the backend exited with {process.returncode}; see {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the backend did not answer /health within 60 s; see {log_path}")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ensure_project(ls: local_label_studio.LabelStudio, backend_url: str, label_config: str) -> int:
    """The demo project with its ML backend connected and the sample tickets imported (each only once)."""
    projects = ls.api("GET", "/api/projects", params={"page_size": 1000}).json()
    projects = projects.get("results", projects) if isinstance(projects, dict) else projects
    project = next((p for p in projects if p["title"] == PROJECT_TITLE), None)
    if project is None:
        project = ls.api("POST", "/api/projects", json={
            "title": PROJECT_TITLE, "label_config": label_config, "sampling": "Uncertainty sampling",
            "description": "Route each 12345 hotline ticket to the department that should handle it."}).json()
    project_id = project["id"]
    backends = ls.api("GET", "/api/ml", params={"project": project_id}).json()
    for backend in backends:
        if backend["url"] != backend_url:  # a port from an earlier run: drop it and its webhook
            ls.api("DELETE", f"/api/ml/{backend['id']}")
            for hook in ls.api("GET", "/api/webhooks/", params={"project": project_id}).json():
                if hook["url"].startswith(backend["url"]):
                    ls.api("DELETE", f"/api/webhooks/{hook['id']}/")
    if not any(b["url"] == backend_url for b in backends):
        ls.api("POST", "/api/ml", json={"url": backend_url, "project": project_id, "title": BACKEND_TITLE})
    if not project.get("task_number"):
        tickets = [{"text": json.loads(line)["text"]} for line in SAMPLE_TICKETS.read_text(encoding="utf-8").splitlines() if line.strip()]
        ls.api("POST", f"/api/projects/{project_id}/import", json=tickets)
    return project_id


def preannotate(backend_url: str, project_id: int) -> bool:
    """The backend's pre-annotation: each ticket gets its suggestion row and its prediction, and the project its
    queue tab (what "Retrieve Predictions" in Label Studio would not give the annotator's screen)."""
    job = requests.post(f"{backend_url}/preannotate", json={"project": project_id}, timeout=10).json()["job"]
    return bool(wait_for(lambda: requests.get(f"{backend_url}/jobs/{job}", timeout=5).json()["finished"], 300))


def wait_for(predicate, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def run_demo(settings: Settings, data_dir: str, fresh: bool, ls_port: int, wait: bool) -> int:
    root = Path(data_dir).resolve()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    print("Starting Label Studio (the first run installs it and prepares its database: a few minutes)...", flush=True)
    ls = local_label_studio.start(root / "label-studio", port=ls_port)
    backend = None
    try:
        port = local_label_studio.free_port() if settings.port == 9090 and _port_busy(9090) else settings.port
        backend_url = f"http://127.0.0.1:{port}"
        backend = start_backend(settings, root / "model", port, ls, root / "backend.log")
        label_config = Path(settings.labeling_config).read_text(encoding="utf-8")
        project_id = ensure_project(ls, backend_url, label_config)
        if not preannotate(backend_url, project_id):
            print("pre-annotation is still running; the queue fills as it goes", flush=True)
        version = requests.get(f"{backend_url}/health", timeout=2).json()["model_version"]
        synced = wait_for(lambda: ls.api("GET", f"/api/projects/{project_id}").json()["model_version"] == version, 30)
        tasks = ls.api("GET", "/api/tasks", params={"project": project_id, "page_size": 1000, "fields": "all",
                                                     "query": json.dumps({"ordering": ["tasks:predictions_score"]})}).json()["tasks"]
        _print_summary(ls, project_id, version, bool(synced), tasks, backend_url, root)
        if wait:
            print("\nPress Ctrl-C to stop both servers.", flush=True)
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # sigwait only receives signals that are blocked
            signal.sigwait(stop)
            print("stopping...", flush=True)
        return 0
    finally:
        if backend is not None:
            stop_process(backend)
        ls.stop()


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _print_summary(ls, project_id: int, version: str, synced: bool, tasks: list[dict], backend_url: str, root: Path) -> None:
    predicted = [t for t in tasks if t.get("predictions")]
    print(f"\nLabel Studio   {ls.url}/projects/{project_id}/data")
    print(f"Login          {local_label_studio.ADMIN_EMAIL} / {local_label_studio.ADMIN_PASSWORD}")
    print(f"Annotate       tab \"{QUEUE_TAB_TITLE}\", Label All Tasks: Ctrl+Enter accepts the suggestion, 1/2/3 picks one, "
          "Shift+F filters the full list")
    print(f"API token      {ls.token}")
    print(f"Backend        {backend_url} (model {version}; log {root / 'backend.log'})")
    print(f"Suggestions    {len(predicted)} of {len(tasks)} tickets pre-annotated; the project "
          f"{'sorts and samples on' if synced else 'is not yet pointed at'} model version {version}")
    print("\nMost uncertain first (this is the order annotators get them in):")
    for task in tasks[:8]:
        prediction = next((p for p in task.get("predictions", []) if p.get("model_version") == version), None)
        if prediction is None:
            continue
        choice = next((r["value"]["choices"][0] for r in prediction["result"] if r.get("type") == "choices"), "?")
        print(f"  {prediction['score']:.2f}  {choice:<16}  {task['data']['text'][:40]}")
