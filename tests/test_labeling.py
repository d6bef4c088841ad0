"""Reading a project's labeling config by role, never by hard-coded control names."""
from __future__ import annotations

import pytest

from core.labeling import AnnotationError, LabelConfigError, parse_label_config
from tests.helpers import LABEL_CONFIG, choice, rationale


def test_generated_config_roles():
    space = parse_label_config(LABEL_CONFIG)
    assert (space.department_control, space.to_name, space.data_key) == ("department", "text", "text")
    assert (space.rationale_control, space.suggestions_control) == ("rationale", "suggestion")
    assert space.suggestion_keys == ("suggestion_1", "suggestion_2", "suggestion_3")
    assert len(space.departments) == 70 and space.departments[0] == "市公安局"


TOP = [("市公安局", 0.62), ("市交通警察支队", 0.21), ("市城市管理综合执法局", 0.09)]


def test_the_prediction_preselects_the_top_suggestion_where_the_task_shows_it():
    space = parse_label_config(LABEL_CONFIG)
    fields = space.suggestion_fields(TOP)
    assert fields == {"suggestion_1": "市公安局", "suggestion_2": "市交通警察支队", "suggestion_3": "市城市管理综合执法局",
                      "suggestion_probabilities": "62% · 21% · 9%"}
    [region] = space.prediction_result("市公安局", TOP, {"text": "...", **fields})
    assert (region["from_name"], region["value"]) == ("suggestion", {"choices": ["市公安局"]})
    # No suggestion row in the task yet, or one from another prediction: the full list holds the preselection.
    for data in ({"text": "..."}, {"text": "...", **space.suggestion_fields(TOP[::-1])}, None):
        assert [r["from_name"] for r in space.prediction_result("市公安局", TOP, data)] == ["department"]


def test_a_pick_in_the_full_list_overrides_the_suggestion_row():
    space = parse_label_config(LABEL_CONFIG)
    suggested = choice("市公安局", control="suggestion")
    assert space.read_annotation([suggested]) == ("市公安局", None)
    assert space.read_annotation([suggested, choice("市民政局")]) == ("市民政局", None)
    assert space.read_annotation([choice("市民政局"), suggested, rationale("低保")]) == ("市民政局", "低保")
    # A slot the task had no suggestion for is empty: it says nothing.
    assert space.read_annotation([choice("", control="suggestion"), choice("市民政局")]) == ("市民政局", None)
    with pytest.raises(AnnotationError, match="'department' or 'suggestion'"):
        space.read_annotation([rationale("只有理由"), choice("", control="suggestion")])


def test_aliases_are_searchable_but_the_result_is_the_plain_name():
    """Label Studio's Filter matches a choice's value: the aliases live there, `alias` is what gets submitted."""
    import xml.etree.ElementTree as ET

    police = next(c for c in ET.fromstring(LABEL_CONFIG).iter("Choice") if c.get("alias") == "市公安局")
    assert "派出所" in police.get("value") and police.get("html") == "公安局"
    assert parse_label_config(LABEL_CONFIG).departments[0] == "市公安局"


def test_the_earlier_read_only_textarea_is_not_taken_for_the_rationale():
    space = parse_label_config('<View><Text name="text" value="$text"/><TextArea name="model_suggestions" toName="text" readonly="true"/>'
                               '<TextArea name="rationale" toName="text"/><Choices name="d" toName="text"><Choice value="甲"/></Choices></View>')
    assert (space.rationale_control, space.suggestions_control) == ("rationale", None)


def test_a_users_own_config_with_other_names():
    space = parse_label_config('<View><Text name="letter" value="$body"/><TextArea name="why" toName="letter"/>'
                               '<Choices name="unit" toName="letter"><Choice value="甲"/><Choice value="乙"/></Choices></View>')
    assert (space.department_control, space.to_name, space.data_key, space.rationale_control) == ("unit", "letter", "body", "why")
    assert space.suggestions_control is None
    assert space.read_annotation([choice("乙", control="unit", to_name="letter")]) == ("乙", None)
    assert [r["from_name"] for r in space.prediction_result("甲", [("甲", 0.9), ("乙", 0.1)])] == ["unit"]


@pytest.mark.parametrize("config, phrase", [
    ('<View><Text name="t" value="$text"/></View>', "no single-choice <Choices>"),
    ('<View><Text name="t" value="$text"/><Choices name="a" toName="t" choice="multiple"><Choice value="x"/></Choices></View>', "no single-choice"),
    ('<View><Text name="t" value="$text"/><Choices name="a" toName="t"><Choice value="x"/></Choices>'
     '<Choices name="b" toName="t"><Choice value="y"/></Choices></View>', "several single-choice"),
    ('<View><Choices name="a" toName="nowhere"><Choice value="x"/></Choices></View>', "must point (toName) at a <Text>"),
    ('<View><Text name="t" value="$text"/><Choices name="a" toName="t"><Choice value="x"/></Choices>'
     '<Choices name="s" toName="t"><Choice value="$s1"/></Choices><Choices name="r" toName="t"><Choice value="$r1"/></Choices></View>',
     "several <Choices> whose choices read task fields"),
    ("<View", "not a valid Label Studio config"),
    ("", "non-empty XML string"),
])
def test_unusable_configs_are_explained(config, phrase):
    with pytest.raises(LabelConfigError) as err:
        parse_label_config(config)
    assert phrase in str(err.value)


def test_reading_annotations_checks_the_department():
    space = parse_label_config(LABEL_CONFIG)
    with pytest.raises(AnnotationError, match="not one of"):
        space.read_annotation([choice("市不存在局")])
    with pytest.raises(AnnotationError, match="must be a list"):
        space.read_annotation({"choices": []})
