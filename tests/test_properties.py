"""Bad input, systematically (hypothesis): whatever arrives, every endpoint answers 2xx or a 4xx JSON error that
says what was wrong — never a 500 — and the store never holds an invalid label. The labeling-config and catalog
loaders either load or raise their own error."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from annotation_config.catalog import Catalog, CatalogError, parse_catalog
from backend.app import create_app
from backend.service import project_id_of
from core.labeling import LabelConfigError, LabelSpace, parse_label_config
from core.settings import Settings
from core.text import clean, has_content
from tests.helpers import LABEL_CONFIG, SAMPLES, annotation_event, choice

DEPARTMENTS = parse_label_config(LABEL_CONFIG).departments
PROPERTY = hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings with lone surrogates (JSON carries them as "\\ud800" escapes) and integers JSON parsers refuse to convert.
hostile_text = st.text(alphabet=st.characters(codec=None, categories=["Cs", "Lo", "Nd", "No", "Cc", "Cf", "Zs", "Po"]), max_size=30)
HUGE_INT = "<an integer of 5000 digits>"  # Python cannot even build it from text; spliced into the JSON by dumps()
huge_int = st.just(HUGE_INT)
unicode_ids = st.sampled_from(["①.1", "²", "١٢", "１２.3", "12\u200b", " 12", "12 ", "+12", "-0"])
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True) | st.text(max_size=40)
           | hostile_text | huge_int)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=25)
ids = st.one_of(st.integers(min_value=-5, max_value=10**6), st.sampled_from([2**63 - 1, 2**63, 2**70]), st.text(max_size=5),
                st.none(), st.booleans(), st.floats(), unicode_ids, huge_int)  # SQLite's INTEGER ends at 2**63 - 1
texts = st.one_of(st.text(max_size=60), st.just(""), st.just("长" * 20_001), st.sampled_from([s["text"] for s in SAMPLES[:5]]), scalars)
departments = st.one_of(st.sampled_from(DEPARTMENTS), st.text(max_size=12), scalars)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app(Settings(model_dir=tmp_path_factory.mktemp("model"), instant_refit_seconds=3600, reconcile_seconds=0))
    yield app
    app.extensions["service"].stop()


def dumps(body) -> bytes:
    return json.dumps(body, allow_nan=True).replace(json.dumps(HUGE_INT), "9" * 5000).encode()


def send(app, path: str, data: bytes, content_type: str = "application/json"):
    client = app.test_client()
    response = client.post(path, data=data, content_type=content_type)
    assert response.status_code < 500 or response.status_code == 503 and "being prepared" in response.get_json()["error"], (
        path, data[:200], response.get_data(as_text=True)[:300])
    if response.status_code >= 400:
        body = response.get_json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], response.get_data(as_text=True)
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200  # whatever came before
    return response


def assert_store_valid(app):
    for label in app.extensions["service"].store.labels():
        assert label.annotation_id > 0 and label.task_id > 0
        assert label.department in DEPARTMENTS
        assert has_content(label.text) and len(label.text) <= 20_000
        json.dumps([label.text, label.annotator, label.rationale, label.created_at], ensure_ascii=False).encode("utf-8")  # storable, no surrogate
    assert app.extensions["service"].store.integrity_errors() == []


@PROPERTY
@given(body=st.one_of(json_values, st.fixed_dictionaries({"project": st.one_of(ids, json_values), "action": st.text(max_size=20),
                                                          "schema": st.one_of(st.just(LABEL_CONFIG), scalars)})),
       path=st.sampled_from(["/predict", "/webhook", "/setup", "/preannotate", "/jobs"]))
def test_any_json_body_gets_an_answer_not_a_crash(app, body, path):
    send(app, path, dumps(body))
    assert_store_valid(app)


@PROPERTY
@given(depth=st.integers(min_value=1, max_value=5000), path=st.sampled_from(["/predict", "/webhook", "/setup", "/jobs"]),
       opener=st.sampled_from(['[', '{"a":']))
def test_deeply_nested_json_gets_an_answer_not_a_crash(app, depth, path, opener):
    closer = "]" if opener == "[" else "}"
    send(app, path, ('{"project": ' + opener * depth + "1" + closer * depth + "}").encode())


@PROPERTY
@given(data=st.binary(max_size=300), path=st.sampled_from(["/predict", "/webhook", "/setup"]),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_any_bytes_get_an_answer_not_a_crash(app, data, path, content_type):
    send(app, path, data, content_type)


@PROPERTY
@given(annotation_id=ids, task_id=ids, text=texts, department=departments, cancelled=st.booleans(),
       action=st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]), project=st.one_of(ids, st.just(1)),
       extra_result=st.lists(st.dictionaries(st.sampled_from(["from_name", "to_name", "type", "value"]), json_values), max_size=2))
def test_annotation_webhooks_store_only_valid_labels(app, annotation_id, task_id, text, department, cancelled, action, project, extra_result):
    event = annotation_event(action, 1, 1, "x", DEPARTMENTS[0], cancelled=cancelled)
    event["annotation"]["id"] = annotation_id
    event["task"]["id"] = task_id
    event["task"]["data"]["text"] = text
    event["project"]["id"] = project
    if not cancelled:
        event["annotation"]["result"] = [choice(department) if isinstance(department, str) else {"value": department}] + extra_result
    response = send(app, "/webhook", dumps(event))
    ascii_id = isinstance(annotation_id, str) and annotation_id.isascii() and annotation_id.isdigit()
    valid = ((isinstance(annotation_id, int) and not isinstance(annotation_id, bool) or ascii_id) and 0 < int(annotation_id) < 2**63
             and project_id_of({"id": project}) is not None)
    if response.status_code == 200 and response.get_json().get("outcome") == "created":
        assert valid and isinstance(text, str) and has_content(clean(text)) and department in DEPARTMENTS
    assert_store_valid(app)


@PROPERTY
@given(tasks=st.lists(st.fixed_dictionaries({"id": ids, "data": st.one_of(st.fixed_dictionaries({"text": texts}), json_values)}),
                      min_size=1, max_size=6),
       config=st.one_of(st.just(LABEL_CONFIG), st.just(LABEL_CONFIG), st.text(max_size=80), scalars),
       project=st.one_of(ids, st.just("1.1795892835"), st.just("99999999999999999999999.1")))
def test_predict_answers_every_task_in_order_or_refuses(app, tasks, config, project):
    body = {"tasks": tasks, "label_config": config, "project": project}
    response = send(app, "/predict", dumps(body))
    if response.status_code == 200:
        results = response.get_json()["results"]
        assert len(results) == len(tasks)
        for item in results:
            if "result" in item:
                assert item["result"][0]["value"]["choices"][0] in DEPARTMENTS and 0 <= item["score"] <= 1
            else:
                assert item["error"]


@PROPERTY
@given(config=st.one_of(
    st.text(max_size=200),
    st.builds(lambda cut, insert: LABEL_CONFIG[:cut] + insert + LABEL_CONFIG[cut:], st.integers(0, len(LABEL_CONFIG)), st.text(max_size=20)),
    st.builds(lambda a, b: LABEL_CONFIG[:a] + LABEL_CONFIG[b:], st.integers(0, len(LABEL_CONFIG)), st.integers(0, len(LABEL_CONFIG)))))
def test_the_labeling_config_loader_loads_or_explains(config):
    try:
        assert isinstance(parse_label_config(config), LabelSpace)
    except LabelConfigError as exc:
        assert str(exc)


@PROPERTY
@given(data=json_values)
def test_the_catalog_loader_loads_or_explains(data):
    try:
        catalog = parse_catalog(data)
    except CatalogError as exc:
        assert str(exc)
    else:
        assert isinstance(catalog, Catalog) and catalog.departments
        names = [n for d in catalog.departments for n in (d.name, *d.aliases)]
        assert len(names) == len(set(names))
