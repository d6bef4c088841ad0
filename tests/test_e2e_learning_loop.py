"""End to end through a real Label Studio: pre-annotation sorts the queue, and labels train a new version."""
from __future__ import annotations

import json

import pytest
import requests
from label_studio_sdk import LabelStudio

from core.jobs import UNFINISHED, JobKind, ModelKind
from core.people import is_user_id
from tests.helpers import LABEL_CONFIG, SAMPLES, choice, served_version, wait_until
from tests.test_training import CONFIG as FOUR_DEPARTMENTS
from tests.test_training import FAST_TRAINING, tickets
from training.tiny_model import save_tiny_model

pytestmark = pytest.mark.e2e


def job_done(backend, job_id: int) -> dict:
    return wait_until(lambda: (j := requests.get(f"{backend.url}/jobs/{job_id}", timeout=5).json())["finished"] and j,
                      timeout=600, interval=0.3, what=f"job {job_id}")


def ordered_by_score(label_studio, project_id: int) -> list[dict]:
    return label_studio.api("GET", "/api/tasks", params={
        "project": project_id, "fields": "all", "page_size": 1000,
        "query": json.dumps({"ordering": ["tasks:predictions_score"]})}).json()["tasks"]


def refitted(backend, project_id: int) -> str:
    """The version the backend serves once it is the registry's and has learnt every label stored so far."""
    seq = backend.store().project_seq(project_id)

    def settled() -> str | None:
        store = backend.store()
        serving = store.serving_version(project_id, ModelKind.INSTANT)
        done = serving is not None and serving.data.get("project_seq") == seq and not store.jobs(kind=JobKind.REFIT, status=UNFINISHED)
        return serving.name if done and served_version(backend.url, project_id) == serving.name else None

    return wait_until(settled, timeout=60, what="the refit")


def project_with_tasks(label_studio, backend, title: str, labelled: int):
    """A Label Studio project on the backend with 30 sample tickets, the first `labelled` of them annotated."""
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = ls.projects.create(title=title, label_config=LABEL_CONFIG)
    ls.ml.create(url=backend.url, project=project.id, title="router")
    task_ids = ls.projects.import_tasks(id=project.id, request=[{"text": s["text"]} for s in SAMPLES[:30]],
                                        return_task_ids=True).task_ids
    annotate(ls, task_ids[:labelled], SAMPLES)
    return ls, project, task_ids


def annotate(ls, task_ids: list[int], samples: list[dict]) -> None:
    for task_id, sample in zip(task_ids, samples):
        ls.annotations.create(id=task_id, result=[choice(sample["department"])])


def preannotated(backend, project_id: int) -> dict:
    return job_done(backend, requests.post(f"{backend.url}/preannotate", json={"project": project_id}, timeout=5).json()["job"])


def test_preannotation_fills_the_project_and_label_studio_serves_the_most_uncertain_first(label_studio, start_backend):
    backend = start_backend()
    ls, project, task_ids = project_with_tasks(label_studio, backend, "12345 e2e preannotate", labelled=2)
    version = refitted(backend, project.id)

    finished = preannotated(backend, project.id)
    assert finished["status"] == "succeeded", finished
    assert finished["progress"]["pushed"] == 28 and finished["progress"]["model_version"] == version

    predictions = label_studio.api("GET", "/api/predictions", params={"project": project.id}).json()
    assert sorted(p["task"] for p in predictions if p["model_version"] == version) == sorted(task_ids[2:])
    stored = ls.projects.get(id=project.id)
    assert (stored.model_version, stored.sampling) == (version, "Uncertainty sampling")
    unlabelled = [t for t in ordered_by_score(label_studio, project.id) if not t["total_annotations"]]
    scores = [t["predictions_score"] for t in unlabelled]
    assert None not in scores and scores == sorted(scores)
    assert label_studio.api("GET", f"/api/projects/{project.id}/next").json()["id"] == unlabelled[0]["id"]

    again = preannotated(backend, project.id)
    assert (again["progress"]["pushed"], again["progress"]["already_there"]) == (0, 28)  # idempotent for a version
    assert len(label_studio.api("GET", "/api/predictions", params={"project": project.id}).json()) == len(predictions)


def test_a_preannotated_queue_is_ordered_again_by_the_model_that_learnt_the_new_labels(label_studio, start_backend):
    backend = start_backend(QUEUE_REORDER_EVERY_N_LABELS=3)
    ls, project, task_ids = project_with_tasks(label_studio, backend, "12345 e2e reorder", labelled=3)
    # Naming the annotator rewrites the first labels, which would count as new ones: let that happen first.
    wait_until(lambda: not any(is_user_id(label.annotator) for label in backend.store().labels(project.id)), timeout=30,
               what="the annotator's name")
    refitted(backend, project.id)
    assert not backend.store().jobs(kind=JobKind.PREANNOTATE, project_id=project.id)  # suggestions are the team's call

    first = preannotated(backend, project.id)
    annotate(ls, task_ids[3:6], SAMPLES[3:6])

    def reordered() -> dict | None:
        jobs = requests.get(f"{backend.url}/jobs", params={"project": project.id}, timeout=5).json()["jobs"]
        return next((j for j in jobs if j["kind"] == JobKind.PREANNOTATE and j["id"] != first["id"]), None)

    job = wait_until(reordered, timeout=60, what="a pre-annotation after 3 new labels")
    assert "QUEUE_REORDER_EVERY_N_LABELS=3" in job["reason"]
    finished = job_done(backend, job["id"])
    assert finished["status"] == "succeeded", finished
    version = backend.store().get_version(project.id, finished["progress"]["model_version"])
    assert (version.data["labels"], finished["progress"]["pushed"]) == (6, 24)  # the model that learnt them, every waiting task
    waiting = label_studio.api("GET", "/api/tasks", params={"project": project.id, "fields": "all", "page_size": 1000}).json()["tasks"]
    priorities = [t["data"].get("queue_priority") for t in waiting if not t["total_annotations"]]
    assert len(priorities) == 24 and None not in priorities


def test_labels_submitted_in_label_studio_train_a_new_version_that_label_studio_then_shows(label_studio, start_backend, tmp_path, monkeypatch):
    for key, value in FAST_TRAINING.items():
        monkeypatch.setenv(key, value)
    backend = start_backend(BASE_MODEL=save_tiny_model(tmp_path / "tiny"), TRAIN_EVERY_N_LABELS=48, TRAINING_DEVICE="cpu")
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = ls.projects.create(title="12345 e2e training", label_config=FOUR_DEPARTMENTS)
    ml = ls.ml.create(url=backend.url, project=project.id, title="router")
    rows = tickets(15, seed=11)
    task_ids = ls.projects.import_tasks(id=project.id, request=[{"text": t} for t, _ in rows], return_task_ids=True).task_ids
    wait_until(lambda: requests.get(f"{backend.url}/status", timeout=3).json()["llm"]["state"] == "ready", timeout=120,
               what="the LLM to load")
    assert wait_until(lambda: served_version(backend.url, project.id) == "llm-base", timeout=60, what="the LLM on the project")

    for task_id, (_, department) in zip(task_ids[:48], rows):
        ls.annotations.create(id=task_id, result=[choice(department)])
    job = wait_until(lambda: next((j for j in requests.get(f"{backend.url}/jobs", timeout=3).json()["jobs"] if j["kind"] == "train"), None),
                     timeout=30, what="a training job queued at the threshold")
    assert "TRAIN_EVERY_N_LABELS=48" in job["reason"]
    finished = job_done(backend, job["id"])
    assert finished["status"] == "promoted", finished
    wait_until(lambda: served_version(backend.url, project.id) == finished["version"],
               timeout=60, what="the hot swap")

    ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                      selected_items={"all": False, "included": task_ids[48:]})
    latest = {p["task"]: p["model_version"] for p in label_studio.api("GET", "/api/predictions", params={"project": project.id}).json()
              if p["model_version"] == finished["version"]}
    assert set(task_ids[48:]) <= set(latest)
    assert ls.ml.get(id=ml.id).model_version == finished["version"]
    wait_until(lambda: ls.projects.get(id=project.id).model_version == finished["version"], timeout=60,
               what="the project's model_version to follow the promotion")
