"""Faults: Label Studio down, slow or failing half-way, lost webhooks, kill -9 in a burst and in training, a
full disk and an unwritable MODEL_DIR. Each test asserts the end state: every label exactly once, nothing partial,
the old model serving."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from flask import Flask, jsonify
from flask import request as flask_request
from label_studio_sdk import LabelStudio
from werkzeug.serving import make_server

from backend.app import create_app
from core.store import Label
from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, choice, repo_root, wait_until
from tests.test_training import CONFIG as FOUR_DEPARTMENTS
from tests.test_training import FAST_TRAINING, tickets
from training.tiny_model import save_tiny_model


def post(client, path, body):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json")


def seed_labels(store, n: int = 3) -> list[tuple[int, str]]:
    for i, sample in enumerate(SAMPLES[:n], start=1):
        store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=sample["text"], department=sample["department"]))
    return [(l.annotation_id, l.department) for l in store.labels()]


class Server:
    """A local HTTP server in a thread (a stand-in Label Studio that misbehaves on purpose)."""

    def __init__(self, app):
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self):
        self._server.shutdown()


def faulty_label_studio(fail_from_page: int) -> Flask:
    """Answers the project and the first pages of annotated tasks like Label Studio 1.23, then fails with 500."""
    app = Flask("faulty-label-studio")

    @app.get("/api/projects/<int:pid>/")
    def project(pid):
        return jsonify({"id": pid, "title": "12345", "label_config": LABEL_CONFIG, "model_version": ""})

    @app.get("/api/tasks/")
    def tasks():
        page = int(flask_request.args.get("page", 1))
        if page >= fail_from_page:
            return jsonify({"detail": "database is locked"}), 500
        task = {"id": 100 + page, "data": {"text": SAMPLES[10 + page]["text"]}, "annotations": [
            {"id": 500 + page, "result": [choice(SAMPLES[10 + page]["department"])], "was_cancelled": False,
             "completed_by": 1, "created_at": "2026-11-28T10:00:00Z", "updated_at": "2026-11-28T10:00:00Z"}]}
        return jsonify({"tasks": [task], "total": 10, "total_annotations": 10, "total_predictions": 0})

    return app


def test_a_pull_that_fails_half_way_changes_nothing(settings, caplog):
    fake = Server(faulty_label_studio(fail_from_page=2))
    app = create_app(settings.replace(label_studio_url=fake.url, label_studio_api_key="k", label_studio_timeout=2,
                                      label_studio_attempts=2))
    service = app.extensions["service"]
    before = seed_labels(service.store)
    with caplog.at_level(logging.WARNING):
        result = service.label_studio.reconcile(1)
    assert "failed 2 times" in result["error"] and "HTTP 500" in result["error"]
    assert [(l.annotation_id, l.department) for l in service.store.labels()] == before  # page 1 was not applied
    assert "attempt 1/2 failed" in caplog.text and "store unchanged" in caplog.text
    service.stop()
    fake.close()


def test_label_studio_down_or_frozen_gives_bounded_retries_and_no_change(settings, caplog):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down_url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: connection refused
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)  # accepts connections and never answers: a Label Studio stuck in a long request
    frozen_url = f"http://127.0.0.1:{frozen.getsockname()[1]}"
    for url in (down_url, frozen_url):
        app = create_app(settings.replace(label_studio_url=url, label_studio_api_key="k", label_studio_timeout=1,
                                          label_studio_attempts=3))
        service = app.extensions["service"]
        before = seed_labels(service.store)
        with caplog.at_level(logging.WARNING):
            result = service.label_studio.reconcile(1)
        assert "failed 3 times" in result["error"]
        assert [(l.annotation_id, l.department) for l in service.store.labels()] == before
        response = post(app.test_client(), "/webhook", {"action": "START_TRAINING", "project": {"id": 1}})
        assert response.status_code == 200  # Label Studio's button still gets its answer at once
        service.background.wait_idle(60)
        service.stop()
    assert caplog.text.count("retrying in") >= 4
    closed.close()
    frozen.close()


def test_a_full_disk_refuses_the_label_clearly_and_keeps_serving(client, service):
    long_ticket = "。".join(s["text"] for s in SAMPLES[:60])  # needs new pages, whatever free space the last one has
    event = annotation_event("ANNOTATION_CREATED", 71, 71, long_ticket, SAMPLES[0]["department"])
    version = post(client, "/setup", {"project": "1.1"}).get_json()["model_version"]
    db = service.store.db.connection()  # the Flask test client runs requests on this thread, so this is their connection
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers 'database or disk is full'
    refused = post(client, "/webhook", event)
    assert refused.status_code == 503
    assert "could not be written" in refused.get_json()["error"] and "full" in refused.get_json()["error"]
    assert service.store.get_label(71) is None
    answered = post(client, "/predict", {"tasks": [{"id": 1, "data": {"text": "小区电梯坏了"}}], "label_config": LABEL_CONFIG})
    assert answered.status_code == 200 and answered.get_json()["results"][0]["model_version"] == version
    db.execute("PRAGMA max_page_count = 1073741823")
    assert post(client, "/webhook", event).get_json()["outcome"] == "created"
    assert service.store.integrity_errors() == []


def test_an_unwritable_model_dir_stops_the_service_at_start_with_a_reason(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where MODEL_DIR's parent should be")
    env = {**os.environ, "MODEL_DIR": str(blocker / "models"), "PORT": "1"}
    done = subprocess.run([sys.executable, "-m", "backend"], env=env, cwd=repo_root(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"MODEL_DIR={blocker / 'models'} is not writable" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_adapter_that_cannot_be_saved_fails_the_job_and_the_old_version_keeps_serving(tmp_path, monkeypatch):
    for key, value in {**FAST_TRAINING, "TRAIN_EPOCHS": "1"}.items():
        monkeypatch.setenv(key, value)
    from core.settings import Settings

    settings = Settings(model_dir=tmp_path / "model", base_model=str(save_tiny_model(tmp_path / "tiny")), reconcile_seconds=0,
                        instant_refit_seconds=0, train_every_n_labels=0, training_device="cpu")
    settings.project_dir(1).mkdir(parents=True)
    (settings.project_dir(1) / "versions").write_text("a file where the versions folder should be: saving any adapter fails")
    app = create_app(settings)
    service, client = app.extensions["service"], app.test_client()
    post(client, "/setup", {"project": "1.1", "schema": FOUR_DEPARTMENTS})
    wait_until(lambda: service.models.serving_version(1) == "llm-base" and len(service.models.space(1).departments) == 4, timeout=120)
    for i, (text, department) in enumerate(tickets(5, seed=3), start=1):
        post(client, "/webhook", annotation_event("ANNOTATION_CREATED", i, i, text, department, config=FOUR_DEPARTMENTS))
    job_id = post(client, "/jobs", {"project": 1}).get_json()["job"]
    job = wait_until(lambda: (j := service.store.get_job(job_id)).finished and j, timeout=300, what="the job to end")
    assert job.status == "failed" and "versions" in job.error
    assert service.models.serving_version(1) == "llm-base"
    assert {v.name for v in service.store.versions(1, "llm")} == {"llm-base"}  # no half-registered candidate
    service.stop()


# -- real processes -----------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_lost_webhook_comes_back_with_the_periodic_reconcile(label_studio, start_backend):
    backend = start_backend(RECONCILE_SECONDS=1)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = ls.projects.create(title="12345 fault reconcile", label_config=LABEL_CONFIG)
    ls.ml.create(url=backend.url, project=project.id, title="router")
    task_id = ls.projects.import_tasks(id=project.id, request=[{"text": SAMPLES[0]["text"]}], return_task_ids=True).task_ids[0]
    hook = label_studio.api("GET", "/api/webhooks/", params={"project": project.id}).json()[0]
    label_studio.api("PATCH", f"/api/webhooks/{hook['id']}/", json={"is_active": False})
    lost = ls.annotations.create(id=task_id, result=[choice(SAMPLES[0]["department"])])
    assert backend.store().get_label(lost.id) is None
    recovered = wait_until(lambda: backend.store().get_label(lost.id), timeout=60, what="the periodic reconcile")
    assert (recovered.department, recovered.source) == (SAMPLES[0]["department"], "pull")


@pytest.mark.e2e
def test_kill_9_in_a_webhook_burst_loses_and_duplicates_nothing(label_studio, start_backend):
    backend = start_backend()
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = ls.projects.create(title="12345 fault burst", label_config=LABEL_CONFIG)
    ml = ls.ml.create(url=backend.url, project=project.id, title="router")
    task_ids = ls.projects.import_tasks(id=project.id, request=[{"text": s["text"]} for s in SAMPLES[:40]], return_task_ids=True).task_ids
    created = []
    for n, (task_id, sample) in enumerate(zip(task_ids, SAMPLES)):
        if n == 15:
            backend.kill()  # mid-burst; Label Studio keeps accepting annotations, its webhooks now fail
        created.append(ls.annotations.create(id=task_id, result=[choice(sample["department"])]).id)
    restarted = start_backend(model_dir=backend.model_dir, port=backend.port)
    assert {l.annotation_id for l in restarted.store().labels()} >= set(created[:15])  # acknowledged ones survived
    ls.ml.train(id=ml.id)  # Start Training: the backend pulls and reconciles
    wait_until(lambda: {l.annotation_id for l in restarted.store().labels()} == set(created), timeout=60,
               what="all 40 annotations in the store")
    labels = restarted.store().labels()
    assert len(labels) == 40 and restarted.store().integrity_errors() == []
    assert {l.annotation_id: l.department for l in labels} == {a: s["department"] for a, s in zip(created, SAMPLES)}


@pytest.mark.e2e
def test_the_service_killed_during_training_takes_the_worker_with_it_and_restarts_cleanly(label_studio, start_backend, tmp_path, monkeypatch):
    for key, value in {**FAST_TRAINING, "TRAIN_EPOCHS": "200"}.items():
        monkeypatch.setenv(key, value)
    backend = start_backend(BASE_MODEL=save_tiny_model(tmp_path / "tiny"), TRAINING_DEVICE="cpu", TRAIN_EVERY_N_LABELS=0)
    requests.post(f"{backend.url}/setup", json={"project": "1.1", "schema": FOUR_DEPARTMENTS}, timeout=5)
    wait_until(lambda: requests.get(f"{backend.url}/status", timeout=3).json()["llm"]["state"] == "ready", timeout=120)
    for i, (text, department) in enumerate(tickets(5, seed=4), start=1):
        requests.post(f"{backend.url}/webhook", json=annotation_event("ANNOTATION_CREATED", i, i, text, department,
                                                                      config=FOUR_DEPARTMENTS), timeout=5)
    job_id = requests.post(f"{backend.url}/jobs", json={"project": 1}, timeout=5).json()["job"]
    running = wait_until(lambda: (j := requests.get(f"{backend.url}/jobs/{job_id}", timeout=5).json())["progress"].get("step", 0) >= 1 and j,
                         timeout=300, what="training progress")
    service_pid = int(Path(f"/proc/{running['pid']}/stat").read_text().split(")")[1].split()[1])  # the worker's parent
    os.kill(service_pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{running['pid']}").exists() or "Z" in Path(f"/proc/{running['pid']}/stat").read_text().split(")")[1][:3],
               timeout=30, what="the training worker to die with the service")
    # gunicorn starts a fresh worker process: the service comes back by itself
    wait_until(lambda: requests.get(f"{backend.url}/jobs/{job_id}", timeout=5).json()["finished"], timeout=120,
               what="the interrupted job to be marked")
    job = requests.get(f"{backend.url}/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "failed" and "interrupted" in job["error"]
    wait_until(lambda: requests.get(f"{backend.url}/health", timeout=5).json()["projects"].get("1") == "llm-base", timeout=120)
    assert not list(backend.model_dir.glob("projects/*/versions/.partial-*"))
    answer = requests.post(f"{backend.url}/predict", json={"tasks": [{"id": 1, "data": {"text": "停电了"}}], "project": "1.1",
                                                           "label_config": FOUR_DEPARTMENTS}, timeout=30).json()
    assert answer["results"][0]["model_version"] == "llm-base"


# -- security -------------------------------------------------------------------------------------------------------
def test_secrets_from_label_studio_are_neither_stored_nor_logged(client, service, settings, caplog):
    with caplog.at_level(logging.DEBUG):
        post(client, "/setup", {"project": "1.1", "schema": LABEL_CONFIG, "hostname": "http://127.0.0.1:1",
                                "access_token": "legacy-access-token-secret"})
        post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 81, 81, SAMPLES[1]["text"], SAMPLES[1]["department"]))
        post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 82, 82, "", SAMPLES[1]["department"]))  # a refused one
        post(client, "/webhook", {"action": "START_TRAINING", "project": {"id": 1, "token": "secret-project-token"}})
        service.background.wait_idle(60)
    stored = b"".join(p.read_bytes() for p in settings.model_dir.rglob("*") if p.is_file())
    for secret in ("secret-project-token", "secret-password", "legacy-access-token-secret"):
        assert secret not in caplog.text
        assert secret.encode() not in stored


def test_version_names_and_adapter_paths_cannot_leave_model_dir(settings, tmp_path):
    from backend.models import ModelManager
    from core.store import Store

    store = Store(settings.store_location)
    for name in ("../../etc", "lora/../../x", "", "a" * 65, "lora 1"):
        with pytest.raises(ValueError, match="invalid version name"):
            store.add_version(1, name, "llm", status="candidate")
    versions = settings.project_dir(1) / "versions"
    manager = ModelManager(store, None, settings)
    for elsewhere in (versions / ".." / ".." / "elsewhere", settings.project_dir(2) / "versions" / "lora-1"):  # not even a neighbour's
        with pytest.raises(ValueError, match="outside"):
            manager._adapter_path(store.add_version(1, "lora-9", "llm", status="candidate", path=str(elsewhere)))
    inside = store.add_version(1, "lora-8", "llm", status="candidate", path=str(versions / "lora-8"))
    assert manager._adapter_path(inside) == str((versions / "lora-8").resolve())
    done = subprocess.run([sys.executable, "-m", "backend", "rollback", "../../etc/passwd", "--project", "1"], cwd=repo_root(), timeout=60,
                          env={**os.environ, "MODEL_DIR": str(settings.model_dir)}, capture_output=True, text=True)
    assert done.returncode == 2 and "is not a version name" in done.stderr
