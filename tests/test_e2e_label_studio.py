"""End to end: a real Label Studio 1.23.2 and the backend as a real HTTP server, driven through Label Studio's API."""
from __future__ import annotations

import json

import pytest
import requests
from label_studio_sdk import LabelStudio

from tests.helpers import LABEL_CONFIG, SAMPLES, choice, rationale, served_version, wait_until

pytestmark = pytest.mark.e2e


def sdk(label_studio) -> LabelStudio:
    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


def connect(label_studio, backend, title: str, tickets: list[dict]):
    ls = sdk(label_studio)
    project = ls.projects.create(title=title, label_config=LABEL_CONFIG)
    ml = ls.ml.create(url=backend.url, project=project.id, title="12345-router")
    task_ids = ls.projects.import_tasks(id=project.id, request=[{"text": t["text"]} for t in tickets], return_task_ids=True).task_ids
    return ls, project.id, ml, task_ids


def predictions(label_studio, project_id: int) -> list[dict]:
    return label_studio.api("GET", "/api/predictions", params={"project": project_id}).json()


def stored(backend, annotation_id: int):
    return backend.store().get_label(annotation_id)


def test_predictions_reach_label_studio_and_drive_its_uncertainty_order(label_studio, start_backend):
    backend = start_backend()
    ls, project_id, ml, task_ids = connect(label_studio, backend, "12345 e2e predictions", SAMPLES[:12])
    assert ls.ml.get(id=ml.id).state == "CO"
    hooks = label_studio.api("GET", "/api/webhooks/", params={"project": project_id}).json()
    assert [h["url"] for h in hooks] == [f"{backend.url}/webhook"]

    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    version = served_version(backend.url, project_id)
    stored_predictions = predictions(label_studio, project_id)
    assert sorted(p["task"] for p in stored_predictions) == sorted(task_ids)
    for p in stored_predictions:
        assert p["model_version"] == version and 0 < p["score"] <= 1
        assert p["result"][0]["value"]["choices"][0] in LABEL_CONFIG

    # The backend points the project at its version so Label Studio's score column and sampling use it.
    wait_until(lambda: ls.projects.get(id=project_id).model_version == version, what="project.model_version to follow")
    ordered = label_studio.api("GET", "/api/tasks", params={
        "project": project_id, "fields": "all", "query": json.dumps({"ordering": ["tasks:predictions_score"]})}).json()["tasks"]
    scores = [t["predictions_score"] for t in ordered]
    assert None not in scores and scores == sorted(scores)
    assert ls.projects.get(id=project_id).sampling in ("Sequential sampling", "Uncertainty sampling")


def test_annotations_become_gold_labels_and_start_training_recovers_a_lost_one(label_studio, start_backend):
    backend = start_backend()
    ls, project_id, ml, task_ids = connect(label_studio, backend, "12345 e2e labels", SAMPLES[:6])
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    version = served_version(backend.url, project_id)
    wait_until(lambda: ls.projects.get(id=project_id).model_version == version, what="project.model_version")

    # create: the label arrives with the prediction the annotator was shown
    first = SAMPLES[0]
    annotation = ls.annotations.create(id=task_ids[0], result=[choice(first["department"]), rationale("职责所在")], lead_time=4.5)
    label = stored(backend, annotation.id)
    assert label is not None, backend.log()
    assert (label.task_id, label.text, label.department, label.rationale, label.lead_time) == (
        task_ids[0], first["text"], first["department"], "职责所在", 4.5)
    shown = [p for p in predictions(label_studio, project_id) if p["task"] == task_ids[0]][0]
    assert (label.shown_model_version, label.shown_department) == (version, shown["result"][0]["value"]["choices"][0])
    assert label.accepted == int(label.shown_department == first["department"])

    # update replaces, delete removes, a skip is not gold
    ls.annotations.update(id=annotation.id, result=[choice("市信访局")])
    assert stored(backend, annotation.id).department == "市信访局"
    ls.annotations.delete(id=annotation.id)
    assert stored(backend, annotation.id) is None
    skipped = ls.annotations.create(id=task_ids[1], result=[], was_cancelled=True)
    assert stored(backend, skipped.id) is None

    # a webhook that never arrives: START_TRAINING makes the backend pull and reconcile
    hook = label_studio.api("GET", "/api/webhooks/", params={"project": project_id}).json()[0]
    label_studio.api("PATCH", f"/api/webhooks/{hook['id']}/", json={"is_active": False})
    lost = ls.annotations.create(id=task_ids[2], result=[choice(SAMPLES[2]["department"])])
    assert stored(backend, lost.id) is None
    label_studio.api("PATCH", f"/api/webhooks/{hook['id']}/", json={"is_active": True})
    ls.ml.train(id=ml.id)
    pulled = wait_until(lambda: stored(backend, lost.id), what="the pulled annotation")
    assert (pulled.department, pulled.source) == (SAMPLES[2]["department"], "pull")
    assert pulled.shown_model_version == version  # filled from the predictions the backend served


def serving(backend, project_id: int) -> dict:
    versions = requests.get(f"{backend.url}/versions", params={"project": project_id}, timeout=3).json()
    return next((v for v in versions["details"] if v["name"] == versions["serving"]), {})


def test_nothing_is_lost_across_a_kill_and_restart(label_studio, start_backend):
    backend = start_backend()
    ls, project_id, ml, task_ids = connect(label_studio, backend, "12345 e2e restart", SAMPLES[:4])
    ids = [ls.annotations.create(id=t, result=[choice(s["department"])]).id for t, s in zip(task_ids, SAMPLES)]
    assert sorted(l.annotation_id for l in backend.store().labels()) == sorted(ids)
    before = wait_until(lambda: (v := serving(backend, project_id)).get("data", {}).get("project_seq")
                        == backend.store().project_seq(project_id) and v,
                        what="the refit after the new labels")
    backend.kill()

    restarted = start_backend(model_dir=backend.model_dir, port=backend.port)
    store = restarted.store()
    assert sorted(l.annotation_id for l in store.labels()) == sorted(ids)
    assert store.integrity_errors() == []
    # Same labels, same config: the same version name, so Label Studio does not re-predict every task.
    after = wait_until(lambda: serving(restarted, project_id).get("name"), what="the restarted backend's model")
    assert after == before["name"]
    assert ls.ml.get(id=ml.id).state == "CO"
