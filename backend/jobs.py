"""Jobs that run in worker processes: queued in the store, one at a time per kind, fair between projects.

Two kinds run this way: fine-tuning rounds (``training/round.py``, the GPU) and full refits of an instant model
(``learning/refit.py``, a CPU core). The web service keeps serving while a job runs: the job is another process with
its own interpreter and its own copy of what it needs. The worker dies with the service (PR_SET_PDEATHSIG), and a
worker that dies on its own (an error, an out-of-memory kill, kill -9) leaves its job marked failed and the serving
model untouched. On start, jobs left running by a previous process are marked failed, unfinished model folders are
removed, and queued jobs run. Requests for a project coalesce into its queued job; the next job is the one of the
project that has waited longest, so a busy project cannot starve the others.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.jobs import IN_PROGRESS, JobStatus, died_here, launch_worker, remove_stale_partials, worker_id
from core.settings import Settings
from core.store import Job, Store, now

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(self, kind: str, module: str, settings: Settings, store: Store, on_finished: Callable[[Job], None],
                 warmup_module: str | None = None, join_running: bool = True):
        self.kind = kind
        self.join_running = join_running
        self.module = module
        self.warmup_module = warmup_module
        self.settings = settings
        self.store = store
        self.on_finished = on_finished
        self.jobs_dir = settings.model_dir / "jobs"
        self.worker = worker_id()
        self._wake = threading.Event()
        self._stopped = False
        self.current: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._loop, name=f"{kind}-runner", daemon=True)

    def start(self) -> None:
        self._recover()
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def request(self, reason: str, project_id: int) -> tuple[Job, bool]:
        """Queue a job for the project; while one is queued (or, with `join_running`, running) there, requests
        coalesce into it."""
        job, created = self.store.request_job(self.kind, reason, project_id, self.join_running)
        if created:
            log.info("%s job %d queued for project %d (%s)", self.kind, job.id, project_id, reason)
        self._wake.set()
        return job, created

    def _recover(self) -> None:
        """Jobs this machine was running when its service died are failed at once (their workers died with it);
        jobs of other machines are left to the heartbeat: they may well be running."""
        for job in self.store.jobs(kind=self.kind, status=IN_PROGRESS):
            if died_here(job.claimed_by):
                self.store.update_job(job.id, status=JobStatus.FAILED, finished_at=now(),
                                      error="interrupted: the backend stopped while this job ran")
                log.warning("%s job %d was interrupted by a restart; marked failed", self.kind, job.id)
        remove_stale_partials(self.settings.model_dir)

    def _loop(self) -> None:
        if self.warmup_module:  # before the first job, so its first step finds the kernels compiled
            log_path = self.jobs_dir / "warmup.log"
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            code = launch_worker(self.warmup_module, [], {**os.environ, **self.settings.to_env()}, log_path).wait()
            log.info("%s warm-up ended with code %d (log %s)", self.kind, code, log_path)
        while not self._stopped:
            silent_since = (datetime.now(UTC) - timedelta(seconds=self.settings.job_lost_after_seconds)).isoformat(timespec="milliseconds")
            for lost in self.store.fail_lost_jobs(self.kind, silent_since):
                log.warning("%s job %d was lost (%s stopped answering); queued again", self.kind, lost.id, lost.claimed_by)
            job = self.store.claim_job(None, self.kind, self.worker)
            if job is None:
                self._wake.wait(timeout=2.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # the runner must survive anything a job does
                log.exception("%s job %d could not run", self.kind, job.id)
                self.store.update_job(job.id, status=JobStatus.FAILED, finished_at=now(), error=f"{type(exc).__name__}: {exc}")
            finished = self.store.get_job(job.id)
            try:
                self.on_finished(finished)
            except Exception:
                log.exception("after %s job %d", self.kind, job.id)

    def _run(self, job: Job) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.jobs_dir / f"{job.id}.log"
        self.current = launch_worker(self.module, ["--job", str(job.id), "--claimed-by", self.worker],
                                     {**os.environ, **self.settings.to_env()}, log_path)
        self.store.update_job(job.id, pid=self.current.pid)
        log.info("%s job %d (project %d) started (pid %d, log %s)", self.kind, job.id, job.project_id, self.current.pid, log_path)
        code = self.current.wait()
        self.current = None
        after = self.store.get_job(job.id)
        if not after.finished or (code != 0 and after.status != JobStatus.FAILED):
            reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self.store.update_job(job.id, status=JobStatus.FAILED, finished_at=now(),
                                  error=f"the {self.kind} worker {reason}; see {log_path}")
            remove_stale_partials(self.settings.model_dir)  # what it was writing when it died
        log.info("%s job %d: %s", self.kind, job.id, self.store.get_job(job.id).status)


class QueueDispatcher:
    """With QUEUE_URL, training rounds go to RQ workers (``python -m training.worker``) on whatever machines run
    them, instead of a worker process of this service. The store stays the truth: a round is requested (and
    coalesced) there, handed to the queue by exactly one replica, claimed there by the worker that runs it, and
    a worker that goes silent is declared lost and its round queued and handed over again."""

    QUEUE = "train"

    def __init__(self, kind: str, settings: Settings, store: Store, on_finished: Callable[[Job], None]):
        from redis import Redis
        from rq import Queue

        self.kind = kind
        self.settings = settings
        self.store = store
        self.on_finished = on_finished
        self.worker = worker_id()
        self.queue = Queue(self.QUEUE, connection=Redis.from_url(settings.queue_url))
        self._wake = threading.Event()
        self._stopped = False
        self._watched: dict[int, str] = {}  # unfinished job -> status last seen, to report when each ends
        self._thread = threading.Thread(target=self._loop, name=f"{kind}-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def request(self, reason: str, project_id: int) -> tuple[Job, bool]:
        job, created = self.store.request_job(self.kind, reason, project_id)
        if created:
            log.info("%s job %d queued for project %d (%s); an RQ worker will run it", self.kind, job.id, project_id, reason)
        self._wake.set()
        return job, created

    def _loop(self) -> None:
        while not self._stopped:
            try:
                self._dispatch()
            except Exception:  # Redis or the store briefly away: try again on the next turn
                log.exception("could not hand %s jobs to the queue", self.kind)
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    def _dispatch(self) -> None:
        ago = datetime.now(UTC) - timedelta(seconds=self.settings.job_lost_after_seconds)
        for lost in self.store.fail_lost_jobs(self.kind, ago.isoformat(timespec="milliseconds")):
            log.warning("%s job %d was lost (%s stopped answering); queued again", self.kind, lost.id, lost.claimed_by)
        for job in self.store.jobs_to_enqueue(self.kind, self.worker, ago.isoformat(timespec="milliseconds")):
            self.queue.enqueue("training.worker.run_job", job.id, job_id=f"{self.kind}-{job.id}", job_timeout=-1,
                               description=f"{self.kind} job {job.id} (project {job.project_id})")
            log.info("%s job %d handed to the queue %s", self.kind, job.id, self.QUEUE)
        for job in self.store.jobs(kind=self.kind, limit=20):
            seen = self._watched.get(job.id)
            if not job.finished:
                self._watched[job.id] = job.status
            elif seen is not None:
                del self._watched[job.id]
                self.on_finished(job)
