"""The HTTP contract Label Studio relies on, and clear 4xx answers for everything else (in-process app)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from backend.app import create_app
from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, predict_body, wait_until


def post(client, path, body, **kwargs):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json", **kwargs)


def test_health_answers_while_no_model_is_fitted_yet(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "UP"


def test_setup_returns_the_serving_model_version(client, service):
    body = post(client, "/setup", {"project": "3.1795892835", "schema": LABEL_CONFIG, "hostname": "http://localhost:8080",
                                   "access_token": "legacy-token", "extra_params": None}).get_json()
    assert body["model_version"].startswith("instant-")
    assert [p.project_id for p in service.store.projects()] == [0, 3]  # 0: requests that name no project


def test_setup_refuses_a_config_without_a_department_choice(client):
    response = post(client, "/setup", {"project": "1.1", "schema": '<View><Text name="t" value="$text"/></View>'})
    assert response.status_code == 422
    assert "single-choice <Choices>" in response.get_json()["error"]


def test_predict_answers_one_item_per_task_in_order(client):
    texts = [s["text"] for s in SAMPLES[:6]]
    response = post(client, "/predict", predict_body(texts))
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(texts)
    for item in results:
        department = item["result"][0]["value"]["choices"][0]
        assert item["result"][0]["from_name"] == "department" and item["result"][0]["to_name"] == "text"
        assert department in LABEL_CONFIG
        assert 0 < item["score"] <= 1
        assert item["model_version"].startswith("instant-")
        assert len(item["result"]) == 1  # nothing else is shown that an annotator could edit


def test_predict_preselects_in_the_suggestion_row_once_the_task_shows_the_suggestions(client, service):
    text = SAMPLES[0]["text"]
    first = post(client, "/predict", predict_body([text])).get_json()["results"][0]
    assert first["result"][0]["from_name"] == "department"  # the task has no suggestion row yet
    [stored] = service.store.predictions()
    space = service.models.space(1)
    body = predict_body([text])
    body["tasks"][0]["data"].update(space.suggestion_fields([tuple(t) for t in stored["top"]]))
    again = post(client, "/predict", body).get_json()["results"][0]
    assert again["result"][0]["from_name"] == "suggestion"
    assert again["result"][0]["value"] == first["result"][0]["value"] and len(stored["top"]) == service.settings.suggestions_top_k


def test_predict_is_the_same_for_a_ticket_whatever_its_position_in_the_batch(client):
    texts = [s["text"] for s in SAMPLES[:5]]
    forward = post(client, "/predict", predict_body(texts)).get_json()["results"]
    backward = post(client, "/predict", predict_body(texts[::-1])).get_json()["results"][::-1]
    assert [r["result"][0]["value"] for r in forward] == [r["result"][0]["value"] for r in backward]
    assert [r["score"] for r in forward] == pytest.approx([r["score"] for r in backward])


def test_predict_score_is_the_top1_probability_and_is_stored_with_uncertainty(client, service):
    post(client, "/predict", predict_body([SAMPLES[0]["text"], SAMPLES[1]["text"]]))
    rows = service.store.predictions(project_id=1)
    assert [r["task_id"] for r in rows] == [1, 2]
    for row in rows:
        probs = [p for _, p in row["top"]]
        assert row["score"] == pytest.approx(probs[0])
        assert row["margin"] == pytest.approx(probs[0] - probs[1])
        assert row["entropy"] > 0


def test_predict_reads_control_names_from_the_project_config(client):
    config = ('<View><Text name="ticket" value="$content"/><Choices name="unit" toName="ticket" choice="single">'
              '<Choice value="市公安局"/><Choice value="市教育局"/></Choices></View>')
    body = predict_body([], config=config)
    body["tasks"] = [{"id": 1, "data": {"content": "孩子入学学区划分不合理，学校乱收费"}}]
    item = post(client, "/predict", body).get_json()["results"][0]
    assert item["result"] == [{"id": item["result"][0]["id"], "from_name": "unit", "to_name": "ticket", "type": "choices",
                               "value": {"choices": ["市教育局"]}}]


def test_a_task_without_text_gets_an_error_item_and_the_others_still_get_suggestions(client):
    body = predict_body(["小区电梯坏了", "公交车晚点"])
    del body["tasks"][0]["data"]["text"]
    results = post(client, "/predict", body).get_json()["results"]
    assert "result" not in results[0] and "'text'" in results[0]["error"]
    assert results[1]["result"]


@pytest.mark.parametrize("body, status, phrase", [
    ({}, 422, "'tasks' must be a non-empty list"),
    ({"tasks": []}, 422, "'tasks' must be a non-empty list"),
    ({"tasks": "abc"}, 422, "'tasks' must be a non-empty list"),
    ({"tasks": [{"id": 1, "data": {"text": ""}}]}, 422, "the ticket text is empty"),
    ({"tasks": [{"id": 1}]}, 422, "no 'data'"),
    ({"tasks": [{"id": 1, "data": {"text": "x"}}], "label_config": "<View>"}, 422, "not a valid Label Studio config"),
    ({"tasks": [{"id": 1, "data": {"text": "x"}}], "label_config": 5}, 422, "non-empty XML string"),
])
def test_predict_refuses_bad_bodies_with_a_reason(client, body, status, phrase):
    response = post(client, "/predict", body)
    assert response.status_code == status
    assert phrase in response.get_json()["error"]


@pytest.mark.parametrize("data, content_type, status, phrase", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 422, "must be a JSON object"),
    (b'{"tasks": []}', "text/plain", 415, "Content-Type: application/json"),
    (b'{"a": "\xff\xfe"}', "application/json", 400, "not UTF-8"),
])
def test_malformed_requests_get_a_4xx_that_says_what_is_wrong(client, data, content_type, status, phrase):
    for path in ("/predict", "/webhook", "/setup"):
        response = client.post(path, data=data, content_type=content_type)
        assert response.status_code == status, path
        assert phrase in response.get_json()["error"]


def test_oversized_bodies_and_unknown_routes(tmp_path, settings):
    app = create_app(settings.replace(max_request_bytes=1000))
    client = app.test_client()
    response = post(client, "/predict", predict_body(["很长的工单" * 500]))
    assert response.status_code == 413 and "MAX_REQUEST_BYTES" in response.get_json()["error"]
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405
    app.extensions["service"].stop()


def test_annotation_webhooks_store_update_and_delete_gold_labels(client, service):
    text = SAMPLES[0]["text"]
    created = post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 11, 5, text, "市公安局"))
    assert created.status_code == 200 and created.get_json()["outcome"] == "created"
    label = service.store.get_label(11)
    assert (label.task_id, label.text, label.department, label.annotator, label.lead_time) == (5, text, "市公安局", "7", 12.5)

    post(client, "/webhook", annotation_event("ANNOTATION_UPDATED", 11, 5, text, "市教育局", updated_at="2026-11-28T11:00:00Z"))
    assert service.store.get_label(11).department == "市教育局"

    deleted = post(client, "/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 11}], "project": {"id": 1}})
    assert deleted.get_json()["removed"] == 1
    assert service.store.get_label(11) is None


def test_duplicate_and_out_of_order_deliveries_leave_one_correct_row(client, service):
    text = SAMPLES[1]["text"]
    newer = annotation_event("ANNOTATION_UPDATED", 21, 6, text, "市教育局", updated_at="2026-11-28T12:00:00Z")
    older = annotation_event("ANNOTATION_CREATED", 21, 6, text, "市公安局", updated_at="2026-11-28T10:00:00Z")
    assert post(client, "/webhook", newer).get_json()["outcome"] == "created"
    assert post(client, "/webhook", older).get_json()["outcome"] == "stale"
    assert post(client, "/webhook", newer).get_json()["outcome"] == "unchanged"
    assert [(l.annotation_id, l.department) for l in service.store.labels()] == [(21, "市教育局")]

    post(client, "/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 22}], "project": {"id": 1}})
    late = post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 22, 7, text, "市公安局"))
    assert late.get_json()["outcome"] == "deleted"
    assert service.store.get_label(22) is None


def test_skipped_annotations_are_not_gold_and_unskip_restores(client, service):
    text = SAMPLES[2]["text"]
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 31, 8, text, "市公安局"))
    skipped = post(client, "/webhook", annotation_event("ANNOTATION_UPDATED", 31, 8, text, "", cancelled=True,
                                                        updated_at="2026-11-28T11:00:00Z"))
    assert skipped.get_json()["outcome"] == "not gold: skipped"
    assert service.store.get_label(31) is None


def test_the_prediction_the_annotator_saw_is_recorded_with_accepted_or_corrected(client, service):
    shown = {"model_version": "instant-1", "score": 0.81, "result": [
        {"from_name": "department", "to_name": "text", "type": "choices", "value": {"choices": ["市公安局"]}}]}
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 41, 9, SAMPLES[3]["text"], "市公安局", prediction=shown))
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 42, 10, SAMPLES[4]["text"], "市教育局", prediction=shown))
    accepted, corrected = service.store.get_label(41), service.store.get_label(42)
    assert (accepted.shown_model_version, accepted.shown_department, accepted.shown_score, accepted.accepted) == ("instant-1", "市公安局", 0.81, 1)
    assert corrected.accepted == 0
    stats = service.store.label_stats()
    assert (stats["accepted"], stats["corrected"]) == (1, 1)


def test_rationale_is_kept_for_the_export(client, service):
    event = annotation_event("ANNOTATION_CREATED", 51, 11, SAMPLES[5]["text"], "市公安局",
                             extra_result=[{"from_name": "rationale", "to_name": "text", "type": "textarea",
                                            "value": {"text": ["涉及治安，属公安职责"]}}])
    post(client, "/webhook", event)
    assert service.store.get_label(51).rationale == "涉及治安，属公安职责"


@pytest.mark.parametrize("mutate, phrase", [
    (lambda e: e["annotation"]["result"][0]["value"].update(choices=["不存在的局"]), "is not one of the 70 choices"),
    (lambda e: e["annotation"]["result"][0]["value"].update(choices=["市公安局", "市教育局"]), "exactly one choice"),
    (lambda e: e["annotation"].update(result=[]), "has no choice for the department control"),
    (lambda e: e["annotation"].update(id="abc"), "annotation.id must be an integer"),
    (lambda e: e["task"]["data"].update(text="   "), "the ticket text is empty"),
    (lambda e: e["task"]["data"].update(text="长" * 20_001), "at most 20000 are accepted"),
    (lambda e: e["task"].update(data={"body": "x"}), "no text under 'text'"),
    (lambda e: e.update(project={"title": "no id"}), "needs 'project' with an integer 'id'"),
])
def test_invalid_labels_are_refused_and_nothing_is_stored(client, service, mutate, phrase):
    event = annotation_event("ANNOTATION_CREATED", 61, 12, SAMPLES[6]["text"], "市公安局")
    mutate(event)
    response = post(client, "/webhook", event)
    assert response.status_code == 422
    assert phrase in response.get_json()["error"]
    assert service.store.labels() == []


def test_webhook_payload_secrets_are_never_stored(client, service, settings):
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 71, 13, SAMPLES[7]["text"], "市公安局"))
    service.background.wait_idle(30)
    raw = Path(settings.store_location).read_bytes() + b"".join(p.read_bytes() for p in settings.model_dir.glob("store.sqlite3-*"))
    assert b"secret-project-token" not in raw and b"secret-password" not in raw


def test_other_webhook_actions_are_acknowledged(client):
    response = post(client, "/webhook", {"action": "TASKS_CREATED", "tasks": [{"id": 1}], "project": {"id": 1}})
    assert response.status_code == 200 and response.get_json()["status"] == "acknowledged"
    assert post(client, "/webhook", {"tasks": []}).status_code == 422


def test_start_training_answers_at_once_even_without_label_studio_configured(client):
    response = post(client, "/webhook", {"action": "START_TRAINING", "project": {"id": 1, "title": "x"}})
    assert response.status_code == 200 and response.get_json()["status"] == "queued"


def test_new_labels_refit_the_instant_model_into_a_new_version(client, service):
    first = post(client, "/setup", {"project": "1.1", "schema": LABEL_CONFIG}).get_json()["model_version"]
    wait_until(lambda: service.models.serving_version(1) == first, what="the catalog prototypes")
    for i, sample in enumerate(SAMPLES[:10]):
        post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 100 + i, 100 + i, sample["text"], sample["department"]))
    wait_until(lambda: service.models.serving_version(1) not in (None, first), timeout=60, what="a refit after new labels")
    versions = client.get("/versions?project=1").get_json()
    assert versions["serving"] == service.models.serving_version(1)
    assert versions["versions"] == [versions["serving"], first]  # newest first
    assert service.store.get_version(1, versions["serving"]).data["labels"] == 10
    assert post(client, "/setup", {"project": "1.1"}).get_json()["model_version"] == versions["serving"]
    assert first in client.get("/versions").get_json()["versions"]  # Label Studio asks without a project


def test_metrics_expose_requests_labels_and_the_serving_model(client):
    post(client, "/predict", predict_body(["小区电梯坏了"]))
    post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 81, 14, SAMPLES[8]["text"], "市公安局"))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'backend_http_requests_total{endpoint="/predict",status="200"} 1.0' in text
    assert 'backend_webhooks_total{action="ANNOTATION_CREATED",outcome="created"} 1.0' in text
    assert 'backend_gold_labels{project="1",split="train"}' in text
    assert 'backend_serving_model{project="1",version="instant-' in text
    assert 'backend_predictions_total{model_kind="instant"} 1.0' in text


def test_basic_auth_guards_every_endpoint_but_a_public_health(settings):
    app = create_app(settings.replace(basic_auth_user="ls", basic_auth_pass="s3cret"))
    client = app.test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.get("/health").status_code == 200
    for path in ("/versions", "/metrics", "/status"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=bad).status_code == 401
        assert client.get(path, headers=good).status_code == 200
    response = post(client, "/predict", predict_body(["x"]))
    assert response.status_code == 401 and "BASIC_AUTH_USER" in response.get_json()["error"]
    assert post(client, "/predict", predict_body(["小区电梯坏了"]), headers=good).status_code == 200
    app.extensions["service"].stop()
    private = create_app(settings.replace(basic_auth_user="ls", basic_auth_pass="s3cret", public_health=False))
    assert private.test_client().get("/health").status_code == 401
    private.extensions["service"].stop()
