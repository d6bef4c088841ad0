"""Hostile and faulty input found by probing a running backend (issue: hostile input). Each case answers a clear
4xx that says what was wrong — never a 500 — stores nothing invalid and loses nothing valid, and leaves /metrics and
/health answering."""
from __future__ import annotations

import json
import logging
import time

import pytest
import requests

from backend.app import create_app
from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, predict_body, wait_until


def post(client, path, body: dict | str):
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return client.post(path, data=data, content_type="application/json")


def still_healthy(client):
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def config_with(departments: list[str]) -> str:
    choices = "".join(f'<Choice value="{d}"/>' for d in departments)
    return f'<View><Text name="text" value="$text"/><Choices name="department" toName="text" choice="single">{choices}</Choices></View>'


# -- 1. integers JSON will not parse ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
def test_an_integer_of_more_than_4300_digits_is_a_400_not_a_500(client, path):
    response = post(client, path, '{"project": ' + "1" * 5000 + "}")
    assert response.status_code == 400
    assert "not valid JSON" in response.get_json()["error"] and "digits" in response.get_json()["error"]
    still_healthy(client)


# -- 2. lone surrogates --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["text", "rationale", "completed_by", "created_at", "model_version"])
def test_a_lone_surrogate_anywhere_in_a_webhook_is_replaced_and_the_label_kept(client, service, where):
    event = annotation_event("ANNOTATION_CREATED", 11, 5, SAMPLES[0]["text"], SAMPLES[0]["department"],
                             extra_result=[{"from_name": "rationale", "to_name": "text", "type": "textarea", "value": {"text": ["理由"]}}],
                             prediction={"model_version": "instant-1", "score": 0.5, "result": []})
    raw = json.dumps(event, ensure_ascii=True)
    marker = {"text": json.dumps(SAMPLES[0]["text"], ensure_ascii=True), "rationale": '"\\u7406\\u7531"',
              "completed_by": '"completed_by": 7', "created_at": '"created_at": "2026', "model_version": '"instant-1"'}[where]
    replacement = {"text": marker[:-1] + '\\ud800"', "rationale": '"\\u7406\\u7531\\ud800"', "completed_by": '"completed_by": "\\ud800"',
                   "created_at": '"created_at": "\\ud800 2026', "model_version": '"instant-1\\ud800"'}[where]
    assert marker in raw
    response = post(client, "/webhook", raw.replace(marker, replacement, 1))
    assert response.status_code == 200, response.get_json()
    label = service.store.get_label(11)
    assert label is not None and "\ud800" not in json.dumps([label.text, label.rationale, label.annotator, label.created_at,
                                                               label.shown_model_version], ensure_ascii=False)
    still_healthy(client)


# -- 3. a webhook action that would break /metrics -------------------------------------------------------------
def test_an_unknown_or_broken_action_is_counted_as_other_and_metrics_keep_answering(client):
    assert post(client, "/webhook", '{"action": "\\ud800", "project": {"id": 1}}').status_code == 200
    for i in range(50):
        post(client, "/webhook", {"action": f"MADE_UP_{i}", "project": {"id": 1}})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert 'backend_webhooks_total{action="other",outcome="acknowledged"} 51.0' in text
    assert "MADE_UP" not in text


# -- 4. project ids in Unicode digits ------------------------------------------------------------------------------
@pytest.mark.parametrize("path, project", [("/predict", "①.1"), ("/setup", "²"), ("/predict", "١٢.1"), ("/setup", "１２")])
def test_project_ids_must_be_ascii_digits(client, service, path, project):
    body = predict_body(["小区电梯坏了"], project=project) if path == "/predict" else {"project": project, "schema": LABEL_CONFIG}
    response = post(client, path, body)
    assert response.status_code == 422 and "project" in response.get_json()["error"]
    assert [p.project_id for p in service.store.projects()] == [0]  # "١٢" is not silently taken as project 12


# -- 5. ids beyond SQLite's integers in the URL ---------------------------------------------------------------------
@pytest.mark.parametrize("job_id", ["9223372036854775808", "99999999999999999999999999"])
def test_a_job_id_beyond_64_bits_is_not_found_not_a_crash(client, job_id):
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404 and "no job" in response.get_json()["error"]


# -- 6. a label space too large to serve ----------------------------------------------------------------------------
def test_a_config_with_more_choices_than_max_choices_is_refused_at_once(client):
    config = config_with([f"单位{i}" for i in range(10_000)])
    started = time.perf_counter()
    response = post(client, "/predict", predict_body(["小区电梯坏了"], config=config))
    assert time.perf_counter() - started < 5
    assert response.status_code == 422 and "MAX_CHOICES" in response.get_json()["error"]


def test_a_new_large_config_is_prepared_in_the_background_while_other_projects_are_answered(settings):
    app = create_app(settings.replace(prepare_wait_seconds=1.0))
    client = app.test_client()
    wait_until(lambda: post(client, "/predict", predict_body(["小区电梯坏了"], project="1.1")).status_code == 200, timeout=60,
               what="project 1's model")
    big = config_with([f"街道办事处{i}" for i in range(1_500)])
    started = time.perf_counter()
    first = post(client, "/predict", predict_body(["小区电梯坏了"], config=big, project="2.1"))
    assert time.perf_counter() - started < 5
    assert first.status_code in (200, 503)
    if first.status_code == 503:
        assert "being prepared" in first.get_json()["error"]
    started = time.perf_counter()
    assert post(client, "/predict", predict_body(["公交车晚点"], project="1.1")).status_code == 200
    assert time.perf_counter() - started < 2  # project 1 never waits behind project 2's fit
    answer = wait_until(lambda: (r := post(client, "/predict", predict_body(["小区电梯坏了"], config=big, project="2.1"))).status_code == 200 and r,
                        timeout=120, what="project 2's model")
    assert answer.get_json()["results"][0]["result"][0]["value"]["choices"][0].startswith("街道办事处")
    app.extensions["service"].stop()


# -- smaller findings ------------------------------------------------------------------------------------------------
def test_control_characters_in_user_input_cannot_forge_a_log_line(client, caplog):
    config = ('<View><Text name="text" value="$text"/><Choices name="a&#10;2026-12-01 ERROR backend.store: FORGED" toName="text" '
              'choice="single"><Choice value="x"/></Choices><Choices name="b" toName="text" choice="single"><Choice value="y"/>'
              '</Choices></View>')
    with caplog.at_level(logging.WARNING):
        response = post(client, "/setup", {"project": "1.1", "schema": config})
    assert response.status_code == 422
    assert "\n" not in response.get_json()["error"]
    assert not any("\n" in record.getMessage() for record in caplog.records)


def test_user_input_is_echoed_only_as_a_bounded_prefix(client, caplog):
    event = annotation_event("ANNOTATION_CREATED", 11, 5, SAMPLES[0]["text"], "局" * 6_000_000)
    with caplog.at_level(logging.WARNING):
        response = post(client, "/webhook", event)
    assert response.status_code == 422 and len(response.get_json()["error"]) < 1_100
    assert all(len(record.getMessage()) < 1_200 for record in caplog.records)


@pytest.mark.parametrize("text", ["\x00", "\u200b\u200b", " \t\n", "。，！"])
def test_content_free_texts_are_not_gold_labels(client, service, text):
    response = post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 11, 5, text, SAMPLES[0]["department"]))
    assert response.status_code == 422 and "no content" in response.get_json()["error"]
    assert service.store.labels() == []


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no"])
def test_was_cancelled_must_be_a_boolean(client, service, value):
    event = annotation_event("ANNOTATION_CREATED", 11, 5, SAMPLES[0]["text"], SAMPLES[0]["department"])
    assert post(client, "/webhook", event).get_json()["outcome"] == "created"
    update = annotation_event("ANNOTATION_UPDATED", 11, 5, SAMPLES[0]["text"], SAMPLES[0]["department"], updated_at="2026-11-28T11:00:00Z")
    update["annotation"]["was_cancelled"] = value
    response = post(client, "/webhook", update)
    assert response.status_code == 422 and "was_cancelled" in response.get_json()["error"]
    assert service.store.get_label(11) is not None  # a malformed flag never discards a label


def test_a_department_outside_the_projects_config_is_refused(client, service):
    post(client, "/setup", {"project": "1.1", "schema": config_with(["市公安局", "市教育局"])})
    event = annotation_event("ANNOTATION_CREATED", 11, 5, SAMPLES[0]["text"], "市交通委", config=config_with(["市公安局", "市教育局"]))
    response = post(client, "/webhook", event)
    assert response.status_code == 422 and "is not one of the 2 choices" in response.get_json()["error"]
    assert service.store.labels() == []


# -- at the HTTP server itself (gunicorn) ----------------------------------------------------------------------------
def test_a_chunked_body_over_the_limit_is_a_413_not_silently_cut(running_backend):
    backend = running_backend(MAX_REQUEST_BYTES="100000")

    def chunks():
        yield json.dumps(predict_body(["小区电梯坏了"])).encode()
        for _ in range(30):
            yield b" " * 10_000

    response = requests.post(f"{backend.url}/predict", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and "MAX_REQUEST_BYTES" in response.json()["error"]
    assert requests.get(f"{backend.url}/health", timeout=5).status_code == 200


def test_an_oversized_header_gets_a_json_error(running_backend):
    backend = running_backend()
    response = requests.get(f"{backend.url}/status", headers={"Authorization": "Basic " + "A" * 9000}, timeout=10)
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"].startswith("application/json") and response.json()["error"]
