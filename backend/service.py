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
from backend.annotator_view import AnnotatorView
from backend.background import Background
from backend.errors import ApiError
from backend.jobs import JobRunner
from backend.ls_sync import LabelStudioSync
from backend.metrics import Metrics
from backend.models import ModelManager
from backend.preannotate import preannotate
from core.annotations import NotGold, gold_label
from core.jobs import UNFINISHED, JobKind, JobStatus, ModelKind
from core.labeling import AnnotationError, LabelConfigError, LabelSpace, parse_label_config
from core.people import is_user_id, labels_per_annotator
from core.settings import Settings
from core.store import Store, now

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
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
        self.label_studio = LabelStudioSync(settings, self.store, self.background, self._remember_config, self._labels_changed)
        self.annotator_view = AnnotatorView(self.label_studio.client)
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
            self.background.submit("reconcile-all", self.label_studio.reconcile_all_periodically, delay=self.settings.reconcile_seconds)
        for job in self.store.jobs(kind=JobKind.PREANNOTATE, status=UNFINISHED):
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
        self.label_studio.remember_credentials(body.get("hostname"), body.get("access_token"))
        if project_id is not None:
            self.annotator_view.connected(project_id, space if schema is not None else self.models.space, self.background.submit)
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
            results.append({"result": space.prediction_result(p.department, p.top, task.get("data")), "score": round(p.score, 6),
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
            self.label_studio.point_project_at(project_id, version)
        return {"results": results}

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
            if not isinstance(label, NotGold):
                label.annotator = self.label_studio.people.resolve(label.annotator, ask=False)
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
            if is_user_id(label.annotator):
                self.background.submit("name-annotators", lambda: self.label_studio.people.name_stored_labels(self.store))
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
        if job.status == JobStatus.PROMOTED:
            self._follow_registry(reschedule=False)
            if self.label_studio.client() is not None:
                for project in self.store.projects():
                    self.request_preannotation(project["project_id"], f"{job.version} was promoted")
        self._maybe_queue_training()

    # -- every waiting ticket carries a suggestion ----------------------------------------------------------
    def request_preannotation(self, project_id: int, reason: str) -> dict:
        if self.label_studio.client() is None:
            raise ApiError(409, "pre-annotation pushes predictions into Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        job, created = self.store.request_job(JobKind.PREANNOTATE, reason, project_id, per_project=True)
        self.background.submit(f"preannotate-{project_id}", lambda: self._run_preannotation(job.id))
        return {"job": job.id, "status": job.status, "created": created}

    def _run_preannotation(self, job_id: int) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.finished:
            return
        try:
            result = preannotate(job, self.store, self.label_studio.client(), self.models, self.annotator_view)
            log.info("project %d pre-annotated: %s", job.project_id, result)
        except Exception as exc:
            log.exception("pre-annotating project %s failed; run it again to resume", job.project_id)
            self.store.update_job(job_id, status=JobStatus.FAILED, finished_at=now(), error=f"{type(exc).__name__}: {exc}")

    def _follow_registry(self, reschedule: bool = True) -> None:
        """Serve whatever the registry says serves: a promotion by a training job, or a rollback from the CLI."""
        try:
            wanted = self.store.serving_version(ModelKind.LLM)
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
            self.label_studio.reconcile(project_id)
            if self.jobs is not None:
                self.jobs.request("START_TRAINING from Label Studio", project_id)
        self.background.submit(f"reconcile-{project_id}", reconcile_then_train)
        self.metrics.webhooks.labels("START_TRAINING", "queued").inc()
        answer = {"status": "queued", "action": "START_TRAINING", "reconcile": f"project {project_id}"}
        if self.jobs is None:
            answer["training"] = "no LLM configured: the instant model refits from the pulled labels"
        return answer

    # -- what people ask ------------------------------------------------------------------------------------
    def convergence(self) -> dict:
        from tools.convergence import convergence_report

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
        for kind in ModelKind:
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
            "running": [j.to_dict() for j in self.store.jobs(status=[JobStatus.RUNNING], limit=10)],
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
            "annotators": labels_per_annotator(self.store),
            "background_idle": self.background.idle(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
