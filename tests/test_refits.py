"""The instant model's full refits run in a worker process and can never take serving down: a refit that fails
leaves the last good model answering (and says so in /status and /metrics); a start whose saved model cannot be
loaded answers from the catalog's prototypes, says so, and refits; a refit keeps the serving method unless the other
clearly leads it; between refits, the serving model takes new labels in at once."""
from __future__ import annotations

import json
import shutil

from backend.app import create_app
from core.jobs import JobKind, ModelKind
from core.labeling import parse_label_config
from core.store import Label, open_store
from learning import refit
from learning.instant_model import LinearSvmClassifier
from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, predict_body, wait_until


def post(client, path, body):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json")


def label_all(client, samples) -> None:
    for i, sample in enumerate(samples, start=1):
        assert post(client, "/webhook", annotation_event("ANNOTATION_CREATED", i, i, sample["text"], sample["department"])).status_code == 200


def settled(service) -> bool:
    version = service.store.serving_version(1, "instant")
    return (version is not None and version.data.get("project_seq") == service.store.project_seq(1)
            and service.models.serving_version(1) == version.name)


def test_a_failed_refit_keeps_the_last_good_model_serving_and_says_so(settings):
    app = create_app(settings)
    service, client = app.extensions["service"], app.test_client()
    post(client, "/setup", {"project": "1.1", "schema": LABEL_CONFIG})
    label_all(client, SAMPLES[:10])
    wait_until(lambda: settled(service), timeout=120, what="the first refit")
    good = service.models.serving_version(1)
    instant = settings.project_dir(1) / "instant"
    shutil.rmtree(instant)
    instant.write_text("a file where the models folder should be: every save fails")
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 99, 99, SAMPLES[20]["text"], SAMPLES[20]["department"]))
    failed = wait_until(lambda: (p := project(client, 1))["last_refit"] and p["last_refit"]["status"] == "failed" and p, timeout=120,
                        what="the refit to fail")
    assert "instant" in failed["last_refit"]["error"]
    assert failed["serving_version"] == good
    answer = post(client, "/predict", predict_body([SAMPLES[21]["text"]], project="1.1"))
    assert answer.status_code == 200 and answer.get_json()["results"][0]["model_version"] == good
    assert 'backend_last_refit_failed{project="1"} 1.0' in client.get("/metrics").get_data(as_text=True)
    service.stop()


def project(client, project_id: int) -> dict:
    return next(p for p in client.get("/status").get_json()["projects"] if p["project"] == project_id)


def test_a_start_whose_saved_model_cannot_be_loaded_answers_from_the_catalog_and_refits(settings):
    app = create_app(settings)
    service, client = app.extensions["service"], app.test_client()
    post(client, "/setup", {"project": "1.1", "schema": LABEL_CONFIG})
    label_all(client, SAMPLES[:10])
    wait_until(lambda: settled(service), timeout=120, what="the first refit")
    saved = service.store.serving_version(1, "instant")
    service.stop()
    (settings.model_path(saved.path) / "model.pkl").write_bytes(b"not a model")

    app = create_app(settings)
    service, client = app.extensions["service"], app.test_client()
    answer = post(client, "/predict", predict_body([SAMPLES[30]["text"]], project="1.1"))
    assert answer.status_code == 200 and answer.get_json()["results"][0]["result"]
    assert "prototypes" in project(client, 1).get("note", "")
    wait_until(lambda: settled(service) and service.models.serving_version(1) not in (None, saved.name), timeout=120,
               what="a refit on the project's labels")
    assert service.store.get_version(1, service.models.serving_version(1)).data["labels"] == 10
    service.stop()


def test_a_refit_tells_the_method_choice_which_method_serves(settings, monkeypatch):
    """The hysteresis of ``fit_instant_model`` needs the serving version's method: the refit worker passes it in."""
    store = open_store(settings)
    store.remember_project(1, LABEL_CONFIG, parse_label_config(LABEL_CONFIG).departments)
    for i, sample in enumerate(SAMPLES[:10], start=1):
        store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=sample["text"], department=sample["department"]))
    store.add_version(1, "instant-1", ModelKind.INSTANT, status="candidate", metrics={"method": "svm"})
    store.promote_version(1, "instant-1")
    asked = []
    fit = refit.fit_on_labels
    monkeypatch.setattr(refit, "fit_on_labels", lambda *args, **kwargs: asked.append(kwargs["serving_method"]) or fit(*args, **kwargs))
    job, _ = store.request_job(JobKind.REFIT, "test", 1)
    refit.run_refit(job.id, "test-worker", settings)
    assert asked == ["svm"]
    assert store.serving_version(1, ModelKind.INSTANT).name == "instant-2"


def test_a_correction_is_answered_at_once_long_before_the_next_refit(settings):
    """At 10^6 labels a refit takes a minute; an annotator who corrects a ticket should not see the same ticket (a
    caller ringing again) routed to the old department meanwhile."""
    store = open_store(settings)
    departments = parse_label_config(LABEL_CONFIG).departments
    store.remember_project(1, LABEL_CONFIG, departments)
    for i, sample in enumerate(SAMPLES[:40], start=1):
        store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=sample["text"], department=sample["department"]))
    clf = LinearSvmClassifier("instant-1", departments).fit([s["text"] for s in SAMPLES[:40]], [s["department"] for s in SAMPLES[:40]],
                                                            refit.seed_texts(settings, 1))
    refit.register(store, settings, 1, clf, {"method": "svm", "data": {"project_seq": store.project_seq(1),
                                                                         "departments_hash": refit.departments_hash(departments)}},
                   parent=None, promote=True)
    app = create_app(settings.replace(instant_refit_seconds=3600))  # no refit comes within this test
    service, client = app.extensions["service"], app.test_client()
    post(client, "/setup", {"project": "1.1", "schema": LABEL_CONFIG})
    ticket = SAMPLES[60]["text"]

    def answer(text: str) -> dict:
        return post(client, "/predict", predict_body([text], project="1.1")).get_json()["results"][0]

    before = answer(ticket)
    assert before["model_version"] == "instant-1"
    suggested = before["result"][0]["value"]["choices"][0]
    corrected = next(d for d in departments if d != suggested and d != SAMPLES[60]["department"])
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 500, 500, ticket, corrected))

    for text in (ticket, ticket[:-3] + "谢谢。"):  # the ticket, and the caller's next call about it
        after = answer(text)
        assert after["model_version"] == "instant-1" and after["result"][0]["value"]["choices"][0] == corrected
    assert project(client, 1)["online_labels"] == 1
    assert service.store.serving_version(1, ModelKind.INSTANT).name == "instant-1"  # no refit did this
    service.stop()


def test_the_sweep_of_half_written_models_spares_every_writer_still_alive(settings):
    """A service starting (or a worker dying) sweeps the folders its dead writers left; a model being written at
    that moment by a live thread of this process, or by a worker on another machine, must survive the sweep."""
    import socket
    import subprocess
    import sys

    from core.jobs import partial_dir, remove_stale_partials

    folder = settings.project_dir(1) / "instant"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    being_written = partial_dir(folder / "instant-2")
    left_by_dead = folder / f".partial-instant-1@{socket.gethostname()}:{dead.stdout.strip()}"
    elsewhere = folder / ".partial-instant-3@another-host:1"
    for path in (being_written, left_by_dead, elsewhere):
        path.mkdir(parents=True)
    remove_stale_partials(settings.model_dir)
    assert being_written.exists() and elsewhere.exists()
    assert not left_by_dead.exists()
