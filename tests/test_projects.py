"""Every project has its own label space and model line; projects may share a catalog or bring their own."""
from __future__ import annotations

import json

from backend.app import create_app
from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, predict_body, wait_until

TWO = ('<View><Text name="text" value="$text"/><Choices name="department" toName="text" choice="single">'
       '<Choice value="甲街道办事处"/><Choice value="乙街道办事处"/></Choices></View>')


def post(client, path, body):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json")


def suggestions(client, project: str, config: str, texts: list[str]) -> list[str]:
    results = post(client, "/predict", predict_body(texts, config=config, project=project)).get_json()["results"]
    return [r["result"][0]["value"]["choices"][0] for r in results]


def test_each_project_is_answered_from_its_own_departments_and_a_config_change_touches_no_other(client, service):
    texts = [s["text"] for s in SAMPLES[:5]]
    assert set(suggestions(client, "1.1", LABEL_CONFIG, texts)) <= set(service.models.space(1).departments)
    assert set(suggestions(client, "2.1", TWO, texts)) <= {"甲街道办事处", "乙街道办事处"}
    first = service.models.serving_version(1)
    versions_of_1 = {v.name for v in service.store.versions(1)}
    smaller = TWO.replace('<Choice value="乙街道办事处"/>', "")
    post(client, "/setup", {"project": "2.1", "schema": smaller.replace("甲街道办事处", "丙街道办事处")})
    wait_until(lambda: service.models.serving_version(2) is not None and service.models.space(2).departments == ("丙街道办事处",),
               what="project 2's new config")
    assert service.models.serving_version(1) == first and {v.name for v in service.store.versions(1)} == versions_of_1
    status = client.get("/status").get_json()
    assert {p["project"]: p["departments"] for p in status["projects"]} == {0: 70, 1: 70, 2: 1}


def test_labels_of_one_project_refit_only_that_project(client, service):
    post(client, "/setup", {"project": "1.1", "schema": LABEL_CONFIG})
    post(client, "/setup", {"project": "2.1", "schema": TWO})
    wait_until(lambda: service.models.serving_version(1) and service.models.serving_version(2), what="both projects")
    before = {pid: {v.name for v in service.store.versions(pid)} for pid in (1, 2)}
    for i in range(6):
        department = "甲街道办事处" if i % 2 else "乙街道办事处"
        event = annotation_event("ANNOTATION_CREATED", i + 1, i + 1, f"{department}门口积水 {i}", department, project_id=2, config=TWO)
        post(client, "/webhook", event)
    wait_until(lambda: service.store.serving_version(2, "instant").data.get("project_seq") == service.store.project_seq(2), timeout=60,
               what="project 2's refit")
    assert {v.name for v in service.store.versions(1)} == before[1]
    assert {v.name for v in service.store.versions(2)} > before[2]
    assert service.store.label_stats(1)["labels"] == 0 and service.store.label_stats(2)["labels"] == 6


def test_the_number_of_projects_is_bounded(settings):
    app = create_app(settings.replace(max_projects=2))
    client = app.test_client()
    for project in ("1.1", "2.1"):
        assert post(client, "/predict", predict_body(["小区电梯坏了"], project=project)).status_code == 200
    refused = post(client, "/predict", predict_body(["小区电梯坏了"], project="3.1"))
    assert refused.status_code == 422 and "MAX_PROJECTS" in refused.get_json()["error"]
    assert [p.project_id for p in app.extensions["service"].store.projects()] == [0, 1, 2]
    app.extensions["service"].stop()


def test_a_project_can_bring_its_own_catalog(settings, tmp_path):
    catalog = tmp_path / "district.json"
    catalog.write_text(json.dumps({"departments": [
        {"name": "甲街道办事处", "duties": "负责辖区内背街小巷的垃圾清运、违章搭建和路面积水"},
        {"name": "乙街道办事处", "duties": "负责辖区内老年人助餐、社区养老驿站和独居老人探访"}]}, ensure_ascii=False), encoding="utf-8")
    app = create_app(settings.replace(project_catalogs=f"2={catalog}"))
    client = app.test_client()
    tickets = ["小区背街小巷垃圾好几天没人清运了", "独居老人希望社区养老驿站提供助餐"]
    assert suggestions(client, "2.1", TWO, tickets) == ["甲街道办事处", "乙街道办事处"]  # the duties decide, before any label
    app.extensions["service"].stop()
