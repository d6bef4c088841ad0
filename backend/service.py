"""What the backend does for each Label Studio call, independent of HTTP.

Read it top to bottom as the loop runs: Label Studio connects (/setup) → asks for suggestions (/predict) →
annotators answer (webhooks store gold labels) → models refit and Label Studio is pointed at the new version.
Every call belongs to a project and touches only that project's label space, labels and models. Handlers
validate, do the fast part (one store transaction at most) and hand everything slow to background work or a worker
process: nothing is fitted in a request.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from backend.annotator_view import AnnotatorView
from backend.background import Background
from backend.errors import ApiError
from backend.jobs import JobRunner, QueueDispatcher
from backend.ls_sync import LabelStudioSync
from backend.metrics import Metrics
from backend.models import ModelManager, ModelPreparing
from backend.preannotate import preannotate
from backend.router import Router, read_tickets
from core.annotations import NotGold, gold_label
from core.jobs import UNFINISHED, JobKind, JobStatus, ModelKind
from core.labeling import AnnotationError, LabelConfigError, LabelSpace, parse_label_config
from core.people import is_user_id
from core.settings import Settings
from core.store import DEFAULT_PROJECT, now, open_store
from core.text import brief, has_content
from learning import refit

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
REGISTRY_POLL_SECONDS = 2.0
ROUTE_SWEEP_SECONDS = 60.0  # catch-up for routed tickets: reviews from pulled labels, tasks a failed push left
_PROJECT = re.compile(r"([0-9]{1,19})(?:\.[0-9]+)?")  # "<id>.<created timestamp>" in /setup and /predict, ASCII digits only
_CHOICE_TAG = re.compile(r"<Choice[\s/>]")


def is_id(value: object) -> bool:
    """A Label Studio id: a positive integer that fits SQLite's INTEGER."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def project_id_of(value: object) -> int | None:
    """Label Studio sends the project as ``"<id>.<created timestamp>"`` in /setup and /predict, and as an object
    with ``id`` in webhooks. Only ASCII digits count: ``"١٢"`` is not project 12."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str) and (match := _PROJECT.fullmatch(value)):
        value = int(match.group(1))
    return value if is_id(value) else None


def project_or_422(body: dict, key: str = "project") -> int:
    """The request's project; DEFAULT_PROJECT when it names none; a 422 when it names one badly."""
    if body.get(key) is None:
        return DEFAULT_PROJECT
    project_id = project_id_of(body[key])
    if project_id is None:
        raise ApiError(422, f"'{key}' must be a Label Studio project id (ASCII digits, or an object with an integer 'id'),"
                            f" got {brief(body[key])}")
    return project_id


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(settings)
        self.metrics = Metrics(self.snapshot)
        self.background = Background(threads=2)
        default_space = parse_label_config(Path(settings.labeling_config).read_text(encoding="utf-8"))
        self.models = ModelManager(self.store, default_space, settings)
        self.models.refit_requested = self._request_refit
        self.label_studio = LabelStudioSync(settings, self.store, self.background, self._configure, self._labels_changed)
        self.annotator_view = AnnotatorView(self.label_studio.client)
        self.router = Router(settings, self.store, self.models, self.annotator_view, self.label_studio.client, self.background)
        self.started_at = time.time()
        self.refits = JobRunner(JobKind.REFIT, "learning.refit", settings, self.store, self._refit_finished, join_running=False)
        self.jobs = self._training_jobs() if settings.base_model else None

    def _training_jobs(self) -> JobRunner | QueueDispatcher:
        """Rounds run in a worker process here, or, with QUEUE_URL, on RQ workers of any machine."""
        if self.settings.queue_url:
            return QueueDispatcher(JobKind.TRAIN, self.settings, self.store, self._job_finished)
        return JobRunner(JobKind.TRAIN, "training.round", self.settings, self.store, self._job_finished, warmup_module="training.warmup")

    def start(self) -> None:
        """Work that must not delay the first answer: each known project's model (a saved one loads in seconds),
        the refit runner, the LLM, the registry watcher, the periodic reconcile."""
        default_config = Path(self.settings.labeling_config).read_text(encoding="utf-8")
        self.models.configure(DEFAULT_PROJECT, self.models.default_space, default_config)
        for project in self.store.projects():
            self.models.line(project.project_id)
        self.refits.start()
        if self.settings.base_model:
            threading.Thread(target=self._load_llm_then_train, name="load-llm", daemon=True).start()
        # serve whatever the registry says serves: a promotion by a job, a rollback from the CLI
        self.background.every("follow-registry", self.models.follow_registry, REGISTRY_POLL_SECONDS)
        if self.settings.reconcile_seconds > 0:
            self.background.every("reconcile-all", self.label_studio.reconcile_all, self.settings.reconcile_seconds)
        self.background.every("route-sweep", self.router.sweep, ROUTE_SWEEP_SECONDS)
        for job in self.store.jobs(kind=JobKind.PREANNOTATE, status=UNFINISHED):
            self.background.submit(f"preannotate-{job.project_id}", lambda job_id=job.id: self._run_preannotation(job_id))

    def stop(self) -> None:
        self.background.stop()
        self.refits.stop()
        if self.jobs:
            self.jobs.stop()

    def _load_llm_then_train(self) -> None:
        """Training jobs start only once the serving LLM is up: both would otherwise load a model at once."""
        self.models.load_llm()
        self.jobs.start()
        for project in self.store.projects():
            self._maybe_queue_training(project.project_id)

    def _configure(self, project_id: int, space: LabelSpace, config: str) -> None:
        self.models.configure(project_id, space, config)

    def _space(self, config: object, project_id: int) -> LabelSpace:
        """The labeling config a request carries (recorded for its project), else the project's own."""
        if config is None:
            return self.models.space(project_id)
        if isinstance(config, str) and len(_CHOICE_TAG.findall(config)) > self.settings.max_choices:  # refused before parsing it
            raise ApiError(422, f"the labeling config has {len(_CHOICE_TAG.findall(config))} choices; at most {self.settings.max_choices}"
                                " are served (MAX_CHOICES)")
        try:
            space = parse_label_config(config)
        except LabelConfigError as exc:
            raise ApiError(422, str(exc)) from None
        self._configure(project_id, space, config)
        return space

    # -- Label Studio connects ------------------------------------------------------------------------------
    def setup(self, body: dict) -> dict:
        project_id = project_or_422(body)
        self._space(body.get("schema"), project_id)
        if body.get("schema") is None:
            self.store.remember_project(project_id)
        self.label_studio.remember_credentials(body.get("hostname"), body.get("access_token"))
        if project_id != DEFAULT_PROJECT:
            self.annotator_view.connected(project_id, self.models.space(project_id), self.background.submit)
        return {"model_version": self._version_for(project_id)}

    def _version_for(self, project_id: int) -> str:
        """/setup must answer within 3 s and never fit: before the project's model is ready, name the version
        preparing it will register."""
        line = self.models.line(project_id)
        line.ready.wait(min(self.settings.prepare_wait_seconds, 2.0))
        return self.models.serving_version(project_id) or refit.next_version_name(self.store, project_id)

    # -- Label Studio asks for suggestions ------------------------------------------------------------------
    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ApiError(422, "'tasks' must be a non-empty list of Label Studio tasks")
        if len(tasks) > self.settings.max_tasks_per_predict:
            raise ApiError(413, f"{len(tasks)} tasks in one call; at most {self.settings.max_tasks_per_predict} (MAX_TASKS_PER_PREDICT)")
        project_id = project_or_422(body)
        space = self._space(body.get("label_config"), project_id)

        texts, problems = [], {}
        for i, task in enumerate(tasks):
            try:
                text = space.ticket_text(task)
                if not has_content(text):
                    raise AnnotationError("the ticket text is empty or has no content (only spaces, punctuation or control characters)")
                texts.append(text)
            except AnnotationError as exc:
                problems[i] = str(exc)
                texts.append(None)
        if len(problems) == len(tasks):
            raise ApiError(422, f"no task has a usable ticket text: {next(iter(problems.values()))}")

        try:
            version, predictions = self.models.predict(project_id, [t for t in texts if t is not None])
        except ModelPreparing as exc:
            raise ApiError(503, str(exc), retry_after=5) from None
        results, rows, it = [], [], iter(predictions)
        for i, task in enumerate(tasks):
            if i in problems:  # Label Studio skips items without "result" and keeps the others
                results.append({"model_version": version, "error": problems[i]})
                continue
            p = next(it)
            results.append({"result": space.prediction_result(p.department, p.top, task.get("data")), "score": round(p.score, 6),
                            "model_version": version})
            task_id = task.get("id")
            if project_id != DEFAULT_PROJECT and is_id(task_id):
                rows.append({"project_id": project_id, "task_id": task_id, "model_version": version,
                             "department": p.department, "score": p.score, "margin": p.margin, "entropy": p.entropy,
                             "top": p.top, "truncated": int(p.truncated)})
        self.store.save_predictions(rows)
        self.metrics.count_predictions(version, len(predictions), sum(p.truncated for p in predictions))
        if rows:
            self.label_studio.point_project_at(project_id, version)
        return {"results": results}

    # -- annotators answer ----------------------------------------------------------------------------------
    def webhook(self, body: dict) -> dict:
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError(422, "webhook payload needs an 'action' string")
        project = body.get("project")
        if action in ANNOTATION_EVENTS:
            return self._annotation_event(action, body, project)
        if action == "ANNOTATIONS_DELETED":
            return self._annotations_deleted(body, project_id_of(project))
        if action == "START_TRAINING":
            return self._start_training(project_id_of(project))
        if action == "PROJECT_UPDATED" and isinstance(project, dict) and isinstance(project.get("label_config"), str):
            project_id = project_id_of(project)
            if project_id is not None:
                try:
                    self._space(project["label_config"], project_id)
                except ApiError as exc:
                    log.warning("project %d now has a labeling config the backend cannot use: %s", project_id, exc.message)
        self.metrics.count_webhook(action, "acknowledged")
        return {"status": "acknowledged", "action": action}

    def _annotation_event(self, action: str, body: dict, project: object) -> dict:
        project_id = project_id_of(project)
        if project_id is None:
            raise ApiError(422, f"{action} needs 'project' with an integer 'id'")
        space = self._space(project.get("label_config") if isinstance(project, dict) else None, project_id)
        try:
            label = gold_label(body.get("annotation"), body.get("task"), space, project_id, "webhook", self.settings.max_text_chars)
        except AnnotationError as exc:
            raise ApiError(422, f"{action}: {exc}") from None
        if not isinstance(label, NotGold):
            label.annotator = self.label_studio.people.resolve(label.annotator, ask=False)
        if isinstance(label, NotGold):
            removed = self.store.discard_label(label.annotation_id)
            outcome = "not gold: " + label.reason
            if removed:
                self._labels_changed(project_id)
        else:
            outcome = self.store.upsert_label(label)
            if outcome in ("created", "updated"):
                self.models.learn(project_id)
                self._labels_changed(project_id)
                self.router.reviewed(project_id, label.task_id, label.department)
            if is_user_id(label.annotator):  # not in the cache yet: named in the background, the webhook answers now
                self.background.submit("name-annotators", lambda: self.label_studio.people.name_stored_labels(self.store))
        self.metrics.count_webhook(action, outcome)
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
        if removed and project_id is not None:
            self._labels_changed(project_id)
        self.metrics.count_webhook("ANNOTATIONS_DELETED", "deleted")
        return {"status": "ok", "action": "ANNOTATIONS_DELETED", "removed": removed}

    def _labels_changed(self, project_id: int) -> None:
        self.background.submit(f"refit-{project_id}", lambda: self._request_refit(project_id), delay=self.settings.instant_refit_seconds)
        self._maybe_queue_training(project_id)

    # -- the models get better ------------------------------------------------------------------------------
    def _request_refit(self, project_id: int) -> None:
        self.refits.request(f"labels of project {project_id} changed", project_id)

    def _refit_finished(self, job) -> None:
        if job.status == JobStatus.PROMOTED:
            self.models.follow_registry()
            self._maybe_reorder_queue(job)

    def _maybe_reorder_queue(self, refit) -> None:
        """A refit that learnt QUEUE_REORDER_EVERY_N_LABELS new gold labels since the project's last pre-annotation
        serves: pre-annotate again, which orders the queue with it. Without this an instant-only project's queue kept
        the order of its last manual pre-annotation, and margin sampling asked about what the model no longer doubts.
        Only for projects pre-annotated before (pushing suggestions at all is the team's call), and only while the
        instant model serves them (an LLM's suggestions change with its promotions, which pre-annotate anyway)."""
        every, project_id = self.settings.queue_reorder_every_n_labels, refit.project_id
        if every <= 0 or project_id == DEFAULT_PROJECT or self.label_studio.client() is None:
            return
        if self.models.serving_version(project_id) != refit.version or not self.store.jobs(kind=JobKind.PREANNOTATE, project_id=project_id, limit=1):
            return
        # only labels the refit learnt: one that arrived during its fit would have the queue ordered by a model without it
        new = self.store.count_labels(project_id, since_seq=self.store.last_job_label_seq(JobKind.PREANNOTATE, project_id),
                                      until_seq=refit.label_seq, at_most=every)
        if new >= every:
            self.request_preannotation(project_id, f"at least {every} new gold labels since the queue was last ordered "
                                                   f"(QUEUE_REORDER_EVERY_N_LABELS={every})")

    def _maybe_queue_training(self, project_id: int) -> None:
        """TRAIN_EVERY_N_LABELS new gold labels of a project since its last round queue the project's next one."""
        every = self.settings.train_every_n_labels
        if self.jobs is None or every <= 0 or self.models.llm_state.get("state") != "ready":
            return
        new = self.store.count_labels(project_id, since_seq=self.store.last_job_label_seq(JobKind.TRAIN, project_id))
        if new >= every:
            self.jobs.request(f"{new} new gold labels in project {project_id} (TRAIN_EVERY_N_LABELS={every})", project_id)

    def request_training(self, reason: str, project_id: int) -> dict:
        if self.jobs is None:
            raise ApiError(409, "no LLM is configured (BASE_MODEL): the instant model refits by itself after every label")
        job, created = self.jobs.request(reason, project_id)
        return {"job": job.id, "status": job.status, "created": created, "project": project_id}

    def _job_finished(self, job) -> None:
        """A promotion is hot-swapped right away (the registry watcher would find it within seconds too), then
        the project is pre-annotated again with the new version."""
        if job.status == JobStatus.PROMOTED:
            self.models.follow_registry()
            if self.label_studio.client() is not None and job.project_id != DEFAULT_PROJECT:
                self.request_preannotation(job.project_id, f"{job.version} was promoted")
        self._maybe_queue_training(job.project_id)

    # -- dispatch without a person where the model is proven right often enough -----------------------------
    def route(self, body: dict) -> dict:
        project_id = project_or_422(body)
        tickets = read_tickets(body, self.settings.max_route_tickets)
        try:
            return {"project": project_id, "results": self.router.route(project_id, tickets)}
        except ModelPreparing as exc:
            raise ApiError(503, str(exc), retry_after=5) from None

    # -- every waiting ticket carries a suggestion ----------------------------------------------------------
    def request_preannotation(self, project_id: int, reason: str) -> dict:
        if self.label_studio.client() is None:
            raise ApiError(409, "pre-annotation pushes predictions into Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        job, created = self.store.request_job(JobKind.PREANNOTATE, reason, project_id)
        self.background.submit(f"preannotate-{project_id}", lambda: self._run_preannotation(job.id))
        return {"job": job.id, "status": job.status, "created": created, "project": project_id}

    def _run_preannotation(self, job_id: int) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.finished:
            return
        try:
            result = preannotate(job, self.store, self.label_studio.client(), self.models, self._configure, self.annotator_view)
            log.info("project %d pre-annotated: %s", job.project_id, result)
        except Exception as exc:
            log.exception("pre-annotating project %s failed; run it again to resume", job.project_id)
            self.store.update_job(job_id, status=JobStatus.FAILED, finished_at=now(), error=f"{type(exc).__name__}: {exc}")

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
        self.metrics.count_webhook("START_TRAINING", "queued")
        answer = {"status": "queued", "action": "START_TRAINING", "reconcile": f"project {project_id}"}
        if self.jobs is None:
            answer["training"] = "no LLM configured: the instant model refits from the pulled labels"
        return answer

    # -- what people ask ------------------------------------------------------------------------------------
    def convergence(self, project_id: int) -> dict:
        from tools.convergence import convergence_report

        return convergence_report(self.store, project_id)

    def jobs_list(self, project_id: int | None = None) -> dict:
        return {"jobs": [j.to_dict() for j in self.store.jobs(project_id=project_id, limit=50)]}

    def job(self, job_id: int) -> dict:
        job = self.store.get_job(job_id) if is_id(job_id) else None
        if job is None:
            raise ApiError(404, f"no job {brief(job_id)}")
        return job.to_dict()

    def versions(self, project_id: int, page: int = 1, per_page: int = 100) -> dict:
        """Newest first, a page at a time: the instant model adds versions all day."""
        total = self.store.count_versions(project_id)
        versions = self.store.versions(project_id, limit=per_page, offset=(page - 1) * per_page, newest_first=True)
        return {"versions": [v.name for v in versions], "serving": self.models.serving_version(project_id), "project": project_id,
                "page": page, "per_page": per_page, "total": total, "details": [v.to_dict() for v in versions]}

    def snapshot(self) -> dict:
        """What /metrics and /status read: counters kept by the store and the models in memory, no scans."""
        projects = []
        for line in self.models.lines():
            stats = self.store.label_stats(line.project_id)
            evaluated = {}
            for kind in ModelKind:
                version = self.store.serving_version(line.project_id, kind)
                if version is not None:
                    evaluated[kind] = {"name": version.name, "metrics": {k: version.metrics.get(k) for k in ("accuracy", "macro_f1", "n")}}
            last_refit = next(iter(self.store.jobs(kind=JobKind.REFIT, project_id=line.project_id, limit=1)), None)
            projects.append({**line.describe(), "labels": stats, "models": evaluated, "auto_routing": self.router.state(line.project_id),
                             "last_refit": {"job": last_refit.id, "status": last_refit.status, "error": last_refit.error} if last_refit else None})
        return {
            "projects": projects,
            "jobs": self.store.job_counts(),
            "running": [j.to_dict() for j in self.store.jobs(status=[JobStatus.RUNNING, JobStatus.EVALUATING], limit=10)],
        }

    def status(self) -> dict:
        snapshot = self.snapshot()
        return {
            "projects": snapshot["projects"],
            "labels": self.store.label_stats(),
            "annotators": self.store.annotator_counts(),
            "llm": {**self.models.llm_state, "adapters": self.models.adapter_state()} if self.settings.base_model else self.models.llm_state,
            "jobs": {f"{kind} {status}": n for (kind, status), n in sorted(snapshot["jobs"].items())},
            "background_idle": self.background.idle(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }
