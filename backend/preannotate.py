"""Pre-annotate a whole Label Studio project with the serving model, and order its queue (annotator_view.py).

Label Studio Community has no "predict all tasks" (the SDK's ml.predict_all_tasks is Enterprise-only), and its
"Retrieve Predictions" action sends every selected task in one /predict call under a 100 s timeout. So the backend
predicts the project's unlabelled tasks itself, in chunks, and pushes the suggestions through the import-predictions
API. The predictions table is the ledger: a chunk is recorded only after Label Studio accepted it, so an interrupted
run resumes where it stopped, and a second run for the same model version pushes nothing twice. At the end the
project's model_version points at the version (its score column and uncertainty sampling use it) and the project
samples by uncertainty.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.jobs import JobStatus
from core.label_studio import LabelStudioClient
from core.labeling import LabelSpace, parse_label_config
from core.store import Job, Store, now
from core.text import has_content
from learning.strategies import mature

if TYPE_CHECKING:
    from backend.annotator_view import AnnotatorView
    from backend.models import ModelManager

log = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
READY_WAIT_SECONDS = 600.0


def preannotate(job: Job, store: Store, client: LabelStudioClient | None, models: ModelManager,
                configure: Callable[[int, LabelSpace, str], None], view: AnnotatorView | None = None, chunk_size: int = 256) -> dict:
    """Run a queued preannotate job for job.project_id; progress goes to the job row (and a log line per chunk).
    `configure` records the project's labeling config as read from Label Studio (its model follows). With a
    `view`, each task's data gets its suggestion row before its prediction is pushed (annotator_view.py)."""
    project_id = job.project_id
    if client is None:
        raise RuntimeError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to pre-annotate a project")
    store.update_job(job.id, status=JobStatus.RUNNING, started_at=now(), progress={"phase": "listing tasks"})
    project = client.project(project_id)
    space = parse_label_config(project["label_config"])
    configure(project_id, space, project["label_config"])
    if not models.line(project_id).ready.wait(READY_WAIT_SECONDS):
        raise RuntimeError(f"project {project_id}'s model was not ready within {READY_WAIT_SECONDS:.0f} s")
    models.follow_registry()  # a refit promoted a moment ago: start on the registry's version, not the one it replaces
    version = models.serving_version(project_id)
    done = {p["task_id"] for p in store.predictions(project_id, model_version=version)}
    tasks = [t for t in client.tasks(project_id) if not t["total_annotations"]]
    todo = [t for t in tasks if t["id"] not in done]
    progress = {"phase": "predicting", "model_version": version, "step": len(tasks) - len(todo), "total_steps": len(tasks)}
    store.update_job(job.id, progress=progress)
    readable = {task["id"]: text for task in tasks if (text := _text(space, task)) is not None}
    places = {}
    if view and todo and not mature(store.label_stats(project_id)["labels"], len(space.departments)):
        # a young project's queue is an order over all its waiting tickets, not a score of each
        store.update_job(job.id, progress={**progress, "phase": "ordering the queue"})
        places = view.young_places(list(readable), list(readable.values()), [l.text for l in store.labels(project_id)],
                                   len(space.departments))
    skipped = 0
    for start in range(0, len(todo), chunk_size):
        chunk = [task for task in todo[start: start + chunk_size] if task["id"] in readable]
        texts = [readable[task["id"]] for task in chunk]
        skipped += len(todo[start: start + chunk_size]) - len(chunk)
        if chunk:
            used, predictions = models.predict(project_id, texts)
            # A promotion during the job swaps the model between chunks: Label Studio is pointed at the newest version that
            # predicted (it refuses a model_version none of the project's predictions carry).
            version = progress["model_version"] = used
            labelled = store.label_stats(project_id)["labels"]  # the queue order changes once the model is mature
            shown = view.publish(space, chunk, predictions, labelled, places) if view else [t["data"] for t in chunk]
            client.import_predictions(project_id, [
                {"task": t["id"], "result": space.prediction_result(p.department, p.top, data), "score": round(p.score, 6),
                 "model_version": used} for t, p, data in zip(chunk, predictions, shown)])
            store.save_predictions([
                {"project_id": project_id, "task_id": t["id"], "model_version": used, "department": p.department,
                 "score": p.score, "margin": p.margin, "entropy": p.entropy, "top": p.top, "truncated": int(p.truncated)}
                for t, p in zip(chunk, predictions)])
        progress["step"] = min(len(tasks), progress["step"] + len(todo[start: start + chunk_size]))
        store.update_job(job.id, progress=progress)
        log.info("pre-annotating project %d with %s: %d/%d tasks", project_id, version, progress["step"], len(tasks))
    if tasks:
        client.set_model_version(project_id, version)
        store.set_project_model_version(project_id, version)
    client.set_sampling(project_id, UNCERTAINTY_SAMPLING)
    if view:
        view.ensure_queue_tab(project_id, space)
    result = {"model_version": version, "unlabelled_tasks": len(tasks), "pushed": len(todo) - skipped,
              "already_there": len(tasks) - len(todo), "skipped_without_text": skipped}
    store.update_job(job.id, status=JobStatus.SUCCEEDED, finished_at=now(), progress={**progress, "phase": "done", **result})
    return result


def _text(space: LabelSpace, task: dict) -> str | None:
    """The task's ticket text, or None when it has none to predict from."""
    try:
        text = space.ticket_text(task)
    except ValueError:
        return None
    return text if has_content(text) else None
