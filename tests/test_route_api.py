"""POST /route, the hotline's own dispatch call (issue 13): decisions a centre can act on, clear 4xx for bad input,
one decision per ticket id, and auto-routing that stops itself when audits show the promise broken (in-process app)."""
from __future__ import annotations

import base64
import json

import pytest

from backend.app import create_app
from core.routing import AUTO, REVIEW, AutoRouting
from tests.helpers import LABEL_CONFIG, SAMPLES, wait_until

PROJECT = 3


def post(client, path, body, **kwargs):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json", **kwargs)


def tickets(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"T-{start + i}", "text": SAMPLES[(start + i) % len(SAMPLES)]["text"]} for i in range(n)]


def route(client, body: dict, **kwargs):
    """POST /route, waiting out the 503 a project answers while its first model is being prepared."""
    answer = {}

    def answered():
        answer["response"] = post(client, "/route", body, **kwargs)
        return answer["response"].status_code != 503

    wait_until(answered, timeout=60, what="a model for the project")
    return answer["response"]


def connect(client) -> None:
    assert post(client, "/setup", {"project": f"{PROJECT}.1795892835", "schema": LABEL_CONFIG}).status_code == 200


def prove_every_ticket_routable(service) -> str:
    """What a version scored on its frozen split with 200 right answers at every score would carry: a threshold of 0."""
    version = service.models.serving_version(PROJECT)
    proven = AutoRouting(audit_rate=1.0).thresholds([0.0] * 200, [True] * 200)
    found = service.store.get_version(PROJECT, version)
    service.store.update_version(PROJECT, version, metrics={**found.metrics, "routing": proven.to_dict()})
    service.router._thresholds.clear()  # a version's thresholds are read once; this one was just re-proven
    return version


@pytest.fixture
def routing_client(settings):
    app = create_app(settings.replace(audit_rate=1.0, max_route_tickets=50))
    yield app.test_client()
    app.extensions["service"].background.wait_idle(30)
    app.extensions["service"].stop()


def test_an_unproven_version_sends_every_ticket_to_review_and_says_why(client):
    connect(client)
    response = route(client, {"project": PROJECT, "tickets": tickets(3)})
    assert response.status_code == 200
    body = response.get_json()
    assert body["project"] == PROJECT and [r["id"] for r in body["results"]] == ["T-0", "T-1", "T-2"]
    for result in body["results"]:
        assert result["decision"] == REVIEW and result["department"] in LABEL_CONFIG
        assert 0 < result["probability"] <= 1 and result["model_version"].startswith("instant-")
        assert "threshold" in result["reason"] or "calibrated" in result["reason"]


def test_a_ticket_id_gets_one_decision_and_another_text_under_it_is_refused(client, service):
    connect(client)
    first = route(client, {"project": PROJECT, "tickets": tickets(4)}).get_json()["results"]
    again = route(client, {"project": PROJECT, "tickets": tickets(4)[::-1]}).get_json()["results"]
    assert again == first[::-1]
    changed = route(client, {"project": PROJECT, "tickets": [{"id": "T-1", "text": "另一张工单：路灯不亮"}]})
    assert changed.status_code == 409 and "T-1" in changed.get_json()["error"]
    assert len(service.store.routes(PROJECT, [t["id"] for t in tickets(4)])) == 4


@pytest.mark.parametrize("body, status, words", [
    ({"tickets": tickets(1)}, 422, "project"),
    ({"project": 0, "tickets": tickets(1)}, 422, "project"),
    ({"project": "①", "tickets": tickets(1)}, 422, "project"),
    ({"project": 99, "tickets": tickets(1)}, 404, "not connected"),
    ({"project": PROJECT, "tickets": "小区电梯坏了"}, 422, "non-empty list"),
    ({"project": PROJECT, "tickets": []}, 422, "non-empty list"),
    ({"project": PROJECT, "tickets": [*tickets(2), {"id": "T-9", "text": "  。。 "}]}, 422, "no content"),
    ({"project": PROJECT, "tickets": [*tickets(1), {"id": True, "text": "路灯不亮"}]}, 422, "'id'"),
    ({"project": PROJECT, "tickets": [{"id": "A", "text": "路灯不亮"}, {"id": "A", "text": "噪音扰民"}]}, 422, "twice"),
    ({"project": PROJECT, "tickets": tickets(51)}, 413, "MAX_ROUTE_TICKETS"),
])
def test_bad_input_is_refused_with_what_was_wrong_and_nothing_is_routed(routing_client, body, status, words):
    connect(routing_client)
    response = route(routing_client, body)
    assert response.status_code == status, response.get_json()
    assert words in response.get_json()["error"]
    service = routing_client.application.extensions["service"]
    assert service.store.routes(PROJECT, [f"T-{i}" for i in range(60)]) == {}


def test_a_body_that_is_not_json_is_a_400(client):
    response = client.post("/route", data=b"{not json", content_type="application/json")
    assert response.status_code == 400


def test_route_needs_the_same_basic_auth_as_the_rest(settings):
    app = create_app(settings.replace(basic_auth_user="ls", basic_auth_pass="s3cret"))
    client = app.test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert post(client, "/route", {"project": PROJECT, "tickets": tickets(1)}).status_code == 401
    assert post(client, "/setup", {"project": f"{PROJECT}.1", "schema": LABEL_CONFIG}, headers=good).status_code == 200
    assert route(client, {"project": PROJECT, "tickets": tickets(1)}, headers=good).status_code == 200
    app.extensions["service"].stop()


def test_the_contract_is_served_as_openapi(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    operation = spec["paths"]["/route"]["post"]
    assert {"200", "409", "413", "422"} <= set(operation["responses"])


def test_a_proven_version_routes_without_a_person_until_its_audits_show_the_promise_broken(routing_client):
    service = routing_client.application.extensions["service"]
    connect(routing_client)
    route(routing_client, {"project": PROJECT, "tickets": tickets(1, start=100)})  # the project's model is ready
    version = prove_every_ticket_routable(service)
    routed = route(routing_client, {"project": PROJECT, "tickets": tickets(20)}).get_json()["results"]
    assert {r["decision"] for r in routed} == {AUTO} and all(r["audit"] for r in routed)  # AUDIT_RATE=1: every one audited
    assert all(r["threshold"] == 0.0 for r in routed)
    state = routing_client.get("/status").get_json()["projects"]
    [mine] = [p for p in state if p["project"] == PROJECT]
    assert mine["auto_routing"]["state"] == "on" and mine["auto_routing"]["routed"][AUTO] == 20

    # The audited tickets became tasks 1..20; people answer each with another department than the model's.
    service.store.set_route_tasks(PROJECT, {r["id"]: i + 1 for i, r in enumerate(routed)})
    departments = service.models.space(PROJECT).departments
    for i, r in enumerate(routed):
        wrong = next(d for d in departments if d != r["department"])
        service.router.reviewed(PROJECT, i + 1, wrong)
    later = route(routing_client, {"project": PROJECT, "tickets": tickets(3, start=40)}).get_json()["results"]
    assert {r["decision"] for r in later} == {REVIEW}
    assert all("stopped" in r["reason"] for r in later)
    [mine] = [p for p in routing_client.get("/status").get_json()["projects"] if p["project"] == PROJECT]
    assert mine["auto_routing"]["state"] == "stopped" and mine["auto_routing"]["model_version"] == version
    assert mine["auto_routing"]["audit"]["upper"] < 0.95
    assert f'backend_auto_routing_stopped{{project="{PROJECT}",version="{version}"}} 1.0' in routing_client.get("/metrics").get_data(as_text=True)
