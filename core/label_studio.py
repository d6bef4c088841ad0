"""Calls from the backend to Label Studio, through label-studio-sdk, with bounded retries.

Every call is retried on connection errors, timeouts and 5xx answers with exponential back-off, then fails with
LabelStudioUnavailable; callers read everything first and change local state only after a complete answer.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be reached or kept failing; nothing was changed locally."""


class LabelStudioRejected(RuntimeError):
    """Label Studio answered with a 4xx: retrying would not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, timeout: float = 30.0, attempts: int = 4, backoff: float = 0.5):
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    def _call(self, what: str, fn: Callable[[], T], attempts: int | None = None) -> T:
        from label_studio_sdk.core.api_error import ApiError

        attempts = attempts or self.attempts
        delay = self.backoff
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except ApiError as exc:
                if exc.status_code is not None and 400 <= exc.status_code < 500:
                    raise LabelStudioRejected(exc.status_code, _detail(exc.body)) from None
                error = f"HTTP {exc.status_code}"
            except Exception as exc:  # connection refused, timeouts, broken JSON from a dying server
                error = f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                raise LabelStudioUnavailable(f"{what}: Label Studio at {self.url} failed {attempts} times; last error: {error}")
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", what, attempt, attempts, error, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _raw(self, method: str, path: str, **kwargs):
        """Endpoints the SDK has no method for, through the SDK's own authenticated HTTP client."""
        from label_studio_sdk.core.api_error import ApiError

        response = self._sdk._client_wrapper.httpx_client.request(path.lstrip("/"), method=method, **kwargs)
        if response.status_code >= 400:
            raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=response.text)
        return response.json() if response.content else None

    # -- reads ----------------------------------------------------------------------------------------------
    def project(self, project_id: int) -> dict:
        project = self._call(f"get project {project_id}", lambda: self._sdk.projects.get(id=project_id))
        return {"id": project.id, "title": project.title, "label_config": project.label_config,
                "model_version": project.model_version}

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """Every task of the project that has annotations, with them, as plain dicts (all pages, or nothing)."""
        def pull() -> list[dict]:
            tasks = []
            for task in self._sdk.tasks.list(project=project_id, fields="all", only_annotated=True, page_size=500):
                tasks.append({"id": task.id, "data": task.data, "annotations": [
                    a if isinstance(a, dict) else a.dict() for a in (task.annotations or [])]})
            return tasks
        return self._call(f"pull annotations of project {project_id}", pull)

    def tasks(self, project_id: int, page_size: int = 500) -> Iterator[dict]:
        """Every task of the project with its annotation count, page by page."""
        page = 1
        while True:
            answer = self._call(f"list tasks of project {project_id} (page {page})", lambda page=page: self._raw(
                "GET", "api/tasks", params={"project": project_id, "page": page, "page_size": page_size, "fields": "task_only"}))
            for task in answer.get("tasks", []):
                yield {"id": task["id"], "data": task.get("data") or {}, "total_annotations": task.get("total_annotations", 0)}
            if page * page_size >= answer.get("total", 0):
                return
            page += 1

    def tasks_where(self, project_id: int, query: dict, page_size: int = 500) -> Iterator[dict]:
        """The project's tasks that a data-manager query (filters, ordering) selects, page by page."""
        page = 1
        while True:
            answer = self._call(f"query tasks of project {project_id} (page {page})", lambda page=page: self._raw(
                "GET", "api/tasks", params={"project": project_id, "page": page, "page_size": page_size, "fields": "task_only",
                                            "query": json.dumps(query, ensure_ascii=False)}))
            for task in answer.get("tasks", []):
                yield {"id": task["id"], "data": task.get("data") or {}}
            if page * page_size >= answer.get("total", 0):
                return
            page += 1

    def users(self) -> list[dict]:
        """Every user of the organisation: id, email and name (for people, not ids, in exports and reports)."""
        def pull() -> list[dict]:
            return [{"id": u.id, "email": u.email or "", "name": " ".join(p for p in (u.first_name, u.last_name) if p)}
                    for u in self._sdk.users.list()]
        return self._call("list users", pull)

    def views(self, project_id: int) -> list[dict]:
        """The project's data-manager tabs."""
        return self._call(f"list tabs of project {project_id}", lambda: self._raw("GET", "api/dm/views", params={"project": project_id})) or []

    def columns(self, project_id: int) -> list[str]:
        """Ids of the data-manager columns the project has now, e.g. ``tasks:data.text``, ``tasks:predictions_score``."""
        answer = self._call(f"list columns of project {project_id}", lambda: self._raw("GET", "api/dm/columns", params={"project": project_id}))
        return [f"{c['target']}:{c['parent'] + '.' if c.get('parent') else ''}{c['id']}" for c in (answer or {}).get("columns", [])]

    def model_versions(self, project_id: int) -> dict[str, int]:
        return self._call(f"model versions of project {project_id}",
                          lambda: self._raw("GET", f"api/projects/{project_id}/model-versions")) or {}

    # -- writes ---------------------------------------------------------------------------------------------
    def set_model_version(self, project_id: int, version: str) -> None:
        """Point the project's score column and uncertainty sampling at `version` (protocol notes §3.10)."""
        self._call(f"set model_version of project {project_id}",
                   lambda: self._sdk.projects.update(id=project_id, model_version=version))

    def set_sampling(self, project_id: int, sampling: str) -> None:
        self._call(f"set sampling of project {project_id}", lambda: self._sdk.projects.update(id=project_id, sampling=sampling))

    def create_view(self, project_id: int, data: dict) -> dict:
        return self._call(f"create a tab in project {project_id}", lambda: self._raw(
            "POST", "api/dm/views", json={"project": project_id, "data": data}))

    def update_task_data(self, task_id: int, data: dict) -> None:
        """Replace a task's data (Label Studio has no bulk form of this)."""
        self._call(f"update data of task {task_id}", lambda: self._raw("PATCH", f"api/tasks/{task_id}", json={"data": data}))

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Create tasks (with predictions where given); returns their ids in order. Tried once: a retry after a
        timeout could create them twice, so callers mark their batches and look for them before trying again."""
        answer = self._call(f"import {len(tasks)} tasks into project {project_id}", lambda: self._raw(
            "POST", f"api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks), attempts=1)
        return [int(i) for i in (answer or {}).get("task_ids", [])]

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        answer = self._call(f"import {len(predictions)} predictions into project {project_id}", lambda: self._raw(
            "POST", f"api/projects/{project_id}/import/predictions", json=predictions))
        return int((answer or {}).get("created", 0))


def _detail(body: object) -> str:
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]
