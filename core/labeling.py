"""What a project's labeling config means to this backend: which control is the department, where the ticket
text is, which departments exist, and how results are read from annotations and written into predictions.

Control names are never assumed; they are read from the config by role (see annotation_config/labeling_config.py).
"""
from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

MAX_CONFIG_CHARS = 2_000_000


class LabelConfigError(ValueError):
    """The labeling config cannot be used for department routing; the message says why."""


class AnnotationError(ValueError):
    """An annotation's result is not a usable department label; the message says why."""


@dataclass(frozen=True)
class LabelSpace:
    department_control: str
    to_name: str
    data_key: str
    departments: tuple[str, ...]
    rationale_control: str | None
    suggestions_control: str | None

    def ticket_text(self, task: dict) -> str:
        """The ticket text of a Label Studio task, or AnnotationError saying what is missing."""
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise AnnotationError("task has no 'data' object")
        value = data.get(self.data_key)
        if not isinstance(value, str):
            raise AnnotationError(f"task data has no text under {self.data_key!r} (the key the labeling config's Text tag reads)")
        return value

    def read_annotation(self, result: object) -> tuple[str, str | None]:
        """(department, rationale) from an annotation's ``result`` list."""
        if not isinstance(result, list):
            raise AnnotationError("annotation 'result' must be a list")
        department = None
        rationale = None
        for region in result:
            if not isinstance(region, dict):
                raise AnnotationError("every item of 'result' must be an object")
            name = region.get("from_name")
            value = region.get("value") if isinstance(region.get("value"), dict) else {}
            if name == self.department_control:
                choices = value.get("choices")
                if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
                    raise AnnotationError(f"control {name!r} must hold exactly one choice")
                if choices[0] not in self.departments:
                    raise AnnotationError(f"department {choices[0]!r} is not one of the {len(self.departments)} choices of the labeling config")
                department = choices[0]
            elif name == self.rationale_control:
                texts = value.get("text")
                if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
                    rationale = "\n".join(t.strip() for t in texts if t.strip()) or None
        if department is None:
            raise AnnotationError(f"annotation has no choice for the department control {self.department_control!r}")
        return department, rationale

    def prediction_result(self, department: str, alternatives: list[tuple[str, float]]) -> list[dict]:
        """The ``result`` list of a prediction: the chosen department plus, if the config shows them, the top-k."""
        result = [{
            "id": uuid.uuid4().hex[:10],
            "from_name": self.department_control,
            "to_name": self.to_name,
            "type": "choices",
            "value": {"choices": [department]},
        }]
        if self.suggestions_control:
            lines = [f"{rank}. {name}  {prob:.0%}" for rank, (name, prob) in enumerate(alternatives, start=1)]
            result.append({
                "id": uuid.uuid4().hex[:10],
                "from_name": self.suggestions_control,
                "to_name": self.to_name,
                "type": "textarea",
                "value": {"text": lines},
            })
        return result


def parse_label_config(config: object) -> LabelSpace:
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("label_config must be a non-empty XML string")
    if len(config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label_config is longer than {MAX_CONFIG_CHARS} characters")
    return _parse_cached(config)


@functools.lru_cache(maxsize=32)
def _parse_cached(config: str) -> LabelSpace:
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.label_interface.control_tags import ChoicesTag, TextAreaTag

    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several types for bad XML
        raise LabelConfigError(f"label_config is not a valid Label Studio config: {exc}") from None
    single = [c for c in interface.controls if isinstance(c, ChoicesTag) and not c.is_multiple_choice]
    if not single:
        raise LabelConfigError("label_config has no single-choice <Choices> control for the department")
    if len(single) > 1:
        names = ", ".join(c.name for c in single)
        raise LabelConfigError(f"label_config has several single-choice <Choices> controls ({names}); exactly one must name the department")
    control = single[0]
    if not control.labels:
        raise LabelConfigError(f"<Choices name={control.name!r}> has no <Choice> values")
    to_name = control.to_name[0] if control.to_name else None
    obj = next((o for o in interface.objects if o.name == to_name), None)
    if obj is None or not str(getattr(obj, "value", "")).startswith("$"):
        raise LabelConfigError(f"<Choices name={control.name!r}> must point (toName) at a <Text> tag reading a task field like value=\"$text\"")
    textareas = [c for c in interface.controls if isinstance(c, TextAreaTag)]
    suggestions = next((c.name for c in textareas if str(c.attr.get("readonly", "")).lower() == "true"), None)
    rationale = next((c.name for c in textareas if c.name != suggestions), None)
    return LabelSpace(
        department_control=control.name,
        to_name=to_name,
        data_key=obj.value[1:],
        departments=tuple(control.labels),
        rationale_control=rationale,
        suggestions_control=suggestions,
    )
