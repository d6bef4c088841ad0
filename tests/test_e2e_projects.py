"""Many projects, one backend: two Label Studio projects with different department lists, served at once.

Each project has its own label space, gold labels, instant model, LLM version line and training rounds; a request
for one is answered from its own model and names only its own departments, and neither refits because of the other.
"""
from __future__ import annotations

import pytest
import requests
from label_studio_sdk import LabelStudio

from core.jobs import UNFINISHED, JobKind, ModelKind
from tests.helpers import SAMPLES, choice, served_version, wait_until
from tests.test_training import CONFIG as UTILITIES
from tests.test_training import DEPARTMENTS as UTILITY_WORDS
from tests.test_training import FAST_TRAINING, tickets
from training.tiny_model import save_tiny_model

pytestmark = pytest.mark.e2e

CITY = ("市市场监督管理局", "市住房和城乡建设局", "市人力资源和社会保障局")
CITY_CONFIG = ('<View><Text name="ticket" value="$body"/><Choices name="unit" toName="ticket" choice="single">'
               + "".join(f'<Choice value="{d}"/>' for d in CITY) + "</Choices></View>")
CITY_TICKETS = [s for s in SAMPLES if s["department"] in CITY]


def settled(backend, project_id: int) -> bool:
    """The project's instant model has seen every label of the project, and no refit of it is still to come."""
    store = backend.store()
    version = store.serving_version(project_id, ModelKind.INSTANT)
    return (version is not None and version.data.get("project_seq") == store.project_seq(project_id)
            and not store.jobs(kind=JobKind.REFIT, project_id=project_id, status=UNFINISHED))


def retrieve(ls: LabelStudio, label_studio, project_id: int) -> list[dict]:
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    return label_studio.api("GET", "/api/predictions", params={"project": project_id}).json()


def test_two_projects_with_different_departments_share_one_backend(label_studio, start_backend, tmp_path, monkeypatch):
    for key, value in FAST_TRAINING.items():
        monkeypatch.setenv(key, value)
    backend = start_backend(BASE_MODEL=save_tiny_model(tmp_path / "tiny"), TRAINING_DEVICE="cpu", TRAIN_EVERY_N_LABELS=0)
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    utilities = ls.projects.create(title="12345 district A (utilities)", label_config=UTILITIES)
    city = ls.projects.create(title="12345 district B (city units)", label_config=CITY_CONFIG)
    for project in (utilities, city):
        ls.ml.create(url=backend.url, project=project.id, title="router")
    utility_rows = tickets(6, seed=21)
    utility_tasks = ls.projects.import_tasks(id=utilities.id, request=[{"text": t} for t, _ in utility_rows], return_task_ids=True).task_ids
    city_tasks = ls.projects.import_tasks(id=city.id, request=[{"body": s["text"]} for s in CITY_TICKETS], return_task_ids=True).task_ids
    wait_until(lambda: served_version(backend.url, utilities.id) == served_version(backend.url, city.id) == "llm-base", timeout=180,
               what="both projects on the LLM")

    # each project's suggestions name only its own departments
    for project, departments, tasks in ((utilities, set(UTILITY_WORDS), utility_tasks), (city, set(CITY), city_tasks)):
        predictions = retrieve(ls, label_studio, project.id)
        assert sorted(p["task"] for p in predictions) == sorted(tasks)
        assert {p["result"][0]["value"]["choices"][0] for p in predictions} <= departments

    # labels arrive interleaved; each lands in its own project
    for (u_task, (_, u_department)), (c_task, c_sample) in zip(zip(utility_tasks, utility_rows), zip(city_tasks, CITY_TICKETS)):
        ls.annotations.create(id=u_task, result=[choice(u_department)])
        ls.annotations.create(id=c_task, result=[choice(c_sample["department"], control="unit", to_name="ticket")])
    store = backend.store()
    pairs = min(len(utility_tasks), len(city_tasks))
    assert store.label_stats(utilities.id)["labels"] == store.label_stats(city.id)["labels"] == pairs
    assert {l.department for l in store.labels(utilities.id)} <= set(UTILITY_WORDS) and {l.department for l in store.labels(city.id)} <= set(CITY)
    wait_until(lambda: settled(backend, utilities.id) and settled(backend, city.id), timeout=180, what="both instant models to refit")
    utility_versions = {v.name for v in backend.store().versions(utilities.id)}

    # a training round in the city project promotes only the city project's version
    job = requests.post(f"{backend.url}/jobs", json={"project": city.id}, timeout=10).json()
    finished = wait_until(lambda: (j := requests.get(f"{backend.url}/jobs/{job['job']}", timeout=5).json())["finished"] and j,
                          timeout=900, interval=0.5, what="the city project's round")
    assert finished["status"] == "promoted" and finished["project_id"] == city.id, finished
    wait_until(lambda: served_version(backend.url, city.id) == finished["version"], timeout=60, what="the city project's hot swap")
    assert served_version(backend.url, utilities.id) == "llm-base"
    assert {v.name for v in backend.store().versions(utilities.id)} == utility_versions  # nothing refitted in the other project
    assert backend.store().get_version(utilities.id, finished["version"]) is None

    # Label Studio shows each project its own version
    assert {p["model_version"] for p in retrieve(ls, label_studio, city.id)} >= {finished["version"]}
    status = requests.get(f"{backend.url}/status", timeout=5).json()
    by_project = {p["project"]: p for p in status["projects"]}
    assert by_project[city.id]["serving_version"] == finished["version"] and by_project[utilities.id]["serving_version"] == "llm-base"
    jobs = requests.get(f"{backend.url}/jobs", params={"project": utilities.id}, timeout=5).json()["jobs"]
    assert all(j["project_id"] == utilities.id and j["kind"] != "train" for j in jobs)
