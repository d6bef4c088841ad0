"""Turns a Label Studio annotation (from a webhook or from a pull through the SDK) into a gold label.

Both paths go through ``gold_label`` so a label is the same row whichever way it arrived.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.labeling import AnnotationError, LabelSpace
from core.store import Label
from core.text import brief, has_content


@dataclass(frozen=True)
class NotGold:
    """An annotation that exists but is not a gold label (skipped/cancelled); the reason says why."""

    annotation_id: int
    reason: str


def _int_id(value: object, what: str) -> int:
    """A Label Studio id: a JSON integer or a string of ASCII digits, in SQLite's INTEGER range."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnnotationError(f"{what} must be an integer id, got {brief(value)}")
    if not 0 < value < 2**63:
        raise AnnotationError(f"{what} must be a positive integer id below 2**63")
    return value


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _annotator(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("id", value.get("email"))
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return str(value)
    return None


def _shown_prediction(prediction: object, space: LabelSpace) -> tuple[str | None, str | None, float | None]:
    """(model_version, department, score) of the prediction the annotator saw; Label Studio sends ``{}`` when the
    project's model_version did not match the backend's (protocol notes §3.10)."""
    if not isinstance(prediction, dict) or not prediction.get("result"):
        return None, None, None
    try:
        department, _ = space.read_annotation(prediction["result"])
    except AnnotationError:
        return _optional_str(prediction.get("model_version")), None, None
    score = prediction.get("score")
    return (_optional_str(prediction.get("model_version")), department,
            float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None)


def gold_label(annotation: object, task: object, space: LabelSpace, project_id: int, source: str,
               max_text_chars: int) -> Label | NotGold:
    """A Label, NotGold for a skipped annotation, or AnnotationError saying what is wrong with the payload."""
    if not isinstance(annotation, dict):
        raise AnnotationError("'annotation' must be an object")
    annotation_id = _int_id(annotation.get("id"), "annotation.id")
    cancelled = annotation.get("was_cancelled")
    if cancelled is not None and not isinstance(cancelled, bool):  # "false" is truthy: a string must not discard a label
        raise AnnotationError(f"annotation.was_cancelled must be true or false, got {brief(cancelled)}")
    if cancelled:
        return NotGold(annotation_id, "skipped")
    if not isinstance(task, dict):
        raise AnnotationError("'task' must be an object")
    task_id = _int_id(task.get("id", annotation.get("task")), "task.id")
    text = space.ticket_text(task)
    if not has_content(text):
        raise AnnotationError("the ticket text is empty or has no content (only spaces, punctuation or control characters)")
    if len(text) > max_text_chars:
        raise AnnotationError(f"the ticket text has {len(text)} characters; at most {max_text_chars} are accepted (MAX_TEXT_CHARS)")
    department, rationale = space.read_annotation(annotation.get("result"))
    shown_version, shown_department, shown_score = _shown_prediction(annotation.get("prediction"), space)
    lead_time = annotation.get("lead_time")
    return Label(
        annotation_id=annotation_id,
        project_id=project_id,
        task_id=task_id,
        text=text,
        department=department,
        rationale=rationale,
        annotator=_annotator(annotation.get("completed_by")),
        created_at=_optional_str(annotation.get("created_at")),
        updated_at=_optional_str(annotation.get("updated_at")),
        lead_time=float(lead_time) if isinstance(lead_time, (int, float)) and not isinstance(lead_time, bool) else None,
        shown_model_version=shown_version,
        shown_department=shown_department,
        shown_score=shown_score,
        source=source,
    )
