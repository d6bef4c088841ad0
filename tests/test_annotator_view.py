"""What the backend writes for the annotator's screen: task fields, the queue tab, people's names."""
from __future__ import annotations

from backend.annotator_view import PRIORITY_FIELD, SUGGESTED_FIELD, AnnotatorView, least_confidence, queue_tab
from core.classifier import TicketPrediction
from core.labeling import parse_label_config
from core.people import AnnotatorDirectory
from learning.strategies import DEFAULT, MATURE_LABELS_PER_DEPARTMENT, MATURE_MIN_LABELS, Pool, strategy
from tests.helpers import LABEL_CONFIG

SPACE = parse_label_config(LABEL_CONFIG)
PREDICTION = TicketPrediction(department="市水务局", score=0.55, margin=0.2, entropy=1.1, truncated=False,
                              top=[("市水务局", 0.55), ("市自来水公司", 0.35), ("市城市管理综合执法局", 0.04)])


def test_the_task_gets_its_suggestion_row_and_its_place_in_the_queue():
    view, mature = AnnotatorView(lambda: None), MATURE_MIN_LABELS + MATURE_LABELS_PER_DEPARTMENT * len(SPACE.departments)
    data = view.task_data(SPACE, {"text": "路口积水", "source": "hotline"}, PREDICTION,
                          view.queue_priority(PREDICTION, 7, mature, len(SPACE.departments)))
    assert data == {"text": "路口积水", "source": "hotline", "suggestion_1": "市水务局", "suggestion_2": "市自来水公司",
                    "suggestion_3": "市城市管理综合执法局", "suggestion_probabilities": "55% · 35% · 4%",
                    SUGGESTED_FIELD: "市水务局", PRIORITY_FIELD: 0.2}  # a mature model: margin sampling, 0.55 - 0.35
    assert SPACE.prediction_result(PREDICTION.department, PREDICTION.top, data)[0]["from_name"] == "suggestion"
    # Another strategy plugs in its own order; the score shown to annotators stays the model's probability.
    by_score = AnnotatorView(lambda: None, priority=least_confidence)
    assert by_score.queue_priority(PREDICTION, 7, 0, len(SPACE.departments)) == 0.55


def test_a_young_model_orders_the_queue_by_the_default_young_order_then_by_margin():
    """Until the project has enough labels for its model's doubts to mean something, the queue is the default
    strategy's young order over the waiting tickets, the same on every pre-annotation, whatever the model predicts; a ticket that arrives
    later waits behind them. Then the most hesitant tickets come first."""
    view, departments = AnnotatorView(lambda: None), len(SPACE.departments)
    lights = [f"小区路灯坏了第{i}盏不亮" for i in range(10)]
    noise = [f"夜里施工噪音扰民第{i}次" for i in range(6)]
    ids = list(range(100, 116))
    places = view.young_places(ids, lights + noise, labelled=lights[:3], departments=departments)
    assert places == view.young_places(ids, lights + noise, labelled=lights[:3], departments=departments)
    assert sorted(places.values()) == [i / 16 for i in range(16)]
    order = strategy(DEFAULT).first(Pool(lights + noise, lights[:3]), departments)  # the replay's order (test_strategies.py)
    assert [ids[i] for i in order] == sorted(places, key=places.get)
    young = [view.queue_priority(PREDICTION, task_id, 3, departments, places) for task_id in ids]
    assert young == [round(places[i], 6) for i in ids]
    late = view.queue_priority(PREDICTION, 999, 3, departments, places)  # arrived after the order was made
    assert 1 <= late < 2 and late == view.queue_priority(PREDICTION, 999, 3, departments, places)
    grown = MATURE_MIN_LABELS + MATURE_LABELS_PER_DEPARTMENT * departments
    assert view.young_places(ids, lights + noise, labelled=["x"] * grown, departments=departments) == {}
    assert {view.queue_priority(PREDICTION, task_id, grown, departments, places) for task_id in ids} == {PREDICTION.margin}


def test_the_queue_tab_shows_what_an_annotator_needs_in_priority_order():
    columns = ["tasks:data.text", "tasks:id", "tasks:inner_id", "tasks:predictions_score", "tasks:predictions_model_versions",
               "tasks:predictions_results", "tasks:annotators", "tasks:total_annotations", "tasks:data"]
    tab = queue_tab(SPACE, columns)
    assert tab["ordering"] == [f"tasks:data.{PRIORITY_FIELD}"]
    hidden = set(tab["hiddenColumns"]["explore"])
    assert {"tasks:inner_id", "tasks:predictions_results", "tasks:data", "tasks:data.suggestion_1"} <= hidden
    assert not {"tasks:data.text", f"tasks:data.{SUGGESTED_FIELD}", "tasks:predictions_score", "tasks:predictions_model_versions"} & hidden


def test_without_label_studio_an_annotator_stays_an_id():
    people = AnnotatorDirectory(lambda: None)
    assert (people.resolve("7"), people.resolve("ann@example.com"), people.resolve(None)) == ("7", "ann@example.com", None)
