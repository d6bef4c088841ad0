"""Shared test helpers: polling with a deadline (never sleep as synchronisation) and Label Studio payloads."""
from __future__ import annotations

import json
import time
from pathlib import Path

from annotation_config.catalog import DEFAULT_LABELING_CONFIG, SAMPLE_TICKETS

LABEL_CONFIG = DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8")
SAMPLES = [json.loads(line) for line in SAMPLE_TICKETS.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def choice(department: str, control: str = "department", to_name: str = "text") -> dict:
    return {"from_name": control, "to_name": to_name, "type": "choices", "value": {"choices": [department]}}


def rationale(text: str) -> dict:
    return {"from_name": "rationale", "to_name": "text", "type": "textarea", "value": {"text": [text]}}


def annotation_event(action: str, annotation_id: int, task_id: int, text: str, department: str, *,
                     project_id: int = 1, updated_at: str = "2026-11-28T10:00:00.000000Z", cancelled: bool = False,
                     prediction: dict | None = None, extra_result: list | None = None, config: str = LABEL_CONFIG) -> dict:
    """A webhook body shaped like the ones captured from Label Studio 1.23.2 (protocol notes §3.4)."""
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "task": task_id, "project": project_id, "completed_by": 7,
            "result": [] if cancelled else [choice(department)] + (extra_result or []),
            "was_cancelled": cancelled, "ground_truth": False, "lead_time": 12.5,
            "created_at": "2026-11-28T10:00:00.000000Z", "updated_at": updated_at,
            "prediction": prediction or {},
        },
        "task": {"id": task_id, "data": {"text": text}, "project": project_id},
        "project": {"id": project_id, "title": "12345", "label_config": config, "token": "secret-project-token",
                    "task_data_password": "secret-password"},
    }


def predict_body(texts: list[str], config: str = LABEL_CONFIG, project: str = "1.1795892835", start_id: int = 1) -> dict:
    return {"tasks": [{"id": start_id + i, "data": {"text": t}, "annotations": [], "predictions": []} for i, t in enumerate(texts)],
            "project": project, "label_config": config, "params": {"login": None, "password": None, "context": None}}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def served_version(backend_url: str, project_id: int) -> str | None:
    """The model version a running backend serves for a project (its /health lists every project it serves)."""
    import requests

    return requests.get(f"{backend_url}/health", timeout=5).json()["projects"].get(str(project_id))
