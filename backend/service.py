"""What the backend does for each Label Studio call, independent of HTTP.

Read it top to bottom as the loop runs: Label Studio connects (/setup) → asks for suggestions (/predict) →
annotators answer (webhooks store gold labels) → models refit and Label Studio is pointed at the new version.
Handlers validate, do the fast part (one SQLite transaction at most) and hand everything slow to `Background`.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from annotation_config.catalog import load_catalog
from backend.annotations import NotGold, gold_label
from backend.background import Background
from backend.errors import ApiError
from backend.jobs import JobRunner
from backend.label_studio import LabelStudioClient, LabelStudioRejected, LabelStudioUnavailable
from backend.labeling import AnnotationError, LabelConfigError, LabelSpace, parse_label_config
from backend.metrics import Metrics
from backend.models import LLM, ModelManager
from backend.preannotate import KIND as PREANNOTATE, preannotate
from backend.settings import Settings
from backend.store import Store, now

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
MODEL_VERSION_WAIT_SECONDS = 30.0
REGISTRY_POLL_SECONDS = 2.0


def project_id_of(value: object) -> int | None:
    """Label Studio sends the project as ``"<id>.<created timestamp>"`` in /setup and /predict, and as an object
    with ``id`` in webhooks."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str) and value.split(".", 1)[0].isdigit():
        value = int(value.split(".", 1)[0])
    return value if is_id(value) else None


def is_id(value: object) -> bool:
    """A Label Studio id: a positive integer that fits SQLite's INTEGER."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def _space_or_422(config: object) -> LabelSpace:
    try:
        return parse_label_config(config)
    except LabelConfigError as exc:
        raise ApiError(422, str(exc)) from None


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.store_path, eval_fraction=settings.eval_fraction)
        self.catalog = load_catalog(settings.catalog)
        self.metrics = Metrics(self.snapshot)
        self.background = Background(threads=2)
        self.models = ModelManager(self.store, self.catalog, self._initial_space(), settings)
        self._ls_client: LabelStudioClient | None = None
        self._ls_from_setup: tuple[str, str] | None = None  # (hostname, access_token) kept in memory only
        self._last_served: dict[int, str] = {}
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.jobs = JobRunner(settings, self.store, self._job_finished) if settings.base_model else None

    def start(self) -> None:
        """Work that must not delay the first answer: fit the instant model, start the periodic reconcile."""
        if self.store.departments() != self.models.space.departments:
            self.store.set_label_space(self.store.get_meta("label_config") or
                                       Path(self.settings.labeling_config).read_text(encoding="utf-8"), self.models.space.departments)
        self.background.submit("refit-instant", self.models.refit_instant)
        if self.settings.base_model:
            threading.Thread(target=self._load_llm_then_train, name="load-llm", daemon=True).start()
        if self.settings.reconcile_seconds > 0:
            self.background.submit("reconcile-all", self._reconcile_all_periodically, delay=self.settings.reconcile_seconds)
        for job in self.store.jobs(kind=PREANNOTATE, status=["queued", "running"]):
            self.background.submit(f"preannotate-{job.project_id}", lambda job_id=job.id: self._run_preannotation(job_id))

    def stop(self) -> None:
        self.background.stop()
        if self.jobs:
            self.jobs.stop()

    def _load_llm_then_train(self) -> None:
        """Jobs start only once the serving LLM is up: both would otherwise load a model at the same time."""
        self.models.load_llm()
        self.background.submit("follow-registry", self._follow_registry, delay=REGISTRY_POLL_SECONDS)
        self.jobs.start()
        self._maybe_queue_training()

    def _initial_space(self) -> LabelSpace:
        """The last labeling config a project sent, else LABEL_CONFIG."""
        remembered = self.store.get_meta("label_config")
        if remembered:
            try:
                return parse_label_config(remembered)
            except LabelConfigError:
                log.warning("ignoring the stored labeling config: it no longer parses")
        return parse_label_config(Path(self.settings.labeling_config).read_text(encoding="utf-8"))

    def _remember_config(self, project_id: int | None, space: LabelSpace, config: str) -> None:
        if project_id is not None:
            self.store.remember_project(project_id, config)
        if space.departments != self.models.space.departments or self.store.get_meta("label_config") != config:
            self.store.set_label_space(config, space.departments)
            self.background.submit("adopt-config", lambda: self.models.adopt(space))

    # -- Label Studio connects ------------------------------------------------------------------------------
    def setup(self, body: dict) -> dict:
        project_id = project_id_of(body.get("project"))
        schema = body.get("schema")
        if schema is not None:
            space = _space_or_422(schema)
            self._remember_config(project_id, space, schema)
        elif project_id is not None:
            self.store.remember_project(project_id)
        hostname, token = body.get("hostname"), body.get("access_token")
        if isinstance(hostname, str) and hostname.startswith("http") and isinstance(token, str) and token:
            self._ls_from_setup = (hostname, token)
        return {"model_version": self.models.serving_version or self._pending_version()}

    def _pending_version(self) -> str:
        """/setup must answer within 3 s and never load a model: before the first fit, name the version the
        fit will register."""
        return self.models.instant_version_name(self.store.label_seq(), self.models.space)

    # -- Label Studio asks for suggestions ------------------------------------------------------------------
    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ApiError(422, "'tasks' must be a non-empty list of Label Studio tasks")
        if len(tasks) > self.settings.max_tasks_per_predict:
            raise ApiError(413, f"{len(tasks)} tasks in one call; at most {self.settings.max_tasks_per_predict} (MAX_TASKS_PER_PREDICT)")
        config = body.get("label_config")
        space = _space_or_422(config) if config is not None else self.models.space
        project_id = project_id_of(body.get("project"))
        if config is not None:
            self._remember_config(project_id, space, config)

        texts, problems = [], {}
        for i, task in enumerate(tasks):
            try:
                text = space.ticket_text(task)
                if not text.strip():
                    raise AnnotationError("the ticket text is empty")
                texts.append(text)
            except AnnotationError as exc:
                problems[i] = str(exc)
                texts.append(None)
        if len(problems) == len(tasks):
            raise ApiError(422, f"no task has a usable ticket text: {next(iter(problems.values()))}")

        version, predictions = self.models.predict([t for t in texts if t is not None], space)
        results, rows, it = [], [], iter(predictions)
        for i, task in enumerate(tasks):
            if i in problems:  # Label Studio skips items without "result" and keeps the others
                results.append({"model_version": version, "error": problems[i]})
                continue
            p = next(it)
            results.append({"result": space.prediction_result(p.department, p.top), "score": round(p.score, 6),
                            "model_version": version})
            task_id = task.get("id")
            if project_id is not None and is_id(task_id):
                rows.append({"project_id": project_id, "task_id": task_id, "model_version": version,
                             "department": p.department, "score": p.score, "margin": p.margin, "entropy": p.entropy,
                             "top": p.top, "truncated": int(p.truncated)})
        self.store.save_predictions(rows)
        self.metrics.predictions.labels(version).inc(len(predictions))
        self.metrics.truncated.inc(sum(p.truncated for p in predictions))
        if project_id is not None and rows:
            self._point_project_at(project_id, version)
        return {"results": results}

    def _point_project_at(self, project_id: int, version: str) -> None:
        """Label Studio sorts and samples on project.model_version, which it accepts only once predictions of
        that version exist, i.e. after this /predict answer is stored: so do it in the background."""
        self._last_served[project_id] = version
        known = {p["project_id"]: p["model_version"] for p in self.store.projects()}
        if known.get(project_id) != version and self.ls_client() is not None:
            self.background.submit(f"model-version-{project_id}", lambda: self.sync_model_version(project_id), delay=0.5)

    def sync_model_version(self, project_id: int) -> bool:
        version = self._last_served.get(project_id)
        client = self.ls_client()
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

    # -- annotators answer ----------------------------------------------------------------------------------
    def webhook(self, body: dict) -> dict:
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError(422, "webhook payload needs an 'action' string")
        project = body.get("project")
        project_id = project_id_of(project)
        if action in ANNOTATION_EVENTS:
            return self._annotation_event(action, body, project, project_id)
        if action == "ANNOTATIONS_DELETED":
            return self._annotations_deleted(body, project_id)
        if action == "START_TRAINING":
            return self._start_training(project_id)
        if action == "PROJECT_UPDATED" and isinstance(project, dict) and isinstance(project.get("label_config"), str):
            try:
                space = parse_label_config(project["label_config"])
                self._remember_config(project_id, space, project["label_config"])
            except LabelConfigError as exc:
                log.warning("project %s now has a labeling config the backend cannot use: %s", project_id, exc)
        self.metrics.webhooks.labels(action[:40], "acknowledged").inc()
        return {"status": "acknowledged", "action": action}

    def _annotation_event(self, action: str, body: dict, project: object, project_id: int | None) -> dict:
        if project_id is None:
            raise ApiError(422, f"{action} needs 'project' with an integer 'id'")
        config = project.get("label_config") if isinstance(project, dict) else None
        space = _space_or_422(config) if config is not None else self.models.space
        try:
            label = gold_label(body.get("annotation"), body.get("task"), space, project_id, "webhook",
                               self.settings.max_text_chars)
        except AnnotationError as exc:
            raise ApiError(422, f"{action}: {exc}") from None
        if isinstance(label, NotGold):
            removed = self.store.discard_label(label.annotation_id)
            outcome = "not gold: " + label.reason
            if removed:
                self._labels_changed()
        else:
            outcome = self.store.upsert_label(label)
            if outcome in ("created", "updated"):
                self._labels_changed()
        self.metrics.webhooks.labels(action, outcome).inc()
        return {"status": "ok", "action": action, "outcome": outcome}

    def _annotations_deleted(self, body: dict, project_id: int | None) -> dict:
        items = body.get("annotations")
        if not isinstance(items, list):
            raise ApiError(422, "ANNOTATIONS_DELETED needs an 'annotations' list of {\"id\": ...}")
        ids = []
        for item in items:
            value = item.get("id") if isinstance(item, dict) else None
            if not is_id(value):
                raise ApiError(422, "every deleted annotation needs a positive integer 'id'")
            ids.append(value)
        removed = self.store.delete_labels(ids, project_id)
        if removed:
            self._labels_changed()
        self.metrics.webhooks.labels("ANNOTATIONS_DELETED", "deleted").inc()
        return {"status": "ok", "action": "ANNOTATIONS_DELETED", "removed": removed}

    def _labels_changed(self) -> None:
        self.background.submit("refit-instant", self.models.refit_instant, delay=self.settings.instant_refit_seconds)
        self._maybe_queue_training()

    # -- the model gets better ------------------------------------------------------------------------------
    def _maybe_queue_training(self) -> None:
        """TRAIN_EVERY_N_LABELS new gold labels since the last job queue the next one."""
        every = self.settings.train_every_n_labels
        if self.jobs is None or every <= 0 or self.models.llm_state.get("state") != "ready":
            return
        new = self.store.count_labels(since_seq=self.store.last_job_label_seq("train"))
        if new >= every:
            self.jobs.request(f"{new} new gold labels (TRAIN_EVERY_N_LABELS={every})")

    def request_training(self, reason: str, project_id: int | None = None) -> dict:
        if self.jobs is None:
            raise ApiError(409, "no LLM is configured (BASE_MODEL): the instant model refits by itself after every label")
        job, created = self.jobs.request(reason, project_id)
        return {"job": job.id, "status": job.status, "created": created}

    def _job_finished(self, job) -> None:
        """A promotion is hot-swapped right away (the registry watcher would find it within seconds too), then
        every known project is pre-annotated again with the new version."""
        if job.status == "promoted":
            self._follow_registry(reschedule=False)
            if self.ls_client() is not None:
                for project in self.store.projects():
                    self.request_preannotation(project["project_id"], f"{job.version} was promoted")
        self._maybe_queue_training()

    # -- every waiting ticket carries a suggestion ----------------------------------------------------------
    def request_preannotation(self, project_id: int, reason: str) -> dict:
        if self.ls_client() is None:
            raise ApiError(409, "pre-annotation pushes predictions into Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        job, created = self.store.request_job(PREANNOTATE, reason, project_id, per_project=True)
        self.background.submit(f"preannotate-{project_id}", lambda: self._run_preannotation(job.id))
        return {"job": job.id, "status": job.status, "created": created}

    def _run_preannotation(self, job_id: int) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.finished:
            return
        try:
            result = preannotate(self, job)
            log.info("project %d pre-annotated: %s", job.project_id, result)
        except Exception as exc:
            log.exception("pre-annotating project %s failed; run it again to resume", job.project_id)
            self.store.update_job(job_id, status="failed", finished_at=now(), error=f"{type(exc).__name__}: {exc}")

    def _follow_registry(self, reschedule: bool = True) -> None:
        """Serve whatever the registry says serves: a promotion by a training job, or a rollback from the CLI."""
        try:
            wanted = self.store.serving_version(LLM)
            if wanted is not None and self.models.llm_state.get("state") == "ready" and self.models.llm_version != wanted.name:
                self.models.activate_llm(wanted)
        except Exception:
            log.exception("could not switch to the registry's serving version")
        finally:
            if reschedule:
                self.background.submit("follow-registry", self._follow_registry, delay=REGISTRY_POLL_SECONDS)

    def _start_training(self, project_id: int | None) -> dict:
        """START_TRAINING carries no annotations: pull them and reconcile the store, then train (the LLM) or
        refit (the instant model, which the reconcile triggers by itself)."""
        if project_id is None:
            raise ApiError(422, "START_TRAINING needs 'project' with an integer 'id'")
        self.store.remember_project(project_id)

        def reconcile_then_train():
            self.reconcile(project_id)
            if self.jobs is not None:
                self.jobs.request("START_TRAINING from Label Studio", project_id)
        self.background.submit(f"reconcile-{project_id}", reconcile_then_train)
        self.metrics.webhooks.labels("START_TRAINING", "queued").inc()
        answer = {"status": "queued", "action": "START_TRAINING", "reconcile": f"project {project_id}"}
        if self.jobs is None:
            answer["training"] = "no LLM configured: the instant model refits from the pulled labels"
        return answer

    # -- the store follows Label Studio ---------------------------------------------------------------------
    def ls_client(self) -> LabelStudioClient | None:
        with self._lock:
            if self._ls_client is None:
                limits = {"timeout": self.settings.label_studio_timeout, "attempts": self.settings.label_studio_attempts}
                if self.settings.label_studio_url and self.settings.label_studio_api_key:
                    self._ls_client = LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key, **limits)
                elif self._ls_from_setup:
                    self._ls_client = LabelStudioClient(*self._ls_from_setup, **limits)
            return self._ls_client

    def reconcile(self, project_id: int) -> dict:
        """Make the store equal Label Studio's annotations of a project: recovers lost webhooks. All pages are
        read before anything is written, so a failing Label Studio leaves the store as it was."""
        client = self.ls_client()
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
        self._remember_config(project_id, space, project["label_config"])
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
                labels.append(label)
        counts = self.store.reconcile_project(project_id, labels, cancelled, pulled_since=started)
        counts["invalid"] = invalid
        log.info("reconciled project %d with Label Studio: %s", project_id, counts)
        if counts["created"] or counts["updated"] or counts["removed"]:
            self._labels_changed()
        return counts

    def _reconcile_all_periodically(self) -> None:
        try:
            for project in self.store.projects():
                self.reconcile(project["project_id"])
        finally:
            self.background.submit("reconcile-all", self._reconcile_all_periodically, delay=self.settings.reconcile_seconds)

    # -- what people ask ------------------------------------------------------------------------------------
    def convergence(self) -> dict:
        from backend.convergence import convergence_report

        return convergence_report(self.store)

    def jobs_list(self) -> dict:
        return {"jobs": [j.to_dict() for j in self.store.jobs(limit=50)]}

    def job(self, job_id: int) -> dict:
        job = self.store.get_job(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return job.to_dict()

    def versions(self) -> dict:
        versions = self.store.versions()
        return {"versions": [v.name for v in versions], "serving": self.models.serving_version,
                "details": [v.to_dict() for v in versions]}

    def snapshot(self) -> dict:
        stats = self.store.label_stats()
        evaluated = {}
        for kind in ("instant", "llm"):
            version = self.store.serving_version(kind)
            if version is not None:
                evaluated[kind] = {"name": version.name, "metrics": version.metrics}
        jobs: dict[tuple[str, str], int] = {}
        for job in self.store.jobs(limit=1000):
            jobs[(job.kind, job.status)] = jobs.get((job.kind, job.status), 0) + 1
        return {
            "labels": {"train": stats["labels"] - stats["eval"], "eval": stats["eval"]},
            "serving_version": self.models.serving_version,
            "evaluated": evaluated,
            "jobs": jobs,
            "running": [j.to_dict() for j in self.store.jobs(status=["running"], limit=10)],
        }

    def status(self) -> dict:
        snapshot = self.snapshot()
        stats = self.store.label_stats()
        return {
            "serving_version": snapshot["serving_version"],
            "departments": len(self.models.space.departments),
            "labels": stats,
            "models": snapshot["evaluated"],
            "llm": self.models.llm_state,
            "projects": [{"id": p["project_id"], "model_version": p["model_version"]} for p in self.store.projects()],
            "background_idle": self.background.idle(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
