"""What a project's labeling config means to this backend: which control is the department, where the ticket
text is, which departments exist, and how results are read from annotations and written into predictions.

Control names are never assumed; they are read from the config by role (see annotation_config/labeling_config.py):
the single-choice ``Choices`` with fixed values is the department list, a single-choice ``Choices`` whose choices read
task fields (``<Choice value="$suggestion_1"/>``...) is the suggestion row the backend fills, a ``TextArea`` is the
rationale.
"""
from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

from annotation_config.labeling_config import PROBABILITIES_FIELD

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
    suggestion_keys: tuple[str, ...] = ()  # the task fields the suggestion row shows, best first

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
        """(department, rationale) from an annotation's (or a prediction's) ``result`` list. A department picked in
        the full list wins over the suggestion row: the screen says so, and it is the deliberate act."""
        if not isinstance(result, list):
            raise AnnotationError("annotation 'result' must be a list")
        picked: dict[str, str] = {}
        rationale = None
        for region in result:
            if not isinstance(region, dict):
                raise AnnotationError("every item of 'result' must be an object")
            name = region.get("from_name")
            value = region.get("value") if isinstance(region.get("value"), dict) else {}
            if name in (self.department_control, self.suggestions_control):
                choices = value.get("choices")
                if name == self.suggestions_control and choices == [""]:
                    continue  # a suggestion slot the task had no suggestion for
                if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
                    raise AnnotationError(f"control {name!r} must hold exactly one choice")
                if choices[0] not in self.departments:
                    raise AnnotationError(f"department {choices[0]!r} is not one of the {len(self.departments)} choices of the labeling config")
                picked[name] = choices[0]
            elif name == self.rationale_control:
                texts = value.get("text")
                if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
                    rationale = "\n".join(t.strip() for t in texts if t.strip()) or None
        department = picked.get(self.department_control) or picked.get(self.suggestions_control or "")
        if department is None:
            controls = " or ".join(repr(c) for c in (self.department_control, self.suggestions_control) if c)
            raise AnnotationError(f"annotation has no choice for the department control {controls}")
        return department, rationale

    def suggestion_fields(self, alternatives: list[tuple[str, float]]) -> dict[str, str]:
        """The task fields the suggestion row reads: one department per slot, best first, and their probabilities."""
        shown = alternatives[:len(self.suggestion_keys)]
        if not shown:
            return {}
        return {**{key: name for key, (name, _) in zip(self.suggestion_keys, shown)},
                PROBABILITIES_FIELD: " · ".join(f"{prob:.0%}" for _, prob in shown)}

    def shows_suggestions(self, data: object, alternatives: list[tuple[str, float]]) -> bool:
        """True when the task's data already holds exactly these suggestions, so the prediction can preselect the
        top one in the suggestion row; otherwise the row would be empty or stale, and the full list must hold it."""
        fields = self.suggestion_fields(alternatives)
        return bool(fields) and isinstance(data, dict) and all(data.get(key) == value for key, value in fields.items())

    def prediction_result(self, department: str, alternatives: list[tuple[str, float]], data: object = None) -> list[dict]:
        """The ``result`` list of a prediction: the top department preselected in the suggestion row when the task
        shows these suggestions (``data``: the task's data), else in the full list."""
        control = self.suggestions_control if self.shows_suggestions(data, alternatives) else self.department_control
        return [{
            "id": uuid.uuid4().hex[:10],
            "from_name": control,
            "to_name": self.to_name,
            "type": "choices",
            "value": {"choices": [department]},
        }]


def parse_label_config(config: object) -> LabelSpace:
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("label_config must be a non-empty XML string")
    if len(config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label_config is longer than {MAX_CONFIG_CHARS} characters")
    return _parse_cached(config)


def _task_field(tag) -> str | None:
    """The task-data key a tag reads (``value="$key"``), or None for a tag with fixed content."""
    value = str(tag.attr.get("value", ""))
    return value[1:] if value.startswith("$") and len(value) > 1 else None


@functools.lru_cache(maxsize=32)
def _parse_cached(config: str) -> LabelSpace:
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.label_interface.control_tags import ChoicesTag, TextAreaTag

    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several types for bad XML
        raise LabelConfigError(f"label_config is not a valid Label Studio config: {exc}") from None
    single = [c for c in interface.controls if isinstance(c, ChoicesTag) and not c.is_multiple_choice]
    rows = [c for c in single if any(label.startswith("$") for label in c.labels)]
    fixed = [c for c in single if c not in rows]
    if not fixed:
        raise LabelConfigError("label_config has no single-choice <Choices> control for the department")
    if len(fixed) > 1:
        names = ", ".join(c.name for c in fixed)
        raise LabelConfigError(f"label_config has several single-choice <Choices> controls ({names}); exactly one must name the department")
    if len(rows) > 1:
        names = ", ".join(c.name for c in rows)
        raise LabelConfigError(f"label_config has several <Choices> whose choices read task fields ({names}); at most one shows the suggestions")
    control = fixed[0]
    if not control.labels:
        raise LabelConfigError(f"<Choices name={control.name!r}> has no <Choice> values")
    to_name = control.to_name[0] if control.to_name else None
    obj = next((o for o in interface.objects if o.name == to_name), None)
    if obj is None or not _task_field(obj):
        raise LabelConfigError(f"<Choices name={control.name!r}> must point (toName) at a <Text> tag reading a task field like value=\"$text\"")
    suggestions = rows[0] if rows else None
    # A read-only TextArea is something shown, never the annotator's words (the earlier generated config showed the top-3 in one).
    rationale = next((c.name for c in interface.controls
                      if isinstance(c, TextAreaTag) and str(c.attr.get("readonly", "")).lower() != "true"), None)
    return LabelSpace(
        department_control=control.name,
        to_name=to_name,
        data_key=_task_field(obj),
        departments=tuple(control.labels),
        rationale_control=rationale,
        suggestions_control=suggestions.name if suggestions else None,
        suggestion_keys=tuple(label[1:] for label in suggestions.labels if label.startswith("$")) if suggestions else (),
    )
