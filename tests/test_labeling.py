"""Reading a project's labeling config by role, never by hard-coded control names."""
from __future__ import annotations

import pytest

from core.labeling import AnnotationError, LabelConfigError, parse_label_config
from tests.helpers import LABEL_CONFIG, choice


def test_generated_config_roles():
    space = parse_label_config(LABEL_CONFIG)
    assert (space.department_control, space.to_name, space.data_key) == ("department", "text", "text")
    assert (space.rationale_control, space.suggestions_control) == ("rationale", "model_suggestions")
    assert len(space.departments) == 70 and space.departments[0] == "市公安局"


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
