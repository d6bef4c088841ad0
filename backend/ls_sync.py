"""What the backend asks of Label Studio, and how the store keeps following it.

Label Studio delivers each webhook once, with no retry; this module recovers what was lost (a full pull of a
project's annotations, on START_TRAINING and every RECONCILE_SECONDS) and points each project at the model version
the backend serves (Label Studio sorts and samples on ``project.model_version`` and does not follow a new version by
itself). Every call goes through ``LabelStudioClient``, with bounded retries.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from backend.background import Background
from core.annotations import NotGold, gold_label
from core.label_studio import LabelStudioClient, LabelStudioRejected, LabelStudioUnavailable
from core.labeling import AnnotationError, LabelConfigError, LabelSpace, parse_label_config
from core.people import AnnotatorDirectory
from core.settings import Settings
from core.store import DEFAULT_PROJECT, Store, now

log = logging.getLogger(__name__)

MODEL_VERSION_WAIT_SECONDS = 30.0


class LabelStudioSync:
    def __init__(self, settings: Settings, store: Store, background: Background,
                 on_config: Callable[[int, LabelSpace, str], None], on_labels_changed: Callable[[int], None]):
        self.settings = settings
        self.store = store
        self.background = background
        self._on_config = on_config
        self._on_labels_changed = on_labels_changed
        self._client: LabelStudioClient | None = None
        self._from_setup: tuple[str, str] | None = None  # (hostname, access_token) kept in memory only
        self._last_served: dict[int, str] = {}
        self._lock = threading.Lock()
        self.people = AnnotatorDirectory(self.client)

    # -- the connection -------------------------------------------------------------------------------------
    def remember_credentials(self, hostname: object, token: object) -> None:
        """/setup carries Label Studio's address and a token: used only when LABEL_STUDIO_URL/API_KEY are unset."""
        if isinstance(hostname, str) and hostname.startswith("http") and isinstance(token, str) and token:
            self._from_setup = (hostname, token)

    def client(self) -> LabelStudioClient | None:
        with self._lock:
            if self._client is None:
                limits = {"timeout": self.settings.label_studio_timeout, "attempts": self.settings.label_studio_attempts}
                if self.settings.label_studio_url and self.settings.label_studio_api_key:
                    self._client = LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key, **limits)
                elif self._from_setup:
                    self._client = LabelStudioClient(*self._from_setup, **limits)
            return self._client

    # -- the project follows the serving version ------------------------------------------------------------
    def point_project_at(self, project_id: int, version: str) -> None:
        """Label Studio accepts project.model_version only once predictions of that version exist, i.e. after the
        /predict answer that carries them is stored: so it is set in the background."""
        self._last_served[project_id] = version
        project = self.store.project(project_id)
        if (project is None or project.model_version != version) and self.client() is not None:
            self.background.submit(f"model-version-{project_id}", lambda: self.sync_model_version(project_id), delay=0.5)

    def sync_model_version(self, project_id: int) -> bool:
        version = self._last_served.get(project_id)
        client = self.client()
        if version is None or client is None:
            return False
        deadline = time.monotonic() + MODEL_VERSION_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                if client.model_versions(project_id).get(version):
                    client.set_model_version(project_id, version)
                    self.store.set_project_model_version(project_id, version)
                    log.info("project %d now sorts and samples on model version %s", project_id, version)
                    return True
            except (LabelStudioUnavailable, LabelStudioRejected) as exc:
                log.warning("could not set model_version of project %d to %s: %s", project_id, version, exc)
                return False
            time.sleep(0.5)
        log.warning("predictions of %s did not appear in project %d within %.0f s; model_version left unchanged",
                    version, project_id, MODEL_VERSION_WAIT_SECONDS)
        return False

    # -- the store follows Label Studio ---------------------------------------------------------------------
    def reconcile(self, project_id: int) -> dict:
        """Make the store equal Label Studio's annotations of a project: recovers lost webhooks. All pages are
        read before anything is written, so a failing Label Studio leaves the store as it was."""
        client = self.client()
        if client is None:
            log.warning("cannot pull project %d: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", project_id)
            return {"error": "no Label Studio connection configured"}
        started = now()
        try:
            project = client.project(project_id)
            tasks = client.annotated_tasks(project_id)
        except (LabelStudioUnavailable, LabelStudioRejected) as exc:
            log.error("reconcile of project %d failed, store unchanged: %s", project_id, exc)
            return {"error": str(exc)}
        try:
            space = parse_label_config(project["label_config"])
        except LabelConfigError as exc:
            log.error("reconcile of project %d: unusable labeling config: %s", project_id, exc)
            return {"error": str(exc)}
        self._on_config(project_id, space, project["label_config"])
        labels, cancelled, invalid = [], set(), 0
        shown = {p["task_id"]: p for p in self.store.predictions(project_id=project_id)}
        for task in tasks:
            for annotation in task["annotations"]:
                try:
                    label = gold_label(annotation, task, space, project_id, "pull", self.settings.max_text_chars)
                except AnnotationError as exc:
                    invalid += 1
                    log.warning("project %d annotation %s is not a usable label: %s", project_id, annotation.get("id"), exc)
                    continue
                if isinstance(label, NotGold):
                    cancelled.add(label.annotation_id)
                    continue
                if label.shown_department is None and task["id"] in shown:
                    p = shown[task["id"]]
                    label.shown_model_version, label.shown_department, label.shown_score = p["model_version"], p["department"], p["score"]
                label.annotator = self.people.resolve(label.annotator)
                labels.append(label)
        counts = self.store.reconcile_project(project_id, labels, cancelled, pulled_since=started)
        counts["invalid"] = invalid
        log.info("reconciled project %d with Label Studio: %s", project_id, counts)
        if counts["created"] or counts["updated"] or counts["removed"]:
            self._on_labels_changed(project_id)
        return counts

    def reconcile_all(self) -> None:
        for project in self.store.projects():
            if project.project_id != DEFAULT_PROJECT:
                self.reconcile(project.project_id)
