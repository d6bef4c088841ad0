"""Auto-routing with a real Label Studio 1.23.2 (issue 13): the tickets that need a person and the audited auto-routed
ones become tasks in their own data-manager tabs, and wrong audit answers stop auto-routing for the version."""
from __future__ import annotations

import pytest
import requests
from label_studio_sdk import LabelStudio

from core.routing import AUTO, REVIEW, AutoRouting
from tests.helpers import LABEL_CONFIG, SAMPLES, choice, served_version, wait_until

pytestmark = pytest.mark.e2e


def route(backend, project_id: int, tickets: list[dict]) -> list[dict]:
    response = requests.post(f"{backend.url}/route", json={"project": project_id, "tickets": tickets}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def tasks(label_studio, project_id: int) -> list[dict]:
    return label_studio.api("GET", "/api/tasks", params={"project": project_id, "page_size": 100}).json()["tasks"]


def auto_routing(backend, project_id: int) -> dict:
    projects = requests.get(f"{backend.url}/status", timeout=10).json()["projects"]
    return next(p for p in projects if p["project"] == project_id)["auto_routing"]


def test_routed_tickets_reach_people_in_their_tabs_and_wrong_audits_stop_auto_routing(label_studio, start_backend):
    # labels wait an hour for their refit, so the version that routed is still the one serving when its audits come
    backend = start_backend(AUDIT_RATE="1.0", INSTANT_REFIT_SECONDS="3600")
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = ls.projects.create(title="12345 dispatch", label_config=LABEL_CONFIG)
    ls.ml.create(url=backend.url, project=project.id, title="12345-router")
    version = wait_until(lambda: served_version(backend.url, project.id), timeout=120, what="the project's first model")

    # The version's frozen split proves a threshold of 0 (what 200 right answers at every score would show; written
    # before the version routes anything, as the scoring of a version does): every ticket is routed without a person,
    # and with AUDIT_RATE=1 each is also audited, blind.
    store = backend.store()
    found = store.get_version(project.id, version)
    proven = AutoRouting(audit_rate=1.0).thresholds([0.0] * 200, [True] * 200)
    store.update_version(project.id, version, metrics={**found.metrics, "routing": proven.to_dict()})
    audited = route(backend, project.id, [{"id": f"A-{i}", "text": s["text"]} for i, s in enumerate(SAMPLES[3:9])])
    assert {r["decision"] for r in audited} == {AUTO} and all(r["audit"] for r in audited)
    created = wait_until(lambda: (found := tasks(label_studio, project.id)) and len(found) == len(audited) and found, timeout=120,
                         what="Label Studio tasks for the audited tickets")
    by_ticket = {t["data"]["route_ticket"]: t for t in created}
    for r in audited:
        task = by_ticket[r["id"]]
        assert task["data"]["route"] == "audit" and "suggested_department" not in task["data"]
        assert task["total_predictions"] == 0  # nothing anchors the auditor on the model's answer

    # The auditors disagree with the model every time: the audits show the promise broken and auto-routing stops.
    departments = store.project(project.id).departments
    for r in audited:
        wrong = next(d for d in departments if d != r["department"])
        ls.annotations.create(id=by_ticket[r["id"]]["id"], result=[choice(wrong)])
    state = wait_until(lambda: (s := auto_routing(backend, project.id))["audit"]["audited"] == len(audited) and s, timeout=60,
                       what="every audit answer to count")
    assert state["state"] == "stopped" and state["model_version"] == version and state["audit"]["correct"] == 0

    # From now on every ticket needs a person, and gets the model's suggestion preselected.
    review = route(backend, project.id, [{"id": f"R-{i}", "text": s["text"]} for i, s in enumerate(SAMPLES[10:13])])
    assert {r["decision"] for r in review} == {REVIEW} and all("stopped" in r["reason"] for r in review)
    created = wait_until(lambda: (found := tasks(label_studio, project.id)) and len(found) == len(audited) + len(review) and found,
                         timeout=120, what="Label Studio tasks for the tickets to review")
    by_ticket = {t["data"]["route_ticket"]: t for t in created}
    for r in review:
        task = by_ticket[r["id"]]
        assert task["data"]["route"] == REVIEW and task["data"]["suggested_department"] == r["department"]
        assert task["total_predictions"] == 1
    titles = wait_until(lambda: (views := {v["data"].get("title") for v in label_studio.api("GET", "/api/dm/views",
                                                                                        params={"project": project.id}).json()})
                        and "需要人工 Needs a person" in views and views, timeout=60, what="the routing tabs")
    assert "自动分派抽检 Auto-routed, for audit" in titles

