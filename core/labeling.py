"""What a project's labeling config means to this backend: which control is the department, where the ticket
text is, which departments exist, and how results are read from annotations and written into predictions.

Control names are never assumed; they are read from the config by role (see annotation_config/labeling_config.py):
the single-choice ``Choices`` with fixed values is the department list, a single-choice ``Choices`` that loads its
options from the task (``value="$field"``) is the suggestion row the backend fills, a ``TextArea`` is the rationale.
"""
from __future__ import annotations

import functools
import html
import uuid
from collections.abc import Mapping
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
    suggestions_key: str | None = None

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

    def suggestion_options(self, alternatives: list[tuple[str, float]], hints: Mapping[str, str] | None = None) -> list[dict]:
        """The task-data list the suggestions control shows: rank, name and probability, hotkeys 1-9 by rank."""
        options = []
        for rank, (name, prob) in enumerate(alternatives, start=1):
            option = {"value": name, "html": f"<b>{rank}</b> {html.escape(name)} <small>{prob:.0%}</small>"}
            if rank <= 9:
                option["hotkey"] = str(rank)
            if hints and hints.get(name):
                option["hint"] = hints[name]
            options.append(option)
        return options

    def shows_suggestions(self, data: object, alternatives: list[tuple[str, float]]) -> bool:
        """True when the task's data already lists exactly these suggestions, so the prediction can preselect the
        top one there; otherwise the suggestion row would be missing or stale, and the full list must hold it."""
        options = data.get(self.suggestions_key) if self.suggestions_key and isinstance(data, dict) else None
        return (isinstance(options, list) and all(isinstance(o, dict) for o in options)
                and [o.get("value") for o in options] == [name for name, _ in alternatives])

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
    dynamic = [c for c in single if _task_field(c) and not c.labels]
    fixed = [c for c in single if c not in dynamic]
    if not fixed:
        raise LabelConfigError("label_config has no single-choice <Choices> control for the department")
    if len(fixed) > 1:
        names = ", ".join(c.name for c in fixed)
        raise LabelConfigError(f"label_config has several single-choice <Choices> controls ({names}); exactly one must name the department")
    if len(dynamic) > 1:
        names = ", ".join(c.name for c in dynamic)
        raise LabelConfigError(f"label_config has several <Choices> that load options from the task ({names}); at most one shows the suggestions")
    control = fixed[0]
    if not control.labels:
        raise LabelConfigError(f"<Choices name={control.name!r}> has no <Choice> values")
    to_name = control.to_name[0] if control.to_name else None
    obj = next((o for o in interface.objects if o.name == to_name), None)
    if obj is None or not _task_field(obj):
        raise LabelConfigError(f"<Choices name={control.name!r}> must point (toName) at a <Text> tag reading a task field like value=\"$text\"")
    suggestions = dynamic[0] if dynamic else None
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
        suggestions_key=_task_field(suggestions) if suggestions else None,
    )
